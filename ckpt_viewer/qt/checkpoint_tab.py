"""One open checkpoint: warning banner, filterable key tree, summary / tensor / optimizer panes."""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import (
    QEvent,
    QItemSelectionModel,
    QModelIndex,
    QObject,
    QSettings,
    QSize,
    Qt,
    QTimer,
    Signal,
)
from PySide6.QtGui import QAction, QGuiApplication, QResizeEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMenu,
    QPushButton,
    QSplitter,
    QStyle,
    QTabWidget,
    QTextBrowser,
    QTreeView,
    QVBoxLayout,
    QWidget,
)

from ckpt_viewer.core.listing.model import Checkpoint, format_bytes, format_count
from ckpt_viewer.core.listing.optim import find_schedulers
from ckpt_viewer.core.listing.report import describe_value
from ckpt_viewer.core.listing.summary import Totals, scalars_by_importance
from ckpt_viewer.qt import workers
from ckpt_viewer.qt.navigation import FilterKeys, LazyExpander
from ckpt_viewer.qt.optimizer_view import OptimizerView
from ckpt_viewer.qt.plain import as_html, plain_label, shown
from ckpt_viewer.qt.tensor_view import TensorView
from ckpt_viewer.qt.theme import on_base, remember_splitter
from ckpt_viewer.qt.tree_model import (
    COLUMNS,
    DEVICE,
    DTYPE,
    KEY,
    TYPE,
    CheckDelegate,
    Filtered,
    KeyTreeModel,
    RangeRow,
    Row,
    RowIndex,
    filter_rows,
)
from ckpt_viewer.qt.workers import PaneController

AUTO_EXPAND_LIMIT = 2000  # after filtering, expand everything if at most this many rows show
AUTO_OPEN_ROWS = 50  # rows (a screenful) a new tab's opened first levels may show
KEY_MIN_WIDTH = 180
KEY_ROOM = 240  # Device, then Type / Class hide (until chosen) while Key would get less:
# at 180 a nested "num_batches_tracked" was cut beside a Type column
AUTO_HIDDEN = (DEVICE, TYPE)
COLUMN_SAMPLE = 500  # rows whose texts size the columns (measuring all of 50,000 stalls)
FILTER_DELAY_MS = 120  # filtering waits for a pause in typing; the text field never waits


def elements(count: int) -> str:
    """'64 elements', '5.06K (5,058) elements': the exact count beside a rounded one, as the
    parameters row has it."""
    short = format_count(count)
    exact = f" ({count:,})" if short != str(count) else ""
    return f"{short}{exact} element{'' if count == 1 else 's'}"


def summary_html(checkpoint, totals) -> str:
    esc = as_html
    parameters = totals.split["model"] - totals.model_buffers
    rows = [
        ("Path", esc(checkpoint.path)),
        ("Format", esc(checkpoint.format)),
        ("File size", f"{format_bytes(checkpoint.file_bytes)} ({checkpoint.file_bytes:,} bytes)"),
        ("Tensors", f"{totals.tensors:,}"),
        ("Model parameters", f"{format_count(parameters)} ({parameters:,})"),
        *([("Model buffers", elements(totals.model_buffers))] if totals.model_buffers else []),
        ("Optimizer state", elements(totals.split["optimizer_state"])),
        ("Other tensors", elements(totals.split["other"])),
        (
            "All elements",
            f"{format_count(totals.elements)} ({totals.elements:,}), each storage counted once",
        ),
        ("Tensor bytes", format_bytes(totals.bytes)),
    ]
    rows += [(esc(str(k)), esc(describe_value(v))) for k, v in checkpoint.metadata.items()]
    out = ["<h3>Summary</h3><table cellspacing=4>"]
    out += [f"<tr><td><b>{k}</b></td><td>{v}</td></tr>" for k, v in rows]
    out.append(
        "</table><h3>By dtype</h3><table cellspacing=4>"
        "<tr><th align=left>dtype</th><th align=right>tensors</th>"
        "<th align=right>elements</th><th align=right>bytes</th></tr>"
    )
    for dtype, (count, dtype_elements, nbytes) in totals.by_dtype.items():
        out.append(
            f"<tr><td>{esc(dtype)}</td><td align=right>{count:,}</td>"
            f"<td align=right>{dtype_elements:,}</td><td align=right>{format_bytes(nbytes)}</td></tr>"
        )
    out.append("</table>")
    if checkpoint.warnings:
        out.append("<h3>Warnings</h3><ul>")
        out += [f"<li>{esc(w)}</li>" for w in checkpoint.warnings]
        out.append("</ul>")
    scalars = checkpoint.scalars()
    if scalars:
        out.append("<h3>Scalars</h3><table cellspacing=4>")
        out += [
            f"<tr><td>{esc(k)}</td><td>{esc(describe_value(v))}</td></tr>"
            for k, v in scalars_by_importance(scalars)[:2000]
        ]
        out.append("</table>")
    return "".join(out)


