"""Tools > Compare with...: two checkpoints side by side, coloured by status, filterable, with the
histograms of a selected tensor from both files overlaid."""

from __future__ import annotations

import os

from PySide6.QtCore import QSortFilterProxyModel, Qt, Signal
from PySide6.QtGui import QBrush, QColor, QPalette, QStandardItem, QStandardItemModel
from PySide6.QtWidgets import (QAbstractItemView, QCheckBox, QHBoxLayout, QLabel, QLineEdit,
                               QSplitter, QTreeView, QVBoxLayout, QWidget)

from ckpt_viewer.core.stats import compute, run
from ckpt_viewer.qt import workers
from ckpt_viewer.qt.plain import as_html, plain_label, shown

COLUMNS = ("Key", "Status", "A", "B", "max |a-b|", "mean |a-b|", "rel. L2", "cosine")
STATUS_COLOURS = {"changed": QColor(214, 120, 0), "shape": QColor(200, 40, 40),
                  "dtype": QColor(170, 60, 160), "only in A": QColor(40, 100, 200),
                  "only in B": QColor(20, 140, 110)}
OVERLAY_BINS = 128


def _cell(text, sort_value=None) -> QStandardItem:
    item = QStandardItem(shown(text))
    item.setEditable(False)
    if sort_value is not None:
        item.setData(sort_value, Qt.UserRole + 1)
    return item


def _number(value) -> str:
    return "" if value is None else f"{value:.4g}"


class CompareFilter(QSortFilterProxyModel):
    """Text filter on the key; optionally only rows that differ."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.only_differences = False
        self.setFilterCaseSensitivity(Qt.CaseInsensitive)
        self.setFilterKeyColumn(0)
        self.setSortRole(Qt.UserRole + 1)

    def set_only_differences(self, on: bool):
        if not hasattr(self, "beginFilterChange"):        # Qt < 6.9
            self.only_differences = on
            self.invalidateFilter()
            return
        self.beginFilterChange()          # Qt >= 6.9 deprecates invalidateFilter() for this pair
        self.only_differences = on
        self.endFilterChange(QSortFilterProxyModel.Direction.Rows)

    def filterAcceptsRow(self, row, parent):
        if self.only_differences:
            status = self.sourceModel().index(row, 1, parent).data()
            if status == "identical":
                return False
        return super().filterAcceptsRow(row, parent)


def plotting_failed() -> bool:
    """Has loading the plotting library failed (then draw nothing, but finish)?"""
    from ckpt_viewer.qt.tensor_view import _plotting
    return bool(_plotting["failed"])


def histogram_pair(a, b, bins=OVERLAY_BINS):
    """Both tensors' histograms over one common range (for the overlay)."""
    first_a, first_b = run(compute(a, bins=8)), run(compute(b, bins=8))
    lows = [s.min for s in (first_a, first_b) if s.min is not None]
    highs = [s.max for s in (first_a, first_b) if s.max is not None]
    if not lows:
        return None, None
    value_range = (min(lows), max(highs) if max(highs) > min(lows) else min(lows) + 1.0)
    return (run(compute(a, bins=bins, value_range=value_range)),
            run(compute(b, bins=bins, value_range=value_range)))


