"""What the GUI thread is spared: opening a tab walks the tree in the load worker, and the
histogram's pyqtgraph plot is built one piece per event-loop turn."""

import threading

from qt_helpers import open_and_wait

import builders
from ckpt_viewer.qt.tree_model import DTYPE


def test_opening_walks_the_tree_in_the_load_worker(qtbot, window, tmp_path, monkeypatch):
    """The column widths' texts, the LR schedulers and the worst global category each walk
    every row or node: the load worker makes them, the tab and the toolbar only show them."""
    from PySide6.QtWidgets import QTableWidget

    from ckpt_viewer.qt import checkpoint_tab, pickle_imports

    threads = {}

    def recording(name, original):
        def recorded(*args, **kwargs):
            threads.setdefault(name, set()).add(threading.current_thread())
            return original(*args, **kwargs)

        return recorded

    for module, name in (
        (checkpoint_tab, "column_texts"),
        (checkpoint_tab, "find_schedulers"),
        (pickle_imports, "triage"),
    ):
        monkeypatch.setattr(module, name, recording(name, getattr(module, name)))
    open_and_wait(qtbot, window, builders.lightning_file(tmp_path / "l.ckpt"))
    assert set(threads) == {"column_texts", "find_schedulers", "triage"}
    assert all(threading.main_thread() not in used for used in threads.values()), threads
    tab = window.current_tab()
    scheduler = tab.findChild(QTableWidget, "schedulerTable")  # what the worker found, shown
    fields = {scheduler.item(r, 0).text() for r in range(scheduler.rowCount())}
    assert "step_size" in fields
    assert tab.worst_global == pickle_imports.worst_category(tab.checkpoint) != ""
    widest = max(map(tab.tree.fontMetrics().horizontalAdvance, tab.totals.by_dtype))
    assert tab.tree.header().sectionSize(DTYPE) > widest  # sized by the worker's texts


def test_histogram_plot_is_built_in_slices(qtbot):
    """Each event-loop turn builds one piece; the plot appears complete at the end; a build
    asked for at once (a tensor selected meanwhile) finishes the one under way."""
    from ckpt_viewer.qt.histogram_view import HistogramView
    from ckpt_viewer.qt.plotting import _plotting, preload_plotting

    preload_plotting()
    qtbot.waitUntil(_plotting["settled"].is_set, timeout=60_000)
    assert _plotting["module"] is not None, _plotting["failed"]

    view = HistogramView()
    qtbot.addWidget(view)
    view.build_in_slices()
    assert view.plot is None  # nothing built in the asking turn
    qtbot.waitUntil(lambda: view.plot is not None, timeout=10_000)
    assert view.plot_holder.count() == 1
    for item in (view.curve, view.mean_line, *view.std_lines, view.overlay, view.legend):
        assert item is not None

    again = HistogramView()
    qtbot.addWidget(again)
    again.build_in_slices()
    assert again._build.step()  # one piece built
    assert again.plot is None
    assert again.build() and again.plot is not None  # the rest at once
    plot = again.plot
    assert not again._build.step()  # the turn that was due: nothing more to build
    assert again.plot is plot and again.plot_holder.count() == 1


def test_compare_plots_built_ahead_and_a_click_looks_keys_up_in_the_worker(
    qtbot, window, tmp_path, monkeypatch
):
    """The table's rows are made in the compare job's worker; the three plots are built a
    piece per turn once the comparison shows, before any click; a click finds its row's pair
    without a search and its tensors in the worker; the plots show the values torch saved."""
    import torch

    from ckpt_viewer.core.listing.model import Checkpoint
    from ckpt_viewer.qt import compare_rows
    from ckpt_viewer.qt.plotting import _plotting, preload_plotting

    made_in = set()
    table_rows = compare_rows.table_rows

    def recorded_rows(*args):
        made_in.add(threading.current_thread())
        return table_rows(*args)

    monkeypatch.setattr(compare_rows, "table_rows", recorded_rows)

    preload_plotting()
    qtbot.waitUntil(_plotting["settled"].is_set, timeout=60_000)
    state_a = {
        f"w{i}": torch.randn(64, generator=torch.Generator().manual_seed(i)) for i in range(3)
    }
    state_b = {k: v * 2 for k, v in state_a.items()}
    a = builders.save(state_a, tmp_path / "a.pt")
    b = builders.save(state_b, tmp_path / "b.pt")
    with qtbot.waitSignal(window.compared, timeout=30_000):
        window.compare_paths(a, b)
    view = window.tabs.currentWidget()
    assert made_in and threading.main_thread() not in made_in
    qtbot.waitUntil(lambda: view.plot is not None, timeout=10_000)  # no click yet

    threads = set()
    find = Checkpoint.find

    def recorded(self, key):
        threads.add(threading.current_thread())
        return find(self, key)

    monkeypatch.setattr(Checkpoint, "find", recorded)
    proxy = view.table.model()
    row = next(r for r in range(proxy.rowCount()) if proxy.index(r, 0).data() == "w1")
    plot = view.plot
    # built (and painted once, unseen) ahead; shown with their first data, not empty first
    assert all(w.isHidden() for w in (view.plot, view.diff_plot, view.scatter_plot))
    with qtbot.waitSignal(view.overlay_ready, timeout=30_000) as drawn:
        view.table.setCurrentIndex(proxy.index(row, 0))
    assert drawn.args == ["w1"]
    assert threads and threading.main_thread() not in threads
    assert view.plot is plot  # drawn into, not rebuilt
    x, y = view.scatter.getData()
    assert sorted(zip(x.tolist(), y.tolist())) == sorted(
        zip(state_a["w1"].tolist(), state_b["w1"].tolist())
    )
    assert all(w.isVisible() for w in (view.plot, view.diff_plot, view.scatter_plot))

    # the plots are drawn one per turn: a newer result stops an older drawing under way
    from ckpt_viewer.core.progress import run
    from ckpt_viewer.qt.compare_view import detail_job

    sides = (view.a, view.b)
    results = {
        key: run(detail_job(sides, next(t for t in view.report.tensors if t.key == key)))
        for key in ("w0", "w2")
    }
    emitted = []
    view.overlay_ready.connect(emitted.append)
    view._draw("w0", results["w0"])
    view._draw("w2", results["w2"])
    qtbot.waitUntil(lambda: emitted == ["w2"], timeout=10_000)
    x, y = view.scatter.getData()
    assert sorted(zip(x.tolist(), y.tolist())) == sorted(
        zip(state_a["w2"].tolist(), state_b["w2"].tolist())
    )
    assert view.curve_a.getData()[1].sum() == 64 and emitted == ["w2"]


