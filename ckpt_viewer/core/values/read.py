"""Read tensor values on demand, after checking sizes and bounds.

Common dtypes are read with numpy in chunks straight from the file (no torch import, which
alone costs more time and memory than most reads); bfloat16 and float8 are widened by bit manipulation. Anything
else (quantized per-channel, complex32, DCP chunks, float4) is materialised through torch.
A compressed zip record is inflated, never memory-mapped (mmap would yield its raw bytes).
"""

from __future__ import annotations

import contextlib
import copy
import math
import mmap
import os
import warnings
import zipfile
from typing import Literal

import numpy as np

from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.listing import remote
from ckpt_viewer.core.listing.model import (
    DTYPE_SIZES,
    FLOAT_DTYPES,
    PACKED_VALUES,
    FileSpan,
    InlineBytes,
    Storage,
    TensorInfo,
    ZipMember,
)
from ckpt_viewer.core.listing.readers.zip_directory import data_offset, read_member

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


def as_words(chunk: np.ndarray) -> np.ndarray:
    """A chunk's bytes as the widest unsigned integers that tile them: fewer, faster compares
    and hashes of the exact bits (shared by diff and check)."""
    raw = np.ascontiguousarray(chunk).view(np.uint8)
    for word in (np.uint64, np.uint32, np.uint16):
        if raw.size % np.dtype(word).itemsize == 0:
            return raw.view(word)
    return raw


def numpy_readable(tensor: TensorInfo) -> bool:
    if tensor.chunks or tensor.storage is None or tensor.dtype not in NUMPY_DTYPES:
        return False
    if tensor.layout == "quantized":
        return "scale" in tensor.quantizer
    return tensor.layout == "strided"


class StorageReader:
    """Reads element ranges of one storage: from the file, or from an inflated record."""

    def __init__(self, storage: Storage | None):
        if storage is None:
            raise CheckpointError("the tensor has no storage to read")
        self.storage = storage
        source = storage.source
        self.inflated: bytes | None = None
        self.path: str | None
        if isinstance(source, ZipMember):
            if source.compress_type == zipfile.ZIP_STORED:
                self.path, self.offset = source.path, data_offset(source)
            else:
                self.inflated = read_member(source, limit=source.file_size)
                self.path, self.offset = None, 0
        elif isinstance(source, InlineBytes):
            self.inflated = source.data
            self.path, self.offset = None, 0
        elif isinstance(source, FileSpan):
            self.path, self.offset = source.path, source.offset
        else:
            raise CheckpointError(f"storage {storage.key!r} has no data location")
        order = ">" if storage.byteorder == "big" else "<"
        self.np_dtype = (
            np.dtype(order + NUMPY_DTYPES[storage.dtype])
            if storage.dtype in NUMPY_DTYPES
            else np.dtype("u1")
        )
        self.itemsize = DTYPE_SIZES[storage.dtype]

    def read(self, first: int, count: int, np_dtype=None) -> np.ndarray:
        """Elements [first, first+count) of the storage, in `np_dtype` units (a private copy)."""
        dtype, start, nbytes = self._span(first, count, np_dtype)
        if self.inflated is not None:
            return np.frombuffer(self.inflated, dtype=dtype, count=count, offset=start)
        out = np.empty(count, dtype=dtype)
        if not nbytes:  # nothing to read, wherever the storage says it lies
            return out
        with self._file(self.offset + start + nbytes) as f:
            f.seek(self.offset + start)
            got = f.readinto(out.data.cast("B"))
        if got != nbytes:
            raise self._ended()
        return out

    def mapped(self, first: int, count: int, np_dtype=None) -> np.ndarray:
        """Like read, but a read-only view of the file's pages: no copy and no fresh memory to
        fault in, which halves the time of a streaming pass. The mapping goes away with the
        last view of it."""
        dtype, start, nbytes = self._span(first, count, np_dtype)
        if self.inflated is not None or nbytes == 0 or remote.is_remote(self.path):
            return self.read(first, count, np_dtype)
        position = self.offset + start
        aligned = position - position % mmap.ALLOCATIONGRANULARITY
        with self._file(position + nbytes) as f:
            # not MAP_POPULATE: CPython holds the GIL through mmap(), so populating a cold chunk
            # froze the GUI thread for the whole disk read; faults inside numpy do not
            pages = mmap.mmap(
                f.fileno(), position + nbytes - aligned, offset=aligned, access=mmap.ACCESS_READ
            )
        return np.frombuffer(pages, dtype=dtype, count=count, offset=position - aligned)

    def prefetch(self, ranges: list, np_dtype=None, advice: int | None = None):
        """Ask the OS to start reading these (first, count) element ranges all at once: a few
        scattered reads from a cold file then cost one disk round trip, not one each. (With
        POSIX_FADV_DONTNEED: tell it they are done with.)"""
        if (
            self.inflated is not None
            or not hasattr(os, "posix_fadvise")
            or remote.is_remote(self.path)
        ):
            return
        with self._file(0) as f:
            for first, count in ranges:
                _, start, nbytes = self._span(first, count, np_dtype)
                os.posix_fadvise(
                    f.fileno(),
                    self.offset + start,
                    nbytes,
                    os.POSIX_FADV_WILLNEED if advice is None else advice,
                )

    def _span(self, first: int, count: int, np_dtype):
        dtype = np_dtype or self.np_dtype
        start, nbytes = first * dtype.itemsize, count * dtype.itemsize
        if start + nbytes > self.storage.nbytes:
            raise CheckpointError(f"read past the end of storage {self.storage.key!r}")
        return dtype, start, nbytes

    @contextlib.contextmanager
    def _file(self, needed_size: int):
        """The open file, checked to still hold `needed_size` bytes (a mapping past the end
        would kill the process with SIGBUS instead of raising)."""
        assert self.path is not None  # an inflated record is read from memory
        try:
            with remote.open_source(self.path) as f:
                if f.size < needed_size:
                    raise self._ended()
                yield f
        except FileNotFoundError:
            raise CheckpointError(f"{self.path} has disappeared since it was opened") from None
        except OSError as exc:
            raise CheckpointError(f"{self.path} cannot be read ({exc.strerror or exc})") from None

    def _ended(self) -> CheckpointError:
        return CheckpointError(
            f"file ended while reading storage {self.storage.key!r} "
            "(changed or truncated since it was opened?)"
        )


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