@dataclass
class TabParts:
    """What a tab is built from, made in the load worker (prepare_tab): everything here that
    walks the rows or the tree, so that the GUI thread only builds widgets."""

    checkpoint: Checkpoint
    index: RowIndex
    totals: Totals
    column_texts: dict[int, set[str]]  # the texts that size each column but Key
    schedulers: list[tuple[str, dict[str, Any]]]  # the Optimizer pane's LR schedulers
    worst_global: str = ""  # the file's worst global category (the window's toolbar icon)


def prepare_tab(checkpoint: Checkpoint, index: RowIndex, totals: Totals) -> TabParts:
    return TabParts(
        checkpoint,
        index,
        totals,
        column_texts(index, totals),
        find_schedulers(checkpoint),
    )


def column_texts(index: RowIndex, totals: Totals) -> dict[int, set[str]]:
    """Per column but Key: its header and the texts of up to COLUMN_SAMPLE rows spread over
    the file and of the top-level rows (the largest sums), and every dtype the file holds (a
    rare one must not be cut). No Qt: the load worker makes these."""
    rows = index.rows
    step = max(1, len(rows) // COLUMN_SAMPLE)
    sample = rows[1::step] + index.top.children[:COLUMN_SAMPLE]
    display = KeyTreeModel._display  # reads only the row it is given, not the model
    texts = {}
    for column in range(1, len(COLUMNS)):
        found = {display(None, row, column) or "" for row in sample}  # type: ignore[arg-type]
        if column == DTYPE:
            found |= set(totals.by_dtype)
        found.add(COLUMNS[column])
        texts[column] = found
    return texts


class TabController(PaneController):
    """What a file's tab computes besides its panes: the key filter's rows ("filter": a newer
    text supersedes the search running or waiting) and the memory the model needs ("memory")."""

    filtered = Signal(object)  # Filtered
    memory_measured = Signal(object)  # memory_needs' dict

    def __init__(self, checkpoint: Checkpoint, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.checkpoint = checkpoint

    def measure_memory(self) -> None:
        from ckpt_viewer.core.listing.footprint import memory_needs

        self.jobs.start(
            "memory", memory_needs, self.checkpoint, on_result=self.memory_measured.emit
        )

    def filter(self, text: str, index_rows, delay_ms: int = 0) -> None:
        """Search the rows for `text`, after `delay_ms` without a newer text when given."""
        if delay_ms:
            self.jobs.start_later(
                "filter",
                delay_ms,
                filter_rows,
                text,
                index_rows,
                on_result=self.filtered.emit,
            )
        else:
            self.jobs.start("filter", filter_rows, text, index_rows, on_result=self.filtered.emit)


def place(row: Row) -> tuple[int, int]:
    """A row's place in pre-order; a range row (its group's index) right after its group."""
    return (row.index, 1 + row.pos if type(row) is RangeRow else 0)


class CheckpointTab(QWidget):
    """Built on the GUI thread from what the load worker produced."""

    tensor_selected = Signal(str)
    pickle_imports_requested = Signal()
    memory_shown = Signal()  # the Summary's memory section is in place
    filter_applied = Signal(str)  # the tree now shows what this filter text selects

    def _fill_banner(self, checkpoint):
        """Red only when the file names code (with the call and where it sits); classes and
        plain-data globals are quiet information (the globals triage, README.md's Command
        line). The sentences are core's, shared with the Pickle Imports dialog and the CLI."""
        from ckpt_viewer.core.listing.globals import banner_lines

        code, lines = banner_lines(checkpoint)
        if code:
            style = "background: #f8d7da; color: #58151c; border: 1px solid #f1aeb5;"
        else:
            style = "background: palette(alternate-base); border: 1px solid palette(mid);"
        self.banner.setText("\n".join(lines))
        self.banner.setProperty("severity", "code" if code else "info")
        self.banner.setStyleSheet(f"QLabel#unsafeBanner {{ {style} padding: 6px; }}")

    def __init__(self, parts: TabParts, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        checkpoint, index, totals = parts.checkpoint, parts.index, parts.totals
        self.checkpoint, self.totals, self.parts = checkpoint, totals, parts
        self.model = KeyTreeModel(index, self)

        self.banner = QLabel()
        self.banner.setObjectName("unsafeBanner")
        self.banner.setWordWrap(True)
        self.banner.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.banner.setTextFormat(Qt.PlainText)
        if checkpoint.unsafe_globals:
            self._fill_banner(checkpoint)
        self.banner.setVisible(bool(checkpoint.unsafe_globals))
        self.banner_button = QPushButton("Pickle Imports...")
        self.banner_button.setObjectName("bannerPickleImports")
        self.banner_button.setToolTip(
            "Every global, where it sits, whether weights_only loads the file, and how to make it"
        )
        self.banner_button.clicked.connect(self.pickle_imports_requested)
        self.banner_button.setVisible(bool(checkpoint.unsafe_globals))

        self.filter = QLineEdit()
        self.filter.setObjectName("keyFilter")
        self.filter.setPlaceholderText("Filter keys: text, glob (*.weight) or /regex/")
        # the field's own clear button comes with the first key and goes with the last, and each
        # time the layout change climbed to the window's tab widget, which repainted the whole
        # tab (the tensor pane's plot too) in that keystroke's frame; this one stays
        clear = self.filter.addAction(
            self.style().standardIcon(QStyle.SP_LineEditClearButton), QLineEdit.TrailingPosition
        )
        clear.setObjectName("clearFilter")
        clear.setToolTip("Clear the filter")
        clear.setEnabled(False)
        clear.triggered.connect(self.filter.clear)
        self.filter.textChanged.connect(lambda text: clear.setEnabled(bool(text)))
        self.filter.textChanged.connect(self._filter_edited)
        self.unfiltered_expanded: list | None = None  # rows expanded before filtering
        self.kept_row = None  # the selected row, while a filter hides it
        self.controller = TabController(checkpoint, self)
        self.controller.filtered.connect(self.show_filtered)
        self.controller.memory_measured.connect(self._show_memory)
        self.filter_status = plain_label()
        # a fixed size, for the same reason: a label growing with its text ("1,234 matches")
        # made each filter's apply repaint the whole tab; a longer text shows in full on hover
        self.filter_status.setFixedSize(
            self.filter_status.fontMetrics().horizontalAdvance("888,888 matches") + 8,
            self.filter.sizeHint().height(),
        )
        self.revealed = ""  # the key a cleared filter was hiding, while the note says so
        self.ticked = plain_label()
        self.ticked.setObjectName("tickedCount")
        self.model.checks_changed.connect(
            lambda n: self.ticked.setText(f"{n:,} ticked for export (Ctrl+E)" if n else "")
        )

        self.tree = QTreeView()
        self.tree.setObjectName("keyTree")
        self.tree.setModel(self.model)
        self.tree.setItemDelegate(CheckDelegate(self.tree))  # ticks: the model leaves flags() to Qt
        self.tree.setUniformRowHeights(True)
        # the model's dataChanged spans the top rows only: the boxes below the last one (a
        # single group's, a range's rows) would keep their old state until something repainted
        self.model.checks_changed.connect(lambda _: self.tree.viewport().update())
        self.tree.header().setSortIndicator(-1, Qt.AscendingOrder)  # file order until clicked
        self.tree.setSortingEnabled(True)
        self.tree.setSelectionMode(QAbstractItemView.ExtendedSelection)
        self.tree.setContextMenuPolicy(Qt.CustomContextMenu)
        self.tree.customContextMenuRequested.connect(self._context_menu)
        self._set_up_columns()
        self.tree.selectionModel().currentChanged.connect(self._current_changed)
        self._expand_first_levels()
        self.expander = LazyExpander(self.tree)  # View > Expand All
        FilterKeys(
            self.filter,
            self.tree,
            self.first_match,
            lambda index: self.model.is_match(self.model.row_of(index)),
            lambda: self.controller.busy("filter"),
            self.filter_applied,
        )

        self.summary = QTextBrowser()
        self.summary.setObjectName("summaryPanel")
        self.summary.setHtml(summary_html(checkpoint, totals))
        # the tensor and optimizer panes are built by build_panes(), after the tree's first
        # paint: one long GUI-thread step would stall the window
        self.tensor_view = self.optimizer_view = None
        self.panes = QTabWidget()
        self.panes.addTab(self.summary, "Summary")
        self.panes.addTab(QWidget(), "Tensor")
        self.panes.addTab(QWidget(), f"Optimizer ({len(checkpoint.optimizers)})")
        self.bytes_map = self.structure = None  # the Bytes and Structure panes, built when shown
        self.keeping_pane = False  # a selection made from those panes leaves them in view
        self.next_tensor: tuple | None = None  # (row, bring the pane to front): shown next turn
        self.selected_node = None  # the tensor row's node last selected
        self.show_next = QTimer(self)
        self.show_next.setSingleShot(True)
        self.show_next.setInterval(0)
        self.show_next.timeout.connect(self._show_selected)
        self.panes.addTab(QWidget(), "Bytes")
        self.panes.addTab(QWidget(), "Structure")
        self.panes.currentChanged.connect(self._pane_shown)

        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        filter_row = QHBoxLayout()
        filter_row.addWidget(self.filter, 1)
        filter_row.addWidget(self.filter_status)
        filter_row.addWidget(self.ticked)
        left_layout.addLayout(filter_row)
        left_layout.addWidget(self.tree)
        splitter = QSplitter(Qt.Horizontal)
        splitter.setObjectName("checkpointSplit")
        splitter.addWidget(left)
        splitter.addWidget(self.panes)
        splitter.setStretchFactor(0, 2)
        splitter.setStretchFactor(1, 3)
        remember_splitter(splitter, "checkpointTab/split", [600, 766])
        self.splitter = splitter
        # the tab's contents sit in a child it places itself, not in a layout of its own: a
        # change of size inside (a label's new text, a pane's new widget) asked the window's
        # tab widget for a new layout, and that widget then repainted the whole tab, tree
        # and plot, several times per selected tensor; the request now stops at the tab
        self.body = QWidget(self)
        layout = QVBoxLayout(self.body)
        layout.setContentsMargins(4, 4, 4, 4)
        banner_row = QHBoxLayout()
        banner_row.addWidget(self.banner, 1)
        banner_row.addWidget(self.banner_button, 0, Qt.AlignTop)
        layout.addLayout(banner_row)
        layout.addWidget(splitter, 1)

    def sizeHint(self) -> QSize:
        return self.body.sizeHint()

    def minimumSizeHint(self) -> QSize:
        return self.body.minimumSizeHint()

    def resizeEvent(self, event: QResizeEvent) -> None:
        self.body.setGeometry(self.rect())
        super().resizeEvent(event)

    def _set_up_columns(self):
        """Key stretches; the other columns fit their contents (sampled rows, so 50,000 keys
        cost nothing) and can be hidden from the header's menu (remembered)."""
        header = self.tree.header()
        header.setStretchLastSection(False)
        header.setSectionResizeMode(QHeaderView.Interactive)
        header.setMinimumSectionSize(40)
        self.tree.viewport().installEventFilter(self)
        header.sectionResized.connect(self._fit_key_column)
        header.setSectionsMovable(False)
        for column, width in self.content_widths().items():
            header.resizeSection(column, width)
        hidden = QSettings().value("tree/hiddenColumns", [])
        for name in [hidden] if isinstance(hidden, str) else list(hidden or []):
            if name in COLUMNS[1:]:
                header.hideSection(COLUMNS.index(name))
        header.setContextMenuPolicy(Qt.CustomContextMenu)
        header.customContextMenuRequested.connect(self._header_menu)

    def eventFilter(self, watched, event):
        if event.type() == QEvent.Resize and watched is self.tree.viewport():
            self._fit_key_column()
        return super().eventFilter(watched, event)

    def _fit_key_column(self, column=None, *_):
        """Key takes the width the other columns leave, but never less than KEY_MIN_WIDTH
        (then the tree scrolls sideways instead of cutting names to "mode..."). Until the
        user picks columns, a tree that would leave Key less than KEY_ROOM hides Device, then
        Type / Class, so that Elements and Size stay in view."""
        if column == KEY or getattr(self, "_fitting", False):
            return
        self._fitting = True  # hiding and resizing sections report back here
        try:
            self._fit_columns()
        finally:
            self._fitting = False

    def _fit_columns(self):
        header = self.tree.header()
        width = self.tree.viewport().width()
        if not QSettings().value("tree/columnsChosen", False, type=bool):  # no choice made:
            for column in AUTO_HIDDEN:  # narrow trees drop these first
                header.setSectionHidden(column, False)
            for column in AUTO_HIDDEN:
                if self._columns_width() + KEY_ROOM <= width:
                    break
                header.setSectionHidden(column, True)
        header.resizeSection(KEY, max(KEY_MIN_WIDTH, width - self._columns_width()))

    def _columns_width(self) -> int:
        """Width of the shown columns but Key."""
        header = self.tree.header()
        return sum(
            header.sectionSize(c) for c in range(1, len(COLUMNS)) if not header.isSectionHidden(c)
        )

    def content_widths(self) -> dict[int, int]:
        """Width of each column but Key: its widest text of column_texts' (sampled rows, so
        50,000 keys cost nothing)."""
        metrics = self.tree.fontMetrics()
        padding = 2 * self.tree.style().pixelMetric(QStyle.PM_FocusFrameHMargin) + 16
        return {
            column: max(metrics.horizontalAdvance(t) for t in texts) + padding
            for column, texts in self.parts.column_texts.items()
        }

    def _header_menu(self, position):
        header = self.tree.header()
        menu = QMenu(self)
        for column, name in enumerate(COLUMNS[1:], start=1):
            action = menu.addAction(name)
            action.setCheckable(True)
            action.setChecked(not header.isSectionHidden(column))
            action.toggled.connect(lambda on, c=column: self.show_column(c, on))
        menu.exec(header.mapToGlobal(position))

    def show_column(self, column: int, on: bool):
        header = self.tree.header()
        hidden = {c for c in range(len(COLUMNS)) if header.isSectionHidden(c)} ^ (
            {column} if on == header.isSectionHidden(column) else set()
        )
        # saved first: showing a column re-fits the others, which reads this choice
        QSettings().setValue("tree/hiddenColumns", [COLUMNS[c] for c in sorted(hidden)])
        QSettings().setValue("tree/columnsChosen", True)  # an empty list reads back as None
        header.setSectionHidden(column, not on)

    def _expand_first_levels(self):
        """Open the top one or two levels if that shows at most AUTO_OPEN_ROWS rows: laying
        out hundreds of opened rows on the first paint stalled the window."""
        level, depth, revealed = self.model.top.children, -1, 0
        while depth < 1:
            level = [child for row in level for child in row.children]
            revealed += len(level)
            if not level or revealed > AUTO_OPEN_ROWS:
                break
            depth += 1
        if depth >= 0:
            self.tree.expandToDepth(depth)

    def build_panes(self):
        if self.tensor_view is not None:
            return
        self.tensor_view = TensorView(self.checkpoint)
        self.optimizer_view = OptimizerView(self.checkpoint, self.parts.schedulers)
        current = self.panes.currentIndex()
        for index, pane in ((1, self.tensor_view), (2, self.optimizer_view)):
            placeholder, label = self.panes.widget(index), self.panes.tabText(index)
            self.panes.removeTab(index)
            self.panes.insertTab(index, pane, label)
            placeholder.deleteLater()
        self.panes.setCurrentIndex(current)
        self.controller.measure_memory()

    def _show_memory(self, needs: dict):
        """The Summary's last section: what the model needs to run (inspect --by-module's)."""
        from ckpt_viewer.core.listing.footprint import memory_lines

        text = "\n".join(as_html(line) for line in memory_lines(needs) if line)
        # append() scrolls to the end when the view was at it, and a summary shorter than its
        # view is: the file's first facts left the view as the section arrived
        top = self.summary.verticalScrollBar().value()
        # pre-wrap: the long lines wrap rather than the whole summary scrolling sideways
        self.summary.append(
            f'<h3>What it needs to run</h3><pre style="white-space: pre-wrap">{text}</pre>'
        )
        self.summary.verticalScrollBar().setValue(top)
        self.memory_shown.emit()

    def _pane_shown(self, index: int):
        if self.next_tensor is not None:  # a pane chosen since the selection stays in view
            self.next_tensor = (self.next_tensor[0], False)
        if index == 3 and self.bytes_map is None:
            from ckpt_viewer.qt.bytes_map import BytesMapView

            self.bytes_map = BytesMapView(self.checkpoint, self.select_prefix)
            self._place_pane(3, self.bytes_map, "Bytes")
        elif index == 4 and self.structure is None:
            from ckpt_viewer.qt.structure_view import StructureView

            self.structure = StructureView(self.checkpoint, self.select_keys)
            self.structure.highlight_key(self.selected_key())
            self.tensor_selected.connect(self.structure.highlight_key)
            self._place_pane(4, self.structure, "Structure")

    def _place_pane(self, index: int, pane, label: str):
        placeholder = self.panes.widget(index)
        self.panes.blockSignals(True)
        self.panes.removeTab(index)
        self.panes.insertTab(index, pane, label)
        self.panes.setCurrentIndex(index)
        self.panes.blockSignals(False)
        placeholder.deleteLater()

    def select_prefix(self, prefix: str) -> bool:
        """Select the row of a key prefix (a module, a group), else its first tensor; the
        pane that asked stays in view."""
        first = next(
            (k for k, _, _ in self.checkpoint.tensors() if k.startswith(prefix + ".")), None
        )
        return self.select_keys([prefix] + ([first] if first else []), first_found=True)

    def select_keys(self, keys: list, first_found: bool = False) -> bool:
        """Select these keys' rows (the first one current), keeping the current pane in view;
        with first_found only the first key that has a row."""
        self.keeping_pane = True
        if (
            self.filter.text().strip()
            and not any(self.model.index_of_key(k).isValid() for k in keys)
            and any(k in self.model.keys for k in keys)
        ):
            self._unhide(next(k for k in keys if k in self.model.keys))
        try:
            chosen = False
            for key in keys:
                index = self.model.index_of_key(key)
                if not index.isValid():
                    continue
                flags = QItemSelectionModel.Select | QItemSelectionModel.Rows
                if not chosen:
                    self.tree.scrollTo(index)
                    flags = QItemSelectionModel.ClearAndSelect | QItemSelectionModel.Rows
                    self.tree.selectionModel().setCurrentIndex(index, flags)
                    chosen = True
                    if first_found:
                        break
                else:
                    self.tree.selectionModel().select(index, flags)
            return chosen
        finally:
            self.keeping_pane = False

    def cancel(self):
        """Stop the filter's search and the tensor view's computation, if any (closing the tab
        or the window)."""
        self.controller.cancel()
        self.show_next.stop()
        self.next_tensor = None
        if self.tensor_view is not None:
            self.tensor_view.cancel()
            self.optimizer_view.cancel()

    def release(self):
        """Closing: stop work and let what the load built be freed (see paused_gc)."""
        self.cancel()
        self.tree.setModel(None)
        self.model.release()
        gc.unfreeze()

    # --- filter ----------------------------------------------------------------------------
    def apply_filter(self, text: str):
        """Filter: the rows are found in a worker (core.rows.filter_rows), and a newer text
        supersedes a search still running or waiting. The unfiltered tree's expansion is kept
        while a filter is on and restored when it is cleared; the selected key stays selected
        whenever it is still shown."""
        if not text.strip():  # nothing to search: the whole tree at once
            self.controller.cancel("filter")
            self.show_filtered(filter_rows(text, self.model.index_rows))
            return
        self.controller.filter(text, self.model.index_rows)

    def _filter_edited(self, text: str):
        """Typing waits for a pause; clearing the field brings the whole tree back at once."""
        if text.strip():
            if self.unfiltered_expanded is None:  # on the first key, not in the apply's frame
                self.unfiltered_expanded = self.expanded_rows()
            self.controller.filter(text, self.model.index_rows, FILTER_DELAY_MS)
        else:
            self.apply_filter(text)

    def show_filtered(self, filtered: Filtered):
        """Apply a filter's rows (GUI thread: a model reset, then expansion and selection)."""
        text = filtered.text
        if filtered.error:
            self.filter_status.setText(filtered.error)
            self.filter_status.setToolTip(filtered.error)
            self.filter.setStyleSheet(f"QLineEdit {{ color: {on_base('#b02a37').name()}; }}")
            self.filter_applied.emit(text)
            return
        # a key hidden by one filter is selected again when a later one (or none) shows it
        selected = self.kept_row = self.selected_row() or self.kept_row
        if text.strip() and self.unfiltered_expanded is None:
            self.unfiltered_expanded = self.expanded_rows()
        matches = self.model.show_filtered(filtered)
        if self.filter.styleSheet():  # setting one re-polishes the field, even an empty one
            self.filter.setStyleSheet("")
        self.filter_status.setText(
            f"{matches:,} match{'es' if matches != 1 else ''}" if text.strip() else ""
        )
        self.filter_status.setToolTip("")
        if text.strip() and self.model.visible_count <= AUTO_EXPAND_LIMIT:
            self.tree.expandAll()
        elif text.strip():
            self._expand_to_matches()
        elif not text.strip() and self.unfiltered_expanded is not None:
            for row in self.unfiltered_expanded:
                index = self.model.index_of_row(row)
                if index.isValid():
                    self.tree.setExpanded(index, True)
            self.unfiltered_expanded = None
        if selected is not None:
            index = self.model.index_of_row(selected)
            if index.isValid():
                self.tree.selectionModel().setCurrentIndex(
                    index, QItemSelectionModel.ClearAndSelect | QItemSelectionModel.Rows
                )
        self.filter_applied.emit(text)

    def _expand_to_matches(self) -> None:
        """Too many rows to expand them all: open the groups leading to matches, level by
        level, until AUTO_EXPAND_LIMIT rows show (1,000 matches are not one closed node)."""
        model, level, revealed = self.model, [QModelIndex()], 0
        while level and revealed < AUTO_EXPAND_LIMIT:
            below = []
            for parent in level:
                for position in range(model.rowCount(parent)):
                    index = model.index(position, 0, parent)
                    if model.ancestor_of_match(model.row_of(index)):
                        below.append(index)
            for index in below:
                if revealed >= AUTO_EXPAND_LIMIT:
                    break
                self.tree.setExpanded(index, True)
                revealed += model.rowCount(index)
            level = below

    def first_match(self) -> QModelIndex:
        """The first row (top to bottom) that the filter matched; the first row if no filter."""
        index = self.model.index(0, 0)
        while index.isValid() and not self.model.is_match(self.model.row_of(index)):
            if not self.tree.isExpanded(index):
                self.tree.setExpanded(index, True)  # ancestors lead to a match
            index = self.tree.indexBelow(index)
        return index

    def expanded_rows(self) -> list:
        """Rows expanded in the tree, parents first. The view keeps them as persistent indexes:
        asking those (a few dozen) spares walking every child of the expanded groups (5,000
        isExpanded calls under an open big group, in the first keystroke's frame)."""
        model, expanded = self.model, self.tree.isExpanded
        rows = {
            place(index.internalPointer()): index.internalPointer()
            for index in model.persistentIndexList()
            if index.column() == 0 and expanded(index)
        }
        return [rows[i] for i in sorted(rows)]

    def focus_filter(self):
        self.filter.setFocus()
        self.filter.selectAll()

    # --- selection -------------------------------------------------------------------------
    def selected_key(self) -> str:
        index = self.tree.currentIndex()
        return index.data(Qt.UserRole) if index.isValid() else ""

    def selected_row(self):
        index = self.tree.currentIndex()
        return self.model.row_of(index) if index.isValid() else None

    def select_key(self, key: str, show: bool = True) -> bool:
        """Select key's row (show: also scroll to it), clearing a filter that hides it and
        saying so beside the filter."""
        index = self.model.index_of_key(key)
        if not index.isValid() and key in self.model.keys and self.filter.text().strip():
            self._unhide(key)
            index = self.model.index_of_key(key)
        if not index.isValid():
            return False
        if show:
            self.tree.scrollTo(index)
        self.tree.selectionModel().setCurrentIndex(
            index, QItemSelectionModel.ClearAndSelect | QItemSelectionModel.Rows
        )
        return True

    def _unhide(self, key: str) -> None:
        """Clear the filter that hides key, and say so beside it: briefly (the field keeps its
        width), in full on hover, until another row is selected."""
        hidden_by = self.filter.text()
        self.filter.setText("")  # applied at once (_filter_edited)
        self.filter_status.setText("filter cleared")
        self.filter_status.setToolTip(f'filter "{shown(hidden_by)}" cleared to show {shown(key)}')
        self.revealed = key

    def largest_tensor_key(self) -> str:
        best = max(self.checkpoint.tensors(), key=lambda item: item[1].nbytes, default=None)
        return best[0] if best else ""

    def _current_changed(self, current, _previous):
        row = self.model.row_of(current) if current.isValid() else None
        if row is not None and self.revealed and row.node.key != self.revealed:
            self.revealed = ""  # the note was about another row
            self.filter_status.setText("")
            self.filter_status.setToolTip("")
        if row is None or row.node.tensor is None:
            return
        if row.node is self.selected_node:  # reselected after filtering: nothing new
            return
        self.selected_node = row.node
        # the tensor pane follows in the next turn of the event loop: opening a big group to
        # show the row, then the pane's new contents and their paint, in one step held the
        # window past a frame (a run of selections shows only the last)
        self.next_tensor = (row, not self.keeping_pane)
        if workers.is_synchronous():
            self._show_selected()
        else:
            self.show_next.start()
        self.tensor_selected.emit(row.node.key)

    def _show_selected(self) -> None:
        if self.next_tensor is None:
            return
        (row, to_front), self.next_tensor = self.next_tensor, None
        if to_front:
            self.panes.setCurrentWidget(self.tensor_view)
        self.tensor_view.show_tensor(row.node)

    # --- context menu ----------------------------------------------------------------------
    def _context_menu(self, position):
        index = self.tree.indexAt(position)
        if not index.isValid():
            return
        row = self.model.row_of(index)
        menu = QMenu(self)
        copy_key = QAction("Copy key path", menu)
        copy_key.triggered.connect(lambda: QGuiApplication.clipboard().setText(row.node.key))
        menu.addAction(copy_key)
        if row.node.tensor is not None:
            shape = str(list(row.node.tensor.shape))
            copy_shape = QAction("Copy shape", menu)
            copy_shape.triggered.connect(lambda: QGuiApplication.clipboard().setText(shape))
            menu.addAction(copy_shape)
        menu.addSeparator()
        expand = QAction("Expand subtree", menu)
        expand.triggered.connect(lambda: self.tree.expandRecursively(index.siblingAtColumn(0)))
        menu.addAction(expand)
        menu.exec(self.tree.viewport().mapToGlobal(position))

    def copy_selected_key(self):
        key = self.selected_key()
        if key:
            QGuiApplication.clipboard().setText(key)
