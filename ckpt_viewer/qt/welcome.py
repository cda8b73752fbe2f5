"""The window's empty state: how to open something (buttons, recent files, drop) and what can be
opened. It stays until a file opens and returns when the last tab closes; it has no close box."""

from __future__ import annotations

from collections.abc import Container

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ckpt_viewer.qt.plain import plain_label, shown

FORMATS = (
    "PyTorch .pt / .pth / .bin / .ckpt (zip and legacy), TorchScript, torch.export .pt2",
    "safetensors, GGUF, plain pickles (.pkl)",
    "Hugging Face model folders (sharded, *.index.json), torch.distributed.checkpoint "
    "folders, training-run folders",
    "http(s) URLs of any of these (read by ranges)",
)


class WelcomePage(QWidget):
    open_file = Signal()
    open_folder = Signal()
    open_url = Signal()
    open_run = Signal()
    open_recent = Signal(str)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("welcome")
        title = QLabel("<h2>Open a checkpoint</h2>")
        hint = plain_label(
            "Drop checkpoint files or model folders here, or use a button below. Nothing in a "
            "file is ever run: pickled objects are shown as data."
        )
        buttons = QHBoxLayout()
        for text, name, signal in (
            ("Open File... (Ctrl+O)", "welcomeOpen", self.open_file),
            ("Open Folder...", "welcomeOpenFolder", self.open_folder),
            ("Open URL... (Ctrl+Shift+O)", "welcomeOpenUrl", self.open_url),
            ("Open Run...", "welcomeOpenRun", self.open_run),
        ):
            button = QPushButton(text)
            button.setObjectName(name)
            button.clicked.connect(signal)
            buttons.addWidget(button)
        buttons.addStretch(1)
        self.recent = QListWidget()
        self.recent.setObjectName("welcomeRecent")
        self.recent.itemActivated.connect(
            lambda item: self.open_recent.emit(item.data(Qt.UserRole))
        )
        self.recent_title = plain_label("Recent files (double-click or Enter opens one)")
        formats = plain_label()
        formats.setText("Formats:\n" + "\n".join(f"  - {line}" for line in FORMATS))  # ours
        formats.setObjectName("welcomeFormats")
        for label in (hint, formats):  # never widens the window
            label.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(32, 24, 32, 24)
        layout.addWidget(title)
        layout.addWidget(hint)
        layout.addLayout(buttons)
        layout.addWidget(self.recent_title)
        layout.addWidget(self.recent, 1)
        layout.addWidget(formats)
        layout.addStretch(0)
        self.set_recent([])

    def set_recent(self, paths: list[str], runs: Container[str] = ()) -> None:
        """`runs`: the paths that open as a Run tab, marked so."""
        self.recent.clear()
        for path in paths:
            item = QListWidgetItem(shown(path) + (" (run)" if path in runs else ""))
            item.setData(Qt.UserRole, path)
            self.recent.addItem(item)
        self.recent.setVisible(bool(paths))
        self.recent_title.setVisible(bool(paths))
