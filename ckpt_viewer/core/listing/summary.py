"""Totals, the per-dtype breakdown and the `inspect --json` object (README.md's Command line).

Elements are split into `model` (parameters and buffers: tensors of modules, of dicts that
hold only tensors — a state_dict, an EMA copy of one — and every tensor of safetensors and
Hugging Face files), `optimizer_state` (tensors under an optimizer's `state`) and `other`
(the rest: tensors among other values, lists of tensors, tensor hyperparameters...)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from ckpt_viewer.core import paused_gc
from ckpt_viewer.core.listing.globals import triage
from ckpt_viewer.core.listing.model import Checkpoint, Node
from ckpt_viewer.core.listing.text import WrittenOnce, bounded_json
from ckpt_viewer.core.listing.tree import BUFFER_NAMES

MAX_SCALAR_TEXT = 10_000
MODEL, OPTIMIZER_STATE, OTHER = "model", "optimizer_state", "other"
BUFFERS = "buffers"  # counted apart while totalling, then given back to MODEL
ALL_MODEL_FORMATS = {"safetensors", "hf-sharded"}


@dataclass
class Totals:
    elements: int = 0
    bytes: int = 0
    tensors: int = 0
    by_dtype: dict[str, list[int]] = field(default_factory=dict)  # [tensors, elements, bytes]
    split: dict[str, int] = field(default_factory=lambda: {MODEL: 0, OPTIMIZER_STATE: 0, OTHER: 0})
    model_buffers: int = 0  # of split[MODEL]: the elements of tensors known to be buffers


def totals(checkpoint: Checkpoint) -> Totals:
    """Elements and bytes, each storage counted once: tied weights and views are not doubled
    (a storage counts towards the split of the first tensor that uses it)."""
    result = Totals()
    by_dtype: dict[str, list[int]] = {}
    covered: dict[int, list[Any]] = {}  # storage id -> [storage, dtype, category, spans...]
    bytes_only: set[int] = set()  # storages of torchao weights' pieces: no elements
    categories = tensor_categories(checkpoint)
    split = result.split
    split[BUFFERS] = 0
    tensors = checkpoint.tensors()
    for _, tensor, node in tensors:
        entry = by_dtype.get(tensor.dtype) or _dtype_entry(by_dtype, tensor.dtype)
        entry[0] += 1
        category = categories.get(id(node), OTHER)
        if category == MODEL and is_buffer(node):
            category = BUFFERS
        if not tensor.parts and tensor.storage is not None:  # the common case, inlined
            if id(tensor.storage) in covered:
                covered[id(tensor.storage)].append(tensor.element_span())
            else:
                covered[id(tensor.storage)] = [
                    tensor.storage,
                    tensor.dtype,
                    category,
                    tensor.element_span(),
                ]
            continue
        if tensor.layout == "torchao":
            # elements are the weight's own (its numel(), what model.parameters() counts);
            # bytes are its stored pieces' (qdata, scale...), counted below with no elements
            entry[1] += tensor.numel
            result.elements += tensor.numel
            split[category] += tensor.numel
        for leaf in tensor.parts.values() if tensor.parts else (tensor,):
            storage = leaf.storage
            counted = tensor.layout != "torchao"
            if storage is None:
                count, nbytes = leaf.numel * counted, leaf.nbytes
                entry = _dtype_entry(by_dtype, leaf.dtype)
                entry[1] += count
                entry[2] += nbytes
                result.elements += count
                result.bytes += nbytes
                split[category] += count
            elif id(storage) in covered:
                covered[id(storage)].append(leaf.element_span())
            else:
                covered[id(storage)] = [storage, leaf.dtype, category, leaf.element_span()]
                if not counted:
                    bytes_only.add(id(storage))
    elements = nbytes_all = 0
    for storage, dtype, category, *spans in covered.values():
        count = spans[0][1] - spans[0][0] if len(spans) == 1 else _union_length(spans)
        count *= id(storage) not in bytes_only
        nbytes = storage.nbytes
        elements += count
        nbytes_all += nbytes
        split[category] += count
        entry = _dtype_entry(by_dtype, dtype)
        entry[1] += count
        entry[2] += nbytes
    result.model_buffers = split.pop(BUFFERS)
    split[MODEL] += result.model_buffers
    result.tensors = len(tensors)
    result.elements += elements
    result.bytes += nbytes_all
    result.by_dtype = dict(sorted(by_dtype.items(), key=lambda kv: -kv[1][2]))
    return result


def is_buffer(node: Node) -> bool:
    """Known to be a buffer: a module's `_buffers` entry, or (roles unknown: a state_dict)
    named as BatchNorm's statistics are."""
    return node.role == "buffer" or not node.role and node.name.rpartition(".")[2] in BUFFER_NAMES


