"""Selecting a tensor: preview then exact statistics, histogram, cancel on reselection."""

import os
import subprocess
import sys

import numpy as np
import torch
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QTableWidget
from qt_helpers import open_and_wait

import builders


def stats_table(view):
    return view.findChild(QTableWidget, "statsTable").as_dict()


def select(qtbot, tab, key, timeout=20_000):
    with qtbot.waitSignal(tab.tensor_view.view_ready, timeout=timeout) as blocker:
        assert tab.select_key(key)
    assert blocker.args == [key]


def test_selecting_a_tensor_shows_exact_stats_and_histogram(qtbot, window, tmp_path):
    values = torch.tensor([1.0, 2.0, 3.0, 4.0, float("nan")])
    path = builders.save({"w": values, "b": torch.zeros(3)}, tmp_path / "t.pt")
    open_and_wait(qtbot, window, path)
    tab = window.tabs.currentWidget()
    select(qtbot, tab, "w")
    view = tab.findChild(object, "tensorView")
    assert tab.panes.currentWidget() is view
    table = stats_table(view)
    assert table["min"] == table["max"] == table["mean"] == "nan"  # torch's, with a NaN
    assert table["min (finite)"] == "1" and table["max (finite)"] == "4"
    assert table["mean (finite)"] == "2.5"
    assert table["NaN"] == "1"
    plot = view.findChild(object, "histogramPlot")
    assert plot is not None and plot.isVisible()
    x, y = view.histogram.curve.getData()
    assert y.sum() == 4
    view.controls.log_y.setChecked(True)
    assert plot.getPlotItem().ctrl.logYCheck.isChecked()
    assert view.export_png(str(tmp_path / "h.png")) and (tmp_path / "h.png").stat().st_size > 0
    histogram = view.histogram
    lines = [histogram.mean_line, *histogram.std_lines]
    assert histogram.curve.isVisible() and all(line.isVisible() for line in lines)
    histogram.clear()  # what a new selection does first: nothing of "w" is shown
    assert not histogram.curve.isVisible() and not any(line.isVisible() for line in lines)
    assert not histogram.nonfinite.isVisible()
    view.controls.log_y.setChecked(False)
    select(qtbot, tab, "b")
    assert histogram.curve.isVisible() and histogram.curve.getData()[1].sum() == 3


def test_bins_and_clipped_range_recompute(qtbot, window, tmp_path):
    values = torch.cat([torch.randn(10_000), torch.tensor([1e6])])
    open_and_wait(qtbot, window, builders.save({"w": values}, tmp_path / "t.pt"))
    tab = window.tabs.currentWidget()
    select(qtbot, tab, "w")
    view = tab.tensor_view
    with qtbot.waitSignal(view.view_ready, timeout=20_000):
        view.controls.bins.setValue(32)
    assert len(view.controller.stats.counts) == 32
    with qtbot.waitSignal(view.view_ready, timeout=20_000):
        view.controls.range.setCurrentText("clip to 1-99 %")
    assert view.controller.stats.above > 0 and view.controller.stats.edges[-1] < 10
    assert stats_table(view)["above range"] == f"{view.controller.stats.above:,}"


def test_large_tensor_preview_comes_first_and_reselection_cancels(qtbot, window, tmp_path):
    path = builders.save({"big": torch.randn(3_000_000), "small": torch.ones(4)}, tmp_path / "b.pt")
    open_and_wait(qtbot, window, path)
    tab = window.tabs.currentWidget()
    view = tab.tensor_view
    with qtbot.waitSignal(view.preview_ready, timeout=20_000):
        tab.select_key("big")
    assert view.controller.stats.sampled
    select(qtbot, tab, "small")  # cancels "big"; only "small" may report
    assert view.controller.node.key == "small" and stats_table(view)["mean"] == "1"


def test_unreadable_values_show_a_message(qtbot, window, tmp_path):
    path = builders.save(
        {"w": torch.randn(1000)}, tmp_path / "t.pt", _use_new_zipfile_serialization=False
    )
    open_and_wait(qtbot, window, path)
    tab = window.tabs.currentWidget()
    with open(path, "r+b") as f:
        f.truncate(500)
    tab.select_key("w")
    qtbot.waitUntil(
        lambda: "cannot read values" in tab.tensor_view.controls.status.text(), timeout=20_000
    )
    assert window.tabs.count() == 1


def test_screenshot_command(tmp_path, gui_env):
    """1366 x 768 unless --size says otherwise (the offscreen screen is 800 x 800); the user's
    settings are read (the dark theme) and left byte for byte as they were."""
    path = builders.training_checkpoint(tmp_path / "c.pt")
    config = tmp_path / "config" / "ckpt-viewer"
    config.mkdir(parents=True)
    settings = b"[General]\ndark=true\nrecent=/elsewhere/kept.pt\n"
    (config / "ckpt-viewer.conf").write_bytes(settings)
    from PySide6.QtGui import QImage

    for size, expected in (((), (1366, 768)), (("--size", "1000x700"), (1000, 700))):
        out = tmp_path / "shot.png"
        result = subprocess.run(
            [sys.executable, "-m", "ckpt_viewer", path, "--screenshot", str(out), *size],
            capture_output=True,
            text=True,
            timeout=120,
            env=gui_env,
        )
        assert result.returncode == 0, result.stderr
        image = QImage(str(out))
        assert (image.width(), image.height()) == expected
        assert QColor(image.pixel(image.width() - 5, image.height() - 5)).lightness() < 128
    assert (config / "ckpt-viewer.conf").read_bytes() == settings
    assert os.listdir(config) == ["ckpt-viewer.conf"]
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "ckpt_viewer",
            str(tmp_path / "none.pt"),
            "--screenshot",
            str(tmp_path / "x.png"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=gui_env,
    )
    assert bad.returncode == 2 and "error:" in bad.stderr and "Traceback" not in bad.stderr
    before = open(path, "rb").read()  # the checkpoint itself as OUT: refused, untouched
    onto = subprocess.run(
        [sys.executable, "-m", "ckpt_viewer", path, "--screenshot", path],
        capture_output=True,
        text=True,
        timeout=120,
        env=gui_env,
    )
    assert (
        onto.returncode == 2 and "source file" in onto.stderr and len(onto.stderr.splitlines()) == 1
    )
    assert open(path, "rb").read() == before


