"""Recognise optimizer state dicts, their hyperparameters, and which parameter each state is for.

Parameter names are given only when they are certain:
1. `param_names` in the param_groups (torch >= 2.5 saves them for an optimizer built from
   `named_parameters()`);
2. otherwise the model in the same file, when exactly one mapping fits. The model's parameters
   are the float tensors of one subtree outside every optimizer, in file (state_dict) order, less
   buffers (by role or name) and second copies of tied tensors; their count must equal the
   number of parameter ids of all optimizers in the file together. Each param group is a block
   of consecutive ids (torch numbers a group's params in order) taken to list its parameters in
   the model's order, as `model.parameters()` and filters of it do; the blocks, in some order,
   laid end to end must cover the model's parameters with every state shape (exp_avg,
   momentum_buffer...) equal to its parameter's shape. Parameters without state (frozen, never
   stepped) are not checked. If no order fits, or more than one (interchangeable groups or
   optimizers); if two subtrees fit with different names; or if the search would take more
   than linear time: ids. Frozen parameters left out of every optimizer are provable only in
   a pickled module, whose Parameters keep requires_grad.
3. otherwise ids."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.listing.model import (
    DTYPE_SIZES,
    FLOAT_DTYPES,
    Checkpoint,
    FileSpan,
    InlineBytes,
    Node,
    TensorInfo,
    ZipMember,
    iter_nodes,
)
from ckpt_viewer.core.listing.readers.zip_directory import data_offset, read_member
from ckpt_viewer.core.listing.remote import is_remote, open_source
from ckpt_viewer.core.listing.tree import BUFFER_NAMES

# Each torch.optim optimizer's param_group keys (torch 2.13; Adam and AdamW share theirs).
_COMMON = {"lr", "maximize", "foreach", "differentiable", "capturable", "weight_decay", "eps"}
OPTIMIZER_KEYS = {
    "ASGD": _COMMON - {"eps"} | {"alpha", "lambd", "t0"},
    "Adadelta": _COMMON | {"rho"},
    "Adafactor": {"beta2_decay", "d", "eps", "foreach", "lr", "maximize", "weight_decay"},
    "Adagrad": _COMMON - {"capturable"} | {"fused", "initial_accumulator_value", "lr_decay"},
    "Adam": _COMMON | {"amsgrad", "betas", "decoupled_weight_decay", "fused"},
    "Adamax": _COMMON | {"betas"},
    "LBFGS": {
        "history_size",
        "line_search_fn",
        "lr",
        "max_eval",
        "max_iter",
        "tolerance_change",
        "tolerance_grad",
    },
    "Muon": {
        "adjust_lr_fn",
        "eps",
        "lr",
        "momentum",
        "nesterov",
        "ns_coefficients",
        "ns_steps",
        "weight_decay",
    },
    "NAdam": _COMMON | {"betas", "decoupled_weight_decay", "momentum_decay"},
    "RAdam": _COMMON | {"betas", "decoupled_weight_decay"},
    "RMSprop": _COMMON | {"alpha", "centered", "momentum"},
    "Rprop": _COMMON - {"eps", "weight_decay"} | {"etas", "step_sizes"},
    "SGD": _COMMON - {"eps", "capturable"} | {"dampening", "fused", "momentum", "nesterov"},
    "SparseAdam": {"betas", "eps", "lr", "maximize"},
}
# keys others add to a group: the names of its params, an LR scheduler's first lr
ADDED_GROUP_KEYS = {"params", "param_names", "initial_lr"}
SCHEDULER_FIELDS = {"last_epoch", "base_lrs"}
# State entries shaped like their parameter, in torch's optimizers.
PER_ELEMENT_STATE = {
    "exp_avg",
    "exp_avg_sq",
    "max_exp_avg_sq",
    "momentum_buffer",
    "square_avg",
    "grad_avg",
    "acc_delta",
    "sum",
    "ax",
    "prev",
    "step_size",
    "exp_inf",
}
PARAMETER_DTYPES = FLOAT_DTYPES | {"complex32", "complex64", "complex128"}
CONTAINERS = ("dict", "list", "module", "object")
MAX_BLOCKS = 64  # param groups of all optimizers: more are never provable by shape alone
MAX_PLAIN_DEPTH = 64
MAX_SCALAR_READS = 256  # 0-d tensor hyperparameters read per file (each is one small read)
SCALAR_FORMATS = {
    "float64": "d",
    "float32": "f",
    "float16": "e",
    "int64": "q",
    "int32": "i",
    "int16": "h",
    "int8": "b",
    "uint8": "B",
    "bool": "?",
}
# a parameter's per-element state shape: None without such state, False when entries disagree
Shape = tuple[int, ...] | Literal[False] | None

NAMES_FROM_PARAM_NAMES = "param_names saved with the optimizer"


@dataclass
class OptimizerInfo:
    key: str
    type: str | None
    param_groups: list[dict[str, Any]]  # [{hyperparameter: value, ..., "params": [name or id]}]
    state: dict[str, Node] = field(default_factory=dict)  # {name or id: that parameter's state}
    names_source: str = ""  # which rule gave the names; "" when ids are shown


@dataclass
class _Optimizer:
    """One optimizer node, read: its groups, flat param ids, and state by id."""

    node: Node
    groups: list[dict[str, Any]]
    group_ids: list[list[str]]  # [[id as text, ...] per group]
    states: dict[str, Node]  # {id as text: state Node}
    names: list[str] | None = None  # from param_names
    shapes: list[Shape] = field(
        default_factory=list
    )  # per flat id: state shape or None (unchecked)
    matchable: bool = True  # fit for rule 2 (ids distinct, state consistent)

    @property
    def ids(self) -> list[str]:
        return [pid for ids in self.group_ids for pid in ids]


def plain(node: Node, depth: int = 0, reads: list[int] | None = None) -> Any:
    """A small subtree back as Python data (hyperparameter values, param id lists). With
    `reads` ([how many more]), a 0-d tensor (lr=torch.tensor(0.01)) is read to its value."""
    if depth > MAX_PLAIN_DEPTH:
        return "..."
    if node.kind == "list":
        values = [plain(c, depth + 1, reads) for c in node.children]
        return tuple(values) if node.type_name == "tuple" else values
    if node.kind == "dict":
        return {c.name: plain(c, depth + 1, reads) for c in node.children}
    tensor = node.tensor
    if tensor is not None:
        if reads and reads[0] > 0 and not tensor.shape:
            reads[0] -= 1
            value = tensor_scalar(tensor)
            if value is not None:
                return value
        return f"tensor{list(tensor.shape)}"
    return node.value


def tensor_scalar(tensor: TensorInfo) -> bool | int | float | None:
    """The value of a one-element tensor of a plain dtype, read from its few bytes (None when
    it cannot be read so: another layout, a large compressed record, a read error)."""
    storage = tensor.storage
    fmt = SCALAR_FORMATS.get(tensor.dtype)
    if (
        fmt is None
        or storage is None
        or storage.dtype != tensor.dtype
        or tensor.numel != 1
        or tensor.layout != "strided"
        or tensor.parts
        or tensor.neg
        or tensor.conj
        or not 0 <= tensor.offset < storage.numel
    ):
        return None
    size, source = DTYPE_SIZES[tensor.dtype], storage.source
    start = tensor.offset * size
    if is_remote(getattr(source, "path", None)):  # a request each, while the file opens
        return None
    try:
        if isinstance(source, InlineBytes):
            raw = source.data[start : start + size]
        elif isinstance(source, ZipMember) and source.compress_type != 0:
            raw = read_member(source, limit=1 << 16)[start : start + size]
        elif isinstance(source, (ZipMember, FileSpan)):
            base = data_offset(source) if isinstance(source, ZipMember) else source.offset
            with open_source(source.path) as f:
                f.seek(base + start)
                raw = f.read(size)
        else:
            return None
    except (CheckpointError, OSError):
        return None
    if len(raw) != size:
        return None
    order = ">" if storage.byteorder == "big" else "<"
    value: bool | int | float = struct.unpack(order + fmt, raw)[0]
    if fmt in "fe" and value == value and abs(value) != float("inf"):
        for digits in range(1, 10):  # the shortest decimal that is this float32/16: 0.01
            shortest = float(f"{value:.{digits}g}")
            if struct.pack(order + fmt, shortest) == raw:
                return shortest
    return value


def guess_type(group: dict[str, Any]) -> str | None:
    """The torch.optim class whose group keys these are: the one with exactly these keys, or
    (a file from an older torch, with fewer keys) the only one having them all; else None.
    Adam and AdamW differ only in decoupled_weight_decay's value."""
    keys = set(group) - ADDED_GROUP_KEYS
    exact = [name for name, known in OPTIMIZER_KEYS.items() if keys == known]
    found = exact or [name for name, known in OPTIMIZER_KEYS.items() if keys <= known]
    if found != ["Adam"]:
        return found[0] if len(found) == 1 else None
    decoupled = group.get("decoupled_weight_decay")
    return {True: "AdamW", False: "Adam"}.get(decoupled) if type(decoupled) is bool else None


