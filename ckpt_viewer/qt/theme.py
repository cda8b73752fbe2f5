"""The app's resources and its light/dark palettes."""

from __future__ import annotations

from importlib.resources import files

from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication


def resource_path(name: str) -> str:
    return str(files("ckpt_viewer.resources").joinpath(name))


def apply_theme(app: QApplication, dark: bool):
    app.setStyle("Fusion")
    if not dark:
        app.setPalette(app.style().standardPalette())
        return
    palette = QPalette()
    colors = {
        QPalette.Window: (45, 45, 48), QPalette.WindowText: (220, 220, 220),
        QPalette.Base: (30, 30, 32), QPalette.AlternateBase: (45, 45, 48),
        QPalette.ToolTipBase: (60, 60, 64), QPalette.ToolTipText: (230, 230, 230),
        QPalette.Text: (220, 220, 220), QPalette.Button: (55, 55, 58),
        QPalette.ButtonText: (220, 220, 220), QPalette.BrightText: (255, 80, 80),
        QPalette.Highlight: (42, 110, 200), QPalette.HighlightedText: (255, 255, 255),
        QPalette.Link: (110, 170, 255), QPalette.PlaceholderText: (140, 140, 140),
    }
    for role, rgb in colors.items():
        palette.setColor(role, QColor(*rgb))
    palette.setColor(QPalette.Disabled, QPalette.Text, QColor(120, 120, 120))
    palette.setColor(QPalette.Disabled, QPalette.ButtonText, QColor(120, 120, 120))
    app.setPalette(palette)
