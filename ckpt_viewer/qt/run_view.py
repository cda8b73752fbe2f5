"""File > Open Run: a training run's timeline in one tab — a key x checkpoint heat-strip of the
chosen metric (log colour scale, values on hover, a click opens that tensor in that checkpoint),
the chosen key's line across steps, learning rates and losses on the same step axis, and the
findings. A sampled pass is drawn first; the exact pass replaces it."""

from __future__ import annotations

import math
import os

import numpy as np
from PySide6.QtCore import QObject, Qt, QTimer, Signal
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSplitter,
    QStyle,
    QVBoxLayout,
    QWidget,
)

from ckpt_viewer.core.analysis.timeline import DEFAULT_METRICS, open_run, scan
from ckpt_viewer.core.listing.text import plural, safe_text
from ckpt_viewer.qt import workers
from ckpt_viewer.qt.plotting import _plotting, wait_for_plotting
from ckpt_viewer.qt.theme import style_plot

SEVERITY_ICONS = {
    "error": QStyle.SP_MessageBoxCritical,
    "warning": QStyle.SP_MessageBoxWarning,
    "info": QStyle.SP_MessageBoxInformation,
}
LABELS = {
    "update": "relative update ||W_t - W_t-1|| / ||W_t-1||",
    "l2": "L2 norm",
    "std": "std",
    "max_abs": "max |x|",
    "cos_prev": "cosine to the previous checkpoint",
    "cos_first": "cosine to the first checkpoint",
    "nan": "NaN count",
    "inf": "Inf count",
    "exp_avg_sq": "mean exp_avg_sq (Adam)",
    "alpha": "power-law alpha",
}
PREVIEW_ELEMENTS = 16_384  # per tensor and checkpoint, for the first heat-strip
MAX_KEY_TICKS = 40  # key labels on the heat-strip's axis (every n-th beyond that)
KEY_LABEL_PX = 15  # the height one key label needs on that axis


def _sampled_job(paths):
    run = open_run(paths)
    report = yield from scan(run, DEFAULT_METRICS, sample=PREVIEW_ELEMENTS)
    return run, report


def _exact_job(run):
    return (yield from scan(run, DEFAULT_METRICS))


def decade_labels(values: list, _scale: float = 1.0, _spacing: object = None) -> list:
    """Log-axis tick labels at powers of ten only: pyqtgraph labels every minor tick of a
    tall axis, and 0.009, 0.008... were drawn over each other."""
    labels = []
    for value in values:
        decade = abs(value - round(value)) < 1e-9
        labels.append(f"{10.0 ** round(value):g}" if decade else "")
    return labels


def _step_text(step) -> str:
    if step.step is None:
        return safe_text(step.label)
    return str(int(step.step)) if float(step.step).is_integer() else f"{step.step:g}"


