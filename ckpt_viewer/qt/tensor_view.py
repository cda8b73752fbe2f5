"""The tensor pane. TensorController decides what to compute for the selected tensor and owns
its jobs; TensorView composes views that only show what they are given: controls, histogram
(histogram_view), heatmap and values (slices), statistics and facts (tensor_panels)."""

from __future__ import annotations

import threading
import time

from PySide6.QtCore import QObject, Qt, QTimer, Signal
from PySide6.QtWidgets import QSizePolicy, QSplitter, QTabWidget, QVBoxLayout, QWidget

from ckpt_viewer.core import describe_error
from ckpt_viewer.core.listing.model import Node, format_bytes
from ckpt_viewer.core.values.stats import auto_bins, compute, stats_job
from ckpt_viewer.qt import workers
from ckpt_viewer.qt.histogram_view import HistogramView
from ckpt_viewer.qt.plain import as_html, plain_label, shown
from ckpt_viewer.qt.plotting import _plotting, plotting_module, plotting_or_wait, preload_plotting
from ckpt_viewer.qt.plotting import wait_for_plotting as wait_for_plotting
from ckpt_viewer.qt.slices import HeatmapPage, ValuesPage
from ckpt_viewer.qt.tensor_panels import (
    BREAK,
    RANGES,
    FactsPanel,
    StatsTable,
    TensorControls,
    shown_stats_rows,
    tensor_facts,
)
from ckpt_viewer.qt.theme import remember_splitter

__all__ = [
    "RANGES",
    "StatsTable",
    "TensorController",
    "TensorView",
    "headline",
    "preload_plotting",
    "stats_job",
    "wait_for_plotting",
]

PROGRESS_INTERVAL = 0.1  # seconds between progress reports (each repaint competes for the GIL)


def headline(node: Node) -> str:
    """Key, shape, dtype and size on one line, or wrapped: the key after its dots (never in the
    middle of a name while a dot allows it), the rest after it."""
    t = node.tensor
    key = shown(node.key).replace(".", "." + BREAK)
    return f"{key}   {list(t.shape)}   {t.dtype}   {format_bytes(t.nbytes)}"


class TensorController(QObject):
    """What the pane computes: the selected node, its latest Stats and the jobs that compute
    them (workers.Controller slots "stats" and "overlay", which a new selection or request
    supersedes and cancel() stops). It only emits results; views show them."""

    preview = Signal(object)  # Stats from a sample (estimates), exact ones follow
    exact = Signal(object)  # exact Stats of the latest request
    progressed = Signal(float)  # 0..1
    failed = Signal(str)  # one line: the statistics cannot be computed
    overlay_ready = Signal(object)  # Stats of another file's tensor, binned like ours
    overlay_failed = Signal(str)

    def __init__(self, cache=None, parent=None):
        super().__init__(parent)
        self.cache = cache  # the checkpoint's StatsCache: exact figures seen before
        self.node: Node | None = None
        self.stats = None
        self.jobs = workers.Controller(self)
        self._last_progress = 0.0

    def select(self, node: Node) -> None:
        self.cancel()
        self.node, self.stats = node, None

    def cancel(self) -> None:
        self.jobs.cancel()

    def cancel_overlay(self) -> None:
        """Stop the overlay being read (superseded) at its next chunk; its result is dropped."""
        self.jobs.cancel("overlay")

    def clipped_range(self, clip) -> tuple | None:
        """The value range between quantile pair `clip` of the exact statistics (None: all)."""
        stats = self.stats
        if not clip or stats is None or stats.sampled or not stats.quantiles:
            return None
        if clip[0] in stats.quantiles and clip[1] in stats.quantiles:
            return stats.quantiles[clip[0]], stats.quantiles[clip[1]]
        return None

    def compute(self, bins: int, part: str, clip=None) -> None:
        """Statistics of the selected tensor (bins 0: from its size), superseding any job."""
        if self.node is None:
            return
        self.jobs.cancel("overlay")
        tensor = self.node.tensor
        value_range = self.clipped_range(clip)
        preload_plotting()  # the exact pass waits for it to settle
        drawn = threading.Event()
        self.jobs.start(
            "stats",
            stats_job,
            tensor,
            bins or auto_bins(tensor.numel),
            part,
            value_range,
            _plotting["settled"],
            drawn,
            self.cache,
            on_progress=lambda item: self._progress(item, drawn),
            on_result=lambda stats: self._done(stats, value_range),
            on_error=self.failed.emit,
        )

    def _progress(self, item, drawn: threading.Event) -> None:
        if isinstance(item, tuple):
            self.stats = item[1]
            self.preview.emit(self.stats)
            if workers.is_synchronous():
                drawn.set()  # drawn already: the job is waiting on this thread
            else:
                QTimer.singleShot(0, drawn.set)  # after the repaint the preview caused
        elif time.monotonic() - self._last_progress > PROGRESS_INTERVAL:
            self._last_progress = time.monotonic()
            self.progressed.emit(item)

    def _done(self, stats, value_range) -> None:
        if value_range and self.stats is not None:
            stats.quantiles = self.stats.quantiles  # the full range's: clip again from them
        self.stats = stats
        self.exact.emit(stats)

    def compare(self, other, part: str) -> None:
        """Overlay `other` (the same key in another file), binned like the exact statistics."""
        self.jobs.cancel("overlay")
        stats = self.stats
        if other is None or stats is None or stats.sampled or not stats.edges:
            return
        edges = stats.edges
        self.jobs.start(
            "overlay",
            compute,
            other,
            len(edges) - 1,
            part,
            (edges[0], edges[-1]),
            on_result=self.overlay_ready.emit,
            on_error=self.overlay_failed.emit,
        )


