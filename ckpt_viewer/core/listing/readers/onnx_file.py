"""ONNX models: initializers and Constant nodes, through the onnx package.

onnx.load(load_external_data=False) parses the protobuf (nothing in it runs); tensors stored
in the model are kept as their bytes, external data is read by range from the file each one
names, which must lie in the model's folder (as onnx's own loader requires)."""

from __future__ import annotations

import math
import os
from typing import Any

from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.listing import remote
from ckpt_viewer.core.listing.model import (
    DTYPE_SIZES,
    Checkpoint,
    FileSpan,
    InlineBytes,
    Storage,
    TensorInfo,
)
from ckpt_viewer.core.listing.readers.safetensors import flat_tree
from ckpt_viewer.core.listing.text import safe_text

MAX_MODEL_BYTES = 2**31  # protobuf's own limit on one message
MAX_SUBGRAPH_DEPTH = 64  # If/Loop/Scan bodies nested deeper are not walked (and said so)

# TensorProto.DataType -> torch dtype name (the sub-byte, 6-bit and string types have none)
DTYPES = {
    1: "float32",
    2: "uint8",
    3: "int8",
    4: "uint16",
    5: "int16",
    6: "int32",
    7: "int64",
    9: "bool",
    10: "float16",
    11: "float64",
    12: "uint32",
    13: "uint64",
    14: "complex64",
    15: "complex128",
    16: "bfloat16",
    17: "float8_e4m3fn",
    18: "float8_e4m3fnuz",
    19: "float8_e5m2",
    20: "float8_e5m2fnuz",
    24: "float8_e8m0fnu",
}
EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL


def _graph_tensors(
    graph: Any, named: list[tuple[str, Any]], constants: dict[str, str], depth: int
) -> int:
    """Append (name, TensorProto) of the graph's initializers and Constant nodes, and those of
    the subgraphs its nodes hold (If branches, Loop and Scan bodies: onnx runs them with their
    own initializers), to `named`; returns the number of sparse initializers met."""
    if depth > MAX_SUBGRAPH_DEPTH:
        raise CheckpointError(f"ONNX subgraphs nested more than {MAX_SUBGRAPH_DEPTH} deep")
    named.extend((t.name, t) for t in graph.initializer)
    sparse = len(graph.sparse_initializer)
    for node in graph.node:
        constant = node.op_type == "Constant" and node.domain in ("", "ai.onnx")
        for attribute in node.attribute:
            if constant and attribute.name == "value" and attribute.HasField("t") and node.output:
                named.append((node.output[0], attribute.t))
                constants[node.output[0]] = node.name
            if attribute.HasField("g"):
                sparse += _graph_tensors(attribute.g, named, constants, depth + 1)
            for subgraph in attribute.graphs:
                sparse += _graph_tensors(subgraph, named, constants, depth + 1)
    return sparse


def looks_like_onnx(path: str, head: bytes) -> bool:
    """ModelProto starts with ir_version (field 1, a varint): tag byte 0x08."""
    if head[:1] != b"\x08":
        return False
    lower = head.lower()
    return path.lower().endswith(".onnx") or b"onnx" in lower or b"pytorch" in lower


def _external_span(path: str, tensor: Any, key: str, nbytes: int) -> FileSpan:
    fields = {entry.key: entry.value for entry in tensor.external_data}
    location = fields.get("location", "")
    what = f"initializer {safe_text(key)!r}"
    parts = location.replace("\\", "/").split("/")
    if not location or location.startswith("/") or ".." in parts or ":" in location:
        raise CheckpointError(
            f"{what} names external data {safe_text(location)!r} outside the model's folder"
        )
    data_path = remote.join(remote.dirname(path), location)
    if not remote.is_remote(path):
        data_path = os.path.normpath(data_path)
    try:
        offset, length = int(fields.get("offset", 0)), int(fields.get("length", nbytes))
    except ValueError:
        raise CheckpointError(f"{what} has a non-numeric external offset or length") from None
    if length != nbytes or offset < 0:
        raise CheckpointError(
            f"{what} declares {length:,} bytes of external data at offset {offset:,}; "
            f"its shape needs {nbytes:,}"
        )
    remote.check_regular(data_path)
    if not remote.isfile(data_path):
        raise CheckpointError(f"{what}: its external data file {safe_text(location)!r} is missing")
    if offset + length > remote.getsize(data_path):
        raise CheckpointError(
            f"{what} reaches past the end of {safe_text(location)!r} (truncated file?)"
        )
    return FileSpan(data_path, offset, length)


