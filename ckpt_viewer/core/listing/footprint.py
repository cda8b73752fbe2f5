"""Where a checkpoint's bytes are, and what its model needs to run.

`bytes_map` is the module hierarchy (from the tree: dotted names split, pickled modules kept)
with bytes and elements per block, split by role (parameters, buffers, optimizer state, other)
and by dtype; each stored byte is counted once, at the first tensor that uses its storage (a tied
copy or a view adds nothing). `memory_needs` turns the model's own tensors (and this file's
optimizer state) into memory figures for inference and training, each with the rule it used."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ckpt_viewer.core.listing.model import Checkpoint, Node, TensorInfo, format_bytes, format_count
from ckpt_viewer.core.listing.summary import (
    MODEL,
    OPTIMIZER_STATE,
    is_buffer,
    tensor_categories,
)
from ckpt_viewer.core.listing.text import safe_text

PARAMETERS, BUFFERS, OPTIMIZER, OTHER = "parameters", "buffers", "optimizer_state", "other"
ROLES = (PARAMETERS, BUFFERS, OPTIMIZER, OTHER)
DEVICE_COUNTS = (1, 2, 4, 8, 16, 64)
ADAM_BYTES_PER_PARAMETER = 8  # exp_avg and exp_avg_sq in float32
NOT_COUNTED = (
    "activations, temporary buffers, the KV cache and the framework's own memory "
    "(CUDA context, allocator slack) are not counted"
)


@dataclass
class Block:
    """One module (or group of keys) of the bytes map."""

    path: str  # the key prefix; "" for the whole checkpoint
    name: str
    bytes: int = 0
    elements: int = 0
    tensors: int = 0
    by_role: dict[str, int] = field(default_factory=dict)  # role -> bytes
    by_dtype: dict[str, int] = field(default_factory=dict)  # dtype -> bytes
    children: dict[str, Block] = field(default_factory=dict)  # name -> Block, in file order
    class_name: str = ""  # a pickled module's class
    parameter: str = ""  # an optimizer state entry's parameter, where the file proves it

    def add(self, nbytes: int, elements: int, role: str, dtype: str) -> None:
        self.bytes += nbytes
        self.elements += elements
        self.tensors += 1
        self.by_role[role] = self.by_role.get(role, 0) + nbytes
        self.by_dtype[dtype] = self.by_dtype.get(dtype, 0) + nbytes

    def child(self, name: str) -> Block:
        found = self.children.get(name)
        if found is None:
            path = f"{self.path}.{name}" if self.path else name
            found = self.children[name] = Block(path, name)
        return found

    def main_role(self) -> str:
        return max(self.by_role, key=self.by_role.__getitem__) if self.by_role else OTHER

    def main_dtype(self) -> str:
        return max(self.by_dtype, key=self.by_dtype.__getitem__) if self.by_dtype else ""

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "bytes": self.bytes,
            "elements": self.elements,
            "tensors": self.tensors,
            "by_role": dict(self.by_role),
            "by_dtype": dict(self.by_dtype),
        }


def _roles(checkpoint: Checkpoint) -> dict[int, str]:
    """id(tensor node) -> its role."""
    categories = tensor_categories(checkpoint)
    roles: dict[int, str] = {}
    for _, _, node in checkpoint.tensors():
        category = categories.get(id(node))
        if category == MODEL:
            roles[id(node)] = BUFFERS if is_buffer(node) else PARAMETERS
        elif category == OPTIMIZER_STATE:
            roles[id(node)] = OPTIMIZER
        else:
            roles[id(node)] = OTHER
    return roles


def _stored(tensor: TensorInfo, seen: set[int]) -> tuple[int, int]:
    """(bytes, elements) this tensor adds: its storages' bytes the first time each is met."""
    nbytes = elements = 0
    for leaf in tensor.parts.values() if tensor.parts else (tensor,):
        storage = leaf.storage
        if storage is None:
            nbytes += leaf.nbytes
            elements += leaf.numel
        elif id(storage) not in seen:
            seen.add(id(storage))
            nbytes += storage.nbytes
            elements += leaf.numel
    if tensor.layout == "torchao":  # the weight's own elements, its pieces' bytes
        elements = tensor.numel if nbytes else 0
    return nbytes, elements


