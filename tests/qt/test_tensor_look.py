"""The tensor pane's look: estimates marked, alarms highlighted, bins from the element count,
plain axes, the value table's notation and copy, the heatmap's map and hover, themed plots,
remembered splitters."""

import numpy as np
import torch
from PySide6.QtCore import QSettings, Qt
from PySide6.QtGui import QGuiApplication, QPalette
from PySide6.QtWidgets import QApplication
from qt_helpers import open_and_wait

import builders


def select(qtbot, tab, key, timeout=20_000):
    with qtbot.waitSignal(tab.tensor_view.view_ready, timeout=timeout):
        assert tab.select_key(key)


def test_preview_figures_are_estimates_and_alarms_stand_out(qtbot, window, tmp_path):
    big = torch.randn(3_000_000)
    big[7] = float("nan")
    path = builders.save(
        {"big": big, "tiny": torch.tensor([0.0, 1.0, 1.0, 2.0])}, tmp_path / "b.pt"
    )
    open_and_wait(qtbot, window, path)
    tab = window.tabs.currentWidget()
    view = tab.tensor_view
    with qtbot.waitSignal(view.preview_ready, timeout=20_000):
        tab.select_key("big")
    shown = view.table.as_dict()
    assert shown["L2 norm"] == "..." and shown["NaN"] == "..." and "50 %" not in shown
    assert shown["mean"].startswith("≈ ") and shown["elements"] == "3,000,000"
    qtbot.waitSignal(view.view_ready, timeout=30_000).wait()
    shown = view.table.as_dict()
    assert shown["NaN"] == "1" and not shown["mean"].startswith("≈")
    items = {
        view.table.item(r, c).text(): view.table.item(r, c + 1)
        for r in range(view.table.rowCount())
        for c in (0, 2)
        if view.table.item(r, c)
    }
    assert items["NaN"].font().bold() and not items["+Inf"].font().bold()
    assert items["mean"].textAlignment() & Qt.AlignRight
    view.histogram.readout.setText("bin [0, 1): 5")
    select(qtbot, tab, "tiny")
    assert view.histogram.readout.text().strip() == ""  # the old tensor's read-out is gone
    assert len(view.controller.stats.counts) <= 8  # not 256 bars for four values
    assert view.table.as_dict()["50 %"] == "1"  # an element, not an interpolation
    axis = view.histogram.plot.getAxis("bottom")
    assert not axis.autoSIPrefix
    assert view.histogram.plot.getPlotItem().getViewBox().state["mouseEnabled"] == [True, False]


def test_value_table_notation_and_full_precision_copy(qtbot, window, tmp_path):
    matrix = torch.tensor([[0.5, 1e-7, 3.0], [0.25, 2.5e8, -1.0]], dtype=torch.float32)
    open_and_wait(qtbot, window, builders.save({"m": matrix}, tmp_path / "m.pt"))
    tab = window.tabs.currentWidget()
    select(qtbot, tab, "m")
    view = tab.tensor_view
    view.pages.setCurrentWidget(view.values)
    model = view.values.table.model()
    model.index(0, 0).data()
    qtbot.waitUntil(lambda: model.index(0, 0).data() != "...", timeout=20_000)
    assert [model.index(r, 0).data() for r in range(2)] == ["0.500000", "0.250000"]
    assert [model.index(r, 1).data() for r in range(2)] == ["1.00000e-07", "2.50000e+08"]
    view.values.table.selectAll()
    text = view.values.copy_selection()
    assert text.split("\n")[0].split("\t") == ["0.5", "1e-07", "3.0"]
    assert QGuiApplication.clipboard().text() == text


def test_heatmap_is_diverging_for_signed_data_and_hover_reads_values(qtbot, window, tmp_path):
    signed = torch.zeros(3000, 40)
    signed[1234, 5] = -9.0  # a spike every 3rd row would skip
    positive = torch.rand(10, 10) + 1
    cplx = torch.tensor([[3 + 4j, 1j]], dtype=torch.complex64)
    path = builders.save({"s": signed, "p": positive, "c": cplx}, tmp_path / "h.pt")
    open_and_wait(qtbot, window, path)
    tab = window.tabs.currentWidget()
    view = tab.tensor_view
    select(qtbot, tab, "s")
    with qtbot.waitSignal(view.heatmap.ready, timeout=20_000):
        view.pages.setCurrentWidget(view.heatmap)
    heatmap = view.heatmap
    assert heatmap.image.image.min() == -9.0 and heatmap.colormap == "CET-D1A"
    assert heatmap.image.levels[0] == -heatmap.image.levels[1]
    assert "largest |x| -9" in heatmap.describe_point(5.5, 1234.5)
    with qtbot.waitSignal(heatmap.ready, timeout=20_000):
        select(qtbot, tab, "p")
    assert heatmap.colormap == "viridis"
    assert heatmap.describe_point(2.5, 3.5) == f"row 3, column 2: {positive[3, 2].item():.6g}"
    assert heatmap.describe_point(-1, 3) == " "
    with qtbot.waitSignal(heatmap.ready, timeout=20_000):
        select(qtbot, tab, "c")
    np.testing.assert_array_equal(heatmap.image.image, [[5.0, 1.0]])
    assert "|x|" in heatmap.status.text()


