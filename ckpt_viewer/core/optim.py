"""Recognise optimizer state dicts, their hyperparameters, and which parameter each state is for."""

from __future__ import annotations

from dataclasses import dataclass, field

from ckpt_viewer.core.model import Checkpoint, Node, iter_nodes
from ckpt_viewer.core.tree import BUFFER_NAMES

# Hyperparameters that only one torch optimizer has, checked in order.
TYPE_SIGNATURES = [
    ("LBFGS", {"max_iter", "history_size"}), ("Rprop", {"etas"}), ("ASGD", {"lambd", "t0"}),
    ("Adadelta", {"rho"}), ("Adagrad", {"lr_decay"}), ("RMSprop", {"alpha", "centered"}),
    ("NAdam", {"momentum_decay"}), ("RAdam", {"decoupled_weight_decay", "betas"}),
    ("Adamax", {"betas"}), ("SGD", {"dampening", "nesterov"}),
]
SCHEDULER_FIELDS = {"last_epoch", "base_lrs"}


@dataclass
class OptimizerInfo:
    key: str
    type: str | None
    param_groups: list            # [{hyperparameter: value, ..., "params": [name or id]}]
    state: dict = field(default_factory=dict)   # {name or id: Node of that parameter's state}
    names_source: str = ""        # param_names | matched state_dict at KEY | ""


def plain(node: Node):
    """A small subtree back as Python data (hyperparameter values, param id lists)."""
    if node.kind == "list":
        values = [plain(c) for c in node.children]
        return tuple(values) if node.type_name == "tuple" else values
    if node.kind == "dict":
        return {c.name: plain(c) for c in node.children}
    if node.kind == "tensor":
        return f"tensor{list(node.tensor.shape)}"
    return node.value


def guess_type(group: dict) -> str | None:
    keys = set(group)
    if "betas" in keys and "amsgrad" in keys and "momentum_decay" not in keys:
        return "AdamW" if group.get("decoupled_weight_decay") else "Adam"
    for name, signature in TYPE_SIGNATURES:
        if signature <= keys:
            return name
    return None


def find_optimizers(checkpoint: Checkpoint) -> list[OptimizerInfo]:
    nodes = checkpoint.optimizer_nodes
    if nodes is None:
        nodes = [n for n in iter_nodes(checkpoint.root) if n.kind == "optimizer"]
    return [_describe(node, checkpoint) for node in nodes]


def _child(node: Node, name: str) -> Node | None:
    return next((c for c in node.children if c.name == name), None)


def _describe(node: Node, checkpoint: Checkpoint) -> OptimizerInfo:
    groups = [plain(g) for g in _child(node, "param_groups").children]
    groups = [g if isinstance(g, dict) else {} for g in groups]
    state_node = _child(node, "state")
    states = {c.name: c for c in state_node.children} if state_node else {}
    ids = [str(p) for g in groups for p in (g.get("params") or [])]
    names, source = _names_from_groups(groups)
    if names is None:
        names, source = _names_from_state_dict(ids, states, node, checkpoint)
    mapping = dict(zip(ids, names)) if names else {}
    for g in groups:
        g["params"] = [mapping.get(str(p), p) for p in (g.get("params") or [])]
    for pid, state in states.items():
        if pid in mapping:
            state.note = f"state of {mapping[pid]}"
    return OptimizerInfo(key=node.key, type=guess_type(groups[0]) if groups else None,
                         param_groups=groups,
                         state={mapping.get(pid, pid): s for pid, s in states.items()},
                         names_source=source)


def _names_from_groups(groups):
    names = []
    for g in groups:
        group_names = g.get("param_names")
        if not isinstance(group_names, (list, tuple)) or len(group_names) != len(g.get("params") or []):
            return None, ""
        names.extend(str(n) for n in group_names)
    return names, "param_names"


def _state_shape(state: Node | None):
    """The shape of a parameter's per-element state (exp_avg, momentum_buffer...), if any."""
    for child in state.children if state else []:
        if child.kind == "tensor" and child.tensor.shape:
            return child.tensor.shape
    return None


def _candidate_params(root: Node, optimizer_keys: set):
    """(name relative to root, shape) of tensors under root that may be parameters."""
    prefix = root.key + "." if root.key else ""
    stack = list(reversed(root.children))
    while stack:
        node = stack.pop()
        if node.kind == "optimizer" or node.key in optimizer_keys:
            continue
        if node.kind == "tensor":
            if node.role != "buffer" and node.name not in BUFFER_NAMES:
                yield node.key[len(prefix):], node.tensor.shape
        else:
            stack.extend(reversed(node.children))


def _names_from_state_dict(ids, states, optimizer: Node, checkpoint: Checkpoint):
    """Match the optimizer's params, in order and by state shape, to a state_dict in the file."""
    optimizer_keys = {n.key for n in checkpoint.optimizer_nodes} \
        if checkpoint.optimizer_nodes is not None else \
        {n.key for n in iter_nodes(checkpoint.root) if n.kind == "optimizer"}
    candidates = [c for c in checkpoint.root.children
                  if c.kind in ("dict", "module") and c.key not in optimizer_keys] + [checkpoint.root]
    for candidate in candidates:
        params = list(_candidate_params(candidate, optimizer_keys))
        names = _match(ids, states, params)
        if names:
            where = candidate.key or "the top level"
            return names, f"matched to the state_dict at {where} by order and shape"
    return None, ""


def _match(ids, states, params):
    if not ids or len(params) < len(ids):
        return None
    names, position = [], 0
    for pid in ids:
        shape = _state_shape(states.get(pid))
        while position < len(params) and shape is not None and params[position][1] != shape:
            if len(params) - position <= len(ids) - len(names):
                return None      # no room left to skip a non-matching tensor
            position += 1
        if position >= len(params):
            return None
        names.append(params[position][0])
        position += 1
    return names


def find_schedulers(checkpoint: Checkpoint) -> list[tuple[str, dict]]:
    """LR scheduler state dicts: (key, their plain fields)."""
    found = []
    for node in iter_nodes(checkpoint.root):
        if node.kind == "dict" and SCHEDULER_FIELDS <= {c.name for c in node.children}:
            found.append((node.key, {c.name: plain(c) for c in node.children}))
    return found
