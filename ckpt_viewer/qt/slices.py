"""Heatmap and paged value table of a tensor's last two dimensions."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
from PySide6.QtCore import QAbstractTableModel, Qt, Signal
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import (QCheckBox, QHBoxLayout, QLabel, QSpinBox, QTableView, QVBoxLayout,
                               QWidget)

from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.values import downsampled_2d, filter_grid, read_window
from ckpt_viewer.qt import workers
from ckpt_viewer.qt.plain import plain_label

PAGE_ROWS, PAGE_COLS, MAX_PAGES = 128, 32, 64


def matrix_shape(tensor) -> tuple[int, int]:
    if len(tensor.shape) >= 2:
        return tensor.shape[-2], tensor.shape[-1]
    return (tensor.shape[0] if tensor.shape else 1), 1


class SliceSelector(QWidget):
    """Spin boxes for the indices of every dimension but the last two."""

    changed = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.layout_ = QHBoxLayout(self)
        self.layout_.setContentsMargins(0, 0, 0, 0)
        self.spins: list[QSpinBox] = []

    def set_shape(self, shape):
        for spin in self.spins:
            spin.deleteLater()
        while self.layout_.count():
            item = self.layout_.takeAt(0)
            if item.widget():
                item.widget().deleteLater()
        self.spins = []
        for dim, size in enumerate(shape[:-2]):
            spin = QSpinBox()
            spin.setRange(0, max(size - 1, 0))
            spin.setPrefix(f"dim {dim}: ")
            spin.valueChanged.connect(self.changed)
            self.layout_.addWidget(spin)
            self.spins.append(spin)
        if self.spins:
            self.layout_.addWidget(QLabel(f"of {list(shape)}"))
        self.layout_.addStretch(1)
        self.setVisible(bool(self.spins))

    def leading(self) -> tuple:
        return tuple(spin.value() for spin in self.spins)


class ValuesModel(QAbstractTableModel):
    """Cells read a page at a time from the file; at most MAX_PAGES pages are kept."""

    def __init__(self, tensor, leading=(), parent=None):
        super().__init__(parent)
        self.tensor, self.leading = tensor, leading
        self.rows, self.cols = matrix_shape(tensor)
        self.pages: OrderedDict = OrderedDict()
        self.error = ""

    def rowCount(self, parent=None):
        return 0 if parent is not None and parent.isValid() else self.rows

    def columnCount(self, parent=None):
        return 0 if parent is not None and parent.isValid() else self.cols

    def _page(self, r, c):
        key = (r // PAGE_ROWS, c // PAGE_COLS)
        page = self.pages.get(key)
        if page is None:
            r0, c0 = key[0] * PAGE_ROWS, key[1] * PAGE_COLS
            rows = range(r0, min(r0 + PAGE_ROWS, self.rows))
            cols = range(c0, min(c0 + PAGE_COLS, self.cols))
            try:
                page = read_window(self.tensor, self.leading, rows, cols)
            except CheckpointError as exc:
                self.error = str(exc)
                page = np.full((len(rows), len(cols)), np.nan)
            self.pages[key] = page
            if len(self.pages) > MAX_PAGES:
                self.pages.popitem(last=False)
        else:
            self.pages.move_to_end(key)
        return page[r % PAGE_ROWS, c % PAGE_COLS]

    def data(self, index, role=Qt.DisplayRole):
        if role != Qt.DisplayRole or not index.isValid():
            return None
        value = self._page(index.row(), index.column())
        if isinstance(value, (bool, np.bool_)):
            return str(bool(value))
        if np.iscomplexobj(value):
            return f"{complex(value):.6g}"
        return f"{value:.6g}" if isinstance(value, (float, np.floating)) else str(value)

    def headerData(self, section, orientation, role=Qt.DisplayRole):
        return str(section) if role == Qt.DisplayRole else None


class ValuesPage(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.selector = SliceSelector()
        self.table = QTableView()
        self.table.setObjectName("valueTable")
        self.table.verticalHeader().setDefaultSectionSize(20)
        self.table.horizontalHeader().setDefaultSectionSize(90)
        layout = QVBoxLayout(self)
        layout.addWidget(self.selector)
        layout.addWidget(self.table, 1)
        self.tensor = None
        self.selector.changed.connect(self._reload)

    def show_tensor(self, tensor):
        self.tensor = tensor
        self.selector.set_shape(tensor.shape)
        self._reload()

    def _reload(self):
        if self.tensor is not None:
            self.table.setModel(ValuesModel(self.tensor, self.selector.leading(), self.table))


class HeatmapPage(QWidget):
    """A colour-mapped image of the last two dimensions (downsampled to at most 1024 x 1024
    cells), or conv kernels as a grid of filters; computed in a worker."""

    ready = Signal()

    def __init__(self, plotting, request_plotting, parent=None):
        super().__init__(parent)
        self.plotting = plotting        # returns the pyqtgraph module, or None
        self.request_plotting = request_plotting   # asks for a show_pending() call once ready
        self.pending = None
        self.selector = SliceSelector()
        self.as_filters = QCheckBox("conv kernels as a grid of filters")
        self.status = plain_label()
        top = QHBoxLayout()
        top.addWidget(self.selector, 1)
        top.addWidget(self.as_filters)
        top.addWidget(self.status)
        self.layout_ = QVBoxLayout(self)
        self.layout_.addLayout(top)
        self.plot = None
        self.tensor = None
        self.generation = 0
        self.jobs = workers.Controller(self)     # a new slice supersedes the one being read
        self.selector.changed.connect(self.recompute)
        self.as_filters.toggled.connect(self.recompute)

    def show_tensor(self, tensor):
        self.tensor = tensor
        kernels = len(tensor.shape) == 4 and tensor.shape[-1] <= 11 and tensor.shape[-2] <= 11
        self.as_filters.setVisible(kernels)
        self.as_filters.blockSignals(True)
        self.as_filters.setChecked(kernels)
        self.as_filters.blockSignals(False)
        self.selector.set_shape(tensor.shape)
        self.recompute()

    def recompute(self, *_):
        if self.tensor is None:
            return
        self.generation += 1
        generation, tensor = self.generation, self.tensor
        filters = self.as_filters.isChecked() and self.as_filters.isVisible()
        leading = self.selector.leading()
        self.selector.setEnabled(not filters)
        self.status.setText("reading...")

        def job():
            if filters:
                return filter_grid(tensor), 1, 1
            return downsampled_2d(tensor, leading)
        self.jobs.start("heatmap", job, on_result=lambda result: self._show(generation, result),
                        on_error=lambda message: self._fail(generation, message))

    def cancel(self):
        self.jobs.cancel()

    def show_pending(self):
        if self.pending is not None:
            self._show(self.generation, self.pending)

    def _fail(self, generation, message):
        if generation == self.generation:
            self.status.setText(f"cannot read values: {message}")

    def _show(self, generation, result):
        if generation != self.generation:
            return
        pg = self.plotting()
        if pg is None:
            self.pending = result
            self.status.setText("loading the plotting library...")
            self.request_plotting()
            return
        self.pending = None
        values, row_step, col_step = result
        if self.plot is None:
            self.plot = pg.PlotWidget(background=self.palette().color(QPalette.Base))
            self.plot.setObjectName("heatmapPlot")
            self.plot.setLabel("left", "row")
            self.plot.setLabel("bottom", "column")
            self.plot.invertY(True)
            self.plot.setAspectLocked(False)
            self.image = pg.ImageItem(axisOrder="row-major")
            self.plot.addItem(self.image)
            self.colorbar = pg.ColorBarItem(colorMap=pg.colormap.get("viridis"), interactive=False)
            self.colorbar.setImageItem(self.image, insert_in=self.plot.getPlotItem())
            self.layout_.addWidget(self.plot, 1)
            self.plot.show()
        values = np.asarray(values, dtype=np.float64)
        if np.iscomplexobj(values):
            values = np.abs(values)
        finite = values[np.isfinite(values)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if high <= low:
            high = low + 1.0
        self.image.setImage(values, levels=(low, high))
        self.image.setRect(0, 0, values.shape[1] * col_step, values.shape[0] * row_step)
        self.colorbar.setLevels((low, high))
        self.plot.autoRange()
        step = f" (row step {row_step}, column step {col_step})" if row_step > 1 or col_step > 1 else ""
        self.status.setText(f"{values.shape[0]} x {values.shape[1]} cells{step}")
        self.ready.emit()
