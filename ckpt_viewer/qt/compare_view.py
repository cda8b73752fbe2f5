"""Tools > Compare with...: two checkpoints key by key. Each status has a symbol, a name and a
colour (never colour alone), listed in a legend whose buttons filter the table and whose counts
add up; a selected tensor gets its value histograms (A filled, B outlined, so neither hides the
other), the histogram of a - b, and a sampled a-vs-b scatter. Above the table: the key rules
the files are aligned under (found by the alignment search) with pickers to change them, and
the telling scalars (epoch, step, loss, lr) side by side."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import numpy as np
from PySide6.QtCore import (
    QAbstractTableModel,
    QModelIndex,
    QObject,
    QSortFilterProxyModel,
    Qt,
    QTimer,
    Signal,
)
from PySide6.QtGui import QBrush, QColor, QPalette, QResizeEvent, QShowEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QBoxLayout,
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSplitter,
    QTableView,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ckpt_viewer.core.analysis.diff import (
    SHAPE,
    STATUS_ORDER,
    STATUS_TEXT,
    DiffReport,
    Side,
    TensorDiff,
    diff,
    histogram_pair,
    pair_detail,
)
from ckpt_viewer.core.listing.keys import WRAPPERS
from ckpt_viewer.core.listing.model import Checkpoint
from ckpt_viewer.core.listing.text import plural
from ckpt_viewer.qt import workers
from ckpt_viewer.qt.compare_rows import (
    counts_text,
    is_identical,
    status_label,
    table_rows,
    view_rows,
)
from ckpt_viewer.qt.plain import as_html, plain_label, shown
from ckpt_viewer.qt.plotting import StepBuild, plot_widget_steps
from ckpt_viewer.qt.theme import on_base, style_plot

COLUMNS = ("Key", "Status", "A", "B", "max |a-b|", "mean |a-b|", "rel. L2", "cosine")
SORT_ROLE, STATUS_ROLE = Qt.UserRole + 1, Qt.UserRole + 2
STATUS_COLOURS = {
    "identical": QColor(90, 90, 90),
    "changed": QColor(200, 110, 0),
    "dtype+identical": QColor(150, 60, 160),
    "dtype+changed": QColor(150, 60, 160),
    "shape": QColor(200, 40, 40),
    "shard": QColor(200, 40, 40),
    "only in A": QColor(40, 100, 200),
    "only in B": QColor(20, 130, 100),
}
DISPLAY, FOREGROUND, TOOLTIP, ALIGNMENT = (
    role.value for role in (Qt.DisplayRole, Qt.ForegroundRole, Qt.ToolTipRole, Qt.TextAlignmentRole)
)
RIGHT_ALIGNED = (Qt.AlignRight | Qt.AlignVCenter).value
OVERLAY_BINS = 128
COLOUR_A, COLOUR_B = (60, 100, 200), (230, 120, 20)


class ScalarTable(QTreeWidget):
    """Scalars side by side (Scalar, A, B, =), each column as wide as its longest text plus a
    gap, so no value touches the next; in a narrow pane the Scalar column gives way to at most
    SCALAR_SHARE of the width and A and B to VALUE_SHARE each, eliding in the middle (the whole
    text on hover). Never wider than the pane: no horizontal scroll bar eats a row."""

    SCALAR_SHARE, VALUE_SHARE, GAP = 0.4, 0.25, 16

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("compareScalars")
        self.setHeaderLabels(["Scalar", "A", "B", ""])
        self.setRootIsDecorated(False)
        self.setUniformRowHeights(True)
        self.setTextElideMode(Qt.ElideMiddle)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.header().setStretchLastSection(False)
        self.header().setSectionResizeMode(QHeaderView.Interactive)

    def fit_columns(self) -> None:
        width = self.viewport().width()
        shares = (self.SCALAR_SHARE, self.VALUE_SHARE, self.VALUE_SHARE, 1.0)
        for column, share in enumerate(shares):
            wanted = max(self.sizeHintForColumn(column), self.header().sectionSizeHint(column))
            self.setColumnWidth(column, min(wanted + self.GAP, int(width * share)))

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self.fit_columns()


class CompareModel(QAbstractTableModel):
    """The report as rows of plain tuples, read by the view on demand: building thousands of
    items up front stalled the window."""

    def __init__(self, report, parent=None, labels=None, rows: list[tuple] | None = None):
        """`rows`: table_rows' (made in a worker), else made here from `labels`."""
        super().__init__(parent)
        self.rows = table_rows(report, labels or {}) if rows is None else rows
        # a side ported from Keras / Flax: the rule that made each pair's torch tensor
        self.columns = COLUMNS + ("Rule",) if report.ported else COLUMNS
        self.brushes = {
            status: QBrush(on_base(colour)) for status, colour in STATUS_COLOURS.items()
        }

    def match(self, row: int) -> TensorDiff | None:
        """The TensorDiff of a row that has plots (in both files, one shape), else None."""
        match = self.rows[row][3]
        return match if match is not None and match.status != "shape" else None

    def rowCount(self, parent=QModelIndex()):
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent=QModelIndex()):
        return 0 if parent.isValid() else len(self.columns)

    def headerData(self, section, orientation, role=Qt.DisplayRole):
        if orientation == Qt.Horizontal and role == Qt.DisplayRole:
            return self.columns[section]
        return None

    def data(self, index, role=DISPLAY):
        # plain ints, compared first to the common roles: a paint asks ~2,500 times, and
        # comparing to Qt's enums is a slow Python call each time
        if not index.isValid():
            return None
        texts, sort_values, status, _ = self.rows[index.row()]
        if role == DISPLAY:
            return texts[index.column()]
        if role == SORT_ROLE:
            return sort_values[index.column()]
        if role == STATUS_ROLE:
            return status
        column = index.column()
        if role == FOREGROUND and column == 1:
            return self.brushes[status]
        if role == TOOLTIP and column == 1:
            return STATUS_TEXT[status]
        if role == ALIGNMENT and 4 <= column < len(COLUMNS):
            return RIGHT_ALIGNED
        return None

    def widest(self, column: int, metrics, limit: int = 500) -> int:
        """The widest of the first `limit` texts of a column (a bounded ResizeToContents)."""
        texts = {row[0][column] for row in self.rows[:limit]} | {self.columns[column]}
        return max(metrics.horizontalAdvance(text) for text in texts)


