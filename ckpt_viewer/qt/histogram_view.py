"""The histogram plot: step curve, mean and mean +/- std lines, the NaN/Inf counts the finite
values' histogram leaves out, an overlay with its legend, a hover read-out, log y, Save PNG.
It shows the Stats it is given and computes nothing."""

from __future__ import annotations

import math
from collections.abc import Iterator

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QFileDialog, QLabel, QVBoxLayout, QWidget

from ckpt_viewer.core.listing.report import nonfinite_counts
from ckpt_viewer.qt.plain import plain_label
from ckpt_viewer.qt.plotting import StepBuild, plot_widget_steps, plotting_module
from ckpt_viewer.qt.theme import on_base, style_plot


def bin_at(edges, x: float) -> int:
    """Index of the bin [edges[i], edges[i + 1]) holding x (x within the edges)."""
    lo, hi = 0, len(edges) - 2
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if edges[mid] <= x:
            lo = mid
        else:
            hi = mid - 1
    return lo


def count_labels(values: list[float], _scale: float = 1.0, _spacing: object = None) -> list[str]:
    """Log-y tick labels (values are log10 counts): counts of 1, 2 and 5 times a power of ten;
    pyqtgraph's other minor ticks stay unlabelled (over a short range it labelled them all, and
    7, 8, 9, 10 and 0.9, 1 were drawn over each other). Below one count: nothing."""
    labels = []
    for value in values:
        count = 10.0**value
        mantissa = round(count / 10.0 ** math.floor(value + 1e-9), 6)
        if count < 1 - 1e-9 or mantissa not in (1, 2, 5):
            labels.append("")
        elif count < 1e5:
            labels.append(f"{round(count):,}")
        else:
            labels.append(f"{mantissa:g}e{math.floor(value + 1e-9)}")
    return labels