def _tensor(path: str, tensor: Any, key: str, warnings: list[str]) -> TensorInfo | None:
    from onnx import numpy_helper

    dtype = DTYPES.get(tensor.data_type)
    if dtype is None:
        warnings.append(
            f"{safe_text(key)}: not read: ONNX type {tensor.data_type} has no torch dtype"
        )
        return None
    shape = tuple(tensor.dims)
    if any(d < 0 for d in shape):
        raise CheckpointError(f"tensor {safe_text(key)!r} has a negative dimension")
    numel = math.prod(shape)
    nbytes = numel * DTYPE_SIZES[dtype]
    source: FileSpan | InlineBytes
    if tensor.data_location == EXTERNAL:
        source = _external_span(path, tensor, key, nbytes)
    elif tensor.HasField("raw_data"):
        if len(tensor.raw_data) != nbytes:
            raise CheckpointError(
                f"tensor {safe_text(key)!r} holds {len(tensor.raw_data):,} raw bytes; "
                f"its shape {list(shape)} needs {nbytes:,}"
            )
        source = InlineBytes(tensor.raw_data)
    else:  # typed fields (float_data, int32_data...): onnx decodes them
        try:
            data = numpy_helper.to_array(tensor).tobytes()
        except (ValueError, TypeError) as exc:
            raise CheckpointError(
                f"tensor {safe_text(key)!r} cannot be decoded ({str(exc)[:80]})"
            ) from None
        source = InlineBytes(data)
    stride: list[int] = []
    step = 1
    for dim in reversed(shape):
        stride.insert(0, step)
        step *= dim
    storage = Storage(key, dtype, numel, "cpu", source)
    return TensorInfo(dtype=dtype, shape=shape, stride=tuple(stride), storage=storage)


def read(path: str) -> Checkpoint:
    try:
        import onnx
        from google.protobuf.message import DecodeError
    except ImportError:
        raise CheckpointError(
            "an ONNX model: reading it needs the onnx package (pip install onnx)"
        ) from None
    size = remote.getsize(path)
    if size > MAX_MODEL_BYTES:
        raise CheckpointError("an ONNX protobuf larger than 2 GB, which protobuf cannot hold")
    with remote.open_source(path) as f:
        raw = f.read(size)
    try:
        model = onnx.load_model_from_string(raw)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"not a valid ONNX model ({str(exc)[:80]})") from None
    del raw
    tensors, warnings = {}, []
    constants: dict[str, str] = {}
    graph = model.graph
    named: list[tuple[str, Any]] = []
    sparse = _graph_tensors(graph, named, constants, 0)
    for key, tensor in named:
        if key in tensors:
            warnings.append(f"the graph defines {safe_text(key)!r} twice; the first is listed")
            continue
        info = _tensor(path, tensor, key, warnings)
        if info is not None:
            tensors[key] = info
    if sparse:
        warnings.append(f"{sparse:,} sparse initializer(s) not listed (only dense tensors are)")
    root = flat_tree(tensors)
    metadata = {
        "ir_version": model.ir_version,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "opsets": ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in model.opset_import),
        "graph": graph.name,
        "nodes": len(graph.node),
    }
    metadata.update({f"metadata.{p.key}": p.value for p in model.metadata_props})
    checkpoint = Checkpoint(
        path=path, format="onnx", file_bytes=size, root=root, warnings=warnings, metadata=metadata
    )
    for key, _, node in checkpoint.tensors():
        if key in constants:
            node.note = f"Constant node {safe_text(constants[key])!r}"
    return checkpoint
