"""Tools > Layers: per-layer metrics across depth, one line per parameter role (pyqtgraph),
a metric chooser, a click on a point selects that tensor; another open file can be overlaid
(dashed lines, same roles)."""

from __future__ import annotations

import html
import math
import os

from PySide6.QtCore import QObject, Qt, QTimer, Signal, SignalInstance
from PySide6.QtGui import QPalette, QResizeEvent
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ckpt_viewer.core.analysis.layers import layer_metrics
from ckpt_viewer.core.listing.model import Checkpoint
from ckpt_viewer.core.listing.optim import state_parameters
from ckpt_viewer.core.listing.text import safe_text as escape
from ckpt_viewer.qt import workers
from ckpt_viewer.qt.plotting import _plotting, plotting_or_wait
from ckpt_viewer.qt.theme import style_plot

LABELS = {
    "l2": "L2 norm",
    "std": "std",
    "max_abs": "max |x|",
    "zero_fraction": "fraction of zeros",
    "nan": "NaN count",
    "stable_rank": "stable rank",
    "alpha": "power-law alpha",
    "exp_avg_sq_mean": "mean exp_avg_sq (Adam)",
}


PREVIEW_ELEMENTS = 20_000  # per tensor, for the first plot
EXACT_PASS_DELAY_MS = 50  # after the preview's last draw step: time to paint it
ROLES_PER_STEP = 2  # roles drawn per event loop turn: the window answers between them
LEGEND_COLUMNS = 4  # wide and short: a 13-role legend in one column was taller than the plot
LEGEND_MARGIN = 12  # pixels right of the legend
LEGEND_ROW = 4  # of a PlotItem's layout: below the bottom axis


class LayersController(workers.PaneController):
    """The per-layer metrics of one checkpoint: a sampled look first ("preview"), then the
    exact pass ("exact"); another file's exact metrics for the overlay ("overlay"). A new
    pass in a slot supersedes the old one."""

    sampled = Signal(object)  # the sampled LayersReport
    measured = Signal(object)  # the exact LayersReport
    overlaid = Signal(object)  # the overlay file's LayersReport
    started = Signal()  # an exact or overlay pass (with progress) begins
    progressed = Signal(float)
    failed = Signal(str)

    def __init__(
        self, checkpoint: Checkpoint, spectral: bool, parent: QObject | None = None
    ) -> None:
        super().__init__(parent)
        self.checkpoint, self.spectral = checkpoint, spectral
        self.stopped = False  # cancelled: the exact pass after the preview is not started
        self.parameter_names = state_parameters(checkpoint)  # state tensor key -> parameter

    def sample(self) -> None:
        self.jobs.start(
            "preview",
            layer_metrics,
            self.checkpoint,
            False,
            None,
            PREVIEW_ELEMENTS,
            on_result=lambda report: self._emit(self.sampled, report),
            on_error=self.failed.emit,
        )

    def measure(self) -> None:
        """The exact pass, unless cancelled or running."""
        if not self.stopped and not self.jobs.busy("exact"):
            self._start("exact", self.checkpoint, self.measured)

    def remeasure(self, spectral: bool) -> None:
        """The exact pass again, with or without the spectral metrics."""
        self.spectral = spectral
        self._start("exact", self.checkpoint, self.measured)

    def overlay(self, checkpoint: Checkpoint) -> None:
        self._start("overlay", checkpoint, self.overlaid)

    def _start(self, slot: str, checkpoint: Checkpoint, done: SignalInstance) -> None:
        self.started.emit()
        self.jobs.start(
            slot,
            layer_metrics,
            checkpoint,
            self.spectral,
            on_result=lambda report: self._emit(done, report),
            on_error=self.failed.emit,
            on_progress=self.progressed.emit,
        )

    @staticmethod
    def _emit(signal: SignalInstance, report) -> None:
        if report is not None:  # None: stopped
            signal.emit(report)

    def cancel(self, slot: str | None = None) -> None:
        if slot is None:
            self.stopped = True
        super().cancel(slot)