class CompareFilter(QSortFilterProxyModel):
    """Text filter on the key (and the sort), over a proxy that hides the statuses the legend
    unticks (or 'only differences'). Both are Qt's own filters: a Python filterAcceptsRow was
    called for each of 50,000 rows whenever the table was given its model."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.hidden: set[str] = set()
        self.statuses = QSortFilterProxyModel(self)
        self.statuses.setFilterRole(STATUS_ROLE)
        self.statuses.setFilterKeyColumn(1)
        self.setFilterCaseSensitivity(Qt.CaseInsensitive)
        self.setFilterKeyColumn(0)
        self.setSortRole(SORT_ROLE)
        super().setSourceModel(self.statuses)

    def setSourceModel(self, model) -> None:  # noqa: N802 - Qt's name
        self.statuses.setSourceModel(model)

    def to_table(self, index: QModelIndex) -> QModelIndex:
        return self.statuses.mapToSource(self.mapToSource(index))

    def from_table(self, index: QModelIndex) -> QModelIndex:
        return self.mapFromSource(self.statuses.mapFromSource(index))

    def set_hidden(self, hidden: set):
        self.hidden = set(hidden)
        shown_ones = [re.escape(s) for s in STATUS_ORDER if s not in self.hidden]
        pattern = "" if not self.hidden else f"^(?:{'|'.join(shown_ones)})$" if shown_ones else "$^"
        self.statuses.setFilterRegularExpression(pattern)


def detail_job(sides: tuple, match: TensorDiff):
    """Generator: both value histograms on one range, then a - b and the (a, b) sample. The
    tensors are looked up here: a file's first lookup indexes all its keys."""
    a, b = sides[0].find(match.key_a).tensor, sides[1].find(match.key_b).tensor
    pair = histogram_pair(a, b, OVERLAY_BINS)
    yield 0.1
    detail = yield from pair_detail(a, b, match.max_abs, OVERLAY_BINS)
    return pair, detail


FIRST_PAINTS_MS = 50  # the plots' build starts this long after the first showing
# a piece of a click's plots runs in a turn of its own: a zero-delay call was a posted event,
# run in the same pass as those the last piece posted (its repaints included), so every piece
# of a click fell in one stall
NEXT_TURN_MS = 1
MAX_BOX_CHARACTERS = 40  # a root or prefix longer than this is elided in its picker
KEY_SHARE = 0.45  # of a narrow comparison table's width, the least its key column gets