class HistogramView(QWidget):
    """Built once pyqtgraph is imported (`build`); until then `plot` is None."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.plot = self.curve = self.overlay = self.legend = None
        self.stats = None
        self.log_y = False
        self._build = StepBuild(self, self._build_steps)
        self.readout = plain_label(" ")
        self.readout.setObjectName("histogramReadout")
        # above the plot, not on it: drawn in the plot it covered the first bars
        self.nonfinite = QLabel()
        self.nonfinite.setObjectName("histogramNonfinite")
        self.nonfinite.setTextFormat(Qt.RichText)
        self.nonfinite.setVisible(False)
        self.plot_holder = QVBoxLayout()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.nonfinite)
        layout.addLayout(self.plot_holder, 1)
        layout.addWidget(self.readout)

    def build(self) -> bool:
        """Build the (Python-heavy) plot now if pyqtgraph is there (finishing a build begun
        in slices): True when it exists."""
        if self.plot is not None:
            return True
        if plotting_module() is None:
            return False
        self._build.finish()
        return True

    def build_in_slices(self) -> None:
        """Build the plot one piece per event-loop turn (each a few ms: pyqtgraph's plot made
        in one step held the GUI thread over a frame); build() finishes it at once if needed."""
        if plotting_module() is not None:
            self._build.start()

    def _build_steps(self) -> Iterator[None]:
        pg = plotting_module()
        plot = yield from plot_widget_steps(pg)
        box = plot.getPlotItem().getViewBox()
        style_plot(plot)
        plot.setObjectName("histogramPlot")
        plot.setLabel("left", "count")
        for side in ("left", "right"):  # the mirrored counts read 10¹ beside the left's 10
            plot.getAxis(side).logTickStrings = count_labels
        plot.setLabel("bottom", "value")
        box.setMouseEnabled(x=True, y=False)  # the wheel zooms along values; counts follow
        box.setAutoVisible(y=True)
        plot.showGrid(x=True, y=True, alpha=0.2)
        yield
        curve = plot.plot(
            [0, 1],
            [0],
            stepMode="center",
            fillLevel=0,
            brush=(90, 140, 230, 120),
            pen=pg.mkPen((60, 100, 200), width=1),
        )
        mean_line = pg.InfiniteLine(angle=90, pen=pg.mkPen((220, 60, 40), width=2))
        std_lines = [
            pg.InfiniteLine(angle=90, pen=pg.mkPen((220, 60, 40), style=Qt.DashLine))
            for _ in range(2)
        ]
        for line in [mean_line] + std_lines:
            plot.addItem(line)
        yield
        overlay = plot.plot([0, 1], [0], stepMode="center", pen=pg.mkPen((230, 120, 20), width=2))
        overlay.setVisible(False)
        legend = plot.addLegend(offset=(-10, 10))
        legend.setVisible(False)
        plot.scene().sigMouseMoved.connect(self._hover)
        yield
        self.plot_holder.addWidget(plot)
        plot.show()
        # the view's parts appear together, complete: `plot` set means every one is there
        self.curve, self.mean_line, self.std_lines = curve, mean_line, std_lines
        self.overlay, self.legend = overlay, legend
        self.plot = plot

    def clear(self):
        """A new tensor: nothing of the previous one stays (curve, mean and std lines, read-out,
        overlay). Hidden, not emptied: new data moved the axes, and redrawing them took half
        the selection's frame, for a plot that its statistics redraw a moment later."""
        self.stats = None
        self.readout.setText(" ")
        self.nonfinite.setVisible(False)
        if self.plot is not None:
            for item in (self.curve, self.mean_line, *self.std_lines):
                item.setVisible(False)
            self.clear_overlay()

    def show_stats(self, stats):
        self.stats = stats
        self.show_nonfinite(stats)
        if not self.build():
            return
        edges, counts = stats.edges, stats.counts
        self.curve.setVisible(True)
        if not counts:
            self.curve.setData([0, 1], [0])
            return
        self.curve.setData(edges, counts)
        for line, value, visible in (
            (self.mean_line, stats.mean, stats.mean is not None),
            (self.std_lines[0], (stats.mean or 0) - (stats.std or 0), stats.std is not None),
            (self.std_lines[1], (stats.mean or 0) + (stats.std or 0), stats.std is not None),
        ):
            line.setVisible(visible)
            if visible:
                line.setValue(value)
        self.set_log_y(self.log_y)
        self.plot.enableAutoRange()

    def show_nonfinite(self, stats):
        """NaN and Inf have no place on a value axis: their counts as text above the plot."""
        counts = nonfinite_counts(stats)
        self.nonfinite.setVisible(bool(counts))
        if counts:
            text = ", ".join(f"{label} {count:,}" for label, count in counts)
            color = on_base(QColor(200, 30, 40)).name()
            self.nonfinite.setText(
                f"<span style='color:{color}'><b>{text}</b> (not in the histogram)</span>"
            )

    def set_log_y(self, on: bool):
        self.log_y = on
        if self.plot is not None:
            self.plot.setLogMode(x=False, y=on)

    def show_overlay(self, stats, label: str):
        if not self.build() or not stats.counts:
            return
        self.overlay.setData(stats.edges, stats.counts)
        self.overlay.setVisible(True)
        self.legend.setVisible(True)
        self.legend.clear()
        self.legend.addItem(self.curve, "this file")
        self.legend.addItem(self.overlay, label)

    def clear_overlay(self):
        if self.plot is not None:
            self.overlay.setVisible(False)
            self.legend.setVisible(False)

    def _hover(self, position):
        stats = self.stats
        if self.plot is None or stats is None or not stats.counts:
            return
        x = self.plot.getPlotItem().vb.mapSceneToView(position).x()
        self.readout.setText(self.describe_value(x))

    def describe_value(self, x: float) -> str:
        """The read-out for a value on the x axis: its bin and count."""
        edges, counts = self.stats.edges, self.stats.counts
        if not edges[0] <= x <= edges[-1]:
            return " "
        i = bin_at(edges, x)
        estimate = "≈ " if self.stats.sampled else ""
        return f"bin [{edges[i]:.6g}, {edges[i + 1]:.6g}): {estimate}{counts[i]:,}"

    def export_png(self, path: str | None = None):
        if self.plot is None:
            return None
        if not path:
            path, _ = QFileDialog.getSaveFileName(
                self, "Save histogram", "histogram.png", "PNG image (*.png)"
            )
        if path:
            self.plot.grab().save(path)
        return path
