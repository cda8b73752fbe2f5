"""The stored representation of tensor elements turned into numbers numpy computes with:
torch dtype -> numpy dtype, bfloat16 and float8 widened by bit manipulation, negative and
conjugate views applied, big-endian archives swapped as torch swaps them."""

from __future__ import annotations

from typing import Literal

import numpy as np

from ckpt_viewer.core.listing.model import DTYPE_SIZES, FLOAT_DTYPES, Storage, TensorInfo

NUMPY_DTYPES = {
    "float64": "f8",
    "float32": "f4",
    "float16": "f2",
    "complex64": "c8",
    "complex128": "c16",
    "int64": "i8",
    "int32": "i4",
    "int16": "i2",
    "int8": "i1",
    "uint64": "u8",
    "uint32": "u4",
    "uint16": "u2",
    "uint8": "u1",
    "bool": "?",
    "qint8": "i1",
    "quint8": "u1",
    "qint32": "i4",
    "bfloat16": "u2",
    "float8_e4m3fn": "u1",
    "float8_e5m2": "u1",
    "float8_e4m3fnuz": "u1",
    "float8_e5m2fnuz": "u1",
    "float8_e8m0fnu": "u1",
    # bits types have no arithmetic in torch: their values are their bit patterns
    "bits8": "u1",
    "bits16": "u2",
    "bits1x8": "u1",
    "bits2x4": "u1",
    "bits4x2": "u1",
}


def _float8_table(exp_bits, man_bits, bias, kind) -> np.ndarray:
    """All 256 values of an 8-bit float format, as float32 (kind: ieee | fn | fnuz | e8m0)."""
    values = np.zeros(256, dtype=np.float32)
    for code in range(256):
        if kind == "e8m0":
            values[code] = np.nan if code == 255 else 2.0 ** (code - 127)
            continue
        sign = -1.0 if code & 0x80 else 1.0
        exponent = (code >> man_bits) & ((1 << exp_bits) - 1)
        mantissa = code & ((1 << man_bits) - 1)
        top = (1 << exp_bits) - 1
        if kind == "fnuz" and code == 0x80:
            values[code] = np.nan
        elif kind == "ieee" and exponent == top:
            values[code] = sign * np.inf if mantissa == 0 else np.nan
        elif kind == "fn" and exponent == top and mantissa == (1 << man_bits) - 1:
            values[code] = np.nan
        elif exponent == 0:
            values[code] = sign * mantissa * 2.0 ** (1 - bias - man_bits)
        else:
            values[code] = sign * (1 + mantissa / (1 << man_bits)) * 2.0 ** (exponent - bias)
    return values


FLOAT8_TABLES = {
    "float8_e4m3fn": (4, 3, 7, "fn"),
    "float8_e5m2": (5, 2, 15, "ieee"),
    "float8_e4m3fnuz": (4, 3, 8, "fnuz"),
    "float8_e5m2fnuz": (5, 2, 16, "fnuz"),
    "float8_e8m0fnu": (8, 0, 127, "e8m0"),
}
_tables: dict = {}


def widen(raw: np.ndarray, dtype: str, quantizer: dict | None = None) -> np.ndarray:
    """Numbers numpy can compute with, from the stored representation."""
    if dtype == "bfloat16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    if dtype in FLOAT8_TABLES:
        if dtype not in _tables:
            _tables[dtype] = _float8_table(*FLOAT8_TABLES[dtype])
        return _tables[dtype][raw]
    if dtype in ("qint8", "quint8", "qint32") and quantizer and "scale" in quantizer:
        return (raw.astype(np.float32) - quantizer["zero_point"]) * np.float32(quantizer["scale"])
    return raw


def apply_view_bits(raw: np.ndarray, tensor: TensorInfo) -> np.ndarray:
    """The stored representation of a negative or conjugate view turned into the values torch
    shows (`torch._neg_view`, `.conj()` saved as is): the sign bit flipped for floats (bf16 and
    float8 included, as raw integers), integers negated, complex conjugated."""
    if not (tensor.neg or tensor.conj and tensor.dtype.startswith("complex")):
        return raw
    if tensor.dtype.startswith("complex"):
        complex_type = np.dtype(f"{raw.dtype.byteorder}c{raw.dtype.itemsize}")
        values = raw if raw.dtype.kind == "c" else raw.view(complex_type)
        values = np.conj(values) if tensor.conj else np.array(values)
        values = -values if tensor.neg else values
        return values if raw.dtype.kind == "c" else values.view(raw.dtype)
    if tensor.dtype in FLOAT_DTYPES:
        bits = raw.view(np.dtype(f"{raw.dtype.byteorder}u{raw.dtype.itemsize}"))
        flipped = bits ^ bits.dtype.type(1 << (8 * raw.dtype.itemsize - 1))
        if tensor.dtype.endswith("fnuz"):  # no negative zero there: 0 stays 0
            flipped[bits == 0] = 0
        return flipped.view(raw.dtype)
    return -raw


def numpy_readable(tensor: TensorInfo) -> bool:
    if tensor.chunks or tensor.storage is None or tensor.dtype not in NUMPY_DTYPES:
        return False
    if tensor.layout == "quantized":
        return "scale" in tensor.quantizer
    return tensor.layout == "strided"


def stored_order(storage: Storage) -> Literal["<", ">"]:
    """'>' when torch byte-swaps this storage's elements (a big-endian archive). It swaps by
    the storage's own element size, so an untyped storage (of a uint16, float8... tensor) is
    read as it is."""
    return ">" if storage.byteorder == "big" and DTYPE_SIZES.get(storage.dtype, 1) > 1 else "<"


def as_little_endian(raw: np.ndarray, storage: Storage) -> np.ndarray:
    """Elements read as stored, byte-swapped as torch swaps a big-endian archive's storage: by
    its storage type's element size, each part of a complex number on its own."""
    if stored_order(storage) == "<":
        return raw
    unit = DTYPE_SIZES[storage.dtype] // (2 if storage.dtype.startswith("complex") else 1)
    swapped = np.ascontiguousarray(raw).view(np.uint8).view(f">u{unit}").byteswap()
    return swapped.view(np.uint8).view(raw.dtype).reshape(raw.shape)


def tensor_np_dtype(tensor: TensorInfo) -> np.dtype:
    assert tensor.storage is not None  # asked only of tensors numpy reads from their storage
    return np.dtype(stored_order(tensor.storage) + NUMPY_DTYPES[tensor.dtype])