class CompareView(QWidget):
    overlay_ready = Signal(str)

    def __init__(self, report, checkpoint_a, checkpoint_b, plotting, request_plotting=None,
                 parent=None):
        super().__init__(parent)
        self.setObjectName("compareView")
        self.report, self.a, self.b = report, checkpoint_a, checkpoint_b
        self.plotting = plotting              # returns the pyqtgraph module, or None
        self.request_plotting = request_plotting   # calls plotting_ready() once it is loaded
        self.pending = None
        self.plot = None
        self.generation = 0
        names = (os.path.basename(report.path_a.rstrip("/")), os.path.basename(report.path_b.rstrip("/")))
        self.names = names
        view = report.load_state_dict_view()
        summary = (f"<b>A</b> {as_html(names[0])} &nbsp; <b>B</b> {as_html(names[1])}<br>"
                   f"{len(report.tensors)} common tensors: "
                   f"{sum(t.status.endswith('identical') for t in report.tensors)} identical, "
                   f"{sum(t.status.endswith('changed') for t in report.tensors)} changed, "
                   f"{report.count('shape')} other shape, "
                   f"{sum(t.status.startswith('dtype') for t in report.tensors)} other dtype; "
                   f"{len(report.only_a)} only in A, {len(report.only_b)} only in B.<br>"
                   f"load_state_dict(strict=True) of B into A: {len(view['missing_keys'])} missing, "
                   f"{len(view['unexpected_keys'])} unexpected, {len(view['size_mismatch'])} size "
                   f"mismatches." + (" <b>Identical.</b>" if report.identical else ""))
        self.summary = QLabel(summary)
        self.summary.setObjectName("compareSummary")
        self.summary.setWordWrap(True)
        self.filter = QLineEdit()
        self.filter.setPlaceholderText("Filter keys")
        self.only = QCheckBox("only differences")
        self.only.setObjectName("onlyDifferences")
        self.model = QStandardItemModel(0, len(COLUMNS), self)
        self.model.setHorizontalHeaderLabels(list(COLUMNS))
        self._fill()
        self.proxy = CompareFilter(self)
        self.proxy.setSourceModel(self.model)
        self.table = QTreeView()
        self.table.setObjectName("compareTree")
        self.table.setRootIsDecorated(False)
        self.table.setUniformRowHeights(True)
        self.table.setModel(self.proxy)
        self.table.header().setSortIndicator(-1, Qt.AscendingOrder)   # file order until clicked
        self.table.setSortingEnabled(True)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setColumnWidth(0, 320)
        self.table.selectionModel().currentChanged.connect(self._selected)
        self.filter.textChanged.connect(self.proxy.setFilterFixedString)
        self.only.toggled.connect(self._only_toggled)
        self.plot_holder = QVBoxLayout()
        self.plot_status = plain_label("Select a tensor present in both files to overlay its histograms.")
        plot_box = QWidget()
        plot_layout = QVBoxLayout(plot_box)
        plot_layout.addWidget(self.plot_status)
        plot_layout.addLayout(self.plot_holder, 1)
        top = QHBoxLayout()
        top.addWidget(self.filter, 1)
        top.addWidget(self.only)
        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addLayout(top)
        left_layout.addWidget(self.table, 1)
        splitter = QSplitter(Qt.Horizontal)
        splitter.addWidget(left)
        splitter.addWidget(plot_box)
        splitter.setSizes([800, 500])
        layout = QVBoxLayout(self)
        layout.addWidget(self.summary)
        layout.addWidget(splitter, 1)

    def _fill(self):
        def add(key, status, a_text, b_text, t=None):
            cells = [_cell(key, key), _cell(status, status), _cell(a_text, a_text), _cell(b_text, b_text)]
            for value in (t.max_abs, t.mean_abs, t.rel_l2, t.cosine) if t else (None,) * 4:
                cells.append(_cell(_number(value), -1.0 if value is None else value))
            colour = STATUS_COLOURS.get(status.replace("dtype+changed", "dtype")
                                        .replace("dtype+identical", "dtype"))
            if colour is not None:
                for cell in cells:
                    cell.setForeground(QBrush(colour))
            self.model.appendRow(cells)
        for t in self.report.tensors:
            add(t.key, t.status, f"{t.dtype_a} {t.shape_a}", f"{t.dtype_b} {t.shape_b}", t)
        for key in self.report.only_a:
            add(key, "only in A", "present", "")
        for key in self.report.only_b:
            add(key, "only in B", "", "present")

    def _only_toggled(self, on):
        self.proxy.set_only_differences(on)

    def _selected(self, current, _previous):
        key = current.siblingAtColumn(0).data() if current.isValid() else None
        match = next((t for t in self.report.tensors if t.key == key and t.status != "shape"), None)
        if match is None:
            return
        self.generation += 1
        generation = self.generation
        a = self.a.find(match.key_a).tensor
        b = self.b.find(match.key_b).tensor
        self.plot_status.setText(f"{key}: computing both histograms...")
        workers.start(histogram_pair, a, b,
                      on_result=lambda pair: self._draw(generation, key, pair),
                      on_error=lambda message: self.plot_status.setText(f"{key}: {message}"))

    def plotting_ready(self, message=""):
        if self.pending is not None:
            self._draw(*self.pending)

    def _draw(self, generation, key, pair):
        if generation != self.generation:
            return
        pg = self.plotting()
        stats_a, stats_b = pair
        if pg is None and self.request_plotting is not None and not plotting_failed():
            self.pending = (generation, key, pair)
            self.request_plotting(self)
            return
        self.pending = None
        if pg is None or stats_a is None:
            self.plot_status.setText(f"{key}: no finite values to plot")
            self.overlay_ready.emit(key)
            return
        if self.plot is None:
            self.plot = pg.PlotWidget(background=self.palette().color(QPalette.Base))
            self.plot.setObjectName("compareHistogram")
            self.plot.addLegend(offset=(-10, 10))
            self.curve_a = self.plot.plot([0, 1], [0], stepMode="center", name="A",
                                          pen=pg.mkPen((60, 100, 200), width=2))
            self.curve_b = self.plot.plot([0, 1], [0], stepMode="center", name="B",
                                          pen=pg.mkPen((230, 120, 20), width=2))
            self.plot_holder.addWidget(self.plot)
            self.plot.show()
        self.curve_a.setData(stats_a.edges, stats_a.counts)
        self.curve_b.setData(stats_b.edges, stats_b.counts)
        self.plot.enableAutoRange()
        self.plot_status.setText(f"{key}: A {self.names[0]} (blue), B {self.names[1]} (orange)")
        self.overlay_ready.emit(key)