def _dtype_entry(by_dtype: dict[str, list[int]], dtype: str) -> list[int]:
    """[tensors, elements, bytes] of a dtype, in the order dtypes were first met."""
    entry = by_dtype.get(dtype)
    if entry is None:
        entry = by_dtype[dtype] = [0, 0, 0]
    return entry


def tensor_categories(checkpoint: Checkpoint) -> dict[int, str]:
    """{id(tensor node): MODEL | OPTIMIZER_STATE | OTHER}; tensors left out are OTHER."""
    if checkpoint.format in ALL_MODEL_FORMATS:
        return {id(node): MODEL for _, _, node in checkpoint.tensors()}
    if checkpoint.format == "dcp":
        return {
            id(node): OPTIMIZER_STATE if _dcp_optimizer_state(key) else MODEL
            for key, _, node in checkpoint.tensors()
        }
    if checkpoint.format == "tensor_bundle":  # the reader notes optimizer slots and state
        return {
            id(node): OPTIMIZER_STATE if node.note.startswith("optimizer") else MODEL
            for _, _, node in checkpoint.tensors()
        }
    categories: dict[int, str] = {}
    stack: list[tuple[Node, str]] = [(checkpoint.root, "")]
    while stack:
        node, context = stack.pop()
        if node.kind == "optimizer":
            for child in node.children:
                if child.name == "state":
                    _mark(categories, child, OPTIMIZER_STATE)
                else:
                    stack.append((child, "optimizer"))
        elif not context and (node.kind == "module" or _is_state_dict(node)):
            _mark(categories, node, MODEL)
        else:
            stack.extend((child, context) for child in node.children)
    return categories


def _mark(categories: dict[int, str], top: Node, category: str) -> None:
    """Every tensor under top is `category` (tensor-subclass parts, `_extra_state` included)."""
    stack = [top]
    while stack:
        node = stack.pop()
        if node.kind == "tensor":
            categories[id(node)] = category
        else:
            stack.extend(node.children)


def _is_state_dict(node: Node) -> bool:
    """A dict of tensors (tensor-subclass objects and `_extra_state` entries allowed)."""
    if node.kind != "dict" or not any(c.kind == "tensor" for c in node.children):
        return False
    return all(
        c.kind in ("tensor", "object") or c.name.endswith("_extra_state") for c in node.children
    )


def _dcp_optimizer_state(key: str) -> bool:
    """DCP flattens an optimizer's state dict to `<optim...>.state.<param>.<entry>`."""
    return any(
        part == "state" and "optim" in before.lower() for before, part in pairwise(key.split("."))
    )


def _union_length(spans: Iterable[tuple[int, int]]) -> int:
    total, end = 0, None
    for first, last in sorted(spans):
        if end is None or first >= end:
            total += last - first
            end = last
        elif last > end:
            total += last - end
            end = last
    return total


def inspect_dict(checkpoint: Checkpoint) -> dict[str, Any]:
    """The object `ckpt-viewer inspect --json` prints."""
    with paused_gc():
        return _inspect_dict(checkpoint)