def iter_chunks(tensor: TensorInfo, chunk_elements: int = 1 << 20):
    """The tensor's elements as widened numpy chunks of chunk_elements each (the last may be
    shorter), in logical (C) order, read-only; memory stays bounded whatever the strides.
    A sparse tensor yields its stored values only."""
    if "values" in tensor.parts:
        yield from iter_chunks(tensor.parts["values"], chunk_elements)
        return
    if tensor.layout == "ggml":
        for start in range(0, tensor.numel, chunk_elements):
            yield ggml_elements(
                tensor, tensor.offset + start, min(chunk_elements, tensor.numel - start)
            )
        return
    if tensor.chunks and tensor.dtype in NUMPY_DTYPES:  # DCP: row slabs, never whole
        numbers = np.dtype("<" + NUMPY_DTYPES[tensor.dtype])
        slabs = (
            widen(slab.view(numbers), tensor.dtype)
            for slab in dcp_slabs(tensor, chunk_elements * numbers.itemsize)
        )
        yield from _rechunked(slabs, chunk_elements)
        return
    if not numpy_readable(tensor):
        yield from _torch_chunks(read_tensor(tensor), chunk_elements)
        return
    for raw in iter_raw_chunks(tensor, tensor_np_dtype(tensor), chunk_elements):
        yield widen(apply_view_bits(raw, tensor), tensor.dtype, tensor.quantizer)


def _larger_than_memory(reader: StorageReader) -> bool:
    if reader.path is None or not hasattr(os, "posix_fadvise") or remote.is_remote(reader.path):
        return False
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return os.path.getsize(reader.path) > memory // 2
    except (OSError, ValueError):
        return False