def _combo(name: str, tooltip: str, editable: bool = False) -> QComboBox:
    box = QComboBox()
    box.setObjectName(name)
    box.setToolTip(tooltip)
    box.setEditable(editable)
    box.setMinimumContentsLength(12)
    box.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
    # the text's length sets the width it asks for (_show_alignment); a narrow pane may
    # still shrink it back to 12 characters
    box.setMinimumWidth(box.minimumSizeHint().width())
    return box


def realigned_job(a: Checkpoint, b: Checkpoint, side_a: Side, side_b: Side):
    """Generator: the diff under other key rules, then its table's rows."""
    report = yield from diff(a, b, side_a, side_b)
    return report, view_rows(report, a, b), report.status_counts()


class CompareController(workers.PaneController):
    """What a comparison computes: both files compared again under other key rules ("diff"),
    and the selected tensor's plots' data ("detail": a newer selection supersedes it)."""

    compared = Signal(object, object, object)  # the DiffReport asked for, its rows and counts
    compare_failed = Signal(str)
    compare_progressed = Signal(float)
    detailed = Signal(str, object)  # key, (both histograms, PairDetail)
    detail_failed = Signal(str, str)  # key, message

    def __init__(
        self, checkpoint_a: Checkpoint, checkpoint_b: Checkpoint, parent: QObject | None = None
    ) -> None:
        super().__init__(parent)
        self.a, self.b = checkpoint_a, checkpoint_b

    def compare_under(self, side_a: Side, side_b: Side) -> None:
        self.jobs.start(
            "diff",
            realigned_job,
            self.a,
            self.b,
            side_a,
            side_b,
            on_result=lambda result: self._compared(*result),
            on_error=self.compare_failed.emit,
            on_progress=self.compare_progressed.emit,
        )

    def _compared(self, report: DiffReport, rows: list[tuple], counts: dict) -> None:
        self.jobs.cancel("detail")  # for a row of the old report
        self.compared.emit(report, rows, counts)

    def detail(self, key: str, match: TensorDiff, sides: tuple) -> None:
        """The plots' data of `match` (a TensorDiff of the checkpoints `sides`: both files, or
        a Keras/Flax side ported to torch keys), shown as `key`."""
        self.jobs.start(
            "detail",
            detail_job,
            sides,
            match,
            on_result=lambda result: self.detailed.emit(key, result),
            on_error=lambda message: self.detail_failed.emit(key, message),
        )