def bytes_map(checkpoint: Checkpoint) -> Block:
    """The checkpoint as nested blocks with bytes, elements, roles and dtypes summed."""
    roles = _roles(checkpoint)
    seen: set[int] = set()
    top = Block("", "")
    stack: list[tuple[Node, list[Block]]] = [(child, [top]) for child in checkpoint.root.children]
    stack.reverse()
    while stack:
        node, chain = stack.pop()
        parent = chain[-1]
        if node.kind == "tensor" and node.tensor is not None:
            *groups, leaf = str(node.name).split(".")
            blocks = list(chain)
            for part in groups:
                blocks.append(blocks[-1].child(part))
            nbytes, elements = _stored(node.tensor, seen)
            role = roles.get(id(node), OTHER)
            blocks.append(blocks[-1].child(leaf))
            for block in blocks:
                block.add(nbytes, elements, role, node.tensor.dtype)
            continue
        if not node.children:
            continue
        block = parent.child(str(node.name))  # a container's name is one key, dots and all
        if node.kind == "module" and node.type_name:
            block.class_name = node.type_name
        stack.extend((child, [*chain, block]) for child in reversed(node.children))
    _drop_empty(top)
    _name_state_entries(top, checkpoint)
    return top


def _name_state_entries(top: Block, checkpoint: Checkpoint) -> None:
    """Each optimizer state entry's block (`state.49`) gets its parameter's name, as the tree's
    row does (`state.49 — h.3.mlp.c_fc.weight`)."""
    from ckpt_viewer.core.listing.optim import state_parameters

    entries = {key.rsplit(".", 1)[0]: name for key, name in state_parameters(checkpoint).items()}
    if not entries:
        return
    stack = [top]
    while stack:
        block = stack.pop()
        block.parameter = entries.get(block.path, "")
        stack.extend(block.children.values())


def _drop_empty(top: Block) -> None:
    stack = [top]
    while stack:
        block = stack.pop()
        block.children = {k: v for k, v in block.children.items() if v.tensors}
        stack.extend(block.children.values())


def module_rows(top: Block, depth: int) -> list[tuple[int, Block]]:
    """(depth, block) of every block down to `depth` levels, in file order."""
    rows: list[tuple[int, Block]] = []
    stack = [(1, child) for child in reversed(list(top.children.values()))]
    while stack:
        level, block = stack.pop()
        rows.append((level, block))
        if level < depth:
            stack.extend((level + 1, c) for c in reversed(list(block.children.values())))
    return rows


# --- what the model needs to run ------------------------------------------------------------


