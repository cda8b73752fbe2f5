"""safetensors: an 8-byte header length, a JSON header, then raw tensor bytes.

The header is parsed here (it is tiny, and listing must not import torch); values and writes go
through the safetensors library."""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.listing.model import (
    DTYPE_SIZES,
    Checkpoint,
    FileSpan,
    Node,
    Storage,
    TensorInfo,
    contiguous_strides,
)
from ckpt_viewer.core.listing.remote import getsize, open_source

MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit
MAX_JSON_DEPTH = 127  # serde_json's recursion limit, as the library parses it
USIZE_MAX = 2**64 - 1

# what the safetensors library (0.8) loads into torch; C128 is not one of them, and F6_E2M3 /
# F6_E3M2 are parsed but never loaded ("Dtype not understood")
SAFETENSORS_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "F8_E8M0": "float8_e8m0fnu",
    "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "F4": "float4_e2m1fn_x2",
    "C64": "complex64",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U64": "uint64",
    "U32": "uint32",
    "U16": "uint16",
    "U8": "uint8",
    "BOOL": "bool",
}
TORCH_TO_SAFETENSORS = {v: k for k, v in SAFETENSORS_DTYPES.items()}
# F4's shape counts 4-bit values; torch's float4_e2m1fn_x2 packs two in each element, so the
# library halves the last dimension (and refuses an odd one)
PAIRED = {"F4"}


def torch_shape(key: str, dtype: str, shape: list[int]) -> tuple[int, ...]:
    """The shape torch gets for a safetensors entry's shape, as the library converts it."""
    if dtype not in PAIRED:
        return tuple(shape)
    if not shape or shape[-1] % 2:
        raise CheckpointError(
            f"safetensors entry {key!r} is {dtype} with shape {shape}: its "
            "last dimension is not even, so it has no torch shape (the "
            "library refuses it too)"
        )
    return (*shape[:-1], shape[-1] // 2)


def safetensors_shape(dtype: str, shape: tuple[int, ...]) -> list[int]:
    """The shape written in a safetensors header for a torch tensor of this dtype and shape."""
    if TORCH_TO_SAFETENSORS[dtype] in PAIRED:
        return [*shape[:-1], shape[-1] * 2]
    return list(shape)


JSON_SPACE = b" \t\n\r"


def looks_like_safetensors(head: bytes) -> bool:
    """A JSON object after the length field; a lying length is reported by read_header."""
    return (
        len(head) >= 9
        and head[8:].lstrip(JSON_SPACE)[:1] == b"{"
        and struct.unpack("<Q", head[:8])[0] >= 2
    )


class _Object(dict[str, Any]):
    """A JSON object that remembers which of its keys appeared more than once."""

    repeated: tuple[str, ...] = ()
    shadowed: tuple[
        tuple[str, Any], ...
    ] = ()  # (key, value) of entries a later one with the same key hides


def _object(pairs: list[tuple[str, Any]]) -> _Object:
    out = _Object()
    repeated: list[str] = []
    shadowed: list[tuple[str, Any]] = []
    for key, value in pairs:
        if key in out:
            repeated.append(key)
            shadowed.append((key, out[key]))
        out[key] = value  # the last one wins, as in the library
    out.repeated, out.shadowed = tuple(repeated), tuple(shadowed)
    return out


class _NotUsize(float):
    """A JSON integer the library's usize fields refuse (negative, -0, or past 2**64 - 1)."""


def _integer(text: str) -> int | _NotUsize:
    value = int(text)
    return _NotUsize(0) if text.startswith("-") or value > USIZE_MAX else value


def _constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _too_deep(value: Any) -> bool:
    """Arrays and objects nested deeper than the library's parser goes (no recursion here)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def read_header(path: str) -> tuple[_Object, int, int]:
    """(header dict, data start offset, file size): the checks of the safetensors library's
    own reader (tensor.rs read_metadata + validate), so a file opens here iff it loads there."""
    with open_source(path) as f:
        size = f.size
        raw = f.read(8)
        if len(raw) < 8:
            raise CheckpointError("safetensors file is shorter than its 8-byte header length")
        (length,) = struct.unpack("<Q", raw)
        if length > MAX_HEADER_BYTES or length > size - 8:
            raise CheckpointError(
                f"safetensors header claims {length:,} bytes but the file has "
                f"{size - 8:,} after the length field"
            )
        encoded = f.read(length)
    try:
        text = encoded.decode("utf-8")
    except UnicodeDecodeError:
        raise CheckpointError("safetensors header is not valid UTF-8") from None
    header = _parse(text)
    data_bytes = _check_entries(header)
    if 8 + length + data_bytes != size:
        raise CheckpointError(
            f"safetensors tensors cover {data_bytes:,} bytes but the data "
            f"section has {size - 8 - length:,} (the library refuses a file "
            "its tensors do not exactly cover)"
        )
    return header, 8 + length, size


def _parse(text: str) -> _Object:
    """The header as strict JSON: no NaN/Infinity, no lone surrogates, nesting within the
    library's limit, an object whose tensor entries are checked by _check_entries."""
    try:
        header = json.loads(
            text, object_pairs_hook=_object, parse_int=_integer, parse_constant=_constant
        )
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, _Object):  # what the parser makes of every JSON object
        raise CheckpointError("safetensors header is not a JSON object")
    if _too_deep(header):
        raise CheckpointError(
            f"safetensors header nests deeper than {MAX_JSON_DEPTH} levels, "
            "which the library's JSON parser refuses"
        )
    if re.search(r"\\u[dD][89a-fA-F]", text) and _has_lone_surrogate(header):
        raise CheckpointError("safetensors header holds an unpaired surrogate escape")
    if "__metadata__" in header.repeated:
        raise CheckpointError("safetensors header repeats __metadata__")
    metadata = header.get("__metadata__")
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise CheckpointError("safetensors __metadata__ is not a map of strings to strings")
    return header