def test_dark_theme_plots_and_remembered_splitters(qtbot, window, tmp_path):
    open_and_wait(qtbot, window, builders.save({"w": torch.randn(100)}, tmp_path / "w.pt"))
    tab = window.tabs.currentWidget()
    select(qtbot, tab, "w")
    view = tab.tensor_view
    window.findChild(object, "actionDarkTheme").trigger()
    try:
        base = QApplication.palette().color(QPalette.Base)
        assert view.histogram.plot.backgroundBrush().color() == base and base.lightness() < 80
        assert "indicator" in QApplication.instance().styleSheet()
        text = view.histogram.plot.getAxis("left").textPen().color()
        assert text.lightness() > 150
    finally:
        window.findChild(object, "actionDarkTheme").trigger()
    assert view.histogram.plot.backgroundBrush().color().lightness() > 200
    assert QApplication.instance().styleSheet() == ""
    view.split.setSizes([300, 100])
    view.split.splitterMoved.emit(300, 1)
    assert [int(v) for v in QSettings().value("tensorView/split")] == view.split.sizes()
    assert view.pages.width() >= 0.9 * view.width()  # the plot spans the pane


def test_long_facts_wrap_instead_of_scrolling_sideways(qtbot, window, tmp_path):
    key = "encoder." + "a_rather_long_module_name_" * 10 + "weight"
    open_and_wait(qtbot, window, builders.save({key: torch.randn(3, 4)}, tmp_path / "k.pt"))
    tab = window.tabs.currentWidget()
    select(qtbot, tab, key)
    view = tab.tensor_view
    view.info_split.setSizes([500, 220])
    facts = view.facts
    qtbot.waitUntil(lambda: 0 < facts.viewport().width() <= 240, timeout=5000)
    qtbot.waitUntil(
        lambda: facts.document().size().width() <= facts.viewport().width() + 1, timeout=5000
    )
    assert facts.horizontalScrollBar().maximum() == 0
    assert key in facts.toPlainText()  # all of it, selectable


def test_statistics_fill_the_strip_and_integers_are_exact(qtbot, window, tmp_path):
    ids = torch.tensor([-4767, 30624, 4993600, 1198490] * 8, dtype=torch.int64)
    path = builders.save({"ids": ids}, tmp_path / "ids.pt")
    open_and_wait(qtbot, window, path)
    tab = window.tabs.currentWidget()
    select(qtbot, tab, "ids")
    table = tab.tensor_view.table
    shown = table.as_dict()
    assert shown["min"] == "-4,767" and shown["max"] == "4,993,600"
    assert shown["50 %"] == "30,624"
    assert shown["mean"] == f"{ids.double().mean().item():,.2f}"  # one notation in the column
    header = table.horizontalHeader()
    used = sum(header.sectionSize(c) for c in range(table.columnCount()))
    assert used == table.viewport().width()  # no blank band beside the last pair
    extra = [
        header.sectionSize(c) - max(table.sizeHintForColumn(c), header.sectionSizeHint(c))
        for c in range(table.columnCount())
    ]
    assert min(extra) >= 0 and max(extra) - min(extra) <= 1  # nothing cut, the rest shared


def test_alarm_and_status_colours_stay_readable_in_the_dark_theme(qtbot, window, tmp_path):
    from ckpt_viewer.qt.theme import on_base

    values = torch.randn(100)
    values[3] = float("nan")
    path = builders.save({"w": values}, tmp_path / "w.pt")
    window.findChild(object, "actionDarkTheme").trigger()
    try:
        open_and_wait(qtbot, window, path)
        tab = window.tabs.currentWidget()
        select(qtbot, tab, "w")
        table = tab.tensor_view.table
        nan = next(
            table.item(r, c + 1)
            for r in range(table.rowCount())
            for c in (0, 2)
            if table.item(r, c) and table.item(r, c).text() == "NaN"
        )
        base = QApplication.palette().color(QPalette.Base)
        assert nan.foreground().color().lightness() - base.lightness() > 120  # was 84
    finally:
        window.findChild(object, "actionDarkTheme").trigger()
    assert on_base("#b02a37").name() == "#b02a37"  # the light theme keeps its colours