class LayersDialog(QWidget):
    """`open_key(key)` is called with a point's tensor key; `peers` lists (name, checkpoint)
    of the other open files that can be overlaid."""

    ready = Signal(object)  # LayersReport, once plotted
    preview_ready = Signal(object)  # a sampled LayersReport, plotted while the exact pass runs
    failed = Signal(str)
    point_clicked = Signal(str)  # the key of a clicked point

    def __init__(self, checkpoint, open_key, peers=(), spectral=False, parent=None):
        super().__init__(parent)
        self.setObjectName("layersDialog")
        self.checkpoint, self.open_key, self.peers = checkpoint, open_key, list(peers)
        self.report = self.overlay = None
        self.plot = None
        self.scatters = []
        self.lines = {}  # role -> (line, points, overlay line) in the plot
        self.drawn_stack = None
        self.draw_generation = 0
        self.controller = LayersController(checkpoint, spectral, self)
        self.controller.sampled.connect(self._preview_done)
        self.controller.measured.connect(self._done)
        self.controller.overlaid.connect(self._overlay_done)
        self.controller.started.connect(self._running)
        self.controller.progressed.connect(lambda v: self.progress.setValue(int(v * 1000)))
        self.controller.failed.connect(self._failed)
        self.setWindowTitle(f"Layers - {os.path.basename(checkpoint.path.rstrip('/'))}")
        self.status = QLabel("Reading every layer's tensors...")
        self.status.setTextFormat(Qt.PlainText)
        self.status.setWordWrap(True)  # a narrow pane wraps it rather than widening
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setObjectName("layersCancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.stack_box = QComboBox()
        self.stack_box.setObjectName("layersStack")
        self.metric_box = QComboBox()
        self.metric_box.setObjectName("layersMetric")
        self.log_box = QCheckBox("log y")
        self.spectral_box = QCheckBox("spectral (SVD)")
        self.spectral_box.setObjectName("layersSpectral")
        self.spectral_box.setToolTip(
            "Singular values of every weight through torch (GPU when "
            "present): stable rank and power-law alpha. Slower."
        )
        self.spectral_box.setChecked(spectral)
        self.spectral_box.toggled.connect(self._spectral_toggled)
        self.overlay_box = QComboBox()
        self.overlay_box.setObjectName("layersOverlay")
        self.overlay_box.addItem("no overlay")
        for name, _ in self.peers:
            self.overlay_box.addItem(f"overlay {name}")
        self.overlay_box.setVisible(bool(self.peers))
        for box in (self.stack_box, self.metric_box, self.overlay_box):
            # its items arrive after the first show, which AdjustToContentsOnFirstShow sizes to
            box.setSizeAdjustPolicy(QComboBox.AdjustToContents)
        for box in (self.stack_box, self.metric_box):
            box.currentIndexChanged.connect(self.redraw)
        self.log_box.toggled.connect(self.redraw)
        self.overlay_box.currentIndexChanged.connect(self._overlay_changed)
        controls = QHBoxLayout()
        for widget in (
            self.stack_box,
            self.metric_box,
            self.log_box,
            self.spectral_box,
            self.overlay_box,
        ):
            controls.addWidget(widget)
        controls.addStretch(1)
        controls.addWidget(self.progress)
        controls.addWidget(self.cancel_button)
        self.layout_ = QVBoxLayout(self)
        self.layout_.addWidget(self.status)
        self.layout_.addLayout(controls)
        self.controller.sample()  # a sampled look first: the exact pass reads it all

    def _preview_done(self, report):
        if self.report is not None:
            return
        # the exact pass starts once the preview is drawn and painted: drawing while its
        # threads held the GIL stalled the window
        self.preview_ready.connect(
            lambda _: QTimer.singleShot(EXACT_PASS_DELAY_MS, self, self._start_exact),
            Qt.SingleShotConnection,
        )
        self._done(report)

    def _start_exact(self):
        if self.report is not None and self.report.sampled:
            self.controller.measure()

    def _running(self):
        """A pass (exact or the overlay's) started: its progress and Cancel."""
        self.progress.setValue(0)
        self.cancel_button.setEnabled(True)
        self._show_progress(True)

    def _done(self, report):
        self.report = report
        self.cancel_button.setEnabled(report.sampled)
        self.progress.setValue(0 if report.sampled else 1000)
        self._show_progress(report.sampled)
        if not report.stacks:
            self.status.setText("No repeated blocks (keys like blocks.0.…, layers.1.…, h.2.…)")
            (self.preview_ready if report.sampled else self.ready).emit(report)
            return
        status = (
            "Sampled estimates; the exact pass is running..."
            if report.sampled
            else "Click a point to open that tensor."
        )
        skipped = report.skipped()
        if skipped:
            key, note = next(iter(skipped.items()))
            status += f" {len(skipped):,} weights without spectral metrics ({escape(key)}: {note})"
        self.status.setText(status)
        chosen = self.metric_box.currentData()
        self.stack_box.blockSignals(True)
        self.metric_box.blockSignals(True)
        self.stack_box.clear()
        self.metric_box.clear()
        for stack in report.stacks:
            self.stack_box.addItem(f"{escape(stack.prefix)} ({len(stack.layers)} layers)")
        for metric in report.available():
            self.metric_box.addItem(LABELS.get(metric, metric), metric)
        self.metric_box.setCurrentIndex(max(self.metric_box.findData(chosen), 0))
        self.stack_box.blockSignals(False)
        self.metric_box.blockSignals(False)
        self.stack_box.setVisible(len(report.stacks) > 1)
        if plotting_or_wait(self):
            self.plotting_ready(_plotting["failed"])

    def plotting_ready(self, message):
        if message:
            self.status.setText(f"Plotting is unavailable: {message}")
            return
        # its own event: pyqtgraph's arrival also builds the tab's plot in this one
        QTimer.singleShot(0, self, self._plot_report)

    def _plot_report(self):
        if self.report is None:
            return
        done = self.preview_ready if self.report.sampled else self.ready
        if self.plot is not None:
            self.redraw(then=done)
            return
        pg = _plotting["module"]
        self.plot = pg.PlotWidget(background=self.palette().color(QPalette.Base))
        style_plot(self.plot)
        self.plot.setObjectName("layersPlot")
        self.plot.setLabel("bottom", "layer")
        # below the axes, in the plot's own layout: over the data it covered layers 0-7
        plot_item = self.plot.getPlotItem()
        legend = pg.LegendItem(
            offset=None, colCount=LEGEND_COLUMNS, labelTextColor=self.palette().color(QPalette.Text)
        )
        plot_item.layout.addItem(legend, LEGEND_ROW, 1)
        plot_item.legend = legend  # named lines are added to it
        self.layout_.addWidget(self.plot, 1)
        QTimer.singleShot(
            0, self, lambda: self.redraw(then=done)
        )  # the widget alone, in a turn of its own

    def _spectral_toggled(self, on):
        self.cancel()
        self.status.setText(
            "Computing singular values..." if on else "Reading every layer's tensors..."
        )
        self.controller.remeasure(on)
        if self.overlay_box.currentIndex() > 0:
            self._overlay_changed(self.overlay_box.currentIndex())

    def _overlay_changed(self, index):
        self.overlay = None
        if index <= 0:
            self.redraw()
            return
        self.controller.overlay(self.peers[index - 1][1])

    def _overlay_done(self, report):
        self.overlay = report
        self.cancel_button.setEnabled(False)
        self._show_progress(self.report is None or self.report.sampled)
        self.redraw()

    def _show_progress(self, on: bool) -> None:
        """The bar and Cancel while a pass runs; once it has ended the plot gets their room."""
        self.progress.setVisible(on)
        self.cancel_button.setVisible(on)

    def curves(self):
        """(role, layers, values, keys) of the chosen stack and metric, for the plot and tests."""
        if self.report is None or not self.report.stacks:
            return []
        stack = self.report.stacks[max(self.stack_box.currentIndex(), 0)]
        metric = self.metric_box.currentData()
        out = []
        for role in stack.roles:
            values = self.report.series(stack, role, metric)
            keys = role.state_keys if metric == "exp_avg_sq_mean" else role.keys
            out.append((role.role, stack.layers, values, [keys.get(i) for i in stack.layers]))
        return out

    def redraw(self, *_, then=None):
        """Lines of the chosen stack and metric, ROLES_PER_STEP roles per event loop turn (a
        plot of all roles built in one go held the window); each role's items are made once
        and later only get new data. `then` is emitted (with the report) once all are drawn."""
        if self.plot is None:
            return
        pg = _plotting["module"]
        metric = self.metric_box.currentData()
        log = self.log_box.isChecked()
        label = LABELS.get(metric, metric or "")
        self.plot.setLabel("left", f"log10 {label}" if log else label)
        stack = self.report.stacks[max(self.stack_box.currentIndex(), 0)]
        if stack.prefix != self.drawn_stack:  # other roles: start from an empty plot
            self.plot.clear()
            self.lines.clear()
            self.drawn_stack = stack.prefix
        overlay_stack = (
            next((s for s in self.overlay.stacks if s.prefix == stack.prefix), None)
            if self.overlay
            else None
        )
        # layers are whole numbers: a short stack gets one tick per layer, not 0.5, 1.5...
        span = (max(stack.layers) - min(stack.layers)) if stack.layers else 0
        self.plot.getAxis("bottom").setTickSpacing(*((1, 1) if span <= 20 else (None, None)))
        todo = []
        for number, (role, layers, values, keys) in enumerate(self.curves()):
            colour = pg.intColor(number, hues=max(len(stack.roles), 1))
            points = [
                (layer, _shown(value, log), key)
                for layer, value, key in zip(layers, values, keys)
                if _plottable(value, log)
            ]
            other = []
            other_role = (
                next((r for r in overlay_stack.roles if r.role == role), None)
                if overlay_stack
                else None
            )
            if other_role is not None:
                other = [
                    (layer, _shown(v, log))
                    for layer, v in zip(
                        overlay_stack.layers, self.overlay.series(overlay_stack, other_role, metric)
                    )
                    if _plottable(v, log)
                ]
            todo.append((role, colour, points, other))
        self.draw_generation += 1
        self.scatters = []
        self._draw_step(self.draw_generation, todo, then)

    def _draw_step(self, generation, todo, then):
        if generation != self.draw_generation or self.plot is None:
            return  # a newer redraw took over
        for role, colour, points, other in todo[:ROLES_PER_STEP]:
            curve, scatter, overlay = self._lines_of(role, colour)
            curve.setData([p[0] for p in points], [p[1] for p in points])
            scatter.setData(
                [p[0] for p in points], [p[1] for p in points], data=[p[2] for p in points]
            )
            overlay.setData([p[0] for p in other], [p[1] for p in other])
            if points:
                self.scatters.append(scatter)
        rest = todo[ROLES_PER_STEP:]
        if rest:
            QTimer.singleShot(0, self, lambda: self._draw_step(generation, rest, then))
            return
        self._fit_legend()
        if then is not None:
            then.emit(self.report)

    def _fit_legend(self) -> None:
        """As many legend columns as fit the plot's width (at most LEGEND_COLUMNS): a legend
        wider than the pane pushed the last layers out of sight."""
        legend = self.plot.getPlotItem().legend if self.plot is not None else None
        if legend is None or not legend.items:
            return
        room = self.plot.width() - self.plot.getAxis("left").width() - LEGEND_MARGIN
        columns = LEGEND_COLUMNS
        legend.setColumnCount(columns)
        while columns > 1 and legend.geometry().width() > room:
            columns -= 1
            legend.setColumnCount(columns)
        # the view sized the plot to the wider legend's minimum: fit it to the view again; and
        # LegendItem.updateSize moved the legend to (0, 0), over the data, until a relayout
        plot_item = self.plot.getPlotItem()
        plot_item.setGeometry(0, 0, self.plot.width(), self.plot.height())
        plot_item.layout.invalidate()
        plot_item.layout.activate()

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self._fit_legend()

    def _lines_of(self, role, colour):
        """(line, clickable points, overlay's dashed line) of one role, made on first use."""
        if role not in self.lines:
            pg = _plotting["module"]
            curve = pg.PlotDataItem(pen=pg.mkPen(colour, width=2), name=html.escape(escape(role)))
            scatter = pg.ScatterPlotItem(
                brush=colour, pen=None, size=8, hoverable=True, tip=self._tip
            )
            scatter.sigClicked.connect(self._points_clicked)
            overlay = pg.PlotDataItem(pen=pg.mkPen(colour, width=1, style=Qt.DashLine))
            for item in (curve, scatter, overlay):
                self.plot.addItem(item)
            self.lines[role] = (curve, scatter, overlay)
        return self.lines[role]

    def _tip(self, x: float, y: float, data: object) -> str:
        """A hovered point: where it is, and its tensor (a state tensor with its parameter's
        name, where the file proves it: state.49.exp_avg_sq — h.3.mlp.c_fc.weight)."""
        key = str(data or "")
        name = self.controller.parameter_names.get(key)
        label = f"{escape(key)} \u2014 {escape(name)}" if name else escape(key)
        return f"x: {x:.3g}\ny: {y:.3g}\n{label}"

    def _points_clicked(self, _scatter, points, *_):
        for point in points:
            key = point.data()
            if key:
                self.point_clicked.emit(key)
                self.open_key(key)
                return

    def _failed(self, message):
        self.cancel_button.setEnabled(False)
        self.status.setText(f"Layers failed: {message}")
        self.failed.emit(message)

    def cancel(self):
        self.controller.cancel()  # also the exact pass the preview has not started yet
        self.cancel_button.setEnabled(False)

    def closeEvent(self, event):
        self.cancel()
        super().closeEvent(event)


def _shown(value, log: bool) -> float:
    return math.log10(value) if log else value


def _plottable(value, log: bool) -> bool:
    return value is not None and math.isfinite(value) and (value > 0 or not log)