def test_compare_view_is_built_a_few_widgets_per_turn(qtbot, tmp_path):
    """The window builds a comparison's widgets a piece per event-loop turn (`built` once all
    are); its summary's counts and load_state_dict lengths, taken from the status counts, are
    those of the report's own load_state_dict_view."""
    import torch

    from ckpt_viewer.core.analysis.diff import diff
    from ckpt_viewer.core.listing.open import open_checkpoint
    from ckpt_viewer.core.progress import run
    from ckpt_viewer.qt.compare_view import CompareView

    a = builders.save(
        {"w": torch.ones(3), "b": torch.ones(2), "x": torch.ones(1)}, tmp_path / "a.pt"
    )
    b = builders.save(
        {"w": torch.ones(3), "b": torch.ones(4), "y": torch.ones(1)}, tmp_path / "b.pt"
    )
    a, b = open_checkpoint(a), open_checkpoint(b)
    report = run(diff(a, b))
    view = CompareView(report, a, b, lambda: None, in_steps=True)
    qtbot.addWidget(view)
    assert not view.building.done  # nothing but its state yet
    with qtbot.waitSignal(view.built, timeout=10_000):
        pass
    assert view.model.rowCount() == 4
    expected = report.load_state_dict_view()
    assert (len(expected["missing_keys"]), len(expected["unexpected_keys"])) == (1, 1)
    assert expected["size_mismatch"] == ["b"]
    assert "of B into A: 1 missing, 1 unexpected, 1 size mismatch." in view.summary.text()
    assert view.identical is report.identical is False
    same = run(diff(a, a))
    assert CompareView(same, a, a, lambda: None).identical is same.identical is True


def test_a_compare_result_before_its_plots_waits_for_their_build(qtbot, tmp_path):
    """A detail result that arrives while the plots are still being built a piece per turn is
    drawn once they are all there, not by building the rest in one turn."""
    import torch

    from ckpt_viewer.core.analysis.diff import diff
    from ckpt_viewer.core.listing.open import open_checkpoint
    from ckpt_viewer.core.progress import run
    from ckpt_viewer.qt.compare_view import CompareView, detail_job
    from ckpt_viewer.qt.plotting import _plotting, preload_plotting

    preload_plotting()
    qtbot.waitUntil(_plotting["settled"].is_set, timeout=60_000)
    w = torch.randn(64, generator=torch.Generator().manual_seed(0))
    a = open_checkpoint(builders.save({"w": w}, tmp_path / "a.pt"))
    b = open_checkpoint(builders.save({"w": w * 2}, tmp_path / "b.pt"))
    report = run(diff(a, b))
    view = CompareView(report, a, b, lambda: _plotting["module"])
    qtbot.addWidget(view)
    result = run(detail_job((a, b), report.tensors[0]))
    with qtbot.waitSignal(view.overlay_ready, timeout=10_000) as drawn:
        view._draw("w", result)
        assert view.plot is None  # not built at once
    assert drawn.args == ["w"] and view.plots.done
    x, y = view.scatter.getData()
    assert sorted(zip(x.tolist(), y.tolist())) == sorted(zip(w.tolist(), (w * 2).tolist()))
