"""The key tree's rows, Qt-free: a flat pre-order index over a node tree with per-subtree sums,
and the key filter (substring, glob or /regex/). Built in the load worker; the Qt model
(qt/tree_model.py) only looks things up in it, so 50,000 keys stay fast."""

from __future__ import annotations

import fnmatch
import re
from array import array
from dataclasses import dataclass

from ckpt_viewer.core.listing.model import Node, TensorInfo
from ckpt_viewer.core.listing.summary import _union_length
from ckpt_viewer.core.listing.text import listing_order


class Row:
    """One tree row: a Node (or a virtual group of dotted names), its place among its parent's
    shown children, and the sums of its subtree."""

    __slots__ = (
        "node",
        "name",
        "parent",
        "up",
        "children",
        "visible_children",
        "pos",
        "index",
        "elements",
        "nbytes",
        "size",
        "tensors",
        "generation",
        "order",
        "listed",
    )

    def __init__(
        self,
        node: Node | GroupNode,
        parent: Row | None,
        name: str,
        children: list[Row] | tuple[()] = (),
    ) -> None:
        # a leaf shares the empty tuple (50,000 fewer lists); `visible_children` is set by the model
        self.node, self.parent, self.name, self.children = node, parent, name, children
        self.up: Row | None = None  # the row shown above it when not its parent (a range row)
        self.pos = self.index = self.elements = self.nbytes = self.tensors = 0
        self.order = self.listed = 0  # place among its siblings in the file / as listed
        self.size = 1  # rows in this subtree, itself included: rows[index:index + size]
        self.generation = (
            -1
        )  # the model's filter/sort generation that `visible_children` and `pos` are
        #                        for: none yet, so the model numbers children when first asked


class GroupNode:
    """The node of a virtual group row: reads as a Node of kind "group" and holds only its
    name and key (a flat 50,000-key state_dict has ~55,000 groups)."""

    __slots__ = ("name", "key")
    kind = type_name = "group"
    children = ()
    tensor = value = None
    role = shared_with = note = ""

    def __init__(self, name: str, key: str) -> None:
        self.name, self.key = name, key


MAX_GROUP_DEPTH = 64  # dotted segments split into group rows; the rest stays one name


def _attach_children(row: Row) -> None:
    """Children of row's node; dotted names (a state_dict's "blocks.0.attn.weight") are split
    into virtual group rows, so that a flat dict of 50,000 keys is a browsable hierarchy."""
    groups: dict[str, Row] = {}
    children = _child_list(row)
    for child in row.node.children:
        name = child.name
        if "." not in name or child.kind == "ref":
            children.append(Row(child, row, name, [] if child.children else ()))
            continue
        if name.count(".") <= MAX_GROUP_DEPTH:
            prefix, _, name = name.rpartition(".")
        else:  # a key of 100,000 segments would make 100,000 nested rows with quadratic keys
            name = name.split(".", MAX_GROUP_DEPTH)[-1]
            prefix = child.name[: len(child.name) - len(name) - 1]
        parent = groups.get(prefix) or _group(row, groups, prefix)
        _child_list(parent).append(Row(child, parent, name, [] if child.children else ()))
    _list(_child_list(row))
    for group in groups.values():
        _list(_child_list(group))


def _list(children: list[Row]) -> None:
    """Siblings in listing order (text order becomes natural: h.2 before h.10), each row
    remembering both its places."""
    if len(children) < 2:  # most groups of a flat state_dict: order and listed stay 0
        return
    for position, child in enumerate(children):
        child.order = position
    children[:] = listing_order(children, lambda r: r.name)
    for position, child in enumerate(children):
        child.listed = position


def _child_list(row: Row) -> list[Row]:
    """The list of a row that has children (a leaf shares the empty tuple instead)."""
    assert isinstance(row.children, list)
    return row.children


def _group(row: Row, groups: dict[str, Row], prefix: str) -> Row:
    """The group row of a dotted prefix under row, made with the groups above it if new
    (siblings mostly share their group, so this runs once per group)."""
    above, _, segment = prefix.rpartition(".")
    if _:
        parent = groups.get(above) or _group(row, groups, above)
    else:
        parent, segment = row, prefix
    key = f"{row.node.key}.{prefix}" if row.node.key else prefix
    group = Row(GroupNode(segment, key), parent, segment, [])
    _child_list(parent).append(group)
    groups[prefix] = group
    return group


@dataclass
class RowIndex:
    """Everything the model needs that is O(rows) to build, made in the load worker."""

    top: Row
    rows: list[Row]  # all rows in pre-order: a subtree is rows[i:i + size]
    keys: list[str]  # full dotted key of each row
    lowered_keys: list[str] | None  # the same, lower-cased: made by the first filter (a worker)
    parents: array[int]  # each row's parent index (-1 for the top)
    sizes: array[int]  # each row's subtree size
    positions: dict[str, int] | None = None  # key -> its first row (a selection looks it up)

    def position(self, key: str) -> int | None:
        """The first row of `key` (a group and a tensor may share one), None if no row has it."""
        if self.positions is None:
            keys = self.keys  # built backwards: the first row of a repeated key stays
            self.positions = dict(zip(reversed(keys), range(len(keys) - 1, -1, -1)))
        return self.positions.get(key)

    @property
    def lowered(self) -> list[str]:
        if self.lowered_keys is None:  # two racing filters both make the same list
            self.lowered_keys = [key.lower() for key in self.keys]
        return self.lowered_keys