class RunController(workers.PaneController):
    """A run's timeline: a sampled scan first ("sampled"), then the exact one ("exact")."""

    sampled = Signal(object)  # the sampled TimelineReport
    measured = Signal(object)  # the exact TimelineReport
    progressed = Signal(float)
    failed = Signal(str)

    def __init__(self, paths: list[str], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.paths = paths
        self.run = None  # the opened run, once the sampled scan has it

    def sample(self) -> None:
        self.jobs.start(
            "sampled",
            _sampled_job,
            self.paths,
            on_result=self._sampled,
            on_error=self.failed.emit,
            on_progress=self.progressed.emit,
        )

    def _sampled(self, result) -> None:
        if result is not None:  # None: stopped
            self.run, report = result
            self.sampled.emit(report)

    def measure(self) -> None:
        if self.run is not None:
            self.jobs.start(
                "exact",
                _exact_job,
                self.run,
                on_result=self._measured,
                on_error=self.failed.emit,
                on_progress=self.progressed.emit,
            )

    def _measured(self, report) -> None:
        if report is not None:  # None: stopped
            self.measured.emit(report)


class RunView(QWidget):
    """`open_tensor(path, key)` shows one tensor of one checkpoint; `compare(path_a, path_b,
    key)` opens a comparison of two checkpoints at that key."""

    preview_ready = Signal(object)  # the sampled TimelineReport, drawn
    ready = Signal(object)  # the exact TimelineReport, drawn
    failed = Signal(str)
    cell_clicked = Signal(int, str)  # checkpoint index, key

    def __init__(self, paths, open_tensor=None, compare=None, parent=None):
        super().__init__(parent)
        self.setObjectName("runView")
        self.paths = [os.fspath(p) for p in paths]
        self.open_tensor, self.compare = open_tensor, compare
        self.report = None
        self.heat = self.image = self.lines = self.rates = self.losses = None
        self.matrix = np.zeros((0, 0))
        self.nonfinite = np.zeros((0, 0), bool)
        self.selected: tuple[int, str] | None = None
        self.controller = RunController(self.paths, self)
        self.controller.sampled.connect(self._sampled_done)
        self.controller.measured.connect(self._show)
        self.controller.progressed.connect(self._progress)
        self.controller.failed.connect(self._failed)
        self.status = QLabel("Opening the run's checkpoints...")
        self.status.setObjectName("runStatus")
        self.status.setTextFormat(Qt.PlainText)
        self.status.setWordWrap(True)
        self.metric_box = QComboBox()
        self.metric_box.setObjectName("runMetric")
        self.metric_box.setSizeAdjustPolicy(QComboBox.AdjustToContents)
        for metric in DEFAULT_METRICS:
            self.metric_box.addItem(LABELS.get(metric, metric), metric)
        self.metric_box.setCurrentIndex(self.metric_box.findData("update"))
        self.metric_box.currentIndexChanged.connect(self.redraw)
        self.log_box = QCheckBox("log colour scale")
        self.log_box.setChecked(True)
        self.log_box.toggled.connect(self.redraw)
        self.compare_button = QPushButton("Compare with previous checkpoint")
        self.compare_button.setObjectName("runCompare")
        self.compare_button.setEnabled(False)
        self.compare_button.clicked.connect(self._compare_selected)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setMaximumWidth(200)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setObjectName("runCancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.hover = QLabel("")
        self.hover.setObjectName("runHover")
        self.hover.setTextFormat(Qt.PlainText)
        controls = QHBoxLayout()
        for widget in (self.metric_box, self.log_box, self.compare_button):
            controls.addWidget(widget)
        controls.addStretch(1)
        controls.addWidget(self.progress)
        controls.addWidget(self.cancel_button)
        self.findings = QListWidget()
        self.findings.setObjectName("runFindings")
        self.findings.setWordWrap(True)  # a finding is a sentence: wrapped, not cut
        self.findings.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.findings.itemActivated.connect(self._finding_chosen)
        self.findings.itemClicked.connect(self._finding_chosen)
        self.plots = QSplitter(Qt.Vertical)
        self.plots.setObjectName("runPlots")
        self.body = body = QSplitter(Qt.Horizontal)
        body.addWidget(self.plots)
        body.addWidget(self.findings)
        body.setStretchFactor(0, 3)
        body.setStretchFactor(1, 1)
        layout = QVBoxLayout(self)
        layout.addWidget(self.status)
        layout.addLayout(controls)
        layout.addWidget(self.hover)
        layout.addWidget(body, 1)
        self.controller.sample()

    # --- jobs ---------------------------------------------------------------------------

    def _progress(self, fraction):
        self.progress.setValue(int(fraction * 1000))

    def _sampled_done(self, report):
        self.preview_ready.connect(
            lambda _: QTimer.singleShot(0, self, self._start_exact), Qt.SingleShotConnection
        )
        self._show(report)

    def _start_exact(self):
        if self.report is not None and not self.report.sampled:
            return
        self.progress.setValue(0)
        self.controller.measure()

    def _failed(self, message):
        self.cancel_button.setEnabled(False)
        self.progress.setVisible(False)
        self.status.setText(f"Timeline failed: {message}")
        self.failed.emit(message)

    def cancel(self):
        self.controller.cancel()
        self.cancel_button.setEnabled(False)
        if self.report is not None and self.report.sampled:
            self.status.setText(self.status.text() + " (exact pass cancelled)")

    def closeEvent(self, event):
        self.cancel()
        super().closeEvent(event)

    # --- drawing ------------------------------------------------------------------------

    def _show(self, report):
        if report is None:
            return
        self.report = report
        steps = report.steps
        order = sorted({s.order_source for s in steps})
        text = (
            f"{plural(len(steps), 'checkpoint')}, {plural(len(report.keys), 'key')}, "
            f"ordered by {', '.join(order)}; {plural(len(report.findings), 'finding')}."
        )
        if report.sampled:
            text += (
                f" Estimates from the first {report.sampled:,} values of each tensor; "
                "the exact pass is running..."
            )
        else:
            text += (
                " Click a cell to open that tensor in that checkpoint. Grey: unchanged since"
                " the previous checkpoint; a red cross: the tensor holds NaN/Inf."
            )
        if report.skipped:
            path, why = report.skipped[0]
            text += f" Skipped {plural(len(report.skipped), 'path')} ({safe_text(path)}: {why})."
        self.status.setText(text)
        self.cancel_button.setEnabled(bool(report.sampled))
        self.progress.setValue(0 if report.sampled else 1000)
        for widget in (self.progress, self.cancel_button):  # the exact pass done: nothing to show
            widget.setVisible(bool(report.sampled))
        self.findings.clear()
        for finding in report.findings:
            item = QListWidgetItem(
                self.style().standardIcon(SEVERITY_ICONS[finding.severity]),
                f"{finding.severity}: {finding.message}",
            )
            item.setData(Qt.UserRole, (finding.step, finding.key))
            item.setToolTip(finding.message)
            self.findings.addItem(item)
        if _plotting["module"] is None:
            wait_for_plotting(self)
        else:
            self.plotting_ready("")

    def plotting_ready(self, message):
        if message:
            self.status.setText(f"Plotting is unavailable: {message}")
            return
        QTimer.singleShot(0, self, self._draw)

    def _make_plots(self):
        pg = _plotting["module"]
        background = self.palette().color(QPalette.Base)
        self.heat = pg.PlotWidget(background=background)
        self.heat.getViewBox().sigResized.connect(self._key_ticks)  # labels that fit
        self.heat.setObjectName("runHeat")
        self.heat.invertY(True)
        self.heat.setLabel("bottom", "checkpoint (step)")
        self.image = pg.ImageItem()
        self.heat.addItem(self.image)
        # over the colours: what a colour scale cannot say (cells in data units, centred)
        self.unchanged_marks = pg.ScatterPlotItem(
            symbol="s", size=1.0, pxMode=False, pen=None, brush=pg.mkBrush(150, 150, 150)
        )
        self.unchanged_marks.setObjectName("runUnchanged")
        self.nonfinite_marks = pg.ScatterPlotItem(
            symbol="x", size=0.6, pxMode=False, pen=None, brush=pg.mkBrush(230, 0, 0)
        )
        self.nonfinite_marks.setObjectName("runNonFinite")
        for marks in (self.unchanged_marks, self.nonfinite_marks):
            marks.setAcceptHoverEvents(False)
            marks.setAcceptedMouseButtons(Qt.NoButton)  # clicks reach the cells below
            self.heat.addItem(marks)
        self.colorbar = pg.ColorBarItem(colorMap=pg.colormap.get("viridis"), interactive=False)
        self.colorbar.setImageItem(self.image, insert_in=self.heat.getPlotItem())
        self.image.hoverEvent = self._hovered
        self.image.mouseClickEvent = self._clicked
        self.lines = pg.PlotWidget(background=background)
        self.lines.setObjectName("runLines")
        self.lines.setLabel("bottom", "step")
        self.rates = pg.PlotWidget(background=background)
        self.rates.setObjectName("runCurves")
        self.rates.setLabel("bottom", "step")
        self.rates.setLabel("left", "learning rate")
        self.rates.setLogMode(y=True)
        self.rates.getAxis("left").logTickStrings = decade_labels
        self.rates.addLegend(offset=(-10, 10))
        self.losses = pg.PlotWidget(background=background)
        self.losses.setObjectName("runLosses")
        self.losses.setLabel("bottom", "step")
        self.losses.setLabel("left", "loss")
        self.losses.addLegend(offset=(-10, 10))
        self.losses.setXLink(self.rates)
        self.lines.setXLink(self.rates)
        for plot in (self.heat, self.lines, self.rates, self.losses):
            style_plot(plot)
        lower = QSplitter(Qt.Horizontal)
        lower.addWidget(self.lines)
        lower.addWidget(self.rates)
        lower.addWidget(self.losses)
        self.plots.addWidget(self.heat)
        self.plots.addWidget(lower)
        self.plots.setStretchFactor(0, 3)
        self.plots.setStretchFactor(1, 2)
        width = max(self.body.width(), 800)
        self.body.setSizes([width * 7 // 10, width * 3 // 10])  # the plots first
        height = max(self.plots.height(), 400)
        self.plots.setSizes([height * 3 // 5, height * 2 // 5])

    def _draw(self):
        if self.report is None:
            return
        if self.heat is None:
            self._make_plots()
        self.redraw()
        self._draw_curves()
        (self.preview_ready if self.report.sampled else self.ready).emit(self.report)

    def metric(self) -> str:
        return self.metric_box.currentData() or "update"

    def values(self) -> np.ndarray:
        """The heat-strip's numbers: keys x checkpoints of the chosen metric (NaN: none)."""
        report = self.report
        if report is None:
            return np.zeros((0, 0))
        metric = self.metric()
        rows = [
            [np.nan if v is None else float(v) for v in k.values.get(metric, [])]
            for k in report.keys
        ]
        width = len(report.steps)
        return np.array([r + [np.nan] * (width - len(r)) for r in rows], dtype=np.float64).reshape(
            len(rows), width
        )

    def nonfinite_cells(self) -> np.ndarray:
        """keys x checkpoints: True where that tensor holds NaN or Inf."""
        counts = [
            [
                bool(n) or bool(i)
                for n, i in zip(k.values.get("nan") or [], k.values.get("inf") or [], strict=False)
            ]
            for k in self.report.keys
        ]
        width = len(self.report.steps)
        return np.array([c + [False] * (width - len(c)) for c in counts], dtype=bool).reshape(
            len(counts), width
        )

    def _mark_cells(self) -> None:
        """Grey: exactly unchanged since the previous checkpoint (an update metric of 0, a
        frozen layer); a red cross: the tensor holds NaN/Inf there, whatever the metric."""
        metric = self.metric()
        zero = self.matrix == 0 if metric == "update" else np.zeros(self.matrix.shape, bool)
        self.nonfinite = self.nonfinite_cells()
        for marks, cells in ((self.unchanged_marks, zero), (self.nonfinite_marks, self.nonfinite)):
            rows, columns = np.nonzero(cells)
            marks.setData(x=columns + 0.5, y=rows + 0.5)

    def redraw(self, *_):
        if self.report is None or self.heat is None:
            return
        self.matrix = self.values()
        shown = self.matrix.copy()
        log = self.log_box.isChecked()
        if log:
            with np.errstate(all="ignore"):
                shown = np.where(shown > 0, np.log10(shown), np.where(shown == 0, -np.inf, np.nan))
        finite = shown[np.isfinite(shown)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if high <= low:
            high = low + 1.0
        shown[shown == -np.inf] = low  # exactly 0 (a frozen layer): the scale's bottom colour
        # pyqtgraph's image axes are (x, y): checkpoints across, keys down
        self.image.setImage(shown.T, levels=(low, high), autoLevels=False)
        self.colorbar.setLevels((low, high))
        label = LABELS.get(self.metric(), self.metric())
        self.colorbar.axis.setLabel(f"log10 {self.metric()}" if log else self.metric())
        self.heat.setLabel("left", "key")
        steps = self.report.steps
        bottom = [(i + 0.5, _step_text(s)) for i, s in enumerate(steps)]
        every = max(1, math.ceil(len(steps) / 20))
        self.heat.getAxis("bottom").setTicks([bottom[::every]])
        self._key_ticks()
        self.heat.setToolTip(label + "\ngrey: unchanged (update exactly 0)\nred x: holds NaN/Inf")
        self._mark_cells()
        self._draw_key_line()

    def _key_ticks(self, *_):
        """Every n-th key on the heat-strip's axis, as many as fit the plot's height without
        overlapping (all of them on hover)."""
        if self.report is None or self.heat is None:
            return
        keys = [k.key for k in self.report.keys]
        fitting = max(1, int(self.heat.getViewBox().height() // KEY_LABEL_PX))
        every = max(1, math.ceil(len(keys) / min(MAX_KEY_TICKS, fitting)))
        self.heat.getAxis("left").setTicks(
            [[(i + 0.5, safe_text(k)) for i, k in enumerate(keys)][::every]]
        )

    def _step_axis(self) -> list[float]:
        return [
            float(s.step) if s.step is not None else float(i)
            for i, s in enumerate(self.report.steps)
        ]

    def _draw_key_line(self):
        pg = _plotting["module"]
        self.lines.clear()
        if not self.report.keys:
            return
        key = self.selected[1] if self.selected else self.report.keys[0].key
        series = next((k for k in self.report.keys if k.key == key), self.report.keys[0])
        xs, ys = [], []
        for x, value in zip(self._step_axis(), series.values.get(self.metric(), [])):
            if value is not None and math.isfinite(value):
                xs.append(x)
                ys.append(float(value))
        self.lines.setLabel("left", f"{self.metric()} of {safe_text(series.key)}")
        self.lines.plot(
            xs,
            ys,
            pen=pg.mkPen(pg.intColor(0), width=2),
            symbol="o",
            symbolSize=6,
            symbolBrush=pg.intColor(0),
            symbolPen=None,
        )

    def _draw_curves(self):
        pg = _plotting["module"]
        self.rates.clear()
        self.losses.clear()
        xs = self._step_axis()
        groups = max((len(s.lr) for s in self.report.steps), default=0)
        for group in range(groups):
            points = [
                (x, s.lr[group])
                for x, s in zip(xs, self.report.steps)
                if group < len(s.lr) and s.lr[group] > 0
            ]
            if points:
                self.rates.plot(
                    [p[0] for p in points],
                    [p[1] for p in points],
                    pen=pg.mkPen(pg.intColor(group, hues=max(groups, 1)), width=2),
                    symbol="o",
                    symbolSize=5,
                    symbolBrush=pg.intColor(group, hues=max(groups, 1)),
                    symbolPen=None,
                    name=f"group {group}",
                )
        names = sorted({k for s in self.report.steps for k in s.scalars})
        for number, name in enumerate(names):
            points = [
                (x, s.scalars[name])
                for x, s in zip(xs, self.report.steps)
                if isinstance(s.scalars.get(name), float) and math.isfinite(s.scalars[name])
            ]
            if points:
                self.losses.plot(
                    [p[0] for p in points],
                    [p[1] for p in points],
                    pen=pg.mkPen(pg.intColor(number, hues=max(len(names), 2)), width=2),
                    symbol="o",
                    symbolSize=5,
                    symbolBrush=pg.intColor(number, hues=max(len(names), 2)),
                    symbolPen=None,
                    name=safe_text(name),
                )
        history = [e for e in self.report.history if "loss" in e and math.isfinite(e["loss"])]
        if history:
            self.losses.plot(
                [e["step"] for e in history],
                [e["loss"] for e in history],
                pen=pg.mkPen(pg.intColor(len(names), hues=len(names) + 2), width=1),
                name="log_history loss",
            )
        rated = [e for e in self.report.history if e.get("learning_rate", 0) > 0]
        if rated and not groups:
            self.rates.plot(
                [e["step"] for e in rated],
                [e["learning_rate"] for e in rated],
                pen=pg.mkPen(pg.intColor(0), width=1),
                name="log_history learning_rate",
            )
        for plot, name in ((self.rates, "learning rate"), (self.losses, "loss")):
            items = plot.getPlotItem().listDataItems()
            legend = plot.getPlotItem().legend
            if legend is not None:  # one series: the axis names it, a legend only hides points
                legend.setVisible(len(items) > 1)
            plot.setLabel("left", name if items else f"no {name}")  # none in the files
        # the three plots share the step axis, and an empty one held it at 0..1: the key's
        # line showed one point of five, at the edge
        steps = xs + [e["step"] for e in self.report.history if "step" in e]
        if steps:
            self.rates.setXRange(min(steps), max(steps))

    # --- interaction --------------------------------------------------------------------

    def cell_at(self, x: float, y: float) -> tuple[int, str] | None:
        """(checkpoint index, key) of the heat-strip cell at image coordinates x, y."""
        if self.report is None:
            return None
        column, row = int(math.floor(x)), int(math.floor(y))
        if 0 <= column < len(self.report.steps) and 0 <= row < len(self.report.keys):
            return column, self.report.keys[row].key
        return None

    def _hovered(self, event):
        if event.isExit():
            self.hover.setText("")
            return
        cell = self.cell_at(event.pos().x(), event.pos().y())
        if cell is None:
            return
        column, key = cell
        row = [k.key for k in self.report.keys].index(key)
        value = self.matrix[row, column] if self.matrix.size else np.nan
        text = "-" if math.isnan(value) else f"{value:.4g}"
        if value == 0 and self.metric() == "update":
            text += " (unchanged)"
        if self.nonfinite.size and self.nonfinite[row, column]:
            text += "; holds NaN/Inf"
        step = _step_text(self.report.steps[column])
        self.hover.setText(f"{safe_text(key)} at step {step}: {self.metric()} = {text}")

    def _clicked(self, event):
        cell = self.cell_at(event.pos().x(), event.pos().y())
        if cell is not None:
            event.accept()
            self.choose(*cell)

    def choose(self, column: int, key: str):
        """Select a cell: the key's line is drawn, that tensor opens in that checkpoint."""
        self.selected = (column, key)
        self.compare_button.setEnabled(column > 0 and self.compare is not None)
        if self.heat is not None:
            self._draw_key_line()
        self.cell_clicked.emit(column, key)
        series = next((k for k in self.report.keys if k.key == key), None)
        source = series.sources[column] if series is not None and series.sources else None
        if self.open_tensor is not None and source is not None:
            self.open_tensor(self.report.steps[column].path, source)

    def _finding_chosen(self, item):
        column, key = item.data(Qt.UserRole)
        if key and column is not None:
            self.choose(column, key)

    def _compare_selected(self):
        if self.selected is None or self.compare is None:
            return
        column, key = self.selected
        series = next((k for k in self.report.keys if k.key == key), None)
        if column > 0 and series is not None:
            steps = self.report.steps
            self.compare(steps[column - 1].path, steps[column].path, series.sources[column])
