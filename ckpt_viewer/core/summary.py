"""Totals, the per-dtype breakdown and the `inspect --json` object (DESIGN.md's contract)."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from ckpt_viewer.core import paused_gc
from ckpt_viewer.core.model import Checkpoint, TensorInfo
from ckpt_viewer.core.text import ShownOnce, bounded_json

MAX_SCALAR_TEXT = 10_000


@dataclass
class Totals:
    params: int = 0
    bytes: int = 0
    tensors: int = 0
    by_dtype: dict = field(default_factory=dict)   # dtype -> [tensor count, params, bytes]


def _leaf_tensors(tensor: TensorInfo):
    """The stored pieces of a tensor: itself, or its sparse parts."""
    return list(tensor.parts.values()) if tensor.parts else [tensor]


def totals(checkpoint: Checkpoint) -> Totals:
    """Elements and bytes, each storage counted once: tied weights and views are not doubled."""
    result = Totals()
    by_dtype = defaultdict(lambda: [0, 0, 0])
    covered: dict[int, list] = defaultdict(list)     # storage id -> element intervals
    storages = {}
    for _, tensor, node in checkpoint.tensors():
        result.tensors += 1
        by_dtype[tensor.dtype][0] += 1
        for leaf in _leaf_tensors(tensor):
            if leaf.storage is None:
                count = leaf.numel
                by_dtype[leaf.dtype][1] += count
                by_dtype[leaf.dtype][2] += leaf.nbytes
                result.params += count
                result.bytes += leaf.nbytes
                continue
            storages.setdefault(id(leaf.storage), (leaf.storage, leaf.dtype))
            covered[id(leaf.storage)].append(leaf.element_span())
    for storage_id, spans in covered.items():
        storage, dtype = storages[storage_id]
        count = _union_length(spans)
        result.params += count
        result.bytes += storage.nbytes
        by_dtype[dtype][1] += count
        by_dtype[dtype][2] += storage.nbytes
    result.by_dtype = dict(sorted(by_dtype.items(), key=lambda kv: -kv[1][2]))
    return result


def _union_length(spans) -> int:
    total, end = 0, None
    for first, last in sorted(spans):
        if end is None or first >= end:
            total += last - first
            end = last
        elif last > end:
            total += last - end
            end = last
    return total


def json_scalar(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str) and len(value) > MAX_SCALAR_TEXT:
        return value[:MAX_SCALAR_TEXT] + "..."
    return value


def _json_value(value):
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return json_scalar(value)
    return str(value)


def inspect_dict(checkpoint: Checkpoint) -> dict:
    """The object `ckpt-viewer inspect --json` prints."""
    with paused_gc():
        return _inspect_dict(checkpoint)


def _inspect_dict(checkpoint: Checkpoint) -> dict:
    total = totals(checkpoint)
    tensors = [{"key": key, "shape": list(t.shape), "dtype": t.dtype, "device": t.device,
                "nbytes": t.nbytes} for key, t, _ in checkpoint.tensors()]
    shown = ShownOnce()       # shared objects are written once, not once per reference
    optimizers = [{"key": o.key, "type": o.type,
                   "param_groups": [bounded_json(g, shown, MAX_SCALAR_TEXT) for g in o.param_groups]}
                  for o in checkpoint.optimizers]
    return {
        "path": checkpoint.path,
        "format": checkpoint.format,
        "file_bytes": checkpoint.file_bytes,
        "tensors": tensors,
        "scalars": {k: bounded_json(v, shown, MAX_SCALAR_TEXT)
                    for k, v in checkpoint.scalars().items()},
        "optimizers": optimizers,
        "unsafe_globals": list(checkpoint.unsafe_globals),
        "warnings": list(checkpoint.warnings),
        "total_params": total.params,
        "total_bytes": total.bytes,
    }
