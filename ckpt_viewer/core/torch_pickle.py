"""Write the data.pkl of a torch zip archive opcode by opcode, without importing torch.

The stream is what torch.save writes for a flat state_dict (protocol 2): an OrderedDict whose
values are calls of torch's own `_rebuild_tensor_v2` (or `_v3` for dtypes without a legacy
storage class) on persistent storage references, so `torch.load(weights_only=True)` accepts it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ckpt_viewer.core.model import DTYPE_SIZES, STORAGE_DTYPES

LEGACY_STORAGE = {dtype: name for name, dtype in STORAGE_DTYPES.items()
                  if name not in ("UntypedStorage",) and not name.startswith("Q")}


@dataclass
class TensorEntry:
    key: str
    storage_key: str
    dtype: str
    storage_numel: int           # in elements of dtype
    offset: int
    shape: tuple
    stride: tuple


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _text(value: str) -> bytes:
    data = value.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(data)) + data


def _int(value: int) -> bytes:
    if 0 <= value < 256:
        return b"K" + bytes([value])
    if -(2 ** 31) <= value < 2 ** 31:
        return b"J" + struct.pack("<i", value)
    data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(data)]) + data


def _int_tuple(values) -> bytes:
    return b"(" + b"".join(_int(v) for v in values) + b"t"


def _tensor(entry: TensorEntry, location: str) -> bytes:
    storage_class = LEGACY_STORAGE.get(entry.dtype)
    if storage_class is not None:
        rebuild, kind, numel = "_rebuild_tensor_v2", _global("torch", storage_class), entry.storage_numel
    else:   # new dtypes: an untyped storage counted in bytes, the dtype passed explicitly
        rebuild, kind = "_rebuild_tensor_v3", _global("torch.storage", "UntypedStorage")
        numel = entry.storage_numel * DTYPE_SIZES[entry.dtype]
    persistent_id = (b"(" + _text("storage") + kind + _text(entry.storage_key) + _text(location)
                     + _int(numel) + b"tQ")
    args = (persistent_id + _int(entry.offset) + _int_tuple(entry.shape)
            + _int_tuple(entry.stride) + b"\x89" + _global("collections", "OrderedDict")
            + b")R")
    if storage_class is None:
        args += _global("torch", entry.dtype)
    return _global("torch._utils", rebuild) + b"(" + args + b"tR"


def state_dict_pickle(entries: list[TensorEntry], location: str) -> bytes:
    body = b"".join(_text(e.key) + _tensor(e, location) for e in entries)
    return (b"\x80\x02" + _global("collections", "OrderedDict") + b")R" + b"(" + body + b"u.")
