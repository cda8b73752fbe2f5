"""safetensors: an 8-byte header length, a JSON header, then raw tensor bytes.

The header is parsed here (it is tiny, and listing must not import torch); values and writes go
through the safetensors library."""

from __future__ import annotations

import json
import math
import os
import struct

from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.model import DTYPE_SIZES, Checkpoint, FileSpan, Node, Storage, TensorInfo

MAX_HEADER_BYTES = 100_000_000   # the safetensors library's own limit

SAFETENSORS_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "F8_E8M0": "float8_e8m0fnu",
    "C64": "complex64", "C128": "complex128",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
    "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
}
TORCH_TO_SAFETENSORS = {v: k for k, v in SAFETENSORS_DTYPES.items()}


def looks_like_safetensors(head: bytes) -> bool:
    """A JSON object after the length field; a lying length is reported by read_header."""
    return len(head) >= 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] >= 2


def read_header(path: str) -> tuple[dict, int, int]:
    """(header dict, data start offset, file size); every entry checked."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        raw = f.read(8)
        if len(raw) < 8:
            raise CheckpointError("safetensors file is shorter than its 8-byte header length")
        (length,) = struct.unpack("<Q", raw)
        if length > MAX_HEADER_BYTES or length > size - 8:
            raise CheckpointError(f"safetensors header claims {length:,} bytes but the file has "
                                  f"{size - 8:,} after the length field")
        text = f.read(length)
    duplicates = []

    def no_duplicates(pairs):
        seen = {}
        for key, value in pairs:
            if key in seen:
                duplicates.append(key)
            seen[key] = value
        return seen

    try:
        header = json.loads(text.decode("utf-8"), object_pairs_hook=no_duplicates)
    except UnicodeDecodeError:
        raise CheckpointError("safetensors header is not valid UTF-8") from None
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError("safetensors header is not a JSON object")
    header["__duplicates__"] = duplicates
    _check_entries(header, size - 8 - length)
    return header, 8 + length, size


def _check_entries(header: dict, data_bytes: int):
    spans = []
    for key, entry in header.items():
        if key in ("__metadata__", "__duplicates__"):
            continue
        if not isinstance(entry, dict):
            raise CheckpointError(f"safetensors entry {key!r} is not an object")
        dtype = entry.get("dtype")
        shape = entry.get("shape")
        offsets = entry.get("data_offsets")
        if dtype not in SAFETENSORS_DTYPES:
            raise CheckpointError(f"safetensors entry {key!r} has unknown dtype {dtype!r:.20}")
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            raise CheckpointError(f"safetensors entry {key!r} has a malformed shape")
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(type(o) is int for o in offsets) and 0 <= offsets[0] <= offsets[1]):
            raise CheckpointError(f"safetensors entry {key!r} has malformed data_offsets")
        needed = math.prod(shape) * DTYPE_SIZES[SAFETENSORS_DTYPES[dtype]]
        if offsets[1] - offsets[0] != needed:
            raise CheckpointError(f"safetensors entry {key!r} spans {offsets[1] - offsets[0]:,} "
                                  f"bytes but its shape needs {needed:,}")
        if offsets[1] > data_bytes:
            raise CheckpointError(f"safetensors entry {key!r} ends at byte {offsets[1]:,} of a "
                                  f"{data_bytes:,}-byte data section (truncated?)")
        spans.append((offsets[0], offsets[1], key))
    spans.sort()
    for (b0, e0, k0), (b1, e1, k1) in zip(spans, spans[1:]):
        if b1 < e0 and e1 > b1:
            raise CheckpointError(f"safetensors entries {k0!r} and {k1!r} overlap")


def tensor_infos(path: str) -> tuple[dict, dict, list]:
    """{key: TensorInfo}, metadata and warnings; shared by the sharded-index reader."""
    header, data_start, _ = read_header(path)
    warnings = [f"safetensors header repeats key {k!r}; the last entry silently wins"
                for k in header.pop("__duplicates__")]
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        metadata = {"__metadata__": str(metadata)}
    tensors = {}
    for key, entry in header.items():
        dtype = SAFETENSORS_DTYPES[entry["dtype"]]
        begin, end = entry["data_offsets"]
        shape = tuple(entry["shape"])
        storage = Storage(key, dtype, math.prod(shape), "cpu",
                          FileSpan(path, data_start + begin, end - begin))
        stride, step = [], 1
        for dim in reversed(shape):
            stride.insert(0, step)
            step *= dim
        tensors[key] = TensorInfo(dtype=dtype, shape=shape, stride=tuple(stride), storage=storage)
    return tensors, metadata, warnings


MAX_FOLDER_DEPTH = 1000     # deeper dotted segments stay in the leaf's name


def flat_tree(tensors: dict) -> Node:
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
        parent.children.append(Node(name=leaf, kind="tensor", key=key, tensor=info,
                                    type_name="Tensor"))
    return root


def _folder(folders: dict, key: str) -> Node:
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
    return Checkpoint(path=path, format="safetensors", file_bytes=os.path.getsize(path),
                      root=flat_tree(tensors), warnings=warnings,
                      metadata={f"metadata.{k}": v for k, v in metadata.items()})
