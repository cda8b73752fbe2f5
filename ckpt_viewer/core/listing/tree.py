"""Turn unpickled plain data (dicts, lists, TensorInfo, Placeholders) into the Node tree."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TypeGuard

from ckpt_viewer.core.listing.model import Node, TensorInfo
from ckpt_viewer.core.listing.objects import (
    Described,
    call_note,
    describe_object,
    module_state_extras,
)
from ckpt_viewer.core.listing.safe_pickle import GlobalRef, Placeholder
from ckpt_viewer.core.listing.text import short_repr

SCALAR_TYPES = (bool, int, float, str)
COMPACT_LIST = 16  # longer lists of plain scalars become one node
BUFFER_NAMES = ("running_mean", "running_var", "num_batches_tracked")
MODULE_SUMMARY_FIELDS = 8  # plain attributes shown in a module's note
MAX_DEPTH = 1000  # deeper levels are cut: dotted keys would grow quadratically
SHARED_BY_VALUE = 64  # a container seen again is shown again if it holds at most this many
BY_VALUE_BUDGET = 100_000  # ... items, until this many were repeated in all (hostile files)
INT_DIGITS = 40  # longer integers are shown by their first digits and their length

Child = tuple[str, Any, str]  # (name, value from the file, role)


def is_module(obj: object) -> bool:
    fields = obj.fields if isinstance(obj, Placeholder) else {}
    return isinstance(fields.get("_parameters"), dict) and isinstance(fields.get("_modules"), dict)


def is_optimizer_state(obj: object) -> bool:
    return (
        isinstance(obj, dict)
        and isinstance(obj.get("state"), dict)
        and isinstance(obj.get("param_groups"), list)
        and all(isinstance(g, dict) and "params" in g for g in obj["param_groups"])
    )


def _module_children(obj: Placeholder) -> Iterator[Child]:
    """A module's state_dict entries (parameters, persistent buffers) then its submodules."""
    fields = obj.fields
    non_persistent = fields.get("_non_persistent_buffers_set") or ()
    for name, value in (fields.get("_parameters") or {}).items():
        if value is not None:
            yield str(name), value, "parameter"
    for name, value in (fields.get("_buffers") or {}).items():
        if value is not None and name not in non_persistent:
            yield str(name), value, "buffer"
    yield from module_state_extras(obj)
    for name, value in (fields.get("_modules") or {}).items():
        if value is not None:
            yield str(name), value, ""


def _module_note(obj: Placeholder) -> str:
    parts = [
        f"{k}={v!r}"
        for k, v in obj.fields.items()
        if not str(k).startswith("_") and k != "training" and isinstance(v, SCALAR_TYPES)
    ]
    return ", ".join(parts[:MODULE_SUMMARY_FIELDS])


def _object_children(obj: Placeholder) -> Iterator[Child]:
    for name, value in obj.fields.items():
        yield str(name), value, ""
    for name, value in obj.items.items():
        yield str(name), value, ""
    for index, value in enumerate(obj.list_items):
        yield str(index), value, ""
    if obj.state is None and not obj.items and not obj.list_items:
        for index, value in enumerate(obj.args):
            yield str(index), value, ""
        for name, value in obj.kwargs.items():
            yield str(name), value, ""


ID_LISTS = ("params", "param_names")  # optimizer parameter ids/names: one node, not scalars


def _is_compact_list(obj: object, name: str) -> TypeGuard[list[Any] | tuple[Any, ...]]:
    return (
        isinstance(obj, (list, tuple))
        and (len(obj) > COMPACT_LIST or name in ID_LISTS)
        and all(v is None or isinstance(v, SCALAR_TYPES) for v in obj)
    )


def is_script_module(obj: object) -> bool:
    """A TorchScript module object: its state is a dict of attributes and submodules."""
    return (
        isinstance(obj, Placeholder)
        and obj.qualname.startswith("__torch__.")
        and isinstance(obj.state, dict)
    )


def _script_module_children(obj: Placeholder) -> Iterator[Child]:
    for name, value in obj.fields.items():
        if isinstance(value, (TensorInfo, Placeholder, dict, list, tuple)):
            yield str(name), value, "parameter" if getattr(value, "is_parameter", False) else ""


