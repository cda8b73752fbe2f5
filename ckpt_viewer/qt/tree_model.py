"""The key tree: a QAbstractItemModel over core.model Nodes, with filtering and sorting done
on a flat row index (built in the worker thread) so that 50,000 keys stay fast."""

from __future__ import annotations

import fnmatch
import re

from PySide6.QtCore import QAbstractItemModel, QModelIndex, Qt
from PySide6.QtGui import QBrush, QColor, QFont

from ckpt_viewer.core import paused_gc
from ckpt_viewer.core.model import Node, format_bytes
from ckpt_viewer.core.summary import totals as checkpoint_totals

COLUMNS = ("Key", "Type / Class", "Shape", "DType", "Params", "Size", "Device")
KEY, TYPE, SHAPE, DTYPE, PARAMS, SIZE, DEVICE = range(len(COLUMNS))
MUTED = QColor(128, 128, 128)


class Row:
    """One tree row: a Node, its place among its parent's shown children, subtree sums."""

    __slots__ = ("node", "parent", "children", "shown", "pos", "params", "nbytes")

    def __init__(self, node: Node, parent: Row | None):
        self.node, self.parent = node, parent
        self.children: list[Row] = []
        self.shown: list[Row] = self.children
        self.pos = 0
        self.params = self.nbytes = 0


def build_rows(root: Node) -> tuple[Row, list[Row]]:
    """(root row, all rows in pre-order) with per-subtree sums; a tensor tied to an earlier
    one (same storage) adds nothing to the sums, as in the file."""
    top = Row(root, None)
    order = []
    stack = [top]
    while stack:
        row = stack.pop()
        order.append(row)
        row.children.extend(Row(child, row) for child in row.node.children)
        for position, child in enumerate(row.children):
            child.pos = position
        stack.extend(reversed(row.children))
    for row in reversed(order):
        tensor = row.node.tensor
        if tensor is not None and not row.node.shared_with:
            row.params, row.nbytes = tensor.numel, tensor.nbytes
        if row.parent is not None:
            row.parent.params += row.params
            row.parent.nbytes += row.nbytes
    return top, order


def make_matcher(text: str):
    """Substring by default; glob when the text has * ? [; regex when wrapped in /.../."""
    text = text.strip()
    if len(text) > 1 and text.startswith("/") and text.endswith("/"):
        try:
            pattern = re.compile(text[1:-1])
        except re.error as exc:
            raise ValueError(f"bad regular expression: {exc}") from None
        return lambda key: pattern.search(key) is not None
    if any(ch in text for ch in "*?["):
        pattern = re.compile(fnmatch.translate(text))
        return lambda key: pattern.match(key) is not None
    lowered = text.lower()
    return lambda key: lowered in key.lower()


def _shape_text(node: Node) -> str:
    return "" if node.tensor is None else "[" + ", ".join(map(str, node.tensor.shape)) + "]"


def type_text(node: Node) -> str:
    if node.kind == "tensor":
        base = node.type_name
        if node.role:
            base = node.role
        if node.tensor.layout != "strided":
            base += f" ({node.tensor.layout})"
        return base + (f" - tied to {node.shared_with}" if node.shared_with else "")
    if node.kind in ("module", "object"):
        return node.type_name.rsplit(".", 1)[-1]
    if node.kind == "optimizer":
        return "optimizer state"
    if node.kind == "ref":
        return f"-> {node.value}"
    if node.kind == "scalar":
        return node.type_name
    return node.type_name or node.kind


def value_text(node: Node) -> str:
    if node.kind == "scalar":
        return repr(node.value) if isinstance(node.value, str) else str(node.value)
    if node.kind == "opaque" and node.value is not None:
        text = str(node.value)
        return text if len(text) < 80 else text[:77] + "..."
    return ""


