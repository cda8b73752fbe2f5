"""The app's resources, its light and dark palettes, plots that follow the palette, and
splitter positions remembered between sessions."""

from __future__ import annotations

import sys
from importlib.resources import files

from PySide6.QtCore import QSettings
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication, QSplitter

from ckpt_viewer.core import paused_gc


def resource_path(name: str) -> str:
    return str(files("ckpt_viewer.resources").joinpath(name))


def _dark_indicators() -> str:
    """Fusion draws an unticked box's border from the window colour, which vanishes on a dark
    base: draw the indicators from images instead (dark theme only)."""
    images = {
        "unchecked": "uncheck-dark.svg",
        "checked": "check-dark.svg",
        "indeterminate": "partial-dark.svg",
    }
    rules = []
    for state, name in images.items():
        url = resource_path(name).replace("\\", "/")
        rules.append(
            f"QCheckBox::indicator:{state}, QAbstractItemView::indicator:{state} "
            f"{{ image: url({url}); }}"
        )
    return (
        "QCheckBox::indicator, QAbstractItemView::indicator { width: 14px; height: 14px; }\n"
        + "\n".join(rules)
    )


def apply_theme(app: QApplication, dark: bool):
    app.setStyle("Fusion")
    if not dark:
        app.setPalette(app.style().standardPalette())
        app.setStyleSheet("")
        restyle_plots(app)
        return
    palette = QPalette()
    colors = {
        QPalette.Window: (45, 45, 48),
        QPalette.WindowText: (220, 220, 220),
        QPalette.Base: (30, 30, 32),
        QPalette.AlternateBase: (45, 45, 48),
        QPalette.ToolTipBase: (60, 60, 64),
        QPalette.ToolTipText: (230, 230, 230),
        QPalette.Text: (220, 220, 220),
        QPalette.Button: (55, 55, 58),
        QPalette.ButtonText: (220, 220, 220),
        QPalette.BrightText: (255, 80, 80),
        QPalette.Highlight: (42, 110, 200),
        QPalette.HighlightedText: (255, 255, 255),
        QPalette.Link: (110, 170, 255),
        QPalette.PlaceholderText: (140, 140, 140),
        QPalette.Light: (90, 90, 96),
        QPalette.Midlight: (70, 70, 75),
        QPalette.Mid: (60, 60, 64),
        QPalette.Dark: (25, 25, 27),
        QPalette.Shadow: (10, 10, 10),
    }
    for role, rgb in colors.items():
        palette.setColor(role, QColor(*rgb))
    for role in (QPalette.Text, QPalette.ButtonText, QPalette.WindowText):
        palette.setColor(QPalette.Disabled, role, QColor(120, 120, 120))
    app.setPalette(palette)
    app.setStyleSheet(_dark_indicators())
    restyle_plots(app)


def on_base(colour) -> QColor:
    """`colour` for text on the palette's base: as given on a light base, lightened on a dark
    one (dark red #b02a37 on the dark theme's base was barely readable)."""
    colour = QColor(colour)
    if QApplication.palette().color(QPalette.Base).lightness() >= 128:
        return colour
    hue, saturation, lightness, alpha = colour.getHslF()
    return QColor.fromHslF(hue, saturation, max(lightness, 0.7), alpha)


def style_plot(plot):
    """A pyqtgraph PlotWidget in the application palette's colours (background, axes, text),
    with plain tick labels (never "value (x0.001)")."""
    palette = QApplication.palette()
    background, foreground = palette.color(QPalette.Base), palette.color(QPalette.Text)
    plot.setBackground(background)
    item = plot.getPlotItem()
    axes = [item.getAxis(side) for side in ("left", "bottom", "right", "top")]
    axes += [
        child.axis
        for child in item.scene().items()
        if hasattr(child, "axis") and hasattr(child.axis, "setTextPen")
    ]  # colour bars
    for axis in axes:
        axis.setPen(foreground)
        axis.setTextPen(foreground)
        axis.enableAutoSIPrefix(False)
        # disabling still scales the ticks once, by the SI prefix of the current range (a
        # theme switch showed +-0.125 as +-125 with no label), and nothing undoes it later
        axis.autoSIPrefixScale = 1.0
        axis.setRange(*axis.range)  # redraws the ticks


def restyle_plots(app: QApplication):
    """After a theme change: every open plot and pyqtgraph's defaults for new ones."""
    pg = sys.modules.get("pyqtgraph")
    if pg is None or not hasattr(pg, "PlotWidget"):  # absent, or still importing in a worker:
        return  # plots are styled as they are built
    palette = app.palette()
    pg.setConfigOption("background", palette.color(QPalette.Base))
    pg.setConfigOption("foreground", palette.color(QPalette.Text))
    # no collection meanwhile: one that frees a closed window held in a reference cycle
    # deletes its widgets while they are still in the list (a crash wrapping the next one)
    with paused_gc():
        for widget in app.allWidgets():
            if isinstance(widget, pg.PlotWidget):
                style_plot(widget)


def remember_splitter(splitter: QSplitter, key: str, default: list[int]):
    """Restore the splitter's sizes saved under `key` (else `default`); save them on moves."""
    saved = QSettings().value(key)
    try:
        sizes = [int(size) for size in saved] if isinstance(saved, (list, tuple)) else []
    except (TypeError, ValueError):
        sizes = []
    splitter.setSizes(sizes if len(sizes) == splitter.count() and any(sizes) else default)
    splitter.splitterMoved.connect(lambda *_: QSettings().setValue(key, splitter.sizes()))