def iter_raw_chunks(tensor: TensorInfo, dtype: np.dtype, chunk_elements: int = 1 << 20):
    """Stored elements (as `dtype` units) in logical order, chunk_elements at a time. Strided
    views (transposes, slices, expand's zero strides, as_strided overlaps) are gathered block by
    block from mapped spans, so neither the view nor its storage span is ever held whole."""
    reader = StorageReader(tensor.storage)
    if tensor.is_contiguous:
        streaming = _larger_than_memory(reader)
        for start in range(0, tensor.numel, chunk_elements):
            if streaming and start >= 2 * chunk_elements:
                # the chunk before the last one is no longer mapped: drop it from the page
                # cache, or reading a file larger than memory evicts the window's own code
                # pages (the GUI then stalls hundreds of ms faulting them back in)
                reader.prefetch(
                    [(tensor.offset + start - 2 * chunk_elements, chunk_elements)],
                    dtype,
                    os.POSIX_FADV_DONTNEED,
                )
            ahead = start + chunk_elements
            if ahead < tensor.numel:
                # the next chunk is read by the OS while this one is computed: a cold page
                # faulted in by a numpy call that holds the GIL froze the window for the read
                reader.prefetch(
                    [(tensor.offset + ahead, min(chunk_elements, tensor.numel - ahead))], dtype
                )
            yield reader.mapped(
                tensor.offset + start, min(chunk_elements, tensor.numel - start), dtype
            )
        return
    shape, stride = _merged_dims(tensor.shape, tensor.stride)
    blocks = (
        _gather(reader, dtype, offset, block_shape, block_stride).reshape(-1)
        for offset, block_shape, block_stride in _blocks(
            tensor.offset, shape, stride, chunk_elements
        )
    )
    yield from _rechunked(blocks, chunk_elements)


SPAN_LIMIT = 1 << 24  # storage elements one gathered block may span (a mapping, not memory)


def _merged_dims(shape, stride) -> tuple:
    """The same logical order with size-1 dims dropped and row-major neighbours merged."""
    dims = [(n, s) for n, s in zip(shape, stride) if n != 1]
    merged: list[tuple[int, int]] = []
    for n, s in dims:
        if merged and merged[-1][1] == s * n:
            merged[-1] = (merged[-1][0] * n, s)
        else:
            merged.append((n, s))
    return tuple(n for n, _ in merged), tuple(s for _, s in merged)


def _span(shape, stride) -> int:
    """Storage elements between the first and last element touched, inclusive."""
    if 0 in shape:
        return 0
    return 1 + sum((n - 1) * abs(s) for n, s in zip(shape, stride))


