"""The key tree: a QAbstractItemModel over core.listing.model Nodes, with filtering and sorting done
on a flat row index (built in the worker thread) so that 50,000 keys stay fast."""

from __future__ import annotations

import html
from operator import attrgetter

from PySide6.QtCore import QAbstractItemModel, QEvent, QModelIndex, Qt, Signal
from PySide6.QtGui import QBrush, QColor, QFont
from PySide6.QtWidgets import QApplication, QStyle, QStyledItemDelegate, QStyleOptionViewItem

from ckpt_viewer.core import paused_gc
from ckpt_viewer.core.listing.model import Node, format_bytes
from ckpt_viewer.core.listing.optim import STATE_OF
from ckpt_viewer.core.listing.report import describe_value
from ckpt_viewer.core.listing.rows import (  # noqa: F401
    MAX_GROUP_DEPTH,
    Filtered,
    GroupNode,
    Row,
    RowIndex,
    build_rows,
    filter_rows,
    matching_rows,
)
from ckpt_viewer.core.listing.summary import totals as checkpoint_totals
from ckpt_viewer.core.listing.text import clipped, safe_text

COLUMNS = ("Key", "Type / Class", "Shape", "DType", "Elements", "Size", "Device")
KEY, TYPE, SHAPE, DTYPE, ELEMENTS, SIZE, DEVICE = range(len(COLUMNS))
COLUMN_COUNT = len(COLUMNS)
MUTED = QColor(128, 128, 128)
# made at import, on the GUI thread: QBrush(colour) looks at QGradient's enums, and the first
# look racing pyqtgraph's import in a worker failed a tab's opening ("QGradient has no
# attribute 'Preset'")
MUTED_BRUSH = QBrush(MUTED)
DISPLAY_ROLE, USER_ROLE, CHECK_ROLE, TOOLTIP_ROLE, ALIGNMENT_ROLE, FOREGROUND_ROLE, FONT_ROLE = (
    int(role.value)
    for role in (
        Qt.DisplayRole,
        Qt.UserRole,
        Qt.CheckStateRole,
        Qt.ToolTipRole,
        Qt.TextAlignmentRole,
        Qt.ForegroundRole,
        Qt.FontRole,
    )
)
ALIGN_RIGHT = int((Qt.AlignRight | Qt.AlignVCenter).value)
# a level with more shown children than this shows them in range rows of this many: Qt lays out
# every row of an opened level on each sort, filter or expansion (index() and hasChildren()
# per row), and 5,000 rows took a frame or two
RANGE = 1000
ELEMENTS_OF, NBYTES_OF, TENSORS_OF = (
    attrgetter("elements"),
    attrgetter("nbytes"),
    attrgetter("tensors"),
)


class RangeNode(GroupNode):
    """The node of a range row: its group's key (the automation contract's UserRole)."""

    __slots__ = ("note",)
    kind = type_name = "range"


class RangeRow(Row):
    """A row holding RANGE consecutive shown children of a level (by position in the
    current order and filter), as debuggers show big arrays; cut by visible_children."""

    __slots__ = ()


def cut_in_ranges(row: Row, shown: list[Row], generation: int) -> list[Row]:
    """shown (row's shown children) in range rows of RANGE, each child numbered in its range."""
    ranges: list[Row] = []
    for first in range(0, len(shown), RANGE):
        part = shown[first : first + RANGE]
        label = f"[{first} \u2026 {first + len(part) - 1}]"
        node = RangeNode(label, row.node.key)
        node.note = f"{len(part):,} of {len(shown):,}"
        cut = RangeRow(node, row, label, part)
        cut.visible_children, cut.generation = part, generation
        cut.index = row.index  # filter look-ups (_inside, _visible) answer for its group
        cut.pos = len(ranges)
        for position, child in enumerate(part):
            child.pos = position
            child.up = cut
        cut.elements = sum(map(ELEMENTS_OF, part))
        cut.nbytes = sum(map(NBYTES_OF, part))
        cut.tensors = sum(map(TENSORS_OF, part))
        ranges.append(cut)
    return ranges


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
    if node.note:
        return node.note  # e.g. "state of encoder.weight" on an optimizer state entry
    if node.kind == "ref":
        return f"-> {node.value}"
    if node.kind == "scalar":
        return node.type_name
    return node.type_name or node.kind


