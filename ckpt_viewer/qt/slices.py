"""Heatmap and paged value table of a tensor's last two dimensions (read in workers)."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
from PySide6.QtCore import QAbstractTableModel, QEvent, QModelIndex, QObject, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QFontMetrics, QGuiApplication, QKeySequence, QResizeEvent
from PySide6.QtWidgets import (
    QCheckBox,
    QHBoxLayout,
    QLabel,
    QSizePolicy,
    QSpinBox,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from ckpt_viewer.core.listing.model import TensorInfo
from ckpt_viewer.core.values.heatmap import filter_grid, filter_grid_columns, pooled_2d
from ckpt_viewer.core.values.read import read_window
from ckpt_viewer.qt import workers
from ckpt_viewer.qt.plain import plain_label
from ckpt_viewer.qt.theme import style_plot

PAGE_ROWS, PAGE_COLS, MAX_PAGES = 128, 32, 64
MAX_FILTERS = 64  # tiles of the conv filter grid
VECTOR_WIDTHS = (1, 2, 4, 5, 8, 10, 16, 20, 25, 32, 50, 64, 100)  # columns of a 1-D table


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


def column_notation(values: np.ndarray) -> str:
    """One notation per column: "fixed" when every finite value reads well with six decimals,
    else "scientific"."""
    if values.dtype.kind in "biu":
        return "integer"
    with np.errstate(all="ignore"):
        magnitude = np.abs(values[np.isfinite(values)])
    magnitude = magnitude[magnitude > 0]
    if magnitude.size and (magnitude.min() < 1e-3 or magnitude.max() >= 1e5):
        return "scientific"
    return "fixed"


def cell_text(value, notation: str) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if np.iscomplexobj(value):
        value = complex(value)
        return f"{value.real:.5e}{value.imag:+.5e}j"
    if notation == "integer" or not isinstance(value, (float, np.floating)):
        return str(value)
    return f"{value:.6f}" if notation == "fixed" else f"{value:.5e}"


def full_text(value) -> str:
    """The shortest text that reads back as the same value of its own dtype (hover, copy)."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    return str(value.item() if np.iscomplexobj(value) else value)


class ValuesController(workers.PaneController):
    """Reads a tensor's values a window at a time, in workers (a DCP tensor's first page is slow
    to read on the GUI thread), one slot per page; a new slice or tensor cancels them all."""

    page_read = Signal(object, object, str)  # page key, its values (None: failed), the error

    def read(self, key, tensor: TensorInfo, leading, rows: range, cols: range) -> None:
        self.jobs.start(
            f"page {key}",
            read_window,
            tensor,
            leading,
            rows,
            cols,
            on_result=lambda page: self.page_read.emit(key, page, ""),
            on_error=lambda message: self.page_read.emit(key, None, message),
        )