def find_optimizers(checkpoint: Checkpoint) -> list[OptimizerInfo]:
    nodes = checkpoint.optimizer_nodes
    if nodes is None:
        nodes = [n for n in iter_nodes(checkpoint.root) if n.kind == "optimizer"]
    reads = [MAX_SCALAR_READS]
    optimizers = [_read(node, reads) for node in nodes]
    matched, where = None, ""
    if any(o.names is None for o in optimizers):
        matched, where = names_from_model(checkpoint.root, optimizers)
    infos = []
    for index, optimizer in enumerate(optimizers):
        if optimizer.names is not None:
            infos.append(_describe(optimizer, optimizer.names, NAMES_FROM_PARAM_NAMES))
        elif matched is not None:
            infos.append(
                _describe(
                    optimizer,
                    matched[index],
                    f"matched to the model parameters at {where} (same count "
                    "and order, every state shape equal)",
                )
            )
        else:
            infos.append(_describe(optimizer, None, ""))
    return infos


def _child(node: Node, name: str) -> Node | None:
    return next((c for c in node.children if c.name == name), None)


def _read(node: Node, reads: list[int]) -> _Optimizer:
    groups_node = _child(node, "param_groups")
    groups = [plain(g, reads=reads) for g in groups_node.children] if groups_node else []
    groups = [g if isinstance(g, dict) else {} for g in groups]
    state_node = _child(node, "state")
    states = {c.name: c for c in state_node.children} if state_node else {}
    group_ids: list[list[str]] = []
    names: list[str] | None = []
    matchable = True
    for g in groups:
        params = g.get("params")
        if not isinstance(params, (list, tuple)):
            params, matchable = [], False
        group_ids.append([str(p) for p in params])
        group_names = g.get("param_names")
        if (
            names is not None
            and isinstance(group_names, (list, tuple))
            and len(group_names) == len(params)
        ):
            names.extend(str(n) for n in group_names)
        else:
            names = None
    optimizer = _Optimizer(node, groups, group_ids, states, names if groups else None)
    ids = optimizer.ids
    optimizer.shapes = [_state_shape(states.get(pid)) for pid in ids]
    optimizer.matchable = (
        matchable
        and len(set(ids)) == len(ids)
        and set(states) <= set(ids)
        and False not in optimizer.shapes
    )
    return optimizer