def value_text(node: Node) -> str:
    """A scalar's or opaque object's value, short and on one line (a 10**100000 included)."""
    if node.kind == "scalar" or node.kind == "opaque" and node.value is not None:
        return describe_value(node.value)
    return ""


MAX_NAME_SHOWN = 200


def shown_name(name: str) -> str:
    """A key segment as a row shows it: one line, and a key of 100,000 segments stays short."""
    return safe_text(clipped(name, MAX_NAME_SHOWN))


def plain_tooltip(lines) -> str:
    """Tooltip text shown literally: Qt guesses rich text from a leading tag, so escape it
    and say it is rich text ourselves."""
    body = "<br>".join(html.escape(shown_name(line)) for line in lines)
    return f"<p style='white-space:pre'>{body}</p>"


class CheckDelegate(QStyledItemDelegate):
    """Ticks a row's box on a click on it or on Space. The model leaves flags() to Qt: a Python
    flags() is called twice for every row the tree lays out, which doubled the time to open a
    5,000-row group, sort, or clear a filter. So ItemIsUserCheckable is not there for Qt's own
    delegate to see, and this one toggles every row that has a box (CheckStateRole data)."""

    def editorEvent(self, event, model, option, index) -> bool:
        state = index.data(CHECK_ROLE) if index.column() == KEY else None
        if state is None:
            return super().editorEvent(event, model, option, index)
        kind = event.type()
        if kind in (QEvent.MouseButtonPress, QEvent.MouseButtonRelease, QEvent.MouseButtonDblClick):
            view_option = QStyleOptionViewItem(option)
            self.initStyleOption(view_option, index)
            widget = option.widget
            style = widget.style() if widget is not None else QApplication.style()
            box = style.subElementRect(QStyle.SE_ItemViewItemCheckIndicator, view_option, widget)
            if event.button() != Qt.LeftButton or not box.contains(event.position().toPoint()):
                return False
            if kind != QEvent.MouseButtonRelease:
                return True  # the release toggles; a press or double click only takes the event
        elif kind != QEvent.KeyPress or event.key() not in (Qt.Key_Space, Qt.Key_Select):
            return False
        on = Qt.CheckState(state) != Qt.Checked
        return model.setData(index, Qt.Checked if on else Qt.Unchecked, Qt.CheckStateRole)


