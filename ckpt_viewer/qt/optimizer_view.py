"""Optimizers: every param_group's hyperparameters and parameters; per-parameter state;
LR schedulers."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QGroupBox,
    QHeaderView,
    QLabel,
    QScrollArea,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ckpt_viewer.core.listing.optim import OptimizerInfo
from ckpt_viewer.core.listing.report import describe_value
from ckpt_viewer.core.listing.text import plural
from ckpt_viewer.core.values.optim_values import SMALL_STATE, small_state_values
from ckpt_viewer.qt import workers
from ckpt_viewer.qt.plain import shown

MAX_STATE_ROWS = 5000
FULL_ROWS = 1000  # tables this short show every row: the pane's one scroll bar serves all
READING = "reading..."


def _table(headers, rows, name, names_column=None) -> QTableWidget:
    table = QTableWidget(len(rows), len(headers))
    table.setObjectName(name)
    table.setHorizontalHeaderLabels(headers)
    table.verticalHeader().setVisible(False)
    table.setEditTriggers(QAbstractItemView.NoEditTriggers)
    table.setSelectionBehavior(QAbstractItemView.SelectRows)
    table.setWordWrap(False)
    for r, values in enumerate(rows):
        for c, value in enumerate(values):
            item = QTableWidgetItem(shown(value))
            item.setToolTip(shown(value))
            table.setItem(r, c, item)
    header = table.horizontalHeader()
    header.setResizeContentsPrecision(200)  # sizing reads at most this many rows
    header.setStretchLastSection(True)
    if len(rows) <= 200:
        table.resizeColumnsToContents()
    if names_column is not None:  # names are never cut; the table scrolls sideways instead
        header.setSectionResizeMode(names_column, QHeaderView.ResizeToContents)
    table.verticalHeader().setDefaultSectionSize(table.fontMetrics().height() + 8)
    shown_rows = len(rows) if len(rows) <= FULL_ROWS else 16
    height = (
        header.sizeHint().height()
        + 2 * table.frameWidth()
        + table.verticalHeader().defaultSectionSize() * shown_rows
    )
    if table.horizontalScrollBar().isVisible() or len(headers) > 4:
        height += table.horizontalScrollBar().sizeHint().height()
    table.setFixedHeight(height)
    if len(rows) <= FULL_ROWS:
        table.setVerticalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
    return table


def state_rows(optimizer: OptimizerInfo):
    """(parameter, then one column per state entry) rows and their headers; small tensors say
    READING until their values come (small_state_values)."""
    names = list(
        dict.fromkeys(child.name for state in optimizer.state.values() for child in state.children)
    )
    rows = []
    for param, state in list(optimizer.state.items())[:MAX_STATE_ROWS]:
        cells = {c.name: c for c in state.children}
        row = [param]
        for name in names:
            child = cells.get(name)
            if child is None:
                row.append("")
            elif (
                child.tensor is not None
                and child.tensor.numel <= SMALL_STATE
                and not child.tensor.parts
            ):
                row.append(READING)
            elif child.tensor is not None:
                shape = "x".join(map(str, child.tensor.shape)) or "scalar"
                row.append(f"{child.tensor.dtype} [{shape}]")
            else:
                row.append(describe_value(child.value))
        rows.append(row)
    return ["parameter"] + names, rows


class OptimizerController(workers.PaneController):
    """Reads the small state tensors' values (Adam's 0-d `step`...) of some optimizers."""

    values_read = Signal(object, object)  # the optimizers, a {(parameter, name): text} each

    def read_small_values(self, optimizers: list[OptimizerInfo]) -> None:
        def job():
            found = []
            for optimizer in optimizers:
                found.append((yield from small_state_values(optimizer, MAX_STATE_ROWS)))
            return found

        self.jobs.start(
            "values",
            job,
            on_result=lambda found: self.values_read.emit(optimizers, found),
            on_error=lambda _message: self.values_read.emit(optimizers, [{}] * len(optimizers)),
        )


class OptimizerView(QScrollArea):
    values_ready = Signal()  # the small state tensors' values are in the table

    def __init__(self, checkpoint, schedulers: list, parent=None):
        """schedulers: find_schedulers(checkpoint), made by the load worker (a tree walk)."""
        super().__init__(parent)
        self.setObjectName("optimizerView")
        self.setWidgetResizable(True)
        self.controller = OptimizerController(self)
        self.controller.values_read.connect(self._fill_values)
        self.state_tables = []  # (optimizer, table, headers)
        body = QWidget()
        layout = QVBoxLayout(body)
        if not checkpoint.optimizers:
            layout.addWidget(QLabel("No optimizer state in this file."))
        for optimizer in checkpoint.optimizers:
            layout.addWidget(self._optimizer_box(optimizer))
        for key, fields in schedulers:
            box = QGroupBox(shown(f"LR scheduler  {key}"))
            inner = QVBoxLayout(box)
            inner.addWidget(
                _table(
                    ["field", "value"],
                    [(k, describe_value(v)) for k, v in fields.items()],
                    "schedulerTable",
                )
            )
            layout.addWidget(box)
        layout.addStretch(1)
        self.setWidget(body)
        self._read_small_values()

    def _optimizer_box(self, optimizer: OptimizerInfo) -> QGroupBox:
        box = QGroupBox(shown(f"{optimizer.type or 'Optimizer of unknown type'}  {optimizer.key}"))
        layout = QVBoxLayout(box)
        source = QLabel(
            f"Parameter names: "
            f"{optimizer.names_source or 'not provable from this file; ids shown'}."
        )
        source.setObjectName("namesSource")
        source.setTextFormat(Qt.PlainText)  # the source names a key from the file
        source.setWordWrap(True)
        layout.addWidget(source)
        for index, group in enumerate(optimizer.param_groups):
            params = group.get("params", [])
            hyper = [
                (k, describe_value(v))
                for k, v in group.items()
                if k not in ("params", "param_names")
            ]
            layout.addWidget(
                QLabel(f"<b>param_groups[{index}]</b> - {plural(len(params), 'parameter')}")
            )
            layout.addWidget(_table(["hyperparameter", "value"], hyper, "paramGroupTable"))
            layout.addWidget(_table(["#", "parameter"], list(enumerate(params)), "paramListTable"))
        if optimizer.state:
            headers, rows = state_rows(optimizer)
            layout.addWidget(QLabel(f"<b>state</b> - {plural(len(optimizer.state), 'parameter')}"))
            table = _table(headers, rows, "stateTable", names_column=0)
            self.state_tables.append((optimizer, table, headers))
            layout.addWidget(table)
        return box

    def _read_small_values(self):
        """Adam's 0-d `step` and other tiny state tensors: their values, read off the GUI thread."""
        wanted = [
            (o, t, h)
            for o, t, h in self.state_tables
            if any(
                t.item(r, c) is not None and t.item(r, c).text() == READING
                for r in range(t.rowCount())
                for c in range(1, t.columnCount())
            )
        ]
        if wanted:
            self.controller.read_small_values([o for o, _, _ in wanted])

    def _fill_values(self, optimizers, found):
        tables = {id(o): (t, h) for o, t, h in self.state_tables}
        for optimizer, values in zip(optimizers, found):
            table, headers = tables[id(optimizer)]
            for r, param in enumerate(list(optimizer.state)[: table.rowCount()]):
                for c, name in enumerate(headers[1:], start=1):
                    item = table.item(r, c)
                    if item is not None and item.text() == READING:
                        tensor = next(
                            ch.tensor for ch in optimizer.state[param].children if ch.name == name
                        )
                        text = values.get(
                            (param, name),
                            f"{tensor.dtype} [{'x'.join(map(str, tensor.shape)) or 'scalar'}]",
                        )
                        item.setText(shown(text))
                        item.setToolTip(shown(f"{text}  ({tensor.dtype})"))
        self.values_ready.emit()

    def cancel(self):
        self.controller.cancel()
