"""What is in one tensor: facts, statistics, a pyqtgraph histogram (sampled preview first,
then exact), computed in a worker that a new selection cancels."""

from __future__ import annotations

import importlib
import threading
import time
import weakref

import shiboken6
from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (QAbstractItemView, QCheckBox, QComboBox, QFileDialog, QFrame,
                               QHBoxLayout, QHeaderView, QLabel, QProgressBar, QPushButton,
                               QScrollArea, QSizePolicy, QSpinBox, QSplitter, QTableWidget,
                               QTableWidgetItem,
                               QTabWidget, QVBoxLayout, QWidget)

from ckpt_viewer.core import describe_error
from ckpt_viewer.core.model import Node, format_bytes
from ckpt_viewer.core.report import stats_rows
from ckpt_viewer.core.stats import PARTS, auto_bins, compute, stats_job
from ckpt_viewer.qt import workers
from ckpt_viewer.qt.slices import HeatmapPage, ValuesPage
from ckpt_viewer.qt.plain import as_html, plain_label, shown
from ckpt_viewer.qt.theme import remember_splitter, style_plot

_plotting = {"module": None, "started": False, "failed": "", "waiting": weakref.WeakSet(),
             "settled": threading.Event()}   # imported (or failed) and the waiting plots built


def preload_plotting():
    """Import pyqtgraph (and numpy) in a worker: ~0.3 s the GUI thread must not spend."""
    if _plotting["started"]:
        return
    _plotting["started"] = True
    workers.start(importlib.import_module, "pyqtgraph", on_result=_plotting_ready,
                  on_error=lambda message: _plotting_ready(None, message))


def wait_for_plotting(view):
    """view.plotting_ready(message) is called once pyqtgraph has been imported (or failed)."""
    _plotting["waiting"].add(view)
    preload_plotting()


def _plotting_ready(module, message=""):
    _plotting["module"], _plotting["failed"] = module, message
    for view in list(_plotting["waiting"]):
        if shiboken6.isValid(view):          # not a closed tab's view
            view.plotting_ready(message)
    _plotting["waiting"].clear()
    _plotting["settled"].set()


PROGRESS_INTERVAL = 0.1   # seconds between progress-bar updates

RANGES = {"full range": None, "clip to 0.1-99.9 %": (0.001, 0.999),
          "clip to 1-99 %": (0.01, 0.99), "clip to 5-95 %": (0.05, 0.95)}


def facts_html(node: Node) -> str:
    t = node.tensor
    facts = [("key", node.key), ("shape", str(list(t.shape))), ("dtype", t.dtype),
             ("elements", f"{t.numel:,}"), ("bytes", f"{format_bytes(t.nbytes)} ({t.nbytes:,})"),
             ("device tag", t.device), ("layout", t.layout)]
    if t.layout == "strided" and t.storage is not None:
        facts += [("strides", str(list(t.stride))), ("storage offset", str(t.offset)),
                  ("contiguous", "yes" if t.is_contiguous else "no"),
                  ("storage", f"{t.storage.key} ({t.storage.numel:,} elements"
                              f"{', shared with ' + node.shared_with if node.shared_with else ''})")]
    if t.quantizer:
        facts.append(("quantizer", ", ".join(f"{k}={v}" for k, v in t.quantizer.items()
                                             if not hasattr(v, "shape"))))
    if node.role:
        facts.append(("role", node.role))
    if node.note:
        facts.append(("note", node.note))
    cells = [f"<td><b>{as_html(k)}</b></td><td>{as_html(v)}</td>" for k, v in facts]
    rows = "".join(f"<tr>{''.join(cells[i:i + 2])}</tr>" for i in range(0, len(cells), 2))
    return f"<table cellspacing=2>{rows}</table>"