def _has_lone_surrogate(value: Any) -> bool:
    """json.loads turns an escaped \\ud800 without its pair into a lone surrogate; serde
    refuses it."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if re.search("[\ud800-\udfff]", item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _entry_fields(key: str, entry: Any) -> Sequence[Any]:
    """(dtype, shape, data_offsets) of one tensor entry: an object, or (as serde also takes
    it) a list of the three in order."""
    if isinstance(entry, list) and len(entry) == 3:
        return entry
    if not isinstance(entry, _Object):
        raise CheckpointError(f"safetensors entry {key!r} is not an object")
    for field in ("dtype", "shape", "data_offsets"):
        if field in entry.repeated:
            raise CheckpointError(f"safetensors entry {key!r} repeats {field}")
        if field not in entry:
            raise CheckpointError(f"safetensors entry {key!r} has no {field}")
    return entry["dtype"], entry["shape"], entry["data_offsets"]


def _usize(value: Any) -> bool:
    return type(value) is int


def _entry_types(key: str, entry: Any) -> tuple[str, list[int], list[int]]:
    dtype, shape, offsets = _entry_fields(key, entry)
    if dtype not in SAFETENSORS_DTYPES:
        raise CheckpointError(f"safetensors entry {key!r} has unknown dtype {dtype!r:.20}")
    if not (isinstance(shape, list) and all(_usize(d) for d in shape)):
        raise CheckpointError(f"safetensors entry {key!r} has a malformed shape")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_usize(o) for o in offsets)):
        raise CheckpointError(f"safetensors entry {key!r} has malformed data_offsets")
    return dtype, shape, offsets


def _check_entries(header: _Object) -> int:
    """Every tensor entry checked; returns the bytes the tensors cover. As in the library,
    sorted by offsets they must tile the data section from 0 with no gap and no overlap."""
    spans = []
    for key, entry in header.shadowed:  # the library parses a hidden entry too
        if key != "__metadata__":
            _entry_types(key, entry)
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        dtype, shape, offsets = _entry_types(key, entry)
        spans.append((offsets[0], offsets[1], key, dtype, shape))
    spans.sort(key=lambda span: (span[0], span[1]))
    end = 0
    for begin, stop, key, dtype, shape in spans:
        if begin != end or stop < begin:
            raise CheckpointError(
                f"safetensors entry {key!r} starts at byte {begin:,} of the "
                f"data section, not at {end:,} where the previous one ends "
                "(gap or overlap)"
            )
        end = stop
        needed = 1
        for dim in shape:  # the library's checked multiplication
            needed *= dim
            if needed > USIZE_MAX:
                raise CheckpointError(f"safetensors entry {key!r} has a shape too large to address")
        if dtype in PAIRED:
            if needed % 2:
                raise CheckpointError(
                    f"safetensors entry {key!r} is {dtype} with an odd "
                    "number of values: it does not end on a byte boundary"
                )
            needed //= 2
        else:
            needed *= DTYPE_SIZES[SAFETENSORS_DTYPES[dtype]]
        if needed > USIZE_MAX:
            raise CheckpointError(f"safetensors entry {key!r} has a shape too large to address")
        if stop - begin != needed:
            raise CheckpointError(
                f"safetensors entry {key!r} spans {stop - begin:,} "
                f"bytes but its shape needs {needed:,}"
            )
    return end


def tensor_infos(path: str) -> tuple[dict[str, TensorInfo], dict[str, Any], list[str]]:
    """{key: TensorInfo}, metadata and warnings; shared by the sharded-index reader."""
    header, data_start, _ = read_header(path)
    warnings = [
        f"safetensors header repeats key {k!r}; the last entry silently wins"
        for k in header.repeated
    ]
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        metadata = {"__metadata__": str(metadata)}
    tensors: dict[str, TensorInfo] = {}
    for key, entry in header.items():
        dtype, shape, (begin, end) = _entry_fields(key, entry)
        dtype, shape = SAFETENSORS_DTYPES[dtype], torch_shape(key, dtype, shape)
        storage = Storage(
            key, dtype, math.prod(shape), "cpu", FileSpan(path, data_start + begin, end - begin)
        )
        tensors[key] = TensorInfo(
            dtype=dtype, shape=shape, stride=contiguous_strides(shape), storage=storage
        )
    return tensors, metadata, warnings


MAX_FOLDER_DEPTH = 1000  # deeper dotted segments stay in the leaf's name


def flat_tree(tensors: Mapping[str, TensorInfo]) -> Node:
    """A tree from flat dotted names (a.b.weight -> a / b / weight); a name of thousands of
    segments nests MAX_FOLDER_DEPTH folders deep, the rest of it is the leaf's name."""
    root = Node(name="", kind="dict", type_name="dict")
    folders: dict[str, Node] = {"": root}
    for key, info in tensors.items():
        parent_key, _, leaf = key.rpartition(".")
        if parent_key.count(".") >= MAX_FOLDER_DEPTH:
            segments = key.split(".")
            parent_key = ".".join(segments[:MAX_FOLDER_DEPTH])
            leaf = ".".join(segments[MAX_FOLDER_DEPTH:])
        parent = folders.get(parent_key) or _folder(folders, parent_key)
        parent.children.append(
            Node(name=leaf, kind="tensor", key=key, tensor=info, type_name="Tensor")
        )
    return root


def _folder(folders: dict[str, Node], key: str) -> Node:
    """The folder for a dotted key, creating it and any missing ancestors (no recursion)."""
    missing = []
    while key not in folders:
        missing.append(key)
        key = key.rpartition(".")[0]
    node = folders[key]
    for key in reversed(missing):
        child = Node(name=key.rpartition(".")[2], kind="dict", key=key, type_name="group")
        node.children.append(child)
        folders[key] = node = child
    return node


def read(path: str) -> Checkpoint:
    tensors, metadata, warnings = tensor_infos(path)
    return Checkpoint(
        path=path,
        format="safetensors",
        file_bytes=getsize(path),
        root=flat_tree(tensors),
        warnings=warnings,
        metadata={f"metadata.{k}": v for k, v in metadata.items()},
    )