def _inspect_dict(checkpoint: Checkpoint) -> dict[str, Any]:
    total = totals(checkpoint)
    tensors = [
        {
            "key": key,
            "shape": list(t.shape),
            "dtype": t.dtype,
            "device": t.device,
            "nbytes": t.nbytes,
        }
        for key, t, _ in checkpoint.tensors()
    ]
    written = WrittenOnce()  # shared objects are written once, not once per reference
    optimizers = [
        {
            "key": o.key,
            "type": o.type,
            "param_groups": [bounded_json(g, written, MAX_SCALAR_TEXT) for g in o.param_groups],
        }
        for o in checkpoint.optimizers
    ]
    return {
        "path": checkpoint.path,
        "format": checkpoint.format,
        "file_bytes": checkpoint.file_bytes,
        "tensors": tensors,
        "scalars": {
            k: bounded_json(v, written, MAX_SCALAR_TEXT) for k, v in checkpoint.scalars().items()
        },
        "optimizers": optimizers,
        "metadata": {
            k: bounded_json(v, written, MAX_SCALAR_TEXT) for k, v in checkpoint.metadata.items()
        },
        "unsafe_globals": list(checkpoint.unsafe_globals),
        "globals": [{"name": u.name, "category": u.category} for u in triage(checkpoint)],
        "warnings": list(checkpoint.warnings)
        + [
            f"torch.load(weights_only=True) would refuse this file: {why}"
            for why in checkpoint.refusals
        ],
        "params": dict(total.split),
        "total_params": total.elements,
        "total_bytes": total.bytes,
    }


def model_roots(checkpoint: Checkpoint) -> list[Node]:
    """The top-most modules and state dicts outside optimizers: what load_state_dict takes."""
    if checkpoint.format in ALL_MODEL_FORMATS:
        return [checkpoint.root]
    roots, stack = [], [checkpoint.root]
    while stack:
        node = stack.pop()
        if node.kind == "optimizer":
            continue
        if node.kind == "module" or _is_state_dict(node):
            roots.append(node)
        else:
            stack.extend(reversed(node.children))
    return roots


def suggested_root(checkpoint: Checkpoint, keys: list[str]) -> str:
    """The state dict all `keys` lie in, as export's root (so `model_state_dict.0.weight` is
    written as `0.weight` and loads); "" when they span several or none."""
    for node in model_roots(checkpoint):
        prefix = f"{node.key}." if node.key else ""
        if keys and all(key.startswith(prefix) for key in keys):
            return node.key
    return ""


_LEADING = {"epoch", "global_step", "step", "iteration", "iter"}
_METRIC_WORDS = {
    "loss",
    "acc",
    "accuracy",
    "metric",
    "metrics",
    "score",
    "best",
    "val",
    "perplexity",
    "ppl",
    "bleu",
    "f1",
    "auc",
    "wer",
    "top1",
    "top5",
}
_HYPER_ROOTS = {"hyper_parameters", "hparams", "hyperparameters", "config", "args", "cfg"}
_HYPER_NAMES = {"lr", "learning_rate", "batch_size", "seed", "weight_decay", "momentum"}
_COUNTER_WORDS = ("loops", "_progress")


def scalar_importance(key: str) -> int:
    """0 epoch/step, 1 metrics, 2 hyperparameters, 3 the rest, 4 loop counters (a Lightning
    file has ~100 of them before anything a person looks for)."""
    lowered = key.lower()
    parts = lowered.split(".")
    if any(word in lowered for word in _COUNTER_WORDS):
        return 4
    if len(parts) == 1 and lowered in _LEADING:
        return 0
    if _METRIC_WORDS & set(re.split(r"[^a-z0-9]+", parts[-1])):
        return 1
    if parts[0] in _HYPER_ROOTS or parts[-1] in _HYPER_NAMES:
        return 2
    return 3


def scalars_by_importance(scalars: dict[str, object]) -> list[tuple[str, object]]:
    """The scalars, most telling first; file order within each group."""
    return sorted(scalars.items(), key=lambda item: scalar_importance(item[0]))