class KeyTreeModel(QAbstractItemModel):
    checks_changed = Signal(int)  # how many tensors are ticked

    def __init__(self, index: RowIndex, parent=None):
        super().__init__(parent)
        self.index_rows = index
        self.top, self.rows = index.top, index.rows
        self.keys = index.keys
        rows = self.rows
        self.visible_count = len(rows) - 1
        # filtering: which rows show (None: all), computed by core.rows.filter_rows (in a
        # worker); each row's list of shown children is then built only when the view asks
        self.generation = 0
        self._visible = self._inside = None
        self.checked = bytearray(len(rows))  # tensor rows ticked for export
        self.checked_below = [0] * len(rows)  # ticked tensor rows in each subtree
        self._italic = QFont()
        self._italic.setItalic(True)
        self._muted = MUTED_BRUSH
        self.file_order = False  # keys in listing order (h.2 before h.10), not the file's
        self.sorted_by: tuple = ("listed", False)  # as core.rows built it
        # a sort puts a row's children in order when the view first asks for them (a row not
        # shown is not sorted): the key and direction, and the rows already in that order
        self._order: tuple | None = None
        self._ordered: set[int] = set()

    @property
    def lowered(self) -> list:
        return self.index_rows.lowered

    # --- structure -------------------------------------------------------------------------
    def row_of(self, index: QModelIndex) -> Row:
        return index.internalPointer() if index.isValid() else self.top

    def visible_children(self, row: Row) -> list[Row]:
        """row's children that pass the filter, in display order (numbering them)."""
        if row.generation != self.generation:
            if type(row) is RangeRow:  # of an earlier cut: the model maps it (current_row)
                return row.visible_children
            if self._order is not None and row.index not in self._ordered:
                self._put_in_order(row)
            if self._visible is None or self._inside[row.index]:
                shown = row.children
            else:
                visible = self._visible
                shown = [c for c in row.children if visible[c.index]]
            if len(shown) > RANGE:
                row.visible_children = cut_in_ranges(row, shown, self.generation)
            else:
                row.visible_children = shown
                for position, child in enumerate(shown):
                    child.pos, child.up = position, None
            row.generation = self.generation
        return row.visible_children

    def index(self, row, column, parent=QModelIndex()):
        # asked for every row laid out (5,000 when a big group opens): the shown children are
        # looked up directly while they are current; an invalid parent's pointer is None (the
        # top), which spares an isValid() call per row
        above = parent.internalPointer() or self.top
        if above.generation == self.generation:
            children = above.visible_children
        else:
            children = self.visible_children(above)
        if 0 <= row < len(children) and 0 <= column < COLUMN_COUNT:
            return self.createIndex(row, column, children[row])
        return QModelIndex()

    def parent(self, index=QModelIndex()):
        row = index.internalPointer()  # None: an invalid index
        parent_row = None if row is None else row.up or row.parent
        if parent_row is None or parent_row is self.top:
            return QModelIndex()
        return self.createIndex(parent_row.pos, 0, parent_row)

    def rowCount(self, parent=QModelIndex()):
        if parent.isValid() and parent.column() != 0:
            return 0
        return len(self.visible_children(self.row_of(parent)))

    def columnCount(self, parent=QModelIndex()):
        return len(COLUMNS)

    def hasChildren(self, parent=QModelIndex()):
        # asked for every row laid out (5,000 when a big group opens): no list built here
        row = parent.internalPointer()  # None: the top
        if row is None:
            row = self.top
        elif parent.column():
            return False
        if self._visible is None or self._inside[row.index]:
            return bool(row.children)
        return len(self.visible_children(row)) > 0

    def headerData(self, section, orientation, role=Qt.DisplayRole):
        if orientation != Qt.Horizontal:
            return None
        if role == DISPLAY_ROLE:
            return COLUMNS[section]
        if role == ALIGNMENT_ROLE and section in (ELEMENTS, SIZE):
            return ALIGN_RIGHT
        if role == TOOLTIP_ROLE and section == KEY:
            return "Tick tensors or whole subtrees to export them (File > Export Selection, Ctrl+E)"
        if role == TOOLTIP_ROLE and section == ELEMENTS:  # optimizer state is not parameters
            return (
                "Tensor elements under this row, each storage counted once: model "
                "parameters, optimizer state and other tensors alike (the Summary splits them)"
            )
        return None

    # --- check boxes (what to export) ------------------------------------------------------
    def check_state(self, row: Row):
        if type(row) is RangeRow:
            ticked = sum(self.checked_below[c.index] for c in row.children)
        else:
            ticked = self.checked_below[row.index]
        if ticked == 0:
            return Qt.Unchecked
        return Qt.Checked if ticked == row.tensors else Qt.PartiallyChecked

    def set_checked(self, row: Row, on: bool):
        """Tick or untick a row and every tensor below it (a range row: its rows); ancestors
        follow (tri-state)."""
        for part in row.children if type(row) is RangeRow else (row,):
            self._check_subtree(part, on)
        self.dataChanged.emit(
            self.index(0, 0), self.index(max(self.rowCount() - 1, 0), 0), [Qt.CheckStateRole]
        )
        self.checks_changed.emit(self.checked_below[0])

    def _check_subtree(self, row: Row, on: bool) -> None:
        first, end = row.index, row.index + row.size  # the subtree, in pre-order
        delta = 0
        for i in range(first, end):
            if self.rows[i].node.tensor is not None and self.checked[i] != on:
                self.checked[i] = on
                delta += 1 if on else -1
        for i in range(end - 1, first - 1, -1):  # children before their parents
            below = self.rows[i]
            self.checked_below[i] = self.checked[i] + sum(
                self.checked_below[c.index] for c in below.children
            )
        ancestor = row.parent
        while ancestor is not None:
            self.checked_below[ancestor.index] += delta
            ancestor = ancestor.parent

    def checked_keys(self) -> list[str]:
        return [self.keys[i] for i, on in enumerate(self.checked) if on]

    def setData(self, index, value, role=Qt.EditRole):
        if role != Qt.CheckStateRole or not index.isValid() or index.column() != KEY:
            return False
        state = Qt.CheckState(value) if not isinstance(value, Qt.CheckState) else value
        self.set_checked(index.internalPointer(), state != Qt.Unchecked)
        return True

    def release(self):
        """Break the rows' parent cycles so closing a tab frees them by reference counting."""
        self.beginResetModel()
        for row in self.rows:
            row.parent = row.up = None
            row.children = row.visible_children = []
        self.top.children = self.top.visible_children = []
        self.rows = []
        self.index_rows = None
        self.endResetModel()

    # --- content ---------------------------------------------------------------------------
    def data(self, index, role=Qt.DisplayRole):
        # roles compared as plain ints: a PySide6 enum comparison is a slow Python call, and a
        # first paint asks for data a few thousand times
        if not index.isValid():
            return None
        row = index.internalPointer()
        node, column = row.node, index.column()
        if role == DISPLAY_ROLE:
            return self._display(row, column)
        if role == USER_ROLE:
            return node.key
        if role == CHECK_ROLE:
            return self.check_state(row) if column == KEY and row.tensors else None
        if role == TOOLTIP_ROLE:
            return self._tooltip(node)
        if role == ALIGNMENT_ROLE:
            return ALIGN_RIGHT if column in (ELEMENTS, SIZE) else None
        if role == FOREGROUND_ROLE:
            muted = (
                node.shared_with
                or node.kind in ("ref", "opaque")
                or column == TYPE
                and node.role == "buffer"
            )
            return self._muted if muted else None
        if role == FONT_ROLE and node.shared_with:
            return self._italic
        return None

    def _display(self, row: Row, column: int):
        node = row.node
        if column == KEY:
            name = shown_name(row.name)
            if node.note.startswith(STATE_OF) and row.parent.name == "state":
                return f"{name} \u2014 {shown_name(node.note[len(STATE_OF) :])}"  # 49 — h.3.w
            if node.kind in ("scalar", "opaque"):
                value = value_text(node)
                return f"{name} = {value}" if value else name
            if node.shared_with:  # here too: at 1366 pixels the Type column is hidden
                return f"{name} (tied to {shown_name(node.shared_with)})"
            return name
        if column == TYPE:
            return shown_name(type_text(node))
        if column == SHAPE:
            return _shape_text(node)
        if column == DTYPE:
            return node.tensor.dtype if node.tensor is not None else ""
        if column == ELEMENTS:
            return f"{row.elements:,}" if row.elements or node.tensor is not None else ""
        if column == SIZE:
            return format_bytes(row.nbytes) if row.nbytes or node.tensor is not None else ""
        if column == DEVICE:
            return shown_name(node.tensor.device) if node.tensor is not None else ""
        return None

    def _tooltip(self, node: Node) -> str:
        lines = [node.key or "(root)"]
        if node.kind in ("module", "object"):
            lines.append(node.type_name)
        if node.note:
            lines.append(node.note)
        if node.shared_with:
            lines.append(f"shares its storage with {node.shared_with}")
        return plain_tooltip(lines)

    # --- filter and sort -------------------------------------------------------------------
    def set_filter(self, text: str) -> int:
        """Show matching keys, their ancestors and their subtrees; returns the match count
        (ValueError for a bad /regex/). The tab computes this in a worker (show_filtered)."""
        filtered = filter_rows(text, self.index_rows)
        if filtered.error:
            raise ValueError(filtered.error)
        return self.show_filtered(filtered)

    def show_filtered(self, filtered: Filtered) -> int:
        """Apply what filter_rows found: no per-row work here, the GUI thread only resets."""
        with paused_gc():
            self.beginResetModel()
            self.generation += 1
            self._visible, self._inside = filtered.visible, filtered.inside
            self.visible_count = filtered.visible_count
            self.endResetModel()
        return filtered.matches

    def sort(self, column, order=Qt.AscendingOrder):
        """Sort every level by a column; the Key column (and column -1, no header sort) is
        listing order (core.text.listing_order: natural where the file sorted keys as text),
        or the file's order while file_order is on. Only what the view shows is sorted here
        (the persistent rows' levels, then each level the relayout asks for); every other
        level when it is first shown (visible_children): 5,000 levels sorted at once held the
        GUI thread for a header click."""
        place = attrgetter("order" if self.file_order else "listed")
        key_funcs = {
            -1: place,
            KEY: place,
            TYPE: lambda r: type_text(r.node),
            SHAPE: lambda r: r.node.tensor.shape if r.node.tensor is not None else (),
            DTYPE: lambda r: r.node.tensor.dtype if r.node.tensor is not None else "",
            ELEMENTS: attrgetter("elements"),
            SIZE: attrgetter("nbytes"),
            DEVICE: lambda r: r.node.tensor.device if r.node.tensor is not None else "",
        }
        key = key_funcs.get(column)
        reverse = order == Qt.DescendingOrder
        placed = "file" if self.file_order else "listed"
        state = (placed if column in (-1, KEY) else column, reverse)
        if key is None or state == self.sorted_by:  # core.rows built it in listing order
            return
        self.sorted_by = state
        self.layoutAboutToBeChanged.emit()
        old = self.persistentIndexList()
        old_rows = [self.row_of(i) for i in old]
        self._order, self._ordered = (key, reverse), set()
        self.generation += 1
        for row in old_rows:
            self.visible_children(row.parent)
        new = []
        for row, index in zip(old_rows, old):
            row = self.current_row(row)  # a range row: the one in its place now
            new.append(
                QModelIndex() if row is None else self.createIndex(row.pos, index.column(), row)
            )
        self.changePersistentIndexList(old, new)
        self.layoutChanged.emit()

    def _put_in_order(self, row: Row) -> None:
        """Sort row's children by the last sort's key (visible_children asks, once a sort)."""
        self._ordered.add(row.index)
        if len(row.children) < 2:
            return
        key, reverse = self._order  # type: ignore[misc]
        try:
            row.children.sort(key=key, reverse=reverse)
        except TypeError:
            row.children.sort(key=lambda r: str(key(r)), reverse=reverse)

    def is_match(self, row: Row) -> bool:
        """Whether the filter matched row's key or one above it (every row: no filter)."""
        return self._inside is None or bool(self._inside[row.index])

    def ancestor_of_match(self, row: Row) -> bool:
        """A row the filter shows only for what matched below it."""
        return (
            self._visible is not None and bool(self._visible[row.index]) and not self.is_match(row)
        )

    def set_file_order(self, on: bool) -> None:
        """Key order as the file stores it (on) or listing order (off); a column sort ends."""
        self.file_order = on
        self.sort(-1)

    def index_of_key(self, key: str) -> QModelIndex:
        position = self.index_rows.position(key)
        return QModelIndex() if position is None else self.index_of_row(self.rows[position])

    def current_row(self, row: Row) -> Row | None:
        """row, or for a range row of an earlier sort or filter the range row in its place
        now (None if its group has no range there any more)."""
        if type(row) is not RangeRow:
            return row
        shown = self.visible_children(row.parent)
        now = shown[row.pos] if row.pos < len(shown) else None
        return now if type(now) is RangeRow else None

    def index_of_row(self, row: Row) -> QModelIndex:
        """row's index if the filter shows it (its ancestors' rows are numbered on the way);
        a range row of an earlier sort or filter: the one in its place now."""
        if row is self.top or self._visible is not None and not self._visible[row.index]:
            return QModelIndex()
        if type(row) is RangeRow:
            above = row.parent
            if above is not self.top and not self.index_of_row(above).isValid():
                return QModelIndex()
            now = self.current_row(row)
            return QModelIndex() if now is None else self.createIndex(now.pos, 0, now)
        ancestors = []
        parent = row.parent
        while parent is not None:
            ancestors.append(parent)
            parent = parent.parent
        for ancestor in reversed(ancestors):  # numbers each level's shown rows
            self.visible_children(ancestor)
        return self.createIndex(row.pos, 0, row)


def load_for_view(path: str):
    """Worker-thread part of opening a tab: read, index rows, compute totals."""
    from ckpt_viewer.core.listing.open import open_checkpoint

    with paused_gc(freeze=True):
        checkpoint = open_checkpoint(path)
        index = build_rows(checkpoint.root)
        checkpoint.scalars()  # cached for the summary pane
        return checkpoint, index, checkpoint_totals(checkpoint)