def _blocks(offset: int, shape: tuple, stride: tuple, limit: int):
    """(offset, shape, stride) sub-views in logical order, each of at most `limit` elements
    spanning at most SPAN_LIMIT storage elements."""
    if math.prod(shape) <= limit and _span(shape, stride) <= SPAN_LIMIT:
        yield offset, shape, stride
        return
    rows, step = shape[0], stride[0]
    inner_shape, inner_stride = shape[1:], stride[1:]
    inner_numel, inner_span = math.prod(inner_shape), _span(inner_shape, inner_stride)
    if inner_numel <= limit and inner_span <= SPAN_LIMIT:
        per_block = limit // max(inner_numel, 1)
        if step:
            per_block = min(per_block, (SPAN_LIMIT - inner_span) // abs(step) + 1)
        per_block = max(1, per_block)
        for row in range(0, rows, per_block):
            yield offset + row * step, (min(per_block, rows - row),) + inner_shape, stride
        return
    for row in range(rows):
        yield from _blocks(offset + row * step, inner_shape, inner_stride, limit)


def _gather(
    reader: StorageReader, dtype: np.dtype, offset: int, shape: tuple, stride: tuple
) -> np.ndarray:
    """A contiguous copy of one strided view, read through a mapping of the span it touches."""
    if 0 in shape:
        return np.zeros(shape, dtype)
    first = offset + sum((n - 1) * s for n, s in zip(shape, stride) if s < 0)
    base = reader.mapped(first, _span(shape, stride), dtype)
    view = np.lib.stride_tricks.as_strided(
        base[offset - first :], shape, [s * dtype.itemsize for s in stride], writeable=False
    )
    return np.ascontiguousarray(view)


def _rechunked(blocks, size: int):
    """Blocks re-cut into pieces of exactly `size` elements (the last may be shorter)."""
    pending, held = [], 0
    for block in blocks:
        if not held and block.size == size:
            yield block
            continue
        pending.append(block)
        held += block.size
        while held >= size:
            joined = np.concatenate(pending)
            yield joined[:size]
            rest = joined[size:]
            pending, held = ([rest] if rest.size else []), rest.size
    if held:
        yield np.concatenate(pending)


def _torch_chunks(value, size: int):
    """A torch tensor (maybe an expanded view) widened to numpy in logical-order chunks:
    converted block by block, never whole."""

    def blocks(view):
        if view.dim() == 0 or view.numel() <= size:
            yield to_numpy(view).reshape(-1)
            return
        inner = view[0].numel() if view.shape[0] else 0
        if 0 < inner <= size:
            rows = max(1, size // inner)
            for start in range(0, view.shape[0], rows):
                yield to_numpy(view[start : start + rows]).reshape(-1)
            return
        for row in view:
            yield from blocks(row)

    if value.numel():
        yield from _rechunked(blocks(value), size)


def unordered_view(tensor: TensorInfo) -> tuple[TensorInfo, int]:
    """(a view holding each distinct element position once, repetitions of each) - for
    order-free statistics: zero-stride dims (expand) repeat the same values, so they are
    dropped and counted; negative strides are flipped and dims sorted by stride, which turns
    transposes back into contiguous reads."""
    reorderable = numpy_readable(tensor) or (
        tensor.storage is not None
        and not tensor.parts
        and not tensor.chunks
        and (tensor.layout == "strided" or "scale" in tensor.quantizer)
    )
    if not reorderable or tensor.is_contiguous or tensor.numel == 0:
        return tensor, 1
    repeat, offset, dims = 1, tensor.offset, []
    for n, s in zip(tensor.shape, tensor.stride):
        if s == 0:
            repeat *= n
        elif s < 0:
            offset += (n - 1) * s
            dims.append((n, -s))
        elif n != 1:
            dims.append((n, s))
    dims.sort(key=lambda d: -d[1])
    view = copy.copy(tensor)
    view.shape, view.stride, view.offset = (
        tuple(n for n, _ in dims),
        tuple(s for _, s in dims),
        offset,
    )
    return view, repeat


def strided_array(tensor: TensorInfo, dtype: np.dtype) -> np.ndarray:
    """A non-contiguous view as a contiguous copy (the view's own size; its span is never
    read whole)."""
    out = np.empty(tensor.numel, dtype)
    filled = 0
    for piece in iter_raw_chunks(tensor, dtype):
        out[filled : filled + piece.size] = piece
        filled += piece.size
    return out.reshape(tensor.shape)


def read_array(tensor: TensorInfo, max_elements: int | None = None) -> np.ndarray:
    """The whole tensor as a widened numpy array in its shape (for heatmaps, value pages)."""
    if max_elements is not None and tensor.numel > max_elements:
        raise CheckpointError(
            f"tensor has {tensor.numel:,} elements; refusing to read more "
            f"than {max_elements:,} at once"
        )
    if tensor.layout == "ggml":
        return ggml_elements(tensor, tensor.offset, tensor.numel).reshape(tensor.shape)
    if not numpy_readable(tensor):
        return to_numpy(read_tensor(tensor))
    reader = StorageReader(tensor.storage)
    dtype = tensor_np_dtype(tensor)
    if tensor.is_contiguous:
        raw = reader.read(tensor.offset, tensor.numel, dtype).reshape(tensor.shape)
    else:
        raw = strided_array(tensor, dtype)
    return widen(apply_view_bits(raw, tensor), tensor.dtype, tensor.quantizer)


def ggml_elements(tensor: TensorInfo, first: int, count: int) -> np.ndarray:
    """Elements [first, first+count) of a GGUF quantized tensor (flat, in file order) as
    float32, dequantized by the gguf package; only the blocks holding them are read."""
    try:
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize
    except ImportError:
        raise CheckpointError(
            "reading GGUF quantized values needs the gguf package (pip install gguf)"
        ) from None
    block, type_size = tensor.quantizer["block"], tensor.quantizer["type_size"]
    if count <= 0:
        return np.zeros(0, np.float32)
    first_block, end_block = first // block, -(-(first + count) // block)
    raw = StorageReader(tensor.storage).mapped(
        first_block * type_size, (end_block - first_block) * type_size
    )
    try:
        values = dequantize(raw, GGMLQuantizationType[tensor.quantizer["ggml_type"]])
    except NotImplementedError:
        raise CheckpointError(
            f"the gguf package cannot dequantize {tensor.quantizer['ggml_type']} values"
        ) from None
    skip = first - first_block * block
    return values.reshape(-1)[skip : skip + count]


def dcp_slabs(tensor: TensorInfo, max_bytes: int = 16 << 20):
    """A DCP tensor's elements in C order as little-endian raw units (u1/u2/u4/u8 or void),
    a slab of whole dim-0 rows at a time: each slab is filled from the chunks that overlap it,
    read straight from their records in the data files. Memory: one slab (at least one row),
    whatever the tensor's size or how it is sharded."""
    from ckpt_viewer.core.listing.readers.dcp import stored_chunk

    itemsize = DTYPE_SIZES[tensor.dtype]
    unit = np.dtype(f"<u{itemsize}") if itemsize in (1, 2, 4, 8) else np.dtype(f"V{itemsize}")
    pieces = []
    for offsets, sizes, span in tensor.chunks:
        if len(offsets) != len(tensor.shape) or any(
            o < 0 or o + n > d for o, n, d in zip(offsets, sizes, tensor.shape)
        ):
            raise CheckpointError("DCP chunk reaches past its tensor")
        pieces.append((offsets, stored_chunk(tensor, offsets, sizes, span)))
    if not tensor.numel:
        return
    if not tensor.shape:  # 0-dim: one element, one chunk
        yield _chunk_block(pieces[0][1], unit)
        return
    rows, row_shape = tensor.shape[0], tuple(tensor.shape[1:])
    per_slab = max(1, max_bytes // max(1, math.prod(row_shape) * itemsize))
    for first in range(0, rows, per_slab):
        end = min(rows, first + per_slab)
        slab = np.zeros((end - first,) + row_shape, unit)
        for offsets, chunk in pieces:
            lo, hi = max(first, offsets[0]), min(end, offsets[0] + chunk.shape[0])
            if lo >= hi:
                continue
            view = copy.copy(chunk)
            view.offset = chunk.offset + (lo - offsets[0]) * chunk.stride[0]
            view.shape = (hi - lo,) + tuple(chunk.shape[1:])
            where = (slice(lo - first, hi - first),) + tuple(
                slice(o, o + n) for o, n in zip(offsets[1:], chunk.shape[1:])
            )
            slab[where] = _chunk_block(view, unit).reshape(view.shape)
        yield slab.reshape(-1)


def _chunk_block(view: TensorInfo, unit: np.dtype) -> np.ndarray:
    assert view.storage is not None
    stored = unit.newbyteorder(stored_order(view.storage)) if unit.kind == "u" else unit
    raw = (
        np.concatenate(list(iter_raw_chunks(view, stored, max(1, view.numel))))
        if view.numel
        else np.zeros(0, stored)
    )
    return apply_view_bits(raw, view).astype(unit, copy=False)


# --- through torch ------------------------------------------------------------------------


def to_numpy(value) -> np.ndarray:
    import torch

    if value.dtype == torch.float4_e2m1fn_x2:
        raise CheckpointError(
            "float4_e2m1fn_x2 packs two 4-bit floats in each element, which "
            "neither torch nor numpy computes with: no values to summarise"
        )
    if value.is_quantized:
        value = value.dequantize()
    if value.is_sparse or value.layout != torch.strided:
        value = value.to_dense()
    if (
        value.dtype in (torch.bfloat16, torch.complex32)
        or value.dtype.itemsize == 1
        and value.dtype.is_floating_point
    ):
        value = value.to(torch.complex64 if value.dtype.is_complex else torch.float32)
    return value.detach().cpu().numpy()


def read_tensor(tensor: TensorInfo):
    """The tensor as a CPU torch.Tensor, bit-exact (quantized and sparse rebuilt)."""
    import torch

    if tensor.layout == "dtensor":  # objects._dtensor: only a shard of it is in this file
        raise CheckpointError(
            f"this DTensor's values are spread over its ranks' files; "
            f"{tensor.attrs.get('held', 'this file holds one shard')}"
        )
    if tensor.chunks:
        return _read_dcp(tensor)
    if not tensor.numel and tensor.layout == "strided":
        return torch.empty(tensor.shape, dtype=getattr(torch, tensor.dtype))
    if tensor.layout == "ggml":
        return torch.from_numpy(read_array(tensor).copy())
    if tensor.layout == "torchao":
        return _dequantize_affine(tensor)
    if tensor.parts:
        parts = {name: read_tensor(part) for name, part in tensor.parts.items()}
        if tensor.layout == "sparse_coo":
            # invariants checked: indices from a hostile file must not reach past the values
            return torch.sparse_coo_tensor(
                parts["indices"], parts["values"], tensor.shape, check_invariants=True
            )
        return torch.sparse_compressed_tensor(
            parts["compressed_indices"],
            parts["plain_indices"],
            parts["values"],
            tensor.shape,
            layout=getattr(torch, tensor.layout),
            check_invariants=True,
        )
    if tensor.storage is None:
        raise CheckpointError("this tensor has no stored data")
    dtype = getattr(torch, tensor.dtype)
    if not tensor.numel:
        return torch.empty(tensor.shape, dtype=dtype)
    reader = StorageReader(tensor.storage)
    raw = as_little_endian(reader.read(0, tensor.storage.nbytes, np.dtype("u1")), tensor.storage)
    if tensor.dtype in PACKED_VALUES:
        return _packed_quantized(raw, tensor, dtype)
    storage_dtype = {"qint8": torch.int8, "quint8": torch.uint8, "qint32": torch.int32}.get(
        tensor.dtype, dtype
    )
    whole = raw.size - raw.size % storage_dtype.itemsize  # a v3 dtype wider than the storage
    flat = (
        torch.frombuffer(bytearray(raw[:whole]), dtype=storage_dtype)
        if whole
        else torch.empty(0, dtype=storage_dtype)
    )
    value = (
        torch.as_strided(flat, tensor.shape, tensor.stride, tensor.offset)
        if tensor.numel
        else torch.empty(tensor.shape, dtype=storage_dtype)
    )
    if tensor.layout == "quantized":
        return _quantize(value, tensor, dtype)
    if tensor.conj and value.is_complex():
        value = value.conj().resolve_conj()
    return -value if tensor.neg else value


def _packed_quantized(raw: np.ndarray, tensor: TensorInfo, dtype):
    """quint4x2 / quint2x4 (several values per byte, no int_repr to build them from): the
    bytes set under an empty quantized tensor, as torch's _rebuild_qtensor does."""
    import torch

    q = tensor.quantizer
    if "scale" not in q:
        raise CheckpointError(
            f"a {tensor.dtype} tensor without a per-tensor scale "
            "(torch only quantizes those per tensor)"
        )
    storage = torch.UntypedStorage.from_buffer(bytearray(raw), dtype=torch.uint8)
    with warnings.catch_warnings():  # torch's deprecation notice about quantized tensors
        warnings.simplefilter("ignore")
        value = torch._empty_affine_quantized(
            [0], scale=q["scale"], zero_point=q["zero_point"], dtype=dtype
        )
    return value.set_(
        torch.storage.TypedStorage(wrap_storage=storage, dtype=dtype, _internal=True),
        tensor.offset,
        tensor.shape,
        tensor.stride,
    )


def _quantize(int_repr, tensor: TensorInfo, dtype):
    import torch

    q = tensor.quantizer
    if "scale" in q:
        return torch._make_per_tensor_quantized_tensor(int_repr, q["scale"], q["zero_point"])
    scales, zero_points = read_tensor(q["scales"]), read_tensor(q["zero_points"])
    return torch._make_per_channel_quantized_tensor(int_repr, scales, zero_points, q["axis"])


def _dequantize_affine(tensor: TensorInfo):
    """A torchao affine-quantized weight's values, computed as its dequantize() does:
    (qdata - zero_point) * scale in the logical dtype (float8 qdata: qdata * scale in float32),
    one scale per block of quantizer["block_size"]."""
    import torch

    parts = {name: read_tensor(part) for name, part in tensor.parts.items()}
    qdata, scale, zero_point = parts["qdata"], parts["scale"], parts.get("zero_point")
    blocks = tensor.quantizer["block_size"]
    split = [n for size, b in zip(tensor.shape, blocks) for n in (size // b, b)]
    per_block = [n for size, b in zip(tensor.shape, blocks) for n in (size // b, 1)]
    out = getattr(torch, tensor.dtype)
    qdata, scale = qdata.reshape(split), scale.reshape(per_block)
    if qdata.dtype.is_floating_point:
        value = qdata.to(torch.float32) * scale
    else:
        value = qdata.to(out)
        if zero_point is not None:
            value = value - zero_point.reshape(per_block).to(out)
        value = value * scale
    return value.reshape(tensor.shape).to(out)


def _read_dcp(tensor: TensorInfo):
    """Assemble a DCP tensor from its chunks: small torch.save archives, or raw safetensors
    tensors (Hugging Face storage)."""
    import io

    import torch

    from ckpt_viewer.core.listing.readers.dcp import RawChunk, stored_chunk

    for offsets, sizes, span in tensor.chunks:  # before the tensor is allocated
        stored_chunk(tensor, offsets, sizes, span)
    out = torch.empty(tensor.shape, dtype=getattr(torch, tensor.dtype))
    for offsets, sizes, span in tensor.chunks:
        if isinstance(span, RawChunk):  # a safetensors tensor (HF storage)
            chunk = read_tensor(span.tensor)
        else:
            with remote.open_source(span.path) as f:
                f.seek(span.offset)
                data = f.read(span.nbytes)
            try:
                chunk = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
            except Exception as exc:  # noqa: BLE001 - a damaged chunk is a read error
                raise CheckpointError(f"DCP chunk of {span.path} cannot be read ({exc})") from None
        region = out
        for dim, (start, size) in enumerate(zip(offsets, sizes)):
            region = region.narrow(dim, start, size)
        if tuple(chunk.shape) != tuple(sizes):
            raise CheckpointError("DCP chunk shape differs from its metadata")
        region.copy_(chunk)
    return out


def read_window(
    tensor: TensorInfo, leading: tuple = (), rows: range = range(1), cols: range = range(1)
) -> np.ndarray:
    """A 2-D window of the tensor: fixed indices for the leading dimensions, then the given
    row and column ranges of the last two (a 1-D tensor is one column). Reads only those rows
    (each as one span), so paging through a 16 GB tensor never materialises it."""
    shape, stride = list(tensor.shape), list(tensor.stride)
    if len(shape) == 0:
        return read_array(tensor).reshape(1, 1)
    if len(shape) == 1:
        shape, stride = [shape[0], 1], [stride[0], 1]
        cols = range(0, 1)
    if len(leading) != len(shape) - 2 or any(not 0 <= i < n for i, n in zip(leading, shape)):
        raise CheckpointError("slice indices are out of range")
    if tensor.layout == "ggml":  # dequantized row by row (rows are whole blocks)
        return _ggml_window(tensor, leading, shape, stride, rows, cols)
    if not numpy_readable(tensor):  # quantized per channel, DCP...: through torch
        full = read_array(tensor).reshape(shape)
        return full[tuple(leading)][
            rows.start : rows.stop : rows.step, cols.start : cols.stop : cols.step
        ]
    reader = StorageReader(tensor.storage)
    dtype = tensor_np_dtype(tensor)
    base = tensor.offset + sum(i * s for i, s in zip(leading, stride[:-2]))
    row_stride, col_stride = stride[-2], stride[-1]
    out = []
    for r in rows:
        # each row through a mapping of its span: a zero stride repeats, a huge one samples
        out.append(
            _gather(
                reader,
                dtype,
                base + r * row_stride + cols.start * col_stride,
                (len(cols),),
                (cols.step * col_stride,),
            )
        )
    window = np.stack(out) if out else np.zeros((0, len(cols)), dtype)
    return widen(apply_view_bits(window, tensor), tensor.dtype, tensor.quantizer)


def _ggml_window(tensor, leading, shape, stride, rows, cols) -> np.ndarray:
    base = tensor.offset + sum(i * s for i, s in zip(leading, stride[:-2]))
    out = np.zeros((len(rows), len(cols)), np.float32)
    if not len(cols):
        return out
    step = cols.step * stride[-1]
    for index, r in enumerate(rows):
        first = base + r * stride[-2] + cols.start * stride[-1]
        out[index] = ggml_elements(tensor, first, (len(cols) - 1) * step + 1)[::step]
    return out


def downsampled_2d(tensor: TensorInfo, leading: tuple = (), limit: int = 1024) -> tuple:
    """A heatmap-sized view of the last two dimensions (every k-th row and column):
    (array, row step, column step)."""
    shape = tensor.shape if len(tensor.shape) >= 2 else (tensor.numel, 1)
    n_rows, n_cols = shape[-2], shape[-1]
    row_step, col_step = max(1, -(-n_rows // limit)), max(1, -(-n_cols // limit))
    window = read_window(tensor, leading, range(0, n_rows, row_step), range(0, n_cols, col_step))
    return window, row_step, col_step


POOL_STRIP = 1 << 22  # elements read at a time by pooled_2d


def _largest_magnitude(block: np.ndarray, row_step: int, col_step: int) -> np.ndarray:
    """Each row_step x col_step cell of block -> its value of largest |x| (sign kept; NaN
    only when the whole cell is NaN)."""
    height, width = block.shape
    padded = np.full((-(-height // row_step) * row_step, -(-width // col_step) * col_step), np.nan)
    padded[:height, :width] = block
    cells = padded.reshape(padded.shape[0] // row_step, row_step, -1, col_step)
    cells = cells.transpose(0, 2, 1, 3).reshape(cells.shape[0], cells.shape[2], -1)
    magnitude = np.abs(cells)
    magnitude[np.isnan(magnitude)] = -1.0
    pick = magnitude.argmax(axis=2)[..., None]
    return np.take_along_axis(cells, pick, axis=2)[..., 0]


def pooled_2d(tensor: TensorInfo, leading: tuple = (), limit: int = 1024):
    """Generator (yields progress 0..1, returns (array, row step, column step)): the last two
    dimensions reduced to at most limit x limit cells, each cell holding the value of largest
    magnitude of its block, so a single spike survives (every k-th row would drop it).
    Complex tensors are reduced by magnitude. It reads at most about POOL_STRIP elements
    between two yields (rows wider than that in column blocks), so closing it stops the read
    within one block."""
    shape = tensor.shape if len(tensor.shape) >= 2 else (tensor.numel, 1)
    n_rows, n_cols = shape[-2], shape[-1]
    row_step, col_step = max(1, -(-n_rows // limit)), max(1, -(-n_cols // limit))
    if not n_rows or not n_cols:
        return np.zeros((-(-n_rows // row_step), -(-n_cols // col_step))), row_step, col_step
    # whole cells in every block: rows by multiples of row_step, columns of col_step
    strip_rows = max(1, POOL_STRIP // n_cols // row_step) * row_step
    block_cols = max(1, POOL_STRIP // (strip_rows * col_step)) * col_step
    blocks = -(-n_rows // strip_rows) * -(-n_cols // block_cols)
    window = _window_source(tensor, leading)
    strips, done = [], 0
    for start in range(0, n_rows, strip_rows):
        rows = range(start, min(start + strip_rows, n_rows))
        pieces = []
        for first in range(0, n_cols, block_cols):
            block = window(rows, range(first, min(first + block_cols, n_cols)))
            block = np.abs(block) if np.iscomplexobj(block) else block.astype(np.float64)
            pieces.append(_largest_magnitude(block, row_step, col_step))
            done += 1
            yield done / blocks
        strips.append(np.concatenate(pieces, axis=1))
    return np.concatenate(strips), row_step, col_step


def _window_source(tensor: TensorInfo, leading: tuple):
    """(rows, cols) -> that window of the slice. A tensor only torch can read (DCP,
    per-channel quantized...) comes whole from read_window, so it is read once, not per block."""
    if len(tensor.shape) == 0 or tensor.layout == "ggml" or numpy_readable(tensor):
        return lambda rows, cols: read_window(tensor, leading, rows, cols)
    whole: list[np.ndarray] = []

    def window(rows: range, cols: range) -> np.ndarray:
        if not whole:
            n_rows = tensor.shape[-2] if len(tensor.shape) >= 2 else tensor.shape[0]
            n_cols = tensor.shape[-1] if len(tensor.shape) >= 2 else 1
            whole.append(read_window(tensor, leading, range(n_rows), range(n_cols)))
        return whole[0][rows.start : rows.stop, cols.start : cols.stop]

    return window


def filter_grid(tensor: TensorInfo, max_filters: int = 64, pad: float = np.nan):
    """Generator (yields progress 0..1 after each output channel, returns the mosaic): conv
    kernels [out, in, kh, kw] as one mosaic, a tile per (out, in) pair."""
    out_channels, in_channels, kh, kw = tensor.shape
    n_out, n_in = min(out_channels, max_filters), min(in_channels, max_filters)
    values = np.empty((n_out * (kh + 1), n_in * (kw + 1)), np.float32)
    values.fill(pad)
    for o in range(n_out):
        for i in range(n_in):
            tile = read_window(tensor, (o, i), range(kh), range(kw))
            values[o * (kh + 1) : o * (kh + 1) + kh, i * (kw + 1) : i * (kw + 1) + kw] = tile
        yield (o + 1) / n_out
    return values
