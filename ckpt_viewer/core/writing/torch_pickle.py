"""Write the data.pkl of a torch zip archive opcode by opcode, without importing torch.

The stream is protocol 2, as torch.save writes it, and names only globals that
`torch.load(weights_only=True)` accepts without an allowlist: tensors are calls of torch's own
`_rebuild_tensor_v2` (or `_v3` for dtypes without a legacy storage class) on persistent storage
references, parameters `_rebuild_parameter` of those, and the plain values around them (dicts,
OrderedDicts, lists, tuples, sets, numbers, text, bytes, None) use the opcodes and the few
builtins torch's restricted unpickler knows. A value met twice is written once and referenced
again through the memo, so shared containers and tied tensors stay shared.
"""

from __future__ import annotations

import struct
from collections import Counter, OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ckpt_viewer.core.listing.model import DTYPE_SIZES, STORAGE_DTYPES, TensorInfo

LEGACY_STORAGE = {
    dtype: name
    for name, dtype in STORAGE_DTYPES.items()
    if name not in ("UntypedStorage",) and not name.startswith("Q")
}
QUANTIZED_STORAGE = {dtype: name for name, dtype in STORAGE_DTYPES.items() if name.startswith("Q")}
MAX_LONG1_BYTES = 255  # torch's restricted unpickler reads LONG1 but not LONG4
MEMO_TEXT = 32  # texts this long are written once, then referenced


@dataclass(eq=False)
class TensorEntry:
    key: str
    storage_key: str
    dtype: str
    storage_numel: int  # in elements of dtype
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    location: str = ""  # "" -> the writer's default location
    requires_grad: bool = False
    parameter: bool = False  # written as torch.nn.Parameter
    # a quantized tensor: ("per_tensor_affine", scale, zero_point), or (scheme, scales entry,
    # zero points entry, axis) per channel
    quantizer: tuple[Any, ...] = ()


def quantizer_params(
    info: TensorInfo, parts: Sequence[TensorEntry] | None = None
) -> tuple[Any, ...]:
    """A TensorEntry's quantizer for a quantized TensorInfo (() for any other). Per channel,
    `parts` are the entries of its scales and zero points; without them the tuple only
    describes it (scheme and axis), for comparisons."""
    q = info.quantizer
    if info.layout != "quantized":
        return ()
    if "scale" in q:
        return ("per_tensor_affine", q["scale"], q["zero_point"])
    return (q.get("qscheme"), *(parts or ()), q.get("axis"))


class TorchGlobal(str):
    """A value that is one of torch's allowlisted globals itself (`torch.float32` in a config);
    the text is the name after `torch.`."""


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _text(value: str) -> bytes:
    data = value.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(data)) + data


def _int(value: int) -> bytes:
    if 0 <= value < 256:
        return b"K" + bytes([value])
    if -(2**31) <= value < 2**31:
        return b"J" + struct.pack("<i", value)
    data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    if len(data) > MAX_LONG1_BYTES:
        raise ValueError("integer too large for torch's unpickler")
    return b"\x8a" + bytes([len(data)]) + data


def int_fits(value: int) -> bool:
    """Whether torch.load(weights_only=True) can read this integer back (LONG1 at most)."""
    return (value.bit_length() + 8) // 8 <= MAX_LONG1_BYTES


def _int_tuple(values: Iterable[int]) -> bytes:
    return b"(" + b"".join(_int(v) for v in values) + b"t"


def _bytes(value: bytes) -> bytes:
    # protocol 2 has no bytes opcode torch reads: _codecs.encode(text, 'latin1') as torch.save
    return (
        _global("_codecs", "encode")
        + b"("
        + _text(value.decode("latin1"))
        + _text("latin1")
        + b"tR"
    )


def _qtensor(entry: TensorEntry, location: str) -> bytes:
    """torch._utils._rebuild_qtensor on a typed quantized storage, as torch.save writes it (a
    packed quint4x2 storage is counted in bytes)."""
    scheme = entry.quantizer[0]
    persistent_id = (
        b"("
        + _text("storage")
        + _global("torch", QUANTIZED_STORAGE[entry.dtype])
        + _text(entry.storage_key)
        + _text(entry.location or location)
        + _int(entry.storage_numel)
        + b"tQ"
    )
    if scheme == "per_tensor_affine":
        _, scale, zero_point = entry.quantizer
        params = (
            b"("
            + _global("torch", scheme)
            + b"G"
            + struct.pack(">d", scale)
            + _int(zero_point)
            + b"t"
        )
    else:
        _, scales, zero_points, axis = entry.quantizer
        params = (
            b"("
            + _global("torch", scheme)
            + _tensor(scales, location)
            + _tensor(zero_points, location)
            + _int(axis)
            + b"t"
        )
    return (
        _global("torch._utils", "_rebuild_qtensor")
        + b"("
        + persistent_id
        + _int(entry.offset)
        + _int_tuple(entry.shape)
        + _int_tuple(entry.stride)
        + params
        + b"\x89"
        + _global("collections", "OrderedDict")
        + b")RtR"
    )


