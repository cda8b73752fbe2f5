"""The tensor pane's jobs belong to its controllers: a new selection supersedes them, closing
the tab cancels them, and a superseded heatmap stops reading at its next block."""

import threading

import torch
from qt_helpers import open_and_wait

import builders
from ckpt_viewer.core.values import heatmap as values_module
from ckpt_viewer.qt import tensor_view


def held_stats_job(monkeypatch):
    """stats_job, held after a preview until `release` is set; `closed` once a job ended."""
    release, closed, real = threading.Event(), threading.Event(), tensor_view.stats_job

    def job(*args):
        inner = real(*args)
        try:
            first = next(inner)
            yield first
            while isinstance(first, tuple) and not release.wait(0.01):  # after a preview
                yield 0.0  # waiting, yet answering a quit at each step
            result = yield from inner
            return result
        finally:
            closed.set()

    monkeypatch.setattr(tensor_view, "stats_job", job)
    return release, closed


def test_stats_job_is_superseded_by_a_new_selection_and_cancelled_on_tab_close(
    qtbot, window, tmp_path, monkeypatch
):
    release, closed = held_stats_job(monkeypatch)
    path = builders.save({"big": torch.randn(1_500_000), "small": torch.ones(4)}, tmp_path / "b.pt")
    open_and_wait(qtbot, window, path)
    tab = window.tabs.currentWidget()
    view = tab.tensor_view
    ready = []
    view.view_ready.connect(ready.append)
    with qtbot.waitSignal(view.preview_ready, timeout=20_000):
        tab.select_key("big")
    first = view.controller.jobs.running["stats"]
    with qtbot.waitSignal(first.finished, timeout=10_000):
        tab.select_key("small")  # supersedes "big": it stops while still held
    assert closed.is_set()
    qtbot.waitUntil(lambda: ready == ["small"], timeout=20_000)
    closed.clear()
    with qtbot.waitSignal(view.preview_ready, timeout=20_000):
        tab.select_key("big")
    held = view.controller.jobs.running["stats"]
    with qtbot.waitSignal(held.finished, timeout=10_000):
        window.close_tab(window.tabs.indexOf(tab))
    assert closed.is_set() and ready == ["small"]  # "big" never reported
    release.set()


def test_superseding_a_heatmap_stops_the_old_read_early(qtbot, window, tmp_path, monkeypatch):
    monkeypatch.setattr(values_module, "POOL_STRIP", 500)  # 400 x 50: 40 blocks of 10 rows
    gate, reads, original = threading.Event(), [], values_module.read_window

    def read_window(tensor, leading, rows, cols):
        if tensor.shape == (400, 50):
            reads.append(rows.start)
            if len(reads) >= 2:
                gate.wait(10)  # the test holds the old job inside its 2nd block
        return original(tensor, leading, rows, cols)

    monkeypatch.setattr(values_module, "read_window", read_window)
    path = builders.save(
        {"big": torch.randn(400, 50), "small": torch.randn(3, 4)}, tmp_path / "h.pt"
    )
    open_and_wait(qtbot, window, path)
    tab = window.tabs.currentWidget()
    view = tab.tensor_view
    with qtbot.waitSignal(view.view_ready, timeout=20_000):
        tab.select_key("big")
    view.pages.setCurrentWidget(view.heatmap)
    qtbot.waitUntil(lambda: len(reads) >= 2, timeout=20_000)
    old = view.heatmap.controller.jobs.running["heatmap"]
    with qtbot.waitSignal(view.heatmap.ready, timeout=20_000):
        tab.select_key("small")
    assert view.heatmap.image.image.shape == (3, 4)
    with qtbot.waitSignal(old.finished, timeout=10_000):
        gate.set()
    assert reads == [0, 10]  # 2 of 40 blocks read, then it stopped


def test_value_page_reads_are_dropped_when_the_slice_changes(qtbot, window, tmp_path, monkeypatch):
    from ckpt_viewer.qt import slices

    gate, arrived = threading.Event(), []
    original_read, original_arrived = slices.read_window, slices.ValuesModel._arrived

    def read_window(tensor, leading, rows, cols):
        if leading == (0,):
            gate.wait(10)  # slice 0's page is held until the test lets it go
        return original_read(tensor, leading, rows, cols)

    def record(model, key, page, message=""):
        arrived.append(model.leading)
        return original_arrived(model, key, page, message)

    monkeypatch.setattr(slices, "read_window", read_window)
    monkeypatch.setattr(slices.ValuesModel, "_arrived", record)
    x = torch.arange(2 * 300 * 5, dtype=torch.float32).view(2, 300, 5)
    open_and_wait(qtbot, window, builders.save({"x": x}, tmp_path / "x.pt"))
    tab = window.tabs.currentWidget()
    view = tab.tensor_view
    with qtbot.waitSignal(view.view_ready, timeout=20_000):
        tab.select_key("x")
    view.pages.setCurrentWidget(view.values)
    view.values.table.model().index(0, 0).data()
    held = view.values.controller.jobs.running["page (0, 0)"]
    view.values.selector.spins[0].setValue(1)  # a new slice supersedes the held read
    model = view.values.table.model()
    model.index(0, 0).data()
    qtbot.waitUntil(lambda: model.index(0, 0).data() == "1500.000000", timeout=20_000)
    with qtbot.waitSignal(held.finished, timeout=10_000):
        gate.set()
    assert (0,) not in arrived and (1,) in arrived  # the old slice's page never landed


def test_a_heatmap_cut_short_is_read_again_when_shown(qtbot, window, tmp_path, monkeypatch):
    gate, held_once, original = threading.Event(), [], values_module.read_window

    def read_window(tensor, leading, rows, cols):
        if tensor.shape == (40, 5) and not held_once:
            held_once.append(True)
            gate.wait(10)  # only the first read of "a" is held
        return original(tensor, leading, rows, cols)

    monkeypatch.setattr(values_module, "read_window", read_window)
    path = builders.save({"a": torch.randn(40, 5), "b": torch.randn(3)}, tmp_path / "h.pt")
    open_and_wait(qtbot, window, path)
    tab = window.tabs.currentWidget()
    view = tab.tensor_view
    with qtbot.waitSignal(view.view_ready, timeout=20_000):
        tab.select_key("a")
    view.pages.setCurrentWidget(view.heatmap)
    qtbot.waitUntil(lambda: bool(held_once), timeout=20_000)
    held = view.heatmap.controller.jobs.running["heatmap"]
    view.pages.setCurrentIndex(0)
    with qtbot.waitSignal(view.view_ready, timeout=20_000):
        tab.select_key("b")  # the hidden heatmap of "a" is dropped
    with qtbot.waitSignal(held.finished, timeout=10_000):
        gate.set()
    with qtbot.waitSignal(view.view_ready, timeout=20_000):
        tab.select_key("a")
    with qtbot.waitSignal(view.heatmap.ready, timeout=20_000):
        view.pages.setCurrentWidget(view.heatmap)
    assert view.heatmap.image.image.shape == (40, 5)
