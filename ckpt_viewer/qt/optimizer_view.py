"""Optimizers: every param_group's hyperparameters and parameters; per-parameter state;
LR schedulers."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QAbstractItemView, QGroupBox, QLabel, QScrollArea,
                               QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

from ckpt_viewer.core.optim import OptimizerInfo, find_schedulers
from ckpt_viewer.core.report import describe_value
from ckpt_viewer.qt.plain import shown

MAX_STATE_ROWS = 5000


def _table(headers, rows, name) -> QTableWidget:
    table = QTableWidget(len(rows), len(headers))
    table.setObjectName(name)
    table.setHorizontalHeaderLabels(headers)
    table.verticalHeader().setVisible(False)
    table.setEditTriggers(QAbstractItemView.NoEditTriggers)
    table.setSelectionBehavior(QAbstractItemView.SelectRows)
    for r, values in enumerate(rows):
        for c, value in enumerate(values):
            table.setItem(r, c, QTableWidgetItem(shown(value)))
    header = table.horizontalHeader()
    header.setStretchLastSection(True)
    if len(rows) <= 50:                       # sizing to contents reads every cell
        table.resizeColumnsToContents()
    height = table.horizontalHeader().sizeHint().height() + 4 + \
        sum(table.rowHeight(r) for r in range(min(len(rows), 12)))
    table.setMinimumHeight(min(height, 320))
    return table


def state_rows(optimizer: OptimizerInfo):
    """(parameter, then one column per state entry) rows and their headers."""
    names = list(dict.fromkeys(child.name for state in optimizer.state.values()
                               for child in state.children))
    rows = []
    for param, state in list(optimizer.state.items())[:MAX_STATE_ROWS]:
        cells = {c.name: c for c in state.children}
        row = [param]
        for name in names:
            child = cells.get(name)
            if child is None:
                row.append("")
            elif child.tensor is not None:
                shape = "x".join(map(str, child.tensor.shape)) or "scalar"
                row.append(f"{child.tensor.dtype} [{shape}]")
            else:
                row.append(describe_value(child.value))
        rows.append(row)
    return ["parameter"] + names, rows


class OptimizerView(QScrollArea):
    def __init__(self, checkpoint, parent=None):
        super().__init__(parent)
        self.setObjectName("optimizerView")
        self.setWidgetResizable(True)
        body = QWidget()
        layout = QVBoxLayout(body)
        if not checkpoint.optimizers:
            layout.addWidget(QLabel("No optimizer state in this file."))
        for optimizer in checkpoint.optimizers:
            layout.addWidget(self._optimizer_box(optimizer))
        for key, fields in find_schedulers(checkpoint):
            box = QGroupBox(shown(f"LR scheduler  {key}"))
            inner = QVBoxLayout(box)
            inner.addWidget(_table(["field", "value"],
                                   [(k, describe_value(v)) for k, v in fields.items()],
                                   "schedulerTable"))
            layout.addWidget(box)
        layout.addStretch(1)
        self.setWidget(body)

    def _optimizer_box(self, optimizer: OptimizerInfo) -> QGroupBox:
        box = QGroupBox(shown(f"{optimizer.type or 'Optimizer'}  {optimizer.key}"))
        layout = QVBoxLayout(box)
        source = QLabel(f"Parameter names: "
                        f"{optimizer.names_source or 'not provable from this file; ids shown'}.")
        source.setObjectName("namesSource")
        source.setTextFormat(Qt.PlainText)          # the source names a key from the file
        source.setWordWrap(True)
        layout.addWidget(source)
        for index, group in enumerate(optimizer.param_groups):
            params = group.get("params", [])
            hyper = [(k, describe_value(v)) for k, v in group.items()
                     if k not in ("params", "param_names")]
            layout.addWidget(QLabel(f"<b>param_groups[{index}]</b> - {len(params)} parameters"))
            layout.addWidget(_table(["hyperparameter", "value"], hyper, "paramGroupTable"))
            layout.addWidget(_table(["#", "parameter"], list(enumerate(params)), "paramListTable"))
        if optimizer.state:
            headers, rows = state_rows(optimizer)
            layout.addWidget(QLabel(f"<b>state</b> - {len(optimizer.state)} parameters"))
            layout.addWidget(_table(headers, rows, "stateTable"))
        return box