def build_rows(root: Node) -> RowIndex:
    """The rows of a node tree in listing order (text.listing_order; each row also knows its
    place in the file's order, for the tree model's "File Order"), with per-subtree sums. A
    tensor row holds its own elements and bytes (torch's numel and nbytes); a subtree counts
    each stored element once, so tied tensors and views of one storage are not doubled where
    they meet (_count_views_once)."""
    top = Row(root, None, "", [])
    order: list[Row] = []
    stack = [top]
    while stack:
        row = stack.pop()
        row.index = len(order)
        order.append(row)
        if row.node.children and row.node.kind != "group":
            _attach_children(row)
        if row.children:
            stack.extend(reversed(row.children))
    views: dict[int, list[Row]] = {}  # id(storage) -> the rows of tensors viewing it
    for row in reversed(order):
        node = row.node
        tensor = node.tensor
        if tensor is not None:
            row.tensors += 1
            row.elements += tensor.numel
            row.nbytes += tensor.nbytes
            if tensor.storage is not None and not tensor.parts:
                views.setdefault(id(tensor.storage), []).append(row)
        parent = row.parent
        if parent is not None:
            parent.elements += row.elements
            parent.nbytes += row.nbytes
            parent.size += row.size
            parent.tensors += row.tensors
    for rows in views.values():
        if len(rows) > 1:
            _count_views_once(rows)
    keys = [r.node.key for r in order]
    index = RowIndex(
        top,
        order,
        keys,
        None,
        array("q", [r.parent.index if r.parent else -1 for r in order]),
        array("q", [r.size for r in order]),
    )
    index.position("")  # the key lookup, made here in the worker
    return index


def _count_views_once(rows: list[Row]) -> None:
    """Take back from each row above several views of one storage what they double count:
    the same tensor again (tied) counts once, distinct views the union of their spans, as
    the summary's totals do."""
    below: dict[int, tuple[Row, list[TensorInfo]]] = {}
    for row in rows:
        tensor = row.node.tensor
        assert tensor is not None  # rows of tensors viewing a storage
        above = row.parent
        while above is not None:
            below.setdefault(id(above), (above, []))[1].append(tensor)
            above = above.parent
    for above, tensors in below.values():
        if len(tensors) < 2:
            continue
        distinct = list({(t.offset, t.shape, t.stride, t.dtype): t for t in tensors}.values())
        elements, nbytes = sum(t.numel for t in distinct), sum(t.nbytes for t in distinct)
        if len(distinct) > 1 and len({t.dtype for t in distinct}) == 1:
            elements = _union_length([t.element_span() for t in distinct])
            nbytes = elements * (distinct[0].nbytes // max(distinct[0].numel, 1))
        above.elements -= sum(t.numel for t in tensors) - elements
        above.nbytes -= sum(t.nbytes for t in tensors) - nbytes


def matching_rows(text: str, keys: list[str], lowered: list[str]) -> list[int]:
    """Indices of keys that match: substring by default (case-insensitive), glob when the
    text has * ? [, regex when wrapped in /.../."""
    text = text.strip()
    if len(text) > 1 and text.startswith("/") and text.endswith("/"):
        try:
            pattern = re.compile(text[1:-1])
        except re.error as exc:
            raise ValueError(f"bad regular expression: {exc}") from None
        search = pattern.search
        return [i for i, key in enumerate(keys) if search(key)]
    if any(ch in text for ch in "*?["):
        match = re.compile(fnmatch.translate(text)).match
        return [i for i, key in enumerate(keys) if match(key)]
    needle = text.lower()
    return [i for i, key in enumerate(lowered) if needle in key]


@dataclass
class Filtered:
    """Which rows a filter text shows (filter_rows); made in a worker, applied by the model."""

    text: str
    matches: int = 0  # keys that match
    visible: bytearray | None = None  # 1 per shown row (the top included); None: every row
    inside: bytearray | None = None  # 1 per row inside a match's subtree (all its rows show)
    visible_count: int = 0  # rows shown, the top not counted
    error: str = ""  # a bad /regex/, in one line; nothing else is then set


def filter_rows(text: str, index: RowIndex) -> Filtered:
    """The rows a filter shows: matching keys, their whole subtrees and their ancestors.
    Subtrees are the pre-order ranges rows[i:i + size]. Pure Python, O(rows): run it off the
    GUI thread."""
    everything = len(index.keys) - 1
    if not text.strip():
        return Filtered(text, everything, visible_count=everything)
    try:
        hits = matching_rows(text, index.keys, index.lowered)
    except ValueError as exc:
        return Filtered(text, error=str(exc))
    if len(hits) >= everything:  # every key matches
        return Filtered(text, len(hits), visible_count=everything)
    parents, sizes = index.parents, index.sizes
    inside = bytearray(len(index.keys))
    outermost, end = [], 0
    for hit in hits:  # ascending: nested hits come after
        if hit > 0 and hit >= end:
            end = hit + sizes[hit]
            inside[hit:end] = b"\x01" * sizes[hit]
            outermost.append(hit)
    visible = bytearray(inside)
    visible[0] = 1
    for hit in outermost:
        above = parents[hit]
        while not visible[above]:
            visible[above] = 1
            above = parents[above]
    return Filtered(text, len(hits), visible, inside, visible.count(1) - 1)