def test_the_plot_is_the_largest_thing_on_the_tensor_page(qtbot, window, tmp_path):
    """Issue #13: at 1366x768 and 1920x1080 the histogram takes at least half the right pane's
    width and more height than the statistics strip under it."""
    open_and_wait(qtbot, window, builders.save({"w": torch.randn(1000)}, tmp_path / "w.pt"))
    tab = window.tabs.currentWidget()
    select(qtbot, tab, "w")
    view = tab.tensor_view
    for width, height in ((1366, 768), (1920, 1080)):
        window.resize(width, height)
        qtbot.waitUntil(lambda: window.width() == width and window.height() == height)
        QApplication.processEvents()
        assert view.histogram.plot.width() >= 0.5 * tab.panes.width()
        assert view.histogram.plot.height() > view.table.height()


def shown_ticks(axis) -> list[float]:
    """The tick labels the axis draws now, as numbers (pyqtgraph's own tick arithmetic)."""
    low, high = axis.range
    shown = []
    for spacing, values in axis.tickValues(low, high, 400):
        strings = axis.tickStrings(values, axis.autoSIPrefixScale * axis.scale, spacing)
        shown += [float(s.replace("\u2212", "-")) for s in strings if s]
    return shown


def test_axis_scale_survives_theme_switches(qtbot, window, tmp_path):
    """Switching theme re-styled the axes, and pyqtgraph scaled the ticks by the range's SI
    prefix without saying so: +-0.125 read as +-125 until the window was closed."""
    tensors = {"w": torch.linspace(-0.125, 0.125, 1000), "v": torch.rand(1000) * 2.86e-4}
    open_and_wait(qtbot, window, builders.save(tensors, tmp_path / "w.pt"))
    tab = window.tabs.currentWidget()
    view = tab.tensor_view
    dark = window.findChild(object, "actionDarkTheme")
    for key in ("w", "v"):
        select(qtbot, tab, key)
        low, high = tensors[key].min().item(), tensors[key].max().item()
        for _ in range(2):  # to dark and back again
            dark.trigger()
            view.histogram.plot.getPlotItem().getViewBox().autoRange()
            axis = view.histogram.plot.getAxis("bottom")
            ticks = shown_ticks(axis)
            assert ticks and all(low - (high - low) <= t <= high + (high - low) for t in ticks)
            assert axis.range[0] <= low and axis.range[1] >= high
            assert "(x" not in axis.labelString()
            count_ticks = shown_ticks(view.histogram.plot.getAxis("left"))
            assert max(count_ticks) <= 2 * max(view.controller.stats.counts)


def test_histogram_names_the_nan_and_inf_it_leaves_out(qtbot, window, tmp_path):
    values = torch.rand(1000) * 0.1 + 0.57
    values[[3, 500]] = float("inf")
    values[9] = float("nan")
    path = builders.save({"running_var": values, "clean": torch.rand(10)}, tmp_path / "r.pt")
    open_and_wait(qtbot, window, path)
    tab = window.tabs.currentWidget()
    view = tab.tensor_view
    select(qtbot, tab, "running_var")
    marker = view.histogram.nonfinite
    assert marker.isVisible() and "NaN 1" in marker.text() and "+Inf 2" in marker.text()
    assert "-Inf" not in marker.text()
    plot = view.histogram.plot
    corner = marker.mapTo(view.histogram, marker.rect().bottomLeft())
    assert corner.y() <= plot.mapTo(view.histogram, plot.rect().topLeft()).y()  # not on the bars
    shown = view.table.as_dict()
    assert shown["max"] == shown["mean"] == "nan"  # torch's: amax propagates NaN
    items = {
        view.table.item(r, c).text(): view.table.item(r, c + 1)
        for r in range(view.table.rowCount())
        for c in (0, 2)
        if view.table.item(r, c)
    }
    assert items["max"].font().bold() and not items["max (finite)"].font().bold()
    assert shown["max (finite)"] == f"{values[values.isfinite()].max().item():.6g}"
    select(qtbot, tab, "clean")
    assert not marker.isVisible() and "mean (finite)" not in view.table.as_dict()