class KeyTreeModel(QAbstractItemModel):
    def __init__(self, top: Row, rows: list[Row], parent=None):
        super().__init__(parent)
        self.top, self.rows = top, rows
        self.keys = [r.node.key for r in rows]
        self.filter_text = ""
        self._italic = QFont()
        self._italic.setItalic(True)

    # --- structure -------------------------------------------------------------------------
    def row_of(self, index: QModelIndex) -> Row:
        return index.internalPointer() if index.isValid() else self.top

    def index(self, row, column, parent=QModelIndex()):
        parent_row = self.row_of(parent)
        if 0 <= row < len(parent_row.shown) and 0 <= column < len(COLUMNS):
            return self.createIndex(row, column, parent_row.shown[row])
        return QModelIndex()

    def parent(self, index=QModelIndex()):
        if not index.isValid():
            return QModelIndex()
        parent_row = index.internalPointer().parent
        if parent_row is None or parent_row is self.top:
            return QModelIndex()
        return self.createIndex(parent_row.pos, 0, parent_row)

    def rowCount(self, parent=QModelIndex()):
        if parent.isValid() and parent.column() != 0:
            return 0
        return len(self.row_of(parent).shown)

    def columnCount(self, parent=QModelIndex()):
        return len(COLUMNS)

    def hasChildren(self, parent=QModelIndex()):
        return self.rowCount(parent) > 0

    def headerData(self, section, orientation, role=Qt.DisplayRole):
        if orientation == Qt.Horizontal and role == Qt.DisplayRole:
            return COLUMNS[section]
        if orientation == Qt.Horizontal and role == Qt.TextAlignmentRole and section in (PARAMS, SIZE):
            return int(Qt.AlignRight | Qt.AlignVCenter)
        return None

    def flags(self, index):
        return Qt.ItemIsEnabled | Qt.ItemIsSelectable if index.isValid() else Qt.NoItemFlags

    # --- content ---------------------------------------------------------------------------
    def data(self, index, role=Qt.DisplayRole):
        if not index.isValid():
            return None
        row = index.internalPointer()
        node, column = row.node, index.column()
        if role == Qt.DisplayRole:
            return self._display(row, column)
        if role == Qt.UserRole:
            return node.key
        if role == Qt.ToolTipRole:
            return self._tooltip(node)
        if role == Qt.TextAlignmentRole and column in (PARAMS, SIZE):
            return int(Qt.AlignRight | Qt.AlignVCenter)
        if role == Qt.ForegroundRole and (node.shared_with or node.kind in ("ref", "opaque")
                                          or column == TYPE and node.role == "buffer"):
            return QBrush(MUTED)
        if role == Qt.FontRole and node.shared_with:
            return self._italic
        return None

    def _display(self, row: Row, column: int):
        node = row.node
        if column == KEY:
            if node.kind in ("scalar", "opaque"):
                return f"{node.name} = {value_text(node)}" if value_text(node) else node.name
            return node.name
        if column == TYPE:
            return type_text(node)
        if column == SHAPE:
            return _shape_text(node)
        if column == DTYPE:
            return node.tensor.dtype if node.tensor is not None else ""
        if column == PARAMS:
            return f"{row.params:,}" if row.params or node.tensor is not None else ""
        if column == SIZE:
            return format_bytes(row.nbytes) if row.nbytes or node.tensor is not None else ""
        if column == DEVICE:
            return node.tensor.device if node.tensor is not None else ""
        return None

    def _tooltip(self, node: Node) -> str:
        lines = [node.key or "(root)"]
        if node.kind in ("module", "object"):
            lines.append(node.type_name)
        if node.note:
            lines.append(node.note)
        if node.shared_with:
            lines.append(f"shares its storage with {node.shared_with}")
        return "\n".join(lines)

    # --- filter and sort -------------------------------------------------------------------
    def set_filter(self, text: str) -> int:
        """Show matching keys, their ancestors and their subtrees; returns the match count."""
        matcher = make_matcher(text) if text.strip() else None
        self.beginResetModel()
        self.filter_text = text
        if matcher is None:
            for row in self.rows:
                row.shown = row.children
            count = len(self.rows) - 1
        else:
            visible, inside, count = set(), set(), 0
            for row, key in zip(self.rows, self.keys):   # pre-order: parents come first
                if row.parent is None:
                    continue
                matched = matcher(key)
                count += matched
                if not (matched or id(row.parent) in inside):
                    continue
                inside.add(id(row))          # a matched container shows its whole subtree
                ancestor = row
                while ancestor is not None and id(ancestor) not in visible:
                    visible.add(id(ancestor))
                    ancestor = ancestor.parent
            for row in self.rows:
                row.shown = [c for c in row.children if id(c) in visible]
        self._renumber()
        self.endResetModel()
        return count

    def sort(self, column, order=Qt.AscendingOrder):
        key_funcs = {
            KEY: lambda r: _natural(r.node.name), TYPE: lambda r: type_text(r.node),
            SHAPE: lambda r: r.node.tensor.shape if r.node.tensor is not None else (),
            DTYPE: lambda r: r.node.tensor.dtype if r.node.tensor is not None else "",
            PARAMS: lambda r: r.params, SIZE: lambda r: r.nbytes,
            DEVICE: lambda r: r.node.tensor.device if r.node.tensor is not None else "",
        }
        key = key_funcs.get(column)
        if key is None:
            return
        self.layoutAboutToBeChanged.emit()
        old = self.persistentIndexList()
        old_rows = [self.row_of(i) for i in old]
        reverse = order == Qt.DescendingOrder
        for row in self.rows:
            if len(row.children) > 1:
                try:
                    row.children.sort(key=key, reverse=reverse)
                except TypeError:
                    row.children.sort(key=lambda r: str(key(r)), reverse=reverse)
                if row.shown is not row.children:
                    order_of = {id(c): i for i, c in enumerate(row.children)}
                    row.shown.sort(key=lambda r: order_of[id(r)])
        self._renumber()
        self.changePersistentIndexList(old, [self.createIndex(r.pos, i.column(), r)
                                             for r, i in zip(old_rows, old)])
        self.layoutChanged.emit()

    def _renumber(self):
        for row in self.rows:
            for position, child in enumerate(row.shown):
                child.pos = position

    def index_of_key(self, key: str) -> QModelIndex:
        try:
            row = self.rows[self.keys.index(key)]
        except ValueError:
            return QModelIndex()
        return self.createIndex(row.pos, 0, row) if row is not self.top else QModelIndex()


def _natural(text: str):
    return [(0, int(part), "") if part.isdigit() else (1, 0, part.lower())
            for part in re.split(r"(\d+)", text) if part]


def load_for_view(path: str):
    """Worker-thread part of opening a tab: read, index rows, compute totals."""
    from ckpt_viewer.core.open import open_checkpoint

    checkpoint = open_checkpoint(path)
    with paused_gc():
        top, rows = build_rows(checkpoint.root)
        return checkpoint, top, rows, checkpoint_totals(checkpoint)