def test_heatmap_values_and_overlay(qtbot, window, tmp_path):
    torch.manual_seed(0)
    x = torch.arange(2 * 300 * 5, dtype=torch.float32).view(2, 300, 5)
    conv = torch.randn(8, 3, 3, 3)
    a = builders.save({"x": x, "w": torch.randn(1000), "conv": conv}, tmp_path / "a.pt")
    b = builders.save({"w": torch.randn(1000) * 2}, tmp_path / "b.pt")
    open_and_wait(qtbot, window, b)
    open_and_wait(qtbot, window, a)
    tab = window.tabs.currentWidget()
    view = tab.tensor_view
    select(qtbot, tab, "x")
    view.pages.setCurrentWidget(view.values)
    model = view.values.table.model()
    assert (model.rowCount(), model.columnCount()) == (300, 5)
    assert model.index(299, 4).data() == "..."  # its page is read in a worker
    qtbot.waitUntil(lambda: model.index(299, 4).data() != "...", timeout=20_000)
    assert model.index(299, 4).data() == "1499.000000"
    assert model.index(299, 4).data(Qt.ToolTipRole) == "1499.0"
    assert model.index(299, 4).data(Qt.TextAlignmentRole) & Qt.AlignRight
    view.values.selector.spins[0].setValue(1)
    model = view.values.table.model()
    model.index(0, 0).data()
    qtbot.waitUntil(lambda: model.index(0, 0).data() == "1500.000000", timeout=20_000)
    with qtbot.waitSignal(view.heatmap.ready, timeout=20_000):
        view.pages.setCurrentWidget(view.heatmap)
    image = view.heatmap.image.image
    assert image.shape == (300, 5) and image[299, 4] == 1499
    with qtbot.waitSignal(view.heatmap.ready, timeout=20_000):
        select(qtbot, tab, "conv")
    heatmap = view.heatmap
    # 8 square 3 x 3 tiles, 3 to a row, NaN lines between them; in-channel 0 first
    assert heatmap.as_filters.isChecked() and heatmap.image.image.shape == (11, 11)
    np.testing.assert_array_equal(heatmap.image.image[8:11, 4:7], conv[7, 0].double().numpy())
    assert heatmap.plot.getPlotItem().vb.state["aspectLocked"]
    assert heatmap.describe_point(5.5, 9.5) == (
        f"output channel 7, in-channel 0, kernel row 1, column 1: {conv[7, 0, 1, 1].item():.6g}"
    )
    with qtbot.waitSignal(heatmap.ready, timeout=20_000):
        heatmap.in_channel.setValue(2)
    np.testing.assert_array_equal(heatmap.image.image[0:3, 0:3], conv[0, 2].double().numpy())
    view.pages.setCurrentIndex(0)
    select(qtbot, tab, "w")
    assert view.controls.compare.isVisible() and view.controls.compare.itemText(1) == "b.pt"
    view.controls.compare.setCurrentIndex(1)
    qtbot.waitUntil(lambda: view.histogram.overlay.isVisible(), timeout=20_000)
    x_edges, counts = view.histogram.overlay.getData()
    assert len(x_edges) == len(view.controller.stats.edges) and 0 < counts.sum() <= 1000


def test_exact_pass_waits_for_plotting_to_settle_and_stays_cancellable(tmp_path):
    import threading

    from ckpt_viewer.core.listing.open import open_checkpoint
    from ckpt_viewer.qt.tensor_view import stats_job

    path = builders.save({"w": torch.arange(2_000_000, dtype=torch.float32)}, tmp_path / "w.pt")
    tensor = open_checkpoint(path).find("w").tensor
    settled = threading.Event()
    job = stats_job(tensor, 16, "magnitude", None, settled)
    kind, preview = next(job)
    assert kind == "preview" and preview.sampled
    assert next(job) == 0.0 and next(job) == 0.0  # waiting, yet answering at each step
    settled.set()
    items = list(job)
    assert items and all(isinstance(item, float) for item in items)
    job = stats_job(tensor, 16, "magnitude", None, settled)
    next(job)
    job.close()  # a cancelled job simply stops


def test_statistics_seen_before_come_from_the_checkpoint_cache(qtbot, window, tmp_path):
    """Reselecting a tensor shows its exact figures without a pass; the health pass's facts
    are used by the first pass and give the same figures."""
    from ckpt_viewer.core.analysis.check import check
    from ckpt_viewer.core.progress import run

    values = torch.randn(2_000_000)
    values[7] = float("nan")
    open_and_wait(
        qtbot, window, builders.save({"w": values, "b": torch.ones(3)}, tmp_path / "t.pt")
    )
    tab = window.tabs.currentWidget()
    cache = tab.checkpoint.stats_cache
    tensor = tab.checkpoint.find("w").tensor
    run(check(tab.checkpoint))
    assert cache.facts(tensor).nan == 1
    select(qtbot, tab, "w")
    first = stats_table(tab.tensor_view)
    assert first["NaN"] == "1"
    select(qtbot, tab, "b")
    progress = []
    tab.tensor_view.controller.progressed.connect(progress.append)
    select(qtbot, tab, "w")
    assert stats_table(tab.tensor_view) == first and progress == []
