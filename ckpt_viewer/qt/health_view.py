"""Tools > Health: the check of one open checkpoint, run in a worker with progress and Cancel;
each finding, clicked, selects its tensor in the tab's key tree."""

from __future__ import annotations

import os
import time

from PySide6.QtCore import QObject, Qt, QTimer, Signal
from PySide6.QtGui import QBrush
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ckpt_viewer.core.listing.model import Checkpoint, format_bytes
from ckpt_viewer.core.listing.optim import state_parameters
from ckpt_viewer.core.listing.text import plural
from ckpt_viewer.qt import workers
from ckpt_viewer.qt.tensor_view import _plotting
from ckpt_viewer.qt.theme import on_base

MAX_SHOWN = 5000  # more rows would hold the window for too long at once
ROWS_PER_STEP = 250
PLOTTING_WAIT = 3.0
COLOURS = {"error": "#b02a37", "warning": "#997404", "info": "#6c757d"}


def _check(checkpoint, plotting_settled=None):
    """The check, its module imported on the worker's thread (not on the GUI thread at the
    first Tools > Health). While pyqtgraph is still arriving it waits (at most PLOTTING_WAIT):
    the tab builds its plot then, which the scan's threads, holding the GIL, would stall."""
    deadline = time.monotonic() + PLOTTING_WAIT
    while (
        plotting_settled is not None
        and not plotting_settled.wait(0.02)
        and time.monotonic() < deadline
    ):
        yield 0.0
    from ckpt_viewer.core.analysis.check import check

    return (yield from check(checkpoint))


class HealthController(workers.PaneController):
    """The check of one checkpoint, started at once (slot "check")."""

    progressed = Signal(float)
    reported = Signal(object)  # HealthReport
    failed = Signal(str)

    def __init__(self, checkpoint: Checkpoint, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.checkpoint = checkpoint

    def start(self) -> None:
        settled = _plotting["settled"] if _plotting["started"] else None
        self.jobs.start(
            "check",
            _check,
            self.checkpoint,
            settled,
            on_result=self.reported.emit,
            on_error=self.failed.emit,
            on_progress=self.progressed.emit,
        )


class HealthDialog(QWidget):
    """A pane the window docks beside the tree; `open_key(key)` is called with a finding's key
    when it is clicked. Closing it (WA_DeleteOnClose) stops its scan."""

    checked = Signal(object)  # HealthReport
    failed = Signal(str)
    cancelled = Signal()

    def __init__(self, checkpoint, open_key, parent=None):
        super().__init__(parent)
        self.setObjectName("healthDialog")
        self.checkpoint, self.open_key = checkpoint, open_key
        # an optimizer state tensor's finding names its parameter, as the tree does
        self.parameter_names = state_parameters(checkpoint)
        self.report = None
        self.controller = HealthController(checkpoint, self)  # a closed pane's scan stops with it
        self.controller.progressed.connect(self._progress)
        self.controller.reported.connect(self._done)
        self.controller.failed.connect(self._failed)
        self.setWindowTitle(f"Health - {os.path.basename(checkpoint.path.rstrip('/'))}")
        self.status = QLabel("Scanning every tensor...")
        self.status.setObjectName("healthStatus")
        self.status.setTextFormat(Qt.PlainText)
        self.status.setWordWrap(True)  # a narrow pane wraps it rather than widening
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setObjectName("healthCancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.findings = QTreeWidget()
        self.findings.setObjectName("healthFindings")
        self.findings.setHeaderLabels(["Severity", "Kind", "Key", "Message"])
        self.findings.setRootIsDecorated(False)
        self.findings.setUniformRowHeights(True)
        for column, width in enumerate((70, 130, 300)):  # until the findings are listed
            self.findings.setColumnWidth(column, width)
        self.findings.itemClicked.connect(self._clicked)
        self.findings.itemActivated.connect(self._clicked)
        self.progress_row = QWidget()  # hidden once the scan ends: the findings get its room
        row = QHBoxLayout(self.progress_row)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.progress, 1)
        row.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.status)
        layout.addWidget(self.progress_row)
        layout.addWidget(self.findings, 1)
        self.controller.start()

    def _progress(self, fraction):
        self.progress.setValue(int(fraction * 1000))

    def _done(self, report):
        self.report = report
        self.progress.setValue(1000)
        self.cancel_button.setEnabled(False)
        self.progress_row.hide()
        from ckpt_viewer.core.analysis.check import severity_counts

        counts = severity_counts(report)
        self.status.setText(
            f"{'No findings' if not report.findings else counts}: "
            f"{plural(report.tensors_scanned, 'tensor')}, "
            f"{format_bytes(report.bytes_scanned)} scanned in {report.seconds:.2f} s"
        )
        if len(report.findings) > MAX_SHOWN:
            self.status.setText(
                self.status.text() + f" (the first {MAX_SHOWN:,} are listed; "
                "`ckpt-viewer check --json` lists all)"
            )
        self._list(report, 0)

    def _list(self, report, start):
        """ROWS_PER_STEP findings per event loop turn (thousands at once would hold the
        window); `checked` once all are listed."""
        from ckpt_viewer.core.analysis.check import SEVERITY_NOUNS
        from ckpt_viewer.core.listing.text import safe_text as escape

        items, names = [], self.parameter_names
        for finding in report.findings[start : min(start + ROWS_PER_STEP, MAX_SHOWN)]:
            item = QTreeWidgetItem(
                [
                    SEVERITY_NOUNS[finding.severity],
                    finding.kind,
                    escape(finding.key)
                    + (f" \u2014 {escape(name)}" if (name := names.get(finding.key)) else ""),
                    escape(finding.message),
                ]
            )
            item.setData(0, Qt.UserRole, finding.key)
            item.setForeground(0, QBrush(on_base(COLOURS[finding.severity])))
            item.setToolTip(3, escape(finding.message))
            items.append(item)
        self.findings.addTopLevelItems(items)
        end = start + ROWS_PER_STEP
        if end < min(len(report.findings), MAX_SHOWN):
            QTimer.singleShot(0, self, lambda: self._list(report, end))
        else:
            for column in range(3):  # severity, kind, key: as wide as the rows in sight need
                self.findings.resizeColumnToContents(column)
            self.checked.emit(report)

    def _failed(self, message):
        self.cancel_button.setEnabled(False)
        self.status.setText(f"Check failed: {message}")
        self.failed.emit(message)

    def cancel(self):
        if self.controller.busy("check"):
            self.controller.cancel("check")  # the scan stops after the segments already running
            self.cancel_button.setEnabled(False)
            self.status.setText("Cancelled")
            self.cancelled.emit()

    def _clicked(self, item, _column=0):
        key = item.data(0, Qt.UserRole)
        if key:
            self.open_key(key)

    def closeEvent(self, event):
        self.cancel()
        super().closeEvent(event)