def build_tree(
    obj: object,
    warnings: list[str] | None = None,
    optimizers: list[Node] | None = None,
    tensors: list[tuple[str, TensorInfo, Node]] | None = None,
    scalars: dict[str, object] | None = None,
) -> Node:
    """Walk without recursion; a container seen before becomes a `ref` node (no blow-up).
    Tensors sharing a storage are marked on the way; optimizer nodes are collected, and
    what Checkpoint.tensors() and .scalars() list, in tree order."""
    root = Node(name="", kind="dict")
    first_key = _Seen()
    stack: list[tuple[Any, Node | None, str, str, str, int]] = [(obj, None, "", "", "", 0)]
    cut = False
    while stack:
        value, parent, name, key, role, depth = stack.pop()
        node = root if parent is None else Node(name=name, kind="opaque", key=key, role=role)
        if parent is not None:
            parent.children.append(node)
        if depth >= MAX_DEPTH:
            node.type_name, node.value, cut = "cut", f"nested deeper than {MAX_DEPTH} levels", True
            continue
        children = _fill(node, value, first_key)
        if node.kind == "optimizer" and optimizers is not None:
            optimizers.append(node)
        elif node.kind == "tensor" and node.tensor is not None and tensors is not None:
            tensors.append((key, node.tensor, node))
        elif node.kind == "scalar" and scalars is not None:
            scalars[key] = node.value
        for child_name, child_value, child_role in reversed(children):
            child_key = f"{key}.{child_name}" if key else child_name
            stack.append((child_value, node, child_name, child_key, child_role, depth + 1))
    if cut and warnings is not None:
        warnings.append(
            f"the structure is nested deeper than {MAX_DEPTH} levels; deeper levels are not shown"
        )
    return root


class Description(str):
    """Text that describes a value (not a string from the file): printed without quotes."""

    def __repr__(self) -> str:
        return str(self)


class _Seen(dict[object, str]):
    """First key of every container and tensor met; what shared containers may still repeat."""

    def __init__(self) -> None:
        super().__init__()
        self.budget = BY_VALUE_BUDGET
        self.sizes: dict[int, int] = {}
        self.described: dict[int, Described | None] = {}

    def show_again(self, value: object) -> bool:
        """A container met before is shown by value again when small (a betas tuple shared by
        two param_groups); a large one, or a cycle, once."""
        size = self.sizes.get(id(value))
        if size is None:
            size = self.sizes[id(value)] = _item_count(value, SHARED_BY_VALUE + 1)
        if size > SHARED_BY_VALUE or size > self.budget:
            return False
        self.budget -= size
        return True

    def describe(self, value: Placeholder) -> Described | None:
        if id(value) not in self.described:  # once: its tensor records are then shared
            self.described[id(value)] = describe_object(value)
        return self.described[id(value)]


def _item_count(value: object, limit: int) -> int:
    """Values inside a container, counted up to `limit` (a cycle counts past it)."""
    count, stack = 0, [value]
    while stack and count < limit:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
        elif isinstance(item, Placeholder) and is_module(item):  # what its node will show
            stack.extend(value for _, value, _ in _module_children(item))
        elif isinstance(item, Placeholder):
            stack.extend((item.args, item.kwargs, item.state, item.items, item.list_items))
    return count


