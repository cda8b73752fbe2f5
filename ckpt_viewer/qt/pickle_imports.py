"""Tools > Pickle Imports: every global the file's pickles name, triaged (core/listing/globals.py), whether
torch.load(weights_only=True) loads the file, and the allowlist snippet when there is one.
Clicking a key selects it in the tab's tree. Everything from the file is shown as plain text."""

from __future__ import annotations

import os

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QBrush, QColor, QFontDatabase, QGuiApplication
from PySide6.QtWidgets import (
    QHBoxLayout,
    QPlainTextEdit,
    QPushButton,
    QStyle,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ckpt_viewer.core.listing.globals import advice, meaning, report_dict, triage, verdict
from ckpt_viewer.qt.plain import plain_label, shown
from ckpt_viewer.qt.theme import on_base

CODE_RED = QColor("#b02a37")
# the Pickle Imports action's icon says the file's worst global (torch or none: all clear)
CATEGORY_ICONS = {
    "code": QStyle.SP_MessageBoxCritical,
    "class": QStyle.SP_MessageBoxWarning,
    "data": QStyle.SP_MessageBoxInformation,
    "": QStyle.SP_DialogApplyButton,
}
CATEGORY_WORDS = {
    "code": "names code that torch.load(weights_only=False) would run",
    "class": "names classes outside torch",
    "data": "names only plain data globals",
    "": "names only torch's own globals",
}


def worst_category(checkpoint) -> str:
    """The file's worst global category: code, class or data ("" when only torch's or none)."""
    if not (checkpoint.globals_named or checkpoint.unsafe_globals):
        return ""  # triage would walk every node to find nothing
    worst = triage(checkpoint, max_keys=0)
    return worst[0].category if worst and worst[0].category != "torch" else ""


class PickleImportsView(QWidget):
    key_activated = Signal(str)  # a key clicked: the owner selects it in the tree
    sanitize_requested = Signal()

    def __init__(self, checkpoint, parent=None):
        super().__init__(parent)
        self.setObjectName("pickleImportsView")
        name = os.path.basename(checkpoint.path.rstrip("/"))
        self.setWindowTitle(f"Pickle Imports - {shown(name)}")  # as Health's and Layers'
        self.setToolTip(shown(checkpoint.path))
        self.report = report_dict(checkpoint)

        self.format = checkpoint.format
        self.verdict = plain_label(verdict(checkpoint, self.report))
        self.verdict.setObjectName("weightsOnlyVerdict")
        self.verdict.setWordWrap(True)
        self.verdict.setTextInteractionFlags(Qt.TextSelectableByMouse)

        self.table = QTreeWidget()
        self.table.setObjectName("pickleImportsTable")
        self.table.setHeaderLabels(["Global", "Category", "Uses", "Where"])
        self.table.setColumnWidth(0, 360)
        self.table.setColumnWidth(1, 80)
        self.table.setColumnWidth(2, 60)
        self.table.itemClicked.connect(self._clicked)
        self.table.itemActivated.connect(self._clicked)
        for use in self.report["globals"]:
            self._add(use)

        self.snippet = QPlainTextEdit()
        self.snippet.setObjectName("pickleSnippet")
        self.snippet.setReadOnly(True)
        self.snippet.setFont(QFontDatabase.systemFont(QFontDatabase.FixedFont))
        self.snippet.setPlainText(self.report["snippet"] or "")
        self.copy_button = QPushButton("Copy")
        self.copy_button.setObjectName("copySnippet")
        self.copy_button.clicked.connect(
            lambda: QGuiApplication.clipboard().setText(self.snippet.toPlainText())
        )
        has_snippet = bool(self.report["snippet"])
        for widget in (self.snippet, self.copy_button):
            widget.setVisible(has_snippet)
        self.snippet_note = plain_label(
            "To load it with weights_only=True:"
            if has_snippet
            else advice(checkpoint, self.report) or "No allowlist is needed."
        )
        self.snippet_note.setWordWrap(True)

        self.sanitize_button = QPushButton("Save Sanitized Copy...")
        self.sanitize_button.setObjectName("pickleImportsSanitize")
        self.sanitize_button.clicked.connect(self.sanitize_requested)
        close = QPushButton("Close")
        close.setObjectName("pickleImportsClose")
        close.clicked.connect(self.close)

        layout = QVBoxLayout(self)
        layout.addWidget(self.verdict)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.snippet_note)
        snippet_row = QHBoxLayout()
        snippet_row.addWidget(self.snippet, 1)
        snippet_row.addWidget(self.copy_button, 0, Qt.AlignTop)
        layout.addLayout(snippet_row)
        buttons = QHBoxLayout()
        buttons.addWidget(self.sanitize_button)
        buttons.addStretch(1)
        buttons.addWidget(close)
        layout.addLayout(buttons)

    def _add(self, use: dict):
        keys = [key for key in use["keys"] if key]  # "" is the root: nothing to select
        where = (
            f"{keys[0]}" + (f" and {len(keys) - 1} more" if len(keys) > 1 else "") if keys else ""
        )
        item = QTreeWidgetItem(
            [shown(use["name"]), use["category"], f"{use['uses']:,}", shown(where)]
        )
        item.setToolTip(1, meaning(use["name"], use["category"], self.format))
        item.setData(0, Qt.UserRole, keys[0] if keys else "")
        if use["category"] == "code":
            for column in range(4):
                item.setForeground(column, QBrush(on_base(CODE_RED)))
            for call in use["calls"]:
                child = QTreeWidgetItem([shown(f"called as {use['name']}({call})"), "", "", ""])
                child.setForeground(0, QBrush(on_base(CODE_RED)))
                item.addChild(child)
        for key in keys:
            child = QTreeWidgetItem([shown(key), "", "", "select in the tree"])
            child.setData(0, Qt.UserRole, key)
            item.addChild(child)
        self.table.addTopLevelItem(item)
        if use["category"] == "code":
            item.setExpanded(True)

    def _clicked(self, item, _column=0):
        key = item.data(0, Qt.UserRole)
        if key:
            self.key_activated.emit(key)

    def rows(self) -> list[tuple[str, str]]:
        """(global, category) of every row, for tests and accessibility checks."""
        return [
            (self.table.topLevelItem(i).text(0), self.table.topLevelItem(i).text(1))
            for i in range(self.table.topLevelItemCount())
        ]