def memory_needs(checkpoint: Checkpoint, top: Block | None = None) -> dict[str, Any]:
    """Memory for inference and training from the file's own tensors (see `rules`)."""
    roles = _roles(checkpoint)
    seen: set[int] = set()
    elements = dict.fromkeys(ROLES, 0)
    nbytes = dict.fromkeys(ROLES, 0)
    for _, tensor, node in checkpoint.tensors():
        added_bytes, added_elements = _stored(tensor, seen)
        role = roles.get(id(node), OTHER)
        elements[role] += added_elements
        nbytes[role] += added_bytes
    params, buffers = elements[PARAMETERS], elements[BUFFERS]
    weights, buffer_bytes = nbytes[PARAMETERS], nbytes[BUFFERS]
    optimizer = nbytes[OPTIMIZER]
    from_file = optimizer > 0
    if not from_file:
        optimizer = ADAM_BYTES_PER_PARAMETER * params
    gradients = weights
    inference = {
        "stored": weights + buffer_bytes,
        "float16": 2 * params + buffer_bytes,
        "bfloat16": 2 * params + buffer_bytes,
        "int8": params + buffer_bytes,
        "4bit": (params + 1) // 2 + buffer_bytes,
    }
    training = weights + buffer_bytes + gradients + optimizer
    sharded = []
    for devices in DEVICE_COUNTS:
        sharded.append(
            {
                "devices": devices,
                "zero1": weights + buffer_bytes + gradients + -(-optimizer // devices),
                "zero2": weights + buffer_bytes + -(-(gradients + optimizer) // devices),
                "zero3": buffer_bytes + -(-(weights + gradients + optimizer) // devices),
            }
        )
    return {
        "parameters": params,
        "buffers": buffers,
        "inference": inference,
        "training": {
            "weights": weights,
            "buffers": buffer_bytes,
            "gradients": gradients,
            "optimizer_state": optimizer,
            "optimizer_state_from": "this file" if from_file else "Adam (estimated)",
            "total": training,
        },
        "sharded": sharded,
        "rules": {
            "stored": "parameters and buffers as stored in this file (each storage once)",
            "float16/bfloat16": "2 bytes per parameter; buffers as stored",
            "int8": "1 byte per parameter (quantization scales not counted); buffers as stored",
            "4bit": "half a byte per parameter (scales not counted); buffers as stored",
            "training": "weights as stored + gradients of the same size + optimizer state "
            + (
                "as saved in this file"
                if from_file
                else "of Adam (exp_avg and exp_avg_sq in float32: 8 bytes per parameter; "
                "the file holds none)"
            )
            + " + buffers",
            "zero1": "optimizer state split across the devices",
            "zero2": "gradients and optimizer state split across the devices",
            "zero3": "weights, gradients and optimizer state split across the devices",
            "not_counted": NOT_COUNTED,
        },
    }


# --- text ------------------------------------------------------------------------------------

ROLE_TEXT = {
    PARAMETERS: "parameters",
    BUFFERS: "buffers",
    OPTIMIZER: "optimizer state",
    OTHER: "other",
}


def module_lines(top: Block, depth: int) -> list[str]:
    rows = module_rows(top, depth)
    header = f"{'module':<48} {'bytes':>10} {'share':>6} {'elements':>10}  roles"
    lines = [header, "-" * len(header)]
    total = top.bytes or 1
    for level, block in rows:
        name = "  " * (level - 1) + safe_text(block.name)
        if block.class_name:
            name += f" ({safe_text(block.class_name)})"
        roles = ", ".join(
            f"{ROLE_TEXT[r]} {format_bytes(b)}"
            for r, b in sorted(block.by_role.items(), key=lambda rb: -rb[1])
        )
        lines.append(
            f"{name:<48} {format_bytes(block.bytes):>10} {block.bytes / total:>6.1%} "
            f"{format_count(block.elements):>10}  {roles}"
        )
    lines.append(
        f"{'total':<48} {format_bytes(top.bytes):>10} {'':>6} {format_count(top.elements):>10}"
    )
    return lines


def memory_lines(needs: dict[str, Any]) -> list[str]:
    inference, training = needs["inference"], needs["training"]
    lines = [
        "",
        f"What the model needs ({format_count(needs['parameters'])} parameters, "
        f"{format_count(needs['buffers'])} buffer elements):",
        "  inference: "
        + ", ".join(f"{name} {format_bytes(value)}" for name, value in inference.items()),
        f"  training: {format_bytes(training['total'])} = weights "
        f"{format_bytes(training['weights'])} + gradients {format_bytes(training['gradients'])}"
        f" + optimizer state {format_bytes(training['optimizer_state'])} "
        f"({training['optimizer_state_from']}) + buffers {format_bytes(training['buffers'])}",
        "  per device, sharded training (ZeRO-1 / ZeRO-2 / ZeRO-3):",
    ]
    for row in needs["sharded"]:
        lines.append(
            f"    {row['devices']:>3} device{'s' if row['devices'] != 1 else ' '}: "
            f"{format_bytes(row['zero1']):>10} / {format_bytes(row['zero2']):>10} / "
            f"{format_bytes(row['zero3']):>10}"
        )
    lines.append("  rules:")
    lines += [f"    {name}: {rule}" for name, rule in needs["rules"].items()]
    return lines
