"""Text from a file shown as text: Qt guesses rich text from a leading tag, so a key such as
`<h1>...` or `<img src=...>` would otherwise be rendered as markup."""

from __future__ import annotations

import html

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel

from ckpt_viewer.core.listing.text import clipped, safe_text

MAX_SHOWN = 2000


def as_html(text) -> str:
    """For widgets that show our own markup: the file's text escaped, on one line."""
    return html.escape(safe_text(clipped(str(text), MAX_SHOWN)))


def shown(text) -> str:
    """For plain-text widgets: one line, control characters escaped, length capped."""
    return safe_text(clipped(str(text), MAX_SHOWN))


def plain_label(text: str = "", parent=None) -> QLabel:
    label = QLabel(parent)
    label.setTextFormat(Qt.PlainText)
    label.setText(shown(text))
    return label