class CompareView(QWidget):
    overlay_ready = Signal(str)
    realigned = Signal()  # the files were compared again under other key rules

    built = Signal()  # every widget made (a view built in steps: it may be shown now)

    def __init__(
        self,
        report,
        checkpoint_a,
        checkpoint_b,
        plotting,
        request_plotting=None,
        parent=None,
        rows: list[tuple] | None = None,
        counts: dict | None = None,
        in_steps: bool = False,
    ):
        """`rows`, `counts`: view_rows(report, a, b) and report.status_counts(), when a worker
        has made them. `in_steps`: the widgets are made a few per event-loop turn (`built`
        once all are; 50,000 rows' table and its panes in one call held the window over a
        frame), else here."""
        super().__init__(parent)
        self.setObjectName("compareView")
        self.report, self.a, self.b = report, checkpoint_a, checkpoint_b
        self.plotting = plotting  # returns the pyqtgraph module, or None
        # False while the import is under way (then calls plotting_ready() once it ends)
        self.request_plotting = request_plotting
        self.controller = CompareController(checkpoint_a, checkpoint_b, self)
        self.pending = None
        self.shown_once = False
        self.drawing: Iterator[None] | None = None  # the selected tensor's plots being drawn
        self.plot = None
        self.plots = StepBuild(self, self._plot_steps, self._plots_built)
        self.names = (
            os.path.basename(report.path_a.rstrip("/")),
            os.path.basename(report.path_b.rstrip("/")),
        )
        self.counts = report.status_counts() if counts is None else counts
        self.identical = is_identical(report, self.counts)
        self.asked: tuple[Side, Side] | None = None  # the rules being compared under now
        self.building = StepBuild(self, lambda: self._build_steps(rows), self.built.emit)
        if in_steps:
            self.building.start()
        else:
            self.building.finish()

    def _build_steps(self, rows: list[tuple] | None) -> Iterator[None]:
        report = self.report
        self.summary = QLabel(self._summary_html(report))
        self.summary.setObjectName("compareSummary")
        self.summary.setWordWrap(True)
        self.alignment_bar = self._build_alignment_bar()
        self.scalars = ScalarTable()
        self.filter = QLineEdit()
        self.filter.setPlaceholderText("Filter keys")
        self.filter.setClearButtonEnabled(True)
        self.only = QCheckBox("only differences")
        self.only.setObjectName("onlyDifferences")
        self.legend = QWidget()
        self.legend.setObjectName("compareLegend")
        self.legend_row = QHBoxLayout(self.legend)
        self.legend_row.setContentsMargins(0, 0, 0, 0)
        self.legend_row.setSpacing(14)
        self._fill_legend()
        self._fill_scalars()
        yield
        if rows is None:
            rows = view_rows(report, self.a, self.b)
        self.model = CompareModel(report, self, rows=rows)
        self.proxy = CompareFilter(self)
        self.proxy.setSourceModel(self.model)
        # a table, not a tree: QTreeView lays out every one of 50,000 rows when first shown
        self.table = QTableView()
        self.table.setObjectName("compareTree")
        header = self.table.verticalHeader()
        header.hide()
        header.setSectionResizeMode(QHeaderView.Fixed)  # one height: no row is measured
        header.setMinimumSectionSize(1)
        header.setDefaultSectionSize(self.table.fontMetrics().height() + 6)
        self.table.setShowGrid(False)
        self.table.setWordWrap(False)
        self.table.setModel(self.proxy)
        self.table.horizontalHeader().setSortIndicator(-1, Qt.AscendingOrder)  # file order
        self.table.setSortingEnabled(True)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SingleSelection)
        self._size_columns()
        self.table.selectionModel().currentChanged.connect(self._selected)
        self.filter.textChanged.connect(self.proxy.setFilterFixedString)
        self.only.toggled.connect(self._only_toggled)
        yield

        self.plot_status = plain_label("")
        self.plot_status.setObjectName("compareDetailStatus")
        self.plot_holder = QHBoxLayout()
        self.detail = QWidget()
        self.detail.setObjectName("compareDetail")
        detail_layout = QVBoxLayout(self.detail)
        detail_layout.setContentsMargins(0, 0, 0, 0)
        detail_layout.addWidget(self.plot_status)
        detail_layout.addLayout(self.plot_holder, 1)
        self.detail.setVisible(False)  # no empty pane until a tensor is selected
        top = QHBoxLayout()
        top.addWidget(self.filter, 1)
        top.addWidget(self.only)
        upper = QWidget()
        upper_layout = QVBoxLayout(upper)
        upper_layout.setContentsMargins(0, 0, 0, 0)
        upper_layout.addLayout(top)
        upper_layout.addWidget(self.legend)
        upper_layout.addWidget(self.table, 1)
        self.splitter = QSplitter(Qt.Vertical)
        self.splitter.addWidget(upper)
        self.splitter.addWidget(self.detail)
        self.splitter.setStretchFactor(0, 3)
        self.splitter.setStretchFactor(1, 2)
        layout = QVBoxLayout(self)
        layout.addWidget(self.summary)
        layout.addWidget(self.alignment_bar)
        layout.addWidget(self.scalars)
        layout.addWidget(self.splitter, 1)
        self.controller.compared.connect(self._show_report)
        self.controller.compare_failed.connect(self._compare_failed)
        self.controller.compare_progressed.connect(
            lambda done: self.alignment_label.setText(f"Comparing again... {done:.0%}")
        )
        self.controller.detailed.connect(self._draw)
        self.controller.detail_failed.connect(
            lambda key, message: self.plot_status.setText(f"{key}: {message}")
        )
        yield
        self.ensurePolished()  # the style's polish of every child: not in the first show

    def _summary_html(self, report: DiffReport) -> str:
        """The counts; load_state_dict's three lists as lengths (those of
        report.load_state_dict_view(), from the counts: no walk of the tensors)."""
        names, counts = self.names, self.counts
        return (
            f"<b>A</b> {as_html(names[0])} &nbsp; <b>B</b> {as_html(names[1])}<br>"
            f"{as_html(counts_text(counts))}<br>"
            f"load_state_dict(strict=True) of B into A: {len(report.only_a)} missing, "
            f"{len(report.only_b)} unexpected, "
            f"{plural(counts[SHAPE], 'size mismatch')}."
            + (" <b>Identical.</b>" if self.identical else "")
            + self._ported_html(report)
        )

    @staticmethod
    def _ported_html(report: DiffReport) -> str:
        """Which side was ported to torch keys, and the variables no porting rule takes."""
        if not report.ported:
            return ""
        text = f"<br>{report.ported} ported to PyTorch keys and layouts (the Rule column)."
        if report.unmatched:
            names = ", ".join(list(report.unmatched)[:5])
            more = " ..." if len(report.unmatched) > 5 else ""
            text += as_html(
                f" {plural(len(report.unmatched), 'variable')} no rule takes: {names}{more}"
            )
        return text

    # --- the key rules: alignment pickers and the scalars --------------------------------------
    def _build_alignment_bar(self) -> QWidget:
        """Root and prefix to strip per side, set to the rules compared under; a change
        compares again."""
        bar = QWidget()
        lines = QVBoxLayout(bar)
        lines.setContentsMargins(0, 0, 0, 0)
        self.alignment_label = plain_label("")
        self.alignment_label.setObjectName("compareAlignment")
        self.alignment_label.setWordWrap(True)
        lines.addWidget(self.alignment_label)  # its own line: the pickers keep the row's width
        row = QHBoxLayout()
        lines.addLayout(row)
        # A's and B's pickers side by side, one above the other in a pane too narrow for both
        # (squeezed into one row, the labels were drawn over the boxes' texts)
        self.sides = QBoxLayout(QBoxLayout.LeftToRight)
        self.sides.setContentsMargins(0, 0, 0, 0)
        row.addLayout(self.sides)
        self.root_boxes, self.strip_boxes = {}, {}
        for label, roots in zip("AB", self.report.roots):
            root = _combo(f"compareRoot{label}", f"The subtree of {label} compared")
            for key in roots:
                root.addItem(shown(key) if key else "whole file", key)
            strip = _combo(
                f"compareStrip{label}", f"A prefix removed from {label}'s keys", editable=True
            )
            strip.addItems(["", *WRAPPERS])
            strip.lineEdit().setPlaceholderText("no prefix")
            side = QHBoxLayout()
            side.addWidget(QLabel(f"<b>{label}</b> root"))
            side.addWidget(root)
            side.addWidget(QLabel("strip"))
            side.addWidget(strip)
            side.addStretch(1)
            self.sides.addLayout(side)
            self.root_boxes[label], self.strip_boxes[label] = root, strip
        self.use_suggestion = QPushButton()
        self.use_suggestion.setObjectName("compareUseSuggestion")
        self.use_suggestion.clicked.connect(self._use_suggestion)
        row.addWidget(self.use_suggestion)
        row.addStretch(1)
        self._show_alignment()
        for label in ("A", "B"):
            self.root_boxes[label].activated.connect(self._realign)
            self.strip_boxes[label].activated.connect(self._realign)
            self.strip_boxes[label].lineEdit().editingFinished.connect(self._realign)
        return bar

    def _show_alignment(self) -> None:
        """Pickers and words for the report's rules; the suggestion when it beats them."""
        alignment, suggestion = self.report.alignment, self.report.suggestion
        sides = {"A": alignment.a, "B": alignment.b} if alignment else {}
        for label, side in sides.items():
            root, strip = self.root_boxes[label], self.strip_boxes[label]
            if root.findData(side.root) < 0:
                root.addItem(shown(side.root), side.root)
            root.setCurrentIndex(root.findData(side.root))
            strip.setCurrentText(side.strip_prefix)
            # sized to their texts: "optimizer_state_dict." showed as "ptimizer_state_dict."
            texts = [root.itemText(i) for i in range(root.count())]
            for box, longest in ((root, max(map(len, texts))), (strip, len(side.strip_prefix))):
                box.setMinimumContentsLength(min(max(12, longest + 1), MAX_BOX_CHARACTERS))
        self.alignment_label.setText(
            shown(f"Keys aligned: {alignment.text} ({plural(alignment.common, 'key')} in both).")
            if alignment
            else ""
        )
        self.use_suggestion.setVisible(suggestion is not None)
        if suggestion is not None:
            self.use_suggestion.setText(
                shown(f"Use {suggestion.text} ({plural(suggestion.common, 'key')} in both)")
            )

    def picked_sides(self) -> tuple[Side, Side]:
        side_a, side_b = (
            Side(
                self.root_boxes[label].currentData() or "",
                self.strip_boxes[label].currentText().strip(),
            )
            for label in ("A", "B")
        )
        return side_a, side_b

    def _realign(self, *_: object) -> None:
        alignment = self.report.alignment
        sides = self.picked_sides()
        if sides == self.asked or alignment is not None and sides == (alignment.a, alignment.b):
            return  # a pick both activates and finishes editing: compare once
        self.compare_under(*sides)

    def _use_suggestion(self) -> None:
        if self.report.suggestion is not None:
            self.compare_under(self.report.suggestion.a, self.report.suggestion.b)

    def compare_under(self, side_a: Side, side_b: Side) -> None:
        """Compare both files again under these rules (in a worker)."""
        self.asked = (side_a, side_b)
        self.alignment_label.setText("Comparing again...")
        self.controller.compare_under(side_a, side_b)

    def _compare_failed(self, message: str) -> None:
        self.asked = None
        self._show_alignment()
        self.alignment_label.setText(shown(f"Cannot compare so: {message}"))

    def _show_report(self, report: DiffReport, rows: list[tuple], counts: dict) -> None:
        self.asked = None
        self.report = report
        self.counts, self.identical = counts, is_identical(report, counts)
        self.summary.setText(self._summary_html(report))
        self._show_alignment()
        self._fill_scalars()
        self._fill_legend()
        old = self.model
        self.model = CompareModel(report, self, rows=rows)
        self.proxy.setSourceModel(self.model)
        old.deleteLater()
        self._size_columns()
        self._only_toggled(self.only.isChecked())
        self.plot_status.setText("")
        self.realigned.emit()

    def _fill_scalars(self) -> None:
        self.scalars.clear()
        for pair in self.report.scalars:
            a, b = ("" if v is None else shown(repr(v)) for v in (pair.a, pair.b))
            key = shown(pair.key)
            # a scalar one file lacks read "≠" beside an empty cell: as if its value differed
            mark = "only in A" if pair.b is None else "only in B" if pair.a is None else ""
            item = QTreeWidgetItem([key, a, b, mark or ("=" if pair.same else "\u2260")])
            for column, text in enumerate((key, a, b)):
                item.setToolTip(column, text)
            item.setToolTip(3, mark or ("the same" if pair.same else "different"))
            self.scalars.addTopLevelItem(item)
        self.scalars.fit_columns()
        self.scalars.setVisible(bool(self.report.scalars))
        if self.report.scalars:  # as tall as its rows, up to six (then it scrolls)
            rows = min(len(self.report.scalars), 6)
            self.scalars.setFixedHeight(
                self.scalars.header().sizeHint().height()
                + rows * self.scalars.sizeHintForRow(0)
                + 2 * self.scalars.frameWidth()
                + 2
            )

    # --- the table and its legend ------------------------------------------------------------
    def _fill_legend(self) -> None:
        """One toggle per status present: symbol, name, count, in the status colour."""
        row = self.legend_row
        while row.count():
            widget = row.takeAt(0).widget()
            if widget is not None:
                widget.deleteLater()
        row.addWidget(QLabel("Show:"))
        self.legend_buttons = {}
        for status in STATUS_ORDER:
            if not self.counts[status]:
                continue
            button = QCheckBox(f"{status_label(status)}  {self.counts[status]:,}")
            button.setObjectName(f"legend_{status}")
            button.setChecked(True)
            button.setToolTip(f"Show or hide keys whose status is '{STATUS_TEXT[status]}'")
            palette = button.palette()  # a palette, not a style sheet: those cost
            palette.setColor(QPalette.WindowText, on_base(STATUS_COLOURS[status]))
            button.setPalette(palette)
            button.toggled.connect(self._legend_toggled)
            row.addWidget(button)
            self.legend_buttons[status] = button
        row.addStretch(1)

    def _size_columns(self):
        """Status and metrics fit their widest text; the key takes the rest."""
        header = self.table.horizontalHeader()
        header.setStretchLastSection(False)
        metrics = self.table.fontMetrics()
        padding = 3 * metrics.horizontalAdvance("M")  # cell margins and the sort arrow
        for column in range(len(self.model.columns)):
            header.setSectionResizeMode(column, QHeaderView.Interactive)
            if column:
                self.table.setColumnWidth(column, self.model.widest(column, metrics) + padding)
        self._fit_key_column()

    def _fit_key_column(self) -> None:
        """The key takes what the other columns leave, and at least KEY_SHARE of a narrow
        table (stretched, beside the tree at 1366 it kept the whole width and pushed Status
        past the edge)."""
        if getattr(self, "table", None) is None:  # built a piece at a time
            return
        others = sum(self.table.columnWidth(c) for c in range(1, len(self.model.columns)))
        width = self.table.viewport().width()
        self.table.setColumnWidth(0, max(width - others, int(width * KEY_SHARE)))

    def _legend_toggled(self, _on=False):
        hidden = {s for s, b in self.legend_buttons.items() if not b.isChecked()}
        self.only.blockSignals(True)
        self.only.setChecked("identical" in hidden)
        self.only.blockSignals(False)
        self.proxy.set_hidden(hidden)

    def _only_toggled(self, on):
        button = self.legend_buttons.get("identical")
        if button is not None:
            button.setChecked(not on)  # its toggled signal refilters
        else:
            self.proxy.set_hidden({"identical"} if on else set())

    # --- the selected tensor -----------------------------------------------------------------
    def _selected(self, current, _previous):
        key = current.siblingAtColumn(0).data(SORT_ROLE) if current.isValid() else None
        match = self.model.match(self.proxy.to_table(current).row()) if key else None
        if not self.detail.isVisible():
            self.detail.setVisible(True)
            height = max(self.splitter.height(), 300)
            self.splitter.setSizes([height * 11 // 20, height * 9 // 20])
        self.pending = None  # a result waiting for the plots is for the old selection
        self.drawing = None  # and so is a drawing under way
        if match is None:
            self.controller.cancel("detail")
            self.plot_status.setText(
                f"{key}: only tensors present in both files with one shape have plots."
                if key
                else ""
            )
            return
        self.plot_status.setText(f"{key}: reading both tensors...")
        self.controller.detail(key, match, self.report.compared or (self.a, self.b))

    def plotting_ready(self, message=""):
        if self.pending is not None:
            self._draw(*self.pending)
        elif self.plotting() is not None:
            self.plots.start()

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self._fit_key_column()
        one_row = sum(self.sides.itemAt(i).minimumSize().width() for i in range(self.sides.count()))
        wide = event.size().width() >= one_row + self.use_suggestion.sizeHint().width() + 24
        self.sides.setDirection(QBoxLayout.LeftToRight if wide else QBoxLayout.TopToBottom)

    def showEvent(self, event: QShowEvent) -> None:
        """The plots are built ahead, a piece per event-loop turn, from the first showing: at
        the first click they cost a stall of their own. The first showing lays the tab out;
        a turn later it is painted, in a turn after that the table's cells (each cell asks the
        model for its roles in Python), and then the plots are built. Turns of their own, on a
        timer: a zero-delay call is a posted event, run in the same pass as the repaint the
        turn before posted, and the three were one stall of two frames."""
        super().showEvent(event)
        if self.shown_once:
            self._start_plots()
            return
        self.shown_once = True
        cells = self.table.viewport()
        self.setUpdatesEnabled(False)
        cells.setUpdatesEnabled(False)

        def appearing() -> Iterator[None]:
            self.setUpdatesEnabled(True)  # the cells stay off: turned off on their own
            yield
            cells.setUpdatesEnabled(True)
            QTimer.singleShot(FIRST_PAINTS_MS, self, self._start_plots)

        # held: a build referenced only by its pending timer call crashed PySide when that
        # call ended
        self.appearing = StepBuild(self, appearing)
        self.appearing.start()

    def _start_plots(self) -> None:
        if self.plotting() is not None:
            self.plots.start()

    def _plot_steps(self) -> Iterator[None]:
        """The three plots, a piece at a time; `self.plot` set last (then all are there)."""
        pg = self.plotting()
        background = self.palette().color(QPalette.Base)

        def plot(name, title, x_label, y_label):
            widget = yield from plot_widget_steps(pg, background)
            style_plot(widget)
            widget.setObjectName(name)
            widget.setTitle(title)
            widget.setLabel("bottom", x_label)
            widget.setLabel("left", y_label)
            yield
            return widget

        histogram = yield from plot("compareHistogram", "values", "value", "count")
        histogram.addLegend(offset=(-10, 10))
        self.curve_a = histogram.plot(
            [0, 1],
            [0],
            stepMode="center",
            name="A",
            fillLevel=0,
            brush=(*COLOUR_A, 90),
            pen=pg.mkPen(COLOUR_A, width=1),
        )
        self.curve_b = histogram.plot(
            [0, 1], [0], stepMode="center", name="B", pen=pg.mkPen(COLOUR_B, width=2)
        )
        yield
        self.diff_plot = yield from plot("compareDifference", "a \u2212 b", "a \u2212 b", "count")
        self.curve_diff = self.diff_plot.plot(
            [0, 1],
            [0],
            stepMode="center",
            fillLevel=0,
            brush=(120, 120, 120, 120),
            pen=pg.mkPen((80, 80, 80), width=1),
        )
        yield
        self.scatter_plot = yield from plot("compareScatter", "b against a (sample)", "a", "b")
        self.identity = self.scatter_plot.plot(
            [0, 1], [0, 1], pen=pg.mkPen((150, 150, 150), style=Qt.DashLine)
        )
        self.scatter = pg.ScatterPlotItem(size=3, pen=None, brush=pg.mkBrush(*COLOUR_B, 140))
        self.scatter_plot.addItem(self.scatter)
        yield
        for widget in (histogram, self.diff_plot, self.scatter_plot):
            # hidden in a place of its own until its first data (_draw_steps): three plots'
            # first layout and paint in one turn held the first click over two frames, and
            # shown empty first, each was laid out and painted again with its data
            policy = widget.sizePolicy()
            policy.setRetainSizeWhenHidden(True)
            widget.setSizePolicy(policy)
            widget.hide()
            self.plot_holder.addWidget(widget, 1)
        for widget in (histogram, self.diff_plot, self.scatter_plot):
            # painted once, unseen, a plot a turn: a plot's first paint (its axes' fonts,
            # texts and pictures) was most of the first click's stall; now idle time pays it
            widget.grab()
            yield
        self.plot = histogram

    def _plots_built(self) -> None:
        if self.pending is not None:
            self._draw(*self.pending)

    def _draw(self, key, result):
        pg = self.plotting()
        if self.request_plotting is not None and not self.request_plotting(self):
            self.pending = (key, result)
            self.request_plotting(self)
            return
        self.pending = None
        (stats_a, stats_b), detail = result
        if pg is None or stats_a is None:
            self.plot_status.setText(f"{key}: no finite values to plot")
            self.overlay_ready.emit(key)
            return
        if not self.plots.done:  # the result came first: drawn once the build, a piece per
            self.pending = (key, result)  # turn, is complete (at once it was a stall of its own)
            self.plots.start()
            return
        self.drawing = self._draw_steps(key, stats_a, stats_b, detail)
        self._draw_next(self.drawing)

    def _draw_next(self, steps: Iterator[None]) -> None:
        """One plot's data per event-loop turn (three plots' new ranges, axes and paint in
        one turn were the most of a click), while `steps` is the newest drawing."""
        if steps is self.drawing and next(steps, True) is None:
            QTimer.singleShot(NEXT_TURN_MS, self, lambda: self._draw_next(steps))

    def _draw_steps(self, key, stats_a, stats_b, detail) -> Iterator[None]:
        """A plot's data, and its first showing, per step; the words first: set last, their
        new width laid the pane out again and repainted all three plots in one turn."""
        apart = (
            f"; {detail.nonfinite:,} non-finite differences left out" if detail.nonfinite else ""
        )
        sampled = (
            f"; scatter of {len(detail.a):,} of {detail.elements:,} pairs"
            if len(detail.a) < detail.elements
            else ""
        )
        self.plot_status.setText(
            f"{key}: A {self.names[0]} (blue, filled), B {self.names[1]} "
            f"(orange line){apart}{sampled}"
        )
        self.curve_a.setData(stats_a.edges, stats_a.counts)
        self.curve_b.setData(stats_b.edges, stats_b.counts)
        self.plot.enableAutoRange()
        self.plot.show()
        yield
        self.curve_diff.setData(detail.edges, detail.counts)
        self.diff_plot.enableAutoRange()
        self.diff_plot.show()
        yield
        low, high = (stats_a.edges[0], stats_a.edges[-1]) if stats_a.edges else (0.0, 1.0)
        self.identity.setData([low, high], [low, high])
        finite = np.isfinite(detail.a) & np.isfinite(detail.b)
        self.scatter.setData(detail.a[finite], detail.b[finite])
        self.scatter_plot.enableAutoRange()
        self.scatter_plot.show()
        self.overlay_ready.emit(key)

    def select_key(self, key: str) -> bool:
        """Make `key`'s row current (its detail plots follow); False when it is not listed."""
        row = next((i for i, r in enumerate(self.model.rows) if r[1][0] == key), None)
        if row is None:
            return False
        self.filter.clear()
        index = self.proxy.from_table(self.model.index(row, 0))
        self.table.setCurrentIndex(index)
        self.table.scrollTo(index)
        return True

    def cancel(self):
        """The tab closes (or the window): stop the selected tensor's job."""
        self.controller.cancel()