def _state_shape(state: Node | None) -> Shape:
    """The shape of a parameter's per-element state; None if it has none, False if the
    entries disagree (no parameter can have two shapes)."""
    shapes = {
        tuple(child.tensor.shape)
        for child in (state.children if state else ())
        if child.tensor is not None and child.name in PER_ELEMENT_STATE
    }
    if len(shapes) > 1:
        return False
    return next(iter(shapes), None)


STATE_OF = "state of "  # a state entry's note, before its parameter's name


def state_parameters(checkpoint: Checkpoint) -> dict[str, str]:
    """{optimizer state tensor key: its parameter's name} for the state entries whose
    parameter is proven (those _describe noted; the tree labels the same entries)."""
    names: dict[str, str] = {}
    for optimizer in checkpoint.optimizers:
        for state in optimizer.state.values():
            if state.note.startswith(STATE_OF):
                for child in state.children:
                    if child.kind == "tensor":
                        names[child.key] = state.note[len(STATE_OF) :]
    return names


def _describe(optimizer: _Optimizer, names: list[str] | None, source: str) -> OptimizerInfo:
    mapping = dict(zip(optimizer.ids, names)) if names is not None else {}
    for g, ids in zip(optimizer.groups, optimizer.group_ids):
        if "params" in g and isinstance(g["params"], (list, tuple)):
            g["params"] = [mapping.get(pid, p) for pid, p in zip(ids, g["params"])]
    for pid, state in optimizer.states.items():
        if pid in mapping:
            state.note = STATE_OF + str(mapping[pid])
    groups = optimizer.groups
    return OptimizerInfo(
        key=optimizer.node.key,
        type=guess_type(groups[0]) if groups else None,
        param_groups=groups,
        state={mapping.get(pid, pid): s for pid, s in optimizer.states.items()},
        names_source=source if names is not None else "",
    )