class TensorView(QWidget):
    """One tab's tensor pane. The plot takes the pane's width; statistics and facts sit in a
    resizable strip below it (splitter positions remembered)."""

    view_ready = Signal(str)  # exact statistics of this key are on screen
    view_failed = Signal(str, str)  # key, one-line message: the statistics cannot be shown
    preview_ready = Signal(str)

    def __init__(self, checkpoint, parent=None):
        super().__init__(parent)
        self.setObjectName("tensorView")
        self.checkpoint = checkpoint
        self.peers = lambda: []  # set by the window: [(label, checkpoint)] of other tabs
        self.controller = TensorController(checkpoint.stats_cache, self)

        self.title = plain_label("Select a tensor in the tree.")
        self.title.setObjectName("tensorTitle")
        # wrapped rather than cut; not selectable: a copy would carry the invisible breaks
        # (the facts panel below copies the key without them)
        self.title.setWordWrap(True)
        self.title.setTextInteractionFlags(Qt.NoTextInteraction)
        font = self.title.font()
        font.setBold(True)
        self.title.setFont(font)
        self.title.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
        self.controls = TensorControls()
        self.histogram = HistogramView()
        self.heatmap = HeatmapPage(plotting_module, lambda: wait_for_plotting(self))
        self.values = ValuesPage()
        self.table = StatsTable()
        self.facts = FactsPanel()
        self._lay_out()

        controls, controller = self.controls, self.controller
        controls.bins.valueChanged.connect(self.recompute)
        controls.range.currentIndexChanged.connect(self.recompute)
        controls.part.currentIndexChanged.connect(self.recompute)
        controls.log_y.toggled.connect(self.histogram.set_log_y)
        controls.save_png.clicked.connect(lambda: self.export_png())
        controls.compare.currentIndexChanged.connect(self._compare_changed)
        self.pages.currentChanged.connect(self._page_changed)
        controller.preview.connect(lambda stats: self._show(stats, preview=True))
        controller.exact.connect(self._show_exact)
        controller.progressed.connect(lambda done: controls.progress.setValue(int(done * 1000)))
        controller.failed.connect(self._failed)
        controller.overlay_ready.connect(
            lambda stats: self.histogram.show_overlay(stats, controls.compare.currentText())
        )
        controller.overlay_failed.connect(
            lambda message: controls.status.setText(f"comparison: {message}")
        )
        if plotting_module() is None:
            # build the plot as soon as the (idle-time) import lands, not at the first selection
            _plotting["waiting"].add(self)

    def _lay_out(self):
        histogram_page = QWidget()
        page_layout = QVBoxLayout(histogram_page)
        page_layout.setContentsMargins(0, 0, 0, 0)
        page_layout.addWidget(self.controls)
        page_layout.addWidget(self.histogram, 1)
        self.pages = QTabWidget()
        self.pages.addTab(histogram_page, "Histogram")
        self.pages.addTab(self.heatmap, "Heatmap")
        self.pages.addTab(self.values, "Values")
        self.info_split = QSplitter(Qt.Horizontal)
        self.info_split.setObjectName("tensorInfoSplit")
        self.info_split.addWidget(self.table)
        self.info_split.addWidget(self.facts)
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

    # --- plotting arrives once, in the background -------------------------------------------
    def prepare_plot(self, in_slices: bool = False) -> None:
        """Build the (Python-heavy) plot while no worker competes for the GIL: in slices when
        the tab opens (from the event loop), at once (finishing those) before a computation
        starts."""
        if in_slices:
            self.histogram.build_in_slices()
        else:
            self.histogram.build()

    def plotting_ready(self, message=""):
        if message:
            self.controls.status.setText(f"plotting is unavailable: {message}")
        self.prepare_plot(in_slices=self.controller.node is None)  # nothing to draw: no hurry
        # showing and drawing wait for the next turn of the event loop: building the plot,
        # painting it and drawing into it in one step held the window visibly
        if self.histogram.plot is not None:
            self.histogram.plot.setVisible(False)
        QTimer.singleShot(1, self, self._draw_pending)

    def _draw_pending(self):
        if self.histogram.plot is not None:
            self.histogram.plot.setVisible(True)
        self.heatmap.show_pending()
        if self.controller.stats is not None:
            self._draw(self.controller.stats, self.controller.stats.sampled)

    def _draw(self, stats, preview: bool):
        if not plotting_or_wait(self):
            return
        self.histogram.show_stats(stats)
        if self.controller.node is not None:
            (self.preview_ready if preview else self.view_ready).emit(self.controller.node.key)

    def export_png(self, path: str | None = None):
        return self.histogram.export_png(path)

    # --- selection and requests --------------------------------------------------------------
    def show_tensor(self, node: Node):
        self.controller.select(node)  # supersedes the old tensor's statistics
        for page in (self.heatmap, self.values):
            if page.tensor is not node.tensor:
                page.drop_work()  # reads of the old tensor stop here
        self.controls.reset_range()
        self.title.setText(headline(node))
        self.title.setToolTip(as_html(node.key))
        self.facts.show_facts(tensor_facts(node))
        self.histogram.clear()  # the previous tensor's bin means nothing here
        self.table.fill([], False)
        self.controls.part.setVisible(node.tensor.dtype.startswith("complex"))
        self.prepare_plot()
        self._fill_compare()
        self.recompute()
        self._page_changed(self.pages.currentIndex())

    def recompute(self, *_):
        if self.controller.node is None:
            return
        self.histogram.clear_overlay()
        self.controls.status.setText("computing...")
        self.controls.progress.setValue(0)
        self.controls.progress.show()
        self.controller.compute(
            self.controls.bins.value(), self.controls.part.currentText(), self.controls.clip()
        )

    def cancel(self):
        """Stop every job of the pane (statistics, overlay, heatmap, value pages)."""
        self.controller.cancel()
        self.heatmap.cancel()
        self.values.cancel()

    def _page_changed(self, index):
        if self.controller.node is None:
            return
        page = self.pages.widget(index)
        if page is self.heatmap and self.heatmap.tensor is not self.controller.node.tensor:
            self.heatmap.show_tensor(self.controller.node.tensor)
        elif page is self.values and self.values.tensor is not self.controller.node.tensor:
            self.values.show_tensor(self.controller.node.tensor)

    # --- overlay of the same key in another open file ----------------------------------------
    def _fill_compare(self):
        choices = []
        for label, checkpoint in self.peers():
            other = checkpoint.find(self.controller.node.key)
            if other is not None and other.tensor is not None and other.tensor.numel:
                choices.append((label, other.tensor))
        self.controls.fill_compare(choices)
        self._clear_overlay()

    def _compare_changed(self, *_):
        self._clear_overlay()
        self.controller.compare(
            self.controls.compare.currentData(), self.controls.part.currentText()
        )

    def _clear_overlay(self):
        self.controller.cancel_overlay()
        self.histogram.clear_overlay()

    # --- results -----------------------------------------------------------------------------
    def _show_exact(self, stats):
        try:
            self._show(stats, preview=False)
            if self.controls.compare.currentData() is not None:
                self._compare_changed()
        except Exception as exc:  # noqa: BLE001 - a view that cannot be drawn ends with a message
            self._failed(describe_error(exc))

    def _failed(self, message):
        self.controls.status.setText(f"cannot read values: {message}")
        self.controls.progress.hide()
        self.view_failed.emit(
            self.controller.node.key if self.controller.node is not None else "", message
        )

    def _show(self, stats, preview: bool):
        self.controls.set_enabled(True)
        self.table.fill(shown_stats_rows(stats), preview)
        if preview:
            self.controls.status.setText(
                "sampled preview (estimates); computing exact statistics..."
            )
        else:
            clipped = " (clipped range)" if stats.below or stats.above else ""
            self.controls.status.setText("exact" + clipped)
            self.controls.progress.hide()
        self._draw(stats, preview)