def _fill(node: Node, value: object, first_key: _Seen) -> list[Child]:
    """Set node's kind/type from value; return its children as (name, value, role)."""
    if isinstance(value, TensorInfo):
        node.type_name = "Parameter" if value.is_parameter else "Tensor"
        _set_tensor(node, value, first_key)
        return []
    if (
        isinstance(value, int)
        and not isinstance(value, bool)
        and value.bit_length() > INT_DIGITS * 3.33
    ):
        node.kind, node.type_name, node.value = "scalar", "int", value
        node.note = huge_int_text(value)  # the value stays a number (JSON keeps it one)
        return []
    if value is None or isinstance(value, SCALAR_TYPES):
        node.kind, node.value = ("scalar", value) if value is not None else ("opaque", None)
        node.type_name = type(value).__name__ if not isinstance(value, str) else "str"
        return []
    if isinstance(value, (bytes, bytearray)):
        node.type_name = type(value).__name__
        node.value = (
            bytes(value)
            if len(value) <= 64
            else Description(f"{bytes(value[:32])!r}... ({len(value)} bytes)")
        )
        return []
    if isinstance(value, (GlobalRef, type)):
        node.type_name, node.value = "global", getattr(value, "qualname", repr(value))
        return []
    if not isinstance(value, (dict, list, tuple, set, frozenset, Placeholder)):
        node.type_name = type(value).__name__
        node.value = value if isinstance(value, complex) else short_repr(value, 200)
        return []
    # before the compact-list test: a shared list of 200,000 numbers referenced 20,000 times
    # (750 KB of pickle) was copied and scanned each time
    if id(value) in first_key and not first_key.show_again(value):
        node.kind, node.value, node.type_name = "ref", first_key[id(value)], "reference"
        node.note = f"shared with {first_key[id(value)]}, shown once"
        return []
    first_key.setdefault(id(value), node.key)
    if _is_compact_list(value, node.name):
        node.type_name, node.value = type(value).__name__, list(value)
        return []
    if isinstance(value, dict):
        node.kind = "optimizer" if is_optimizer_state(value) else "dict"
        node.type_name = type(value).__name__
        return [(k if type(k) is str else _segment(k), v, "") for k, v in value.items()]
    if isinstance(value, (list, tuple, set, frozenset)):
        node.kind, node.type_name = "list", type(value).__name__
        return [(str(i), v, "") for i, v in enumerate(value)]
    node.type_name = value.qualname
    described = first_key.describe(value)
    if described is not None:
        return _apply_description(node, described, first_key)
    if is_module(value):
        node.kind, node.note = "module", _module_note(value)
        return list(_module_children(value))
    if is_script_module(value):
        node.kind, node.note = "module", _module_note(value)
        return list(_script_module_children(value))
    node.kind, node.note = "object", call_note(value)
    return list(_object_children(value))


def _segment(key: object) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, (GlobalRef, Placeholder)):
        return repr(key)
    return short_repr(key, 200) if isinstance(key, (int, tuple)) else str(key)


def _set_tensor(node: Node, value: TensorInfo, first_key: _Seen) -> None:
    node.kind, node.tensor = "tensor", value
    if id(value) in first_key:  # the same tensor object again (tied)
        node.shared_with = first_key[id(value)]
    else:
        first_key[id(value)] = node.key
        storage = ("storage", id(value.storage)) if value.storage is not None else None
        if storage in first_key:  # another view of a storage seen before
            node.shared_with = first_key[storage]
        elif storage is not None:
            first_key[storage] = node.key
    if not node.role and node.name in BUFFER_NAMES:
        node.role = "buffer"


def huge_int_text(value: int) -> str:
    """First digits and the length of an integer too long to read (or even print)."""
    sign, value = "-" if value < 0 else "", abs(value)
    bits = value.bit_length()
    digits = int(bits * 0.30102999566398120) + 1  # log10(2): exact or one too many
    if bits > 4_000_000:  # even the leading digits are slow to find (quadratic division)
        return f"{sign}an integer of about {digits:,} digits"
    head = value // 10 ** (digits - INT_DIGITS)
    if head < 10 ** (INT_DIGITS - 1):
        digits, head = digits - 1, value // 10 ** (digits - 1 - INT_DIGITS)
    return f"{sign}{head}... ({digits} digits)"


def _apply_description(node: Node, described: Described, first_key: _Seen) -> list[Child]:
    """A known class (numpy array, DTensor, pathlib path...) shown as what it is."""
    node.kind = described.kind
    node.type_name = described.type_name or node.type_name
    node.note = described.note
    if described.kind == "tensor" and described.tensor is not None:
        _set_tensor(node, described.tensor, first_key)
    elif described.kind in ("scalar", "opaque"):
        node.value = described.value
    return list(described.children)