# --- rule 2: the model in the same file -------------------------------------------------------


def names_from_model(
    root: Node, optimizers: list[_Optimizer]
) -> tuple[list[list[str]] | None, str]:
    """Names for every optimizer (a list per optimizer, in its id order) and the key of the
    model they come from; (None, "") unless exactly one mapping fits."""
    if not optimizers or not all(o.matchable for o in optimizers):
        return None, ""
    blocks = [
        (index, start, shapes)
        for index, o in enumerate(optimizers)
        for start, shapes in _group_blocks(o)
        if shapes
    ]
    total = sum(len(shapes) for _, _, shapes in blocks)
    if not blocks or len(blocks) > MAX_BLOCKS:
        return None, ""
    candidates = _model_candidates(root, total)
    budget = [8 * sum(len(params) for _, params in candidates) + 16 * len(blocks) ** 2 + 4096]
    found, where = None, ""
    for name_root, params in candidates:
        orders = _tilings(blocks, params, budget)
        if orders is None or len(orders) > 1:
            return None, ""  # unsure, or several orders fit
        if not orders:
            continue
        names = [[""] * len(o.ids) for o in optimizers]
        position = 0
        for block in orders[0]:
            index, start, shapes = blocks[block]
            for offset in range(len(shapes)):
                names[index][start + offset] = params[position + offset][0]
            position += len(shapes)
        if found is not None and names != found:
            return None, ""  # two models fit with different names
        if found is None:
            found, where = names, name_root or "the top level"
    return found, where


def _group_blocks(optimizer: _Optimizer) -> Iterator[tuple[int, list[Shape]]]:
    """(first flat index, state shapes) of each param group."""
    start = 0
    for ids in optimizer.group_ids:
        yield start, optimizer.shapes[start : start + len(ids)]
        start += len(ids)


def _tilings(
    blocks: list[tuple[int, int, list[Shape]]],
    params: list[tuple[str, tuple[int, ...]]],
    budget: list[int],
) -> list[list[int]] | None:
    """Orders of the blocks that, laid end to end, fit params' shapes (at most two are looked
    for); None when the shared budget of steps runs out."""
    found: list[list[int]] = []
    order: list[int] = []
    used = [False] * len(blocks)

    def fits(shapes: list[Shape], position: int) -> bool:
        budget[0] -= len(shapes)
        return all(
            shape is None or shape == params[position + i][1] for i, shape in enumerate(shapes)
        )

    def search(position: int) -> bool:  # False: out of budget
        if position == len(params):
            found.append(list(order))
            return True
        for index, (_, _, shapes) in enumerate(blocks):
            budget[0] -= 1
            if budget[0] < 0:
                return False
            if used[index] or position + len(shapes) > len(params) or not fits(shapes, position):
                continue
            used[index] = True
            order.append(index)
            ok = search(position + len(shapes))
            order.pop()
            used[index] = False
            if not ok:
                return False
            if len(found) > 1:
                return True
        return True

    if sum(len(shapes) for _, _, shapes in blocks) != len(params):
        return []
    return found if search(0) and budget[0] >= 0 else None