def _tensor(entry: TensorEntry, location: str) -> bytes:
    if entry.quantizer:
        return _qtensor(entry, location)
    storage_class = LEGACY_STORAGE.get(entry.dtype)
    if storage_class is not None:
        rebuild, kind, numel = (
            "_rebuild_tensor_v2",
            _global("torch", storage_class),
            entry.storage_numel,
        )
    else:  # new dtypes: an untyped storage counted in bytes, the dtype passed explicitly
        rebuild, kind = "_rebuild_tensor_v3", _global("torch.storage", "UntypedStorage")
        numel = entry.storage_numel * DTYPE_SIZES[entry.dtype]
    persistent_id = (
        b"("
        + _text("storage")
        + kind
        + _text(entry.storage_key)
        + _text(entry.location or location)
        + _int(numel)
        + b"tQ"
    )
    grad = b"\x88" if entry.requires_grad and not entry.parameter else b"\x89"
    args = (
        persistent_id
        + _int(entry.offset)
        + _int_tuple(entry.shape)
        + _int_tuple(entry.stride)
        + grad
        + _global("collections", "OrderedDict")
        + b")R"
    )
    if storage_class is None:
        args += _global("torch", entry.dtype)
    tensor = _global("torch._utils", rebuild) + b"(" + args + b"tR"
    if entry.parameter:
        grad = b"\x88" if entry.requires_grad else b"\x89"
        tensor = (
            _global("torch._utils", "_rebuild_parameter")
            + b"("
            + tensor
            + grad
            + _global("collections", "OrderedDict")
            + b")RtR"
        )
    return tensor


class PickleWriter:
    """One value (and everything inside it) -> a protocol 2 pickle torch loads with
    weights_only=True. Recursive: callers bound the depth of what they pass."""

    def __init__(self, location: str = "cpu") -> None:
        self.location = location
        self.parts: list[bytes] = []
        self.memo: dict[int, int] = {}
        self.alive: list[object] = []  # keeps memoised objects alive so their ids stay theirs

    def dump(self, value: object) -> bytes:
        self.parts = [b"\x80\x02"]
        self._write(value)
        self.parts.append(b".")
        return b"".join(self.parts)

    def _put(self, value: object) -> None:
        index = len(self.memo)
        self.memo[id(value)] = index
        self.alive.append(value)
        self.parts.append(b"q" + bytes([index]) if index < 256 else b"r" + struct.pack("<I", index))

    def _get(self, value: object) -> bool:
        index = self.memo.get(id(value))
        if index is None:
            return False
        self.parts.append(b"h" + bytes([index]) if index < 256 else b"j" + struct.pack("<I", index))
        return True

    def _write(self, value: object) -> None:
        out = self.parts
        if value is None:
            out.append(b"N")
        elif value is True or value is False:
            out.append(b"\x88" if value else b"\x89")
        elif isinstance(value, TorchGlobal):
            out.append(_global("torch", str(value)))
        elif type(value) is int:
            out.append(_int(value))
        elif type(value) is float:
            out.append(b"G" + struct.pack(">d", value))
        elif type(value) is str and len(value) < MEMO_TEXT:
            out.append(_text(value))
        elif self._get(value):
            return
        elif type(value) is str:  # one long text referenced from many places: once
            out.append(_text(value))
            self._put(value)
        elif type(value) is bytes:
            out.append(_bytes(value))
            self._put(value)
        elif type(value) is bytearray:
            out.append(_global("builtins", "bytearray") + b"(" + _bytes(bytes(value)) + b"tR")
            self._put(value)
        elif type(value) is complex:
            out.append(
                _global("builtins", "complex")
                + b"(G"
                + struct.pack(">d", value.real)
                + b"G"
                + struct.pack(">d", value.imag)
                + b"tR"
            )
        elif isinstance(value, TensorEntry):
            out.append(_tensor(value, self.location))
            self._put(value)
        elif isinstance(value, dict) and type(value) in (dict, OrderedDict, Counter):
            if type(value) is dict:
                out.append(b"}")
            else:
                out.append(_global("collections", type(value).__name__) + b")R")
            self._put(value)
            if value:
                out.append(b"(")
                for key, item in value.items():
                    self._write(key)
                    self._write(item)
                out.append(b"u")
        elif type(value) is list:
            out.append(b"]")
            self._put(value)
            self._items(value)
        elif type(value) is tuple:
            out.append(b"(")
            for item in value:
                self._write(item)
            out.append(b"t")
            self._put(value)
        elif type(value) is set:
            out.append(_global("builtins", "set") + b"(]")
            self._items(value)
            out.append(b"tR")
            self._put(value)
        else:
            raise TypeError(f"cannot write a {type(value).__name__} for weights_only")

    def _items(self, values: Iterable[object]) -> None:
        if values:
            self.parts.append(b"(")
            for item in values:
                self._write(item)
            self.parts.append(b"e")


def state_dict_pickle(entries: list[TensorEntry], location: str) -> bytes:
    """A flat OrderedDict of key -> tensor (what export writes)."""
    return PickleWriter(location).dump(OrderedDict((e.key, e) for e in entries))