class ValuesModel(QAbstractTableModel):
    """Cells read a page at a time by `controller`; a cell shows "..." until its page arrives.
    At most MAX_PAGES pages are kept."""

    page_arrived = Signal()

    def __init__(self, tensor, leading, controller: ValuesController, parent=None):
        super().__init__(parent)
        self.tensor, self.leading, self.controller = tensor, leading, controller
        controller.page_read.connect(self._arrived)
        self.rows, self.cols = matrix_shape(tensor)
        self.pages: OrderedDict = OrderedDict()
        self.requested: set = set()
        self.notations: dict = {}  # column block -> notation of each of its columns
        self.error = ""

    def rowCount(self, parent=None):
        return 0 if parent is not None and parent.isValid() else self.rows

    def columnCount(self, parent=None):
        return 0 if parent is not None and parent.isValid() else self.cols

    def _request(self, key):
        if key in self.requested:
            return
        self.requested.add(key)
        r0, c0 = key[0] * PAGE_ROWS, key[1] * PAGE_COLS
        rows = range(r0, min(r0 + PAGE_ROWS, self.rows))
        cols = range(c0, min(c0 + PAGE_COLS, self.cols))
        self.controller.read(key, self.tensor, self.leading, rows, cols)

    def _arrived(self, key, page, message=""):
        r0, c0 = key[0] * PAGE_ROWS, key[1] * PAGE_COLS
        if page is None:
            self.error = message
            page = np.full((min(PAGE_ROWS, self.rows - r0), min(PAGE_COLS, self.cols - c0)), np.nan)
        self.requested.discard(key)
        self.pages[key] = page
        if key[1] not in self.notations:
            self.notations[key[1]] = [column_notation(page[:, c]) for c in range(page.shape[1])]
        if len(self.pages) > MAX_PAGES:
            self.pages.popitem(last=False)
        self.dataChanged.emit(
            self.index(r0, c0), self.index(r0 + page.shape[0] - 1, c0 + page.shape[1] - 1)
        )
        self.page_arrived.emit()

    def value(self, r, c):
        """The cell's value, or None while its page is being read."""
        key = (r // PAGE_ROWS, c // PAGE_COLS)
        page = self.pages.get(key)
        if page is None:
            self._request(key)
            return None
        self.pages.move_to_end(key)
        return page[r % PAGE_ROWS, c % PAGE_COLS]

    def data(self, index, role=Qt.DisplayRole):
        if not index.isValid():
            return None
        if role == Qt.TextAlignmentRole:
            return int(Qt.AlignRight | Qt.AlignVCenter)
        if role not in (Qt.DisplayRole, Qt.ToolTipRole):
            return None
        value = self.value(index.row(), index.column())
        if value is None:
            return "..." if role == Qt.DisplayRole else None
        if role == Qt.ToolTipRole:
            return full_text(value)
        return cell_text(value, self.notation(index.row(), index.column()))

    def notation(self, _row: int, column: int) -> str:
        return self.notations[column // PAGE_COLS][column % PAGE_COLS]

    def headerData(self, section, orientation, role=Qt.DisplayRole):
        return str(section) if role == Qt.DisplayRole else None


class VectorModel(ValuesModel):
    """A 1-D tensor wrapped into `width` columns (one narrow column left the table's width
    empty): cell (r, c) is element r * width + c, a row's header its first index; elements are
    read PAGE_ROWS * PAGE_COLS at a time, one notation per page."""

    CHUNK = PAGE_ROWS * PAGE_COLS

    def __init__(
        self,
        tensor: TensorInfo,
        width: int,
        controller: ValuesController,
        parent: QObject | None = None,
    ):
        super().__init__(tensor, (), controller, parent)
        self.length, self.width = tensor.shape[0], width
        self.rows, self.cols = -(-self.length // width), min(width, self.length)

    def _request(self, key: int) -> None:
        if key in self.requested:
            return
        self.requested.add(key)
        rows = range(key * self.CHUNK, min((key + 1) * self.CHUNK, self.length))
        self.controller.read(key, self.tensor, (), rows, range(1))

    def _arrived(self, key: int, page: np.ndarray | None, message: str = "") -> None:
        start = key * self.CHUNK
        if page is None:
            self.error = message
            page = np.full(min(self.CHUNK, self.length - start), np.nan)
        page = np.asarray(page).reshape(-1)
        self.requested.discard(key)
        self.pages[key] = page
        self.notations[key] = column_notation(page)
        if len(self.pages) > MAX_PAGES:
            self.pages.popitem(last=False)
        last = start + page.shape[0] - 1
        self.dataChanged.emit(
            self.index(start // self.width, 0), self.index(last // self.width, self.cols - 1)
        )
        self.page_arrived.emit()

    def value(self, r: int, c: int):
        """The element's value, None while its page is being read or past the last element."""
        i = r * self.width + c
        if i >= self.length:
            return None
        page = self.pages.get(i // self.CHUNK)
        if page is None:
            self._request(i // self.CHUNK)
            return None
        self.pages.move_to_end(i // self.CHUNK)
        return page[i % self.CHUNK]

    def data(self, index: QModelIndex, role: int = Qt.DisplayRole):
        if index.isValid() and index.row() * self.width + index.column() >= self.length:
            return None  # the last row's cells past the end
        return super().data(index, role)

    def notation(self, row: int, column: int) -> str:
        return self.notations[(row * self.width + column) // self.CHUNK]

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.DisplayRole):
        if role != Qt.DisplayRole:
            return None
        if orientation == Qt.Vertical:
            return f"{section * self.width:,}"
        return f"+{section}" if self.width > 1 else "0"


class ValuesPage(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.selector = SliceSelector()
        self.table = QTableView()
        self.table.viewport().installEventFilter(self)
        self.table.setObjectName("valueTable")
        self.table.verticalHeader().setDefaultSectionSize(20)
        sample = self.table.fontMetrics().horizontalAdvance("-0.00000e+00-0.00000e+00j")
        self.real_width = self.table.fontMetrics().horizontalAdvance("-0.00000e+000") + 16
        self.table.horizontalHeader().setDefaultSectionSize(self.real_width)
        self.complex_width = sample + 16
        copy = QAction("Copy", self.table)
        copy.setShortcut(QKeySequence.Copy)
        copy.setShortcutContext(Qt.WidgetShortcut)
        copy.triggered.connect(self.copy_selection)
        self.table.addAction(copy)
        layout = QVBoxLayout(self)
        layout.addWidget(self.selector)
        layout.addWidget(self.table, 1)
        self.tensor = None
        self.controller = ValuesController(self)  # a new slice or tensor drops the pages read
        self.selector.changed.connect(self._reload)

    def show_tensor(self, tensor):
        self.tensor = tensor
        self.selector.set_shape(tensor.shape)
        self._reload()

    def _vector_width(self) -> int:
        """Columns of a 1-D tensor's table: a round number of them that fits the width beside
        a vertical scroll bar (counted before it showed, the last column needed a sideways
        scroll)."""
        room = self.table.maximumViewportSize().width()
        room -= self.table.verticalScrollBar().sizeHint().width()
        fits = room // self.table.horizontalHeader().defaultSectionSize()
        return max(w for w in VECTOR_WIDTHS if w <= max(fits, 1))

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        # the viewport narrows without the page: the row labels of a longer vector widen
        if event.type() == QEvent.Resize and watched is self.table.viewport():
            QTimer.singleShot(0, self, self._refit)
        return False

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self._refit()

    def _refit(self) -> None:
        model = self.table.model()
        if isinstance(model, VectorModel) and model.width != self._vector_width():
            self._reload()

    def _reload(self):
        if self.tensor is None:
            return
        self.cancel()
        old = self.table.model()
        if isinstance(old, ValuesModel):
            self.controller.page_read.disconnect(old._arrived)  # the new model's pages
            old.deleteLater()
        complex_ = self.tensor.dtype.startswith("complex")  # and back after a complex one
        self.table.horizontalHeader().setDefaultSectionSize(
            self.complex_width if complex_ else self.real_width
        )
        if len(self.tensor.shape) == 1:
            model = VectorModel(self.tensor, self._vector_width(), self.controller, self.table)
        else:
            model = ValuesModel(self.tensor, self.selector.leading(), self.controller, self.table)
        self.table.setModel(model)

    def cancel(self):
        self.controller.cancel()

    def drop_work(self):
        """Stop reading; work cut short is started again by the next show_tensor."""
        if self.controller.busy():
            self.controller.cancel()
            self.tensor = None

    def copy_selection(self) -> str:
        """Ctrl+C: the selected cells as tab-separated text, at full precision."""
        model = self.table.model()
        indexes = sorted(self.table.selectedIndexes(), key=lambda i: (i.row(), i.column()))
        if model is None or not indexes:
            return ""
        lines, row = [], None
        for index in indexes:
            value = model.value(index.row(), index.column())
            text = "" if value is None else full_text(value)
            if index.row() != row:
                lines.append([])
                row = index.row()
            lines[-1].append(text)
        text = "\n".join("\t".join(cells) for cells in lines)
        QGuiApplication.clipboard().setText(text)
        return text


def diverging(low: float, high: float) -> bool:
    """Signed data gets a diverging map centred on 0."""
    return low < 0 <= high


class HeatmapController(workers.PaneController):
    """The heatmap's values of a tensor's slice, or its grid of conv filters (slot "heatmap":
    a newer request supersedes the one being read)."""

    computed = Signal(object)  # (values, row step, column step)
    failed = Signal(str)

    def compute(self, tensor: TensorInfo, leading, filters: bool, in_channel: int) -> None:
        def job():
            if filters:
                grid = yield from filter_grid(tensor, in_channel, MAX_FILTERS)
                return grid, 1, 1
            result = yield from pooled_2d(tensor, leading)
            return result

        self.jobs.start("heatmap", job, on_result=self.computed.emit, on_error=self.failed.emit)


class HeatmapPage(QWidget):
    """A colour-mapped image of the last two dimensions (reduced to at most 1024 x 1024 cells,
    each holding its block's value of largest magnitude), or conv kernels as a grid of filters;
    computed in a worker that a newer request cancels. Signed data: a diverging map centred on
    0; complex data: the magnitude."""

    ready = Signal()

    def __init__(self, plotting, request_plotting, parent=None):
        super().__init__(parent)
        self.plotting = plotting  # returns the pyqtgraph module, or None
        self.request_plotting = request_plotting  # asks for a show_pending() call once ready
        self.pending = None
        self.selector = SliceSelector()
        self.as_filters = QCheckBox("conv kernels as a grid of filters")
        self.in_channel = QSpinBox()
        self.in_channel.setObjectName("filterInChannel")
        self.in_channel.setPrefix("in-channel ")
        self.in_channel.setSizePolicy(QSizePolicy.Fixed, QSizePolicy.Fixed)
        self.in_channel.setToolTip(
            "Each tile is one output channel's kernel for this input channel"
        )
        self.status = plain_label()
        self.readout = plain_label(" ")
        self.readout.setObjectName("heatmapReadout")
        top = QHBoxLayout()
        top.addWidget(self.selector, 1)
        top.addWidget(self.as_filters)
        top.addWidget(self.in_channel)
        top.addStretch(1)  # the selector hidden: controls keep their size
        top.addWidget(self.status)
        self.layout_ = QVBoxLayout(self)
        self.layout_.addLayout(top)
        self.layout_.addWidget(self.readout)
        self.plot = None
        self.tensor = None
        self.on_screen = None  # (values, row_step, col_step) on screen
        self.controller = HeatmapController(self)  # a new slice supersedes the one being read
        self.controller.computed.connect(self._show)
        self.controller.failed.connect(
            lambda message: self.status.setText(f"cannot read values: {message}")
        )
        self.selector.changed.connect(self.recompute)
        self.as_filters.toggled.connect(self.recompute)
        self.in_channel.valueChanged.connect(self.recompute)
        self.filters = None  # (kh, kw, tiles per row, tiles) of the grid on screen

    def show_tensor(self, tensor):
        self.tensor = tensor
        kernels = len(tensor.shape) == 4 and tensor.shape[-1] <= 11 and tensor.shape[-2] <= 11
        self.as_filters.setVisible(kernels)
        self.as_filters.blockSignals(True)
        self.as_filters.setChecked(kernels)
        self.as_filters.blockSignals(False)
        self.in_channel.blockSignals(True)
        self.in_channel.setRange(0, tensor.shape[1] - 1 if kernels else 0)
        self.in_channel.setValue(0)
        self.in_channel.blockSignals(False)
        self.selector.set_shape(tensor.shape)
        self.recompute()

    def recompute(self, *_):
        if self.tensor is None:
            return
        self.cancel()
        self.pending = None  # a result waiting for the plot is for the old slice
        tensor = self.tensor
        filters = self.as_filters.isChecked() and self.as_filters.isVisible()
        leading = self.selector.leading()
        self.selector.setVisible(not filters and bool(self.selector.spins))  # the grid has all
        self.in_channel.setVisible(filters)
        in_channel = self.in_channel.value()
        self.status.setText("reading...")
        self.readout.setText(" ")
        self.on_screen = None
        if filters:
            count = min(tensor.shape[0], MAX_FILTERS)
            self.filters = (*tensor.shape[-2:], filter_grid_columns(count), count)
        else:
            self.filters = None
        self.controller.compute(tensor, leading, filters, in_channel)

    def cancel(self):
        self.controller.cancel()

    def drop_work(self):
        """Stop reading; work cut short is started again by the next show_tensor."""
        if self.controller.busy():
            self.controller.cancel()
            self.tensor = self.pending = None

    def show_pending(self):
        if self.pending is not None:
            self._show(self.pending)

    def _build_plot(self, pg):
        self.plot = pg.PlotWidget()
        self.plot.setObjectName("heatmapPlot")
        self.plot.setLabel("left", "row")
        self.plot.setLabel("bottom", "column")
        self.plot.invertY(True)
        self.plot.setAspectLocked(False)
        self.image = pg.ImageItem(axisOrder="row-major")
        self.plot.addItem(self.image)
        self.colorbar = pg.ColorBarItem(colorMap=pg.colormap.get("viridis"), interactive=False)
        self.colorbar.setImageItem(self.image, insert_in=self.plot.getPlotItem())
        self.plot.scene().sigMouseMoved.connect(self._hover)
        self.plot.getPlotItem().vb.sigRangeChanged.connect(self._thin_labels)  # zoom, resize
        style_plot(self.plot)
        self.layout_.insertWidget(1, self.plot, 1)
        self.plot.show()

    def _show(self, result):
        pg = self.plotting()
        if pg is None:
            self.pending = result
            self.status.setText("loading the plotting library...")
            self.request_plotting()
            return
        self.pending = None
        values, row_step, col_step = result
        if self.plot is None:
            self._build_plot(pg)
        values = np.asarray(values)
        values = np.abs(values) if np.iscomplexobj(values) else values.astype(np.float64)
        finite = values[np.isfinite(values)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if diverging(low, high):
            reach = max(-low, high)
            low, high, name = -reach, reach, "CET-D1A"
        else:
            name = "viridis"
        if high <= low:
            high = low + 1.0
        self.colorbar.setColorMap(pg.colormap.get(name))
        self.colormap = name
        self.image.setImage(values, levels=(low, high))
        self.image.setRect(0, 0, values.shape[1] * col_step, values.shape[0] * row_step)
        self.colorbar.setLevels((low, high))
        self._label_axes()
        self.plot.autoRange()
        self.on_screen = (values, row_step, col_step)
        step = (
            f", each the largest |x| of {row_step} x {col_step}"
            if row_step > 1 or col_step > 1
            else ""
        )
        magnitude = " of |x|" if self.tensor.dtype.startswith("complex") else ""
        if self.filters is not None:
            kh, kw, _, count = self.filters
            self.status.setText(
                f"{count:,} of {self.tensor.shape[0]:,} output channels, {kh} x {kw} kernels"
            )
        else:
            self.status.setText(f"{values.shape[0]:,} x {values.shape[1]:,} cells{magnitude}{step}")
        self.ready.emit()

    def _label_axes(self) -> None:
        """Rows and columns, or for the filter grid the output channels each tile row holds and
        each tile column adds, with square kernels."""
        left, bottom = self.plot.getAxis("left"), self.plot.getAxis("bottom")
        if self.filters is None:
            left.setTicks(None)
            bottom.setTicks(None)
            self.plot.setLabel("left", "row")
            self.plot.setLabel("bottom", "column")
            self.plot.setAspectLocked(False)
            return
        kh, kw, columns, count = self.filters
        rows = [
            (top * (kh + 1) + kh / 2, f"{top * columns}-{min(top * columns + columns, count) - 1}")
            for top in range(-(-count // columns))
        ]
        self.grid_labels = (rows, [(c * (kw + 1) + kw / 2, f"+{c}") for c in range(columns)])
        self.label_steps = None
        self._thin_labels()
        self.plot.setLabel("left", "output channels")
        self.plot.setLabel("bottom", "output channel +")
        self.plot.setAspectLocked(True)

    def _thin_labels(self, *_) -> None:
        """Every n-th tile row and column labelled, n the smallest power of two whose tiles
        leave room for a label: a small grid (a pane below at 1366x768) drew them over each
        other."""
        if self.filters is None or self.plot is None:
            return
        kh, kw, _, _ = self.filters
        x_unit, y_unit = self.plot.getPlotItem().vb.viewPixelSize()  # data units per pixel
        if not (x_unit > 0 and y_unit > 0):
            return  # not laid out yet
        rows, columns = self.grid_labels
        left, bottom = self.plot.getAxis("left"), self.plot.getAxis("bottom")
        metrics = QFontMetrics(left.style.get("tickFont") or self.plot.font())
        wide = max(metrics.horizontalAdvance(label) for _, label in columns)
        steps = (
            _label_step(len(rows), (kh + 1) / y_unit, metrics.height()),
            _label_step(len(columns), (kw + 1) / x_unit, wide + metrics.horizontalAdvance("  ")),
        )
        if steps != self.label_steps:  # a new picture only when the labels change
            self.label_steps = steps
            left.setTicks([rows[:: steps[0]]])
            bottom.setTicks([columns[:: steps[1]]])

    def _hover(self, position):
        if self.on_screen is None:
            return
        values, row_step, col_step = self.on_screen
        point = self.plot.getPlotItem().vb.mapSceneToView(position)
        self.readout.setText(self.describe_point(point.x(), point.y()))

    def describe_point(self, x: float, y: float) -> str:
        """The hover read-out for a point in plot coordinates (columns, rows)."""
        values, row_step, col_step = self.on_screen
        r, c = int(y // row_step), int(x // col_step)
        if not (0 <= r < values.shape[0] and 0 <= c < values.shape[1]) or x < 0 or y < 0:
            return " "
        value = values[r, c]
        if self.filters is not None:
            kh, kw, columns, count = self.filters
            (tile_row, kr), (tile_column, kc) = divmod(r, kh + 1), divmod(c, kw + 1)
            channel = tile_row * columns + tile_column
            if kr == kh or kc == kw or channel >= count:
                return " "
            return (
                f"output channel {channel}, in-channel {self.in_channel.value()}, "
                f"kernel row {kr}, column {kc}: {value:.6g}"
            )
        if row_step == 1 and col_step == 1:
            return f"row {r:,}, column {c:,}: {value:.6g}"
        return (
            f"rows {r * row_step:,}-{(r + 1) * row_step - 1:,}, columns "
            f"{c * col_step:,}-{(c + 1) * col_step - 1:,}: largest |x| {value:.6g}"
        )


def _label_step(count: int, tile: float, room: float) -> int:
    """The smallest power of two n such that n tiles of `tile` pixels hold a label."""
    step = 1
    while step < count and step * tile < room:
        step *= 2
    return step