def _model_candidates(
    root: Node, count: int
) -> list[tuple[str, list[tuple[str, tuple[int, ...]]]]]:
    """(key names are relative to, [(name, shape)]) of each smallest subtree outside the
    optimizers whose parameters number `count`: with every parameter, or without frozen ones
    (a Parameter saved with requires_grad=False)."""
    order: list[Node] = []  # pre-order, skipping optimizer subtrees
    parent: list[int] = []
    flags: list[tuple[int, int]] = []
    seen_storage: set[tuple[object, ...]] = set()
    stack = [(root, -1)]
    while stack:
        node, up = stack.pop()
        if node.kind == "optimizer":
            continue
        order.append(node)
        parent.append(up)
        flags.append(_parameter_flags(node, seen_storage))
        here = len(order) - 1
        stack.extend((child, here) for child in reversed(node.children))
    all_counts, trainable_counts = [0] * len(order), [0] * len(order)
    for i in range(len(order) - 1, -1, -1):
        all_counts[i] += flags[i][0]
        trainable_counts[i] += flags[i][1]
        if parent[i] >= 0:
            all_counts[parent[i]] += all_counts[i]
            trainable_counts[parent[i]] += trainable_counts[i]
    found = []
    for variant, counts in ((0, all_counts), (1, trainable_counts)):
        if variant == 1 and trainable_counts == all_counts:
            break
        smallest = [order[i].kind in CONTAINERS and counts[i] == count for i in range(len(order))]
        for i in range(1, len(order)):
            if smallest[i] and order[parent[i]].kind in CONTAINERS:
                smallest[parent[i]] = False  # a child holds them all: it is the smaller one
        for i in range(len(order)):
            if smallest[i]:
                found.append(_parameters_under(order, parent, flags, i, variant))
    return found


def _parameter_flags(node: Node, seen_storage: set[tuple[object, ...]]) -> tuple[int, int]:
    """(may be a parameter, may be a trainable one) for a tensor node, as 0/1."""
    tensor = node.tensor
    if (
        node.kind != "tensor"
        or tensor is None
        or node.role == "buffer"
        or node.name.rpartition(".")[2] in BUFFER_NAMES
        or tensor.dtype not in PARAMETER_DTYPES
    ):
        return 0, 0
    if tensor.storage is not None:  # a tied weight's second copy is not a second parameter
        same = (
            id(tensor.storage),
            tensor.offset,
            tuple(tensor.shape),
            tuple(tensor.stride),
            tensor.dtype,
        )
        if same in seen_storage:
            return 0, 0
        seen_storage.add(same)
    frozen = tensor.is_parameter and not tensor.requires_grad
    return 1, 0 if frozen else 1


def _parameters_under(
    order: list[Node], parent: list[int], flags: list[tuple[int, int]], top: int, variant: int
) -> tuple[str, list[tuple[str, tuple[int, ...]]]]:
    """The parameters of order[top]'s subtree, named relative to it — or relative to the
    outermost module around it, as that module's named_parameters() would name them."""
    name_root = order[top]
    up = parent[top]
    while name_root.kind == "module" and up >= 0 and order[up].kind == "module":
        name_root, up = order[up], parent[up]
    prefix = len(name_root.key) + 1 if name_root.key else 0
    params = []
    # pre-order: the subtree is the run of nodes after `top` whose parents come at or after it
    end = top + 1
    while end < len(order) and parent[end] >= top:
        end += 1
    for i in range(top, end):
        if flags[i][variant]:
            tensor = order[i].tensor
            assert tensor is not None  # flagged: a tensor node
            params.append((order[i].key[prefix:], tuple(tensor.shape)))
    return name_root.key, params


def find_schedulers(checkpoint: Checkpoint) -> list[tuple[str, dict[str, Any]]]:
    """LR scheduler state dicts: (key, their plain fields)."""
    found = []
    stack = [checkpoint.root]
    while stack:  # pre-order, leaves skipped: a 50,000-tensor file is one level
        node = stack.pop()
        if node.kind == "dict" and SCHEDULER_FIELDS <= {c.name for c in node.children}:
            found.append((node.key, {c.name: plain(c) for c in node.children}))
        stack.extend(child for child in reversed(node.children) if child.children)
    return found