class StatsTable(QTableWidget):
    """Statistics in two (label, value) column pairs, numbers right-aligned. A sampled preview's
    figures are marked as estimates (≈, italic) and the figures a sample cannot give are
    pending; non-zero NaN/Inf counts are highlighted."""

    PAIR_WIDTH = 150        # pixels a (label, value) pair needs: a wide table shows more pairs
    EXACT_ONLY = {"L2 norm", "NaN", "+Inf", "-Inf", "zeros"}
    ALARMS = {"NaN", "+Inf", "-Inf"}

    def __init__(self, parent=None):
        super().__init__(0, 4, parent)
        self.setObjectName("statsTable")
        self.setHorizontalHeaderLabels(["statistic", "value"] * 2)
        self.verticalHeader().setVisible(False)
        self.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.verticalHeader().setDefaultSectionSize(self.fontMetrics().lineSpacing() + 6)
        header = self.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeToContents)   # numbers are never cut
        self.rows, self.preview = [], False

    def resizeEvent(self, event):
        super().resizeEvent(event)
        if self._pairs() * 2 != self.columnCount():
            self.fill(self.rows, self.preview)

    def _pairs(self) -> int:
        return max(1, min(4, self.viewport().width() // self.PAIR_WIDTH))

    def fill(self, rows, preview: bool):
        """rows: (label, text) pairs; preview: the figures come from a sample."""
        self.rows, self.preview = rows, preview
        pairs = self._pairs()
        self.clearContents()
        self.setColumnCount(2 * pairs)
        self.setHorizontalHeaderLabels(["statistic", "value"] * pairs)
        self.horizontalHeaderItem(1).setToolTip("quantiles are exact: the ceil(q * n)-th "
                                                "smallest finite value")
        self.setRowCount(-(-len(rows) // pairs))
        for i, (label, text) in enumerate(rows):
            row, column = i % self.rowCount(), 2 * (i // self.rowCount())
            value = QTableWidgetItem(text)
            value.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
            if preview:
                font = value.font()
                font.setItalic(True)
                value.setFont(font)
                if label in self.EXACT_ONLY or label.endswith("%"):
                    value.setText("...")
                    value.setToolTip("computing the exact figure")
                elif label != "elements":
                    value.setText(f"≈ {text}")
                    value.setToolTip("an estimate from a sample; exact figures follow")
            elif label in self.ALARMS and text not in ("0", "-"):
                font = value.font()
                font.setBold(True)
                value.setFont(font)
                value.setForeground(QColor(200, 30, 40))
                value.setBackground(QColor(255, 80, 80, 50))
            self.setItem(row, column, QTableWidgetItem(label))
            self.setItem(row, column + 1, value)

    def as_dict(self) -> dict:
        """{label: shown text} (tests and copying)."""
        out = {}
        for row in range(self.rowCount()):
            for column in range(0, self.columnCount(), 2):
                label, value = self.item(row, column), self.item(row, column + 1)
                if label is not None and value is not None:
                    out[label.text()] = value.text()
        return out


def headline(node: Node) -> str:
    t = node.tensor
    return f"{node.key}   {list(t.shape)}   {t.dtype}   {format_bytes(t.nbytes)}"


class TensorView(QWidget):
    """The controller of one tab's tensor pane: it owns the computation (a worker with a
    generation counter) and feeds the views: headline, statistics, histogram, heatmap, values.
    The plot takes the pane's width; statistics and facts sit in a resizable strip below it
    (splitter positions remembered)."""

    view_ready = Signal(str)        # exact statistics of this key are on screen
    view_failed = Signal(str, str)  # key, one-line message: the statistics cannot be shown
    preview_ready = Signal(str)

    def __init__(self, checkpoint, parent=None):
        super().__init__(parent)
        self.setObjectName("tensorView")
        self.checkpoint = checkpoint
        self.node: Node | None = None
        self.stats = None
        self.worker = None
        self.jobs = workers.Controller(self)     # the overlay's job, superseded and cancelled
        self.generation = 0
        self.plot = None
        self._last_progress = 0.0

        self.title = plain_label("Select a tensor in the tree.")
        self.title.setObjectName("tensorTitle")
        self.title.setTextInteractionFlags(Qt.TextSelectableByMouse)
        font = self.title.font()
        font.setBold(True)
        self.title.setFont(font)
        self.title.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
        self.facts = QLabel()
        self.facts.setObjectName("tensorFacts")
        self.facts.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.facts.setWordWrap(True)
        self.facts.setAlignment(Qt.AlignLeft | Qt.AlignTop)
        facts_area = QScrollArea()
        facts_area.setWidget(self.facts)
        facts_area.setWidgetResizable(True)
        facts_area.setFrameShape(QFrame.NoFrame)
        self.bins = QSpinBox()
        self.bins.setRange(0, 4096)
        self.bins.setSpecialValueText("bins: auto")
        self.bins.setValue(0)
        self.bins.setPrefix("bins ")
        self.bins.setToolTip("histogram bins (auto: from the element count)")
        self.bins.setKeyboardTracking(False)
        self.log_y = QCheckBox("log y")
        self.range = QComboBox()
        self.range.addItems(list(RANGES))
        self.part = QComboBox()
        self.part.addItems(list(PARTS))
        self.part.setToolTip("complex tensors: which part to describe")
        self.part.setVisible(False)
        self.save_png = QPushButton("Save PNG...")
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setMaximumWidth(140)
        self.progress.setTextVisible(False)
        keep_space = self.progress.sizePolicy()
        keep_space.setRetainSizeWhenHidden(True)
        self.progress.setSizePolicy(keep_space)
        self.status = plain_label()
        self.status.setObjectName("tensorStatus")
        self.status.setAlignment(Qt.AlignRight | Qt.AlignVCenter)
        # its text changes as work proceeds; it must not change the width the view asks for
        self.status.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
        controls = QHBoxLayout()
        for widget in (self.bins, self.log_y, self.range, self.part, self.save_png):
            controls.addWidget(widget)
        controls.addWidget(self.status, 1)
        controls.addWidget(self.progress)

        self.readout = plain_label(" ")
        self.readout.setObjectName("histogramReadout")
        self.table = StatsTable()

        self.compare = QComboBox()
        self.compare.setObjectName("compareWith")
        self.compare.setToolTip("overlay the histogram of the same key in another open file")
        controls.insertWidget(4, self.compare)
        self.compare.setVisible(False)      # shown once another open file has tensors to overlay
        self.peers = lambda: []          # set by the window: [(label, checkpoint)] of other tabs
        self.peer_generation = 0
        self.plot_holder = QVBoxLayout()
        histogram_page = QWidget()
        page_layout = QVBoxLayout(histogram_page)
        page_layout.setContentsMargins(0, 0, 0, 0)
        page_layout.addLayout(controls)
        page_layout.addLayout(self.plot_holder, 1)
        page_layout.addWidget(self.readout)
        self.heatmap = HeatmapPage(lambda: _plotting["module"], self._wait_for_plotting)
        self.values = ValuesPage()
        self.pages = QTabWidget()
        self.pages.addTab(histogram_page, "Histogram")
        self.pages.addTab(self.heatmap, "Heatmap")
        self.pages.addTab(self.values, "Values")
        self.pages.currentChanged.connect(self._page_changed)

        self.info_split = QSplitter(Qt.Horizontal)
        self.info_split.setObjectName("tensorInfoSplit")
        self.info_split.addWidget(self.table)
        self.info_split.addWidget(facts_area)
        self.info_split.setStretchFactor(0, 3)
        self.info_split.setStretchFactor(1, 2)
        self.split = QSplitter(Qt.Vertical)
        self.split.setObjectName("tensorSplit")
        self.split.addWidget(self.pages)
        self.split.addWidget(self.info_split)
        self.split.setStretchFactor(0, 3)
        self.split.setStretchFactor(1, 1)
        self.split.setCollapsible(0, False)
        remember_splitter(self.split, "tensorView/split", [500, 250])
        remember_splitter(self.info_split, "tensorView/infoSplit", [480, 380])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.title)
        layout.addWidget(self.split, 1)

        self.compare.currentIndexChanged.connect(self._compare_changed)
        self.bins.valueChanged.connect(self.recompute)
        self.range.currentIndexChanged.connect(self.recompute)
        self.part.currentIndexChanged.connect(self.recompute)
        self.log_y.toggled.connect(self._apply_log)
        self.save_png.clicked.connect(self.export_png)
        self._set_controls_enabled(False)
        if _plotting["module"] is None:
            # build the plot as soon as the (idle-time) import lands, not at the first selection
            _plotting["waiting"].add(self)

    # --- plot ------------------------------------------------------------------------------
    def _ensure_plot(self):
        if self.plot is not None:
            return
        pg = _plotting["module"]
        self.pg = pg
        self.plot = pg.PlotWidget()
        style_plot(self.plot)
        self.plot.setObjectName("histogramPlot")
        self.plot.setLabel("left", "count")
        self.plot.setLabel("bottom", "value")
        for side in ("left", "bottom"):      # plain tick labels, never "value (x0.001)"
            self.plot.getAxis(side).enableAutoSIPrefix(False)
        box = self.plot.getPlotItem().getViewBox()
        box.setMouseEnabled(x=True, y=False)  # the wheel zooms along values; counts follow
        box.setAutoVisible(y=True)
        self.plot.showGrid(x=True, y=True, alpha=0.2)
        self.curve = self.plot.plot([0, 1], [0], stepMode="center", fillLevel=0,
                                    brush=(90, 140, 230, 120), pen=pg.mkPen((60, 100, 200), width=1))
        self.mean_line = pg.InfiniteLine(angle=90, pen=pg.mkPen((220, 60, 40), width=2))
        self.std_lines = [pg.InfiniteLine(angle=90, pen=pg.mkPen((220, 60, 40), style=Qt.DashLine))
                          for _ in range(2)]
        for line in [self.mean_line] + self.std_lines:
            self.plot.addItem(line)
        self.overlay = self.plot.plot([0, 1], [0], stepMode="center",
                                      pen=pg.mkPen((230, 120, 20), width=2))
        self.overlay.setVisible(False)
        self.legend = self.plot.addLegend(offset=(-10, 10))
        self.legend.setVisible(False)
        self.plot.scene().sigMouseMoved.connect(self._hover)
        self.plot_holder.addWidget(self.plot)
        self.plot.show()

    def prepare_plot(self):
        """Build the (Python-heavy) plot while no worker competes for the GIL: called when the
        tab opens (from the event loop) and again before a computation starts."""
        if self.plot is None and _plotting["module"] is not None:
            self._ensure_plot()
            self.curve.setData([0, 1], [0])

    def _wait_for_plotting(self):
        wait_for_plotting(self)

    def plotting_ready(self, message=""):
        if message:
            self.status.setText(f"plotting is unavailable: {message}")
        self.prepare_plot()
        # showing and drawing wait for the next turn of the event loop: building the plot,
        # painting it and drawing into it in one step held the window for 40-60 ms
        if self.plot is not None:
            self.plot.setVisible(False)
        QTimer.singleShot(1, self, self._draw_pending)

    def _draw_pending(self):
        if self.plot is not None:
            self.plot.setVisible(True)
        self.heatmap.show_pending()
        if self.stats is not None:
            self._draw(self.stats, self.stats.sampled)

    def _draw(self, stats, preview: bool):
        if _plotting["module"] is None and not _plotting["failed"]:
            _plotting["waiting"].add(self)
            preload_plotting()
            return
        if _plotting["module"] is not None:
            self._ensure_plot()
            self._plot_curve(stats)
        if self.node is not None:
            (self.preview_ready if preview else self.view_ready).emit(self.node.key)

    def _plot_curve(self, stats):
        edges, counts = stats.edges, stats.counts
        if not counts:
            self.curve.setData([0, 1], [0])
            return
        self.curve.setData(edges, counts)
        for line, value, visible in (
                (self.mean_line, stats.mean, stats.mean is not None),
                (self.std_lines[0], (stats.mean or 0) - (stats.std or 0), stats.std is not None),
                (self.std_lines[1], (stats.mean or 0) + (stats.std or 0), stats.std is not None)):
            line.setVisible(visible)
            if visible:
                line.setValue(value)
        self._apply_log(self.log_y.isChecked())
        self.plot.enableAutoRange()

    def _apply_log(self, on):
        if self.plot is not None:
            self.plot.setLogMode(x=False, y=on)

    def _hover(self, position):
        stats = self.stats
        if self.plot is None or stats is None or not stats.counts:
            return
        x = self.plot.getPlotItem().vb.mapSceneToView(position).x()
        edges = stats.edges
        if self.node is None or not edges[0] <= x <= edges[-1]:
            self.readout.setText(" ")
            return
        lo, hi = 0, len(stats.counts) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if edges[mid] <= x:
                lo = mid
            else:
                hi = mid - 1
        estimate = "≈ " if stats.sampled else ""
        self.readout.setText(f"bin [{edges[lo]:.6g}, {edges[lo + 1]:.6g}): "
                             f"{estimate}{stats.counts[lo]:,}")

    def export_png(self, path: str | None = None):
        if self.plot is None:
            return None
        if not path:
            path, _ = QFileDialog.getSaveFileName(self, "Save histogram", "histogram.png",
                                                  "PNG image (*.png)")
        if path:
            self.plot.grab().save(path)
        return path

    # --- computation -----------------------------------------------------------------------
    def show_tensor(self, node: Node):
        self.node, self.stats = node, None
        self.range.blockSignals(True)
        self.range.setCurrentIndex(0)
        self.range.blockSignals(False)
        self.title.setText(shown(headline(node)))
        self.title.setToolTip(as_html(node.key))
        self.facts.setText(facts_html(node))
        self.readout.setText(" ")           # the previous tensor's bin means nothing here
        self.table.fill([], False)
        is_complex = node.tensor.dtype.startswith("complex")
        self.part.setVisible(is_complex)
        self.prepare_plot()
        self._fill_compare()
        self.recompute()
        self._page_changed(self.pages.currentIndex())

    def _page_changed(self, index):
        if self.node is None:
            return
        page = self.pages.widget(index)
        if page is self.heatmap and self.heatmap.tensor is not self.node.tensor:
            self.heatmap.show_tensor(self.node.tensor)
        elif page is self.values and self.values.tensor is not self.node.tensor:
            self.values.show_tensor(self.node.tensor)

    # --- overlay of the same key in another open file --------------------------------------
    def _fill_compare(self):
        self.compare.blockSignals(True)
        self.compare.clear()
        self.compare.addItem("compare with...", None)
        for label, checkpoint in self.peers():
            other = checkpoint.find(self.node.key)
            if other is not None and other.tensor is not None and other.tensor.numel:
                self.compare.addItem(label, other.tensor)
        self.compare.setVisible(self.compare.count() > 1)
        self.compare.blockSignals(False)
        self._clear_overlay()

    def _compare_changed(self, *_):
        self._clear_overlay()
        other = self.compare.currentData()
        if other is None or self.stats is None or self.stats.sampled or not self.stats.edges:
            return
        self.peer_generation += 1
        generation = self.peer_generation
        edges = self.stats.edges
        self.jobs.start("overlay", compute, other, len(edges) - 1, self.part.currentText(),
                        (edges[0], edges[-1]),
                        on_result=lambda stats: self._draw_overlay(generation, stats),
                        on_error=lambda message: self.status.setText(f"comparison: {message}"))

    def _draw_overlay(self, generation, stats):
        if generation != self.peer_generation or self.plot is None or not stats.counts:
            return
        self.overlay.setData(stats.edges, stats.counts)
        self.overlay.setVisible(True)
        self.legend.setVisible(True)
        self.legend.clear()
        self.legend.addItem(self.curve, "this file")
        self.legend.addItem(self.overlay, self.compare.currentText())

    def _clear_overlay(self):
        self.jobs.cancel("overlay")          # superseded: stop it at its next chunk
        if self.plot is not None:
            self.overlay.setVisible(False)
            self.legend.setVisible(False)

    def recompute(self, *_):
        if self.node is None:
            return
        self.cancel()
        self.generation += 1
        generation = self.generation
        value_range = None
        clip = RANGES[self.range.currentText()]
        if clip and self.stats is not None and self.stats.quantiles and not self.stats.sampled:
            quantiles = self.stats.quantiles
            if clip[0] in quantiles and clip[1] in quantiles:
                value_range = (quantiles[clip[0]], quantiles[clip[1]])
        preload_plotting()                   # the job waits for it to settle
        self._preview_drawn = threading.Event()
        self.status.setText("computing...")
        self.progress.setValue(0)
        self.progress.show()
        self.worker = workers.start(
            stats_job, self.node.tensor, self.bins.value() or auto_bins(self.node.tensor.numel),
            self.part.currentText(), value_range,
            _plotting["settled"], self._preview_drawn, self.checkpoint.stats_cache,
            on_progress=lambda item: self._progress(generation, item),
            on_result=lambda stats: self._done(generation, stats, value_range),
            on_error=lambda message: self._failed(generation, message))

    def cancel(self):
        if self.worker is not None:
            self.worker.quit()
            self.worker = None
        self.heatmap.cancel()
        self._clear_overlay()

    def _progress(self, generation, item):
        if generation != self.generation:
            return
        if isinstance(item, tuple):
            self._show(item[1], preview=True)
            QTimer.singleShot(0, self._preview_drawn.set)    # after the repaint it caused
        elif time.monotonic() - self._last_progress > PROGRESS_INTERVAL:
            # setValue repaints synchronously; each repaint competes with the worker for the GIL
            self._last_progress = time.monotonic()
            self.progress.setValue(int(item * 1000))

    def _done(self, generation, stats, value_range):
        if generation != self.generation:
            return
        try:
            self._show_result(stats, value_range)
        except Exception as exc:   # noqa: BLE001 - a view that cannot be drawn ends with a message
            self._failed(generation, describe_error(exc))

    def _show_result(self, stats, value_range):
        keep_quantiles = value_range and self.stats is not None
        if keep_quantiles:
            stats.quantiles = self.stats.quantiles
        self.worker = None
        self._show(stats, preview=False)
        if self.compare.currentData() is not None:
            self._compare_changed()

    def _failed(self, generation, message):
        if generation != self.generation:
            return
        self.status.setText(f"cannot read values: {message}")
        self.progress.hide()
        self.worker = None
        self.view_failed.emit(self.node.key if self.node is not None else "", message)

    def _show(self, stats, preview: bool):
        self.stats = stats
        self._set_controls_enabled(True)
        rows = stats_rows(stats)
        if stats.below or stats.above:
            rows += [("below range", f"{stats.below:,}"), ("above range", f"{stats.above:,}")]
        if stats.value_counts:
            top = sorted(stats.value_counts.items(), key=lambda kv: -kv[1])[:8]
            rows += [(f"value {v}", f"{c:,}") for v, c in top]
        self.table.fill(rows, preview)
        if preview:
            self.status.setText("sampled preview (estimates); computing exact statistics...")
        else:
            self.status.setText("exact" + (" (clipped range)" if stats.below or stats.above else ""))
            self.progress.hide()
        self._draw(stats, preview)

    def _set_controls_enabled(self, on):
        for widget in (self.bins, self.log_y, self.range, self.part, self.save_png):
            widget.setEnabled(on)
