"""File > Open Run: the Run tab on a run written by a real training loop."""

from __future__ import annotations

import math

import builders
from ckpt_viewer.qt.checkpoint_tab import CheckpointTab


def _open_run(window, qtbot, folder):
    with qtbot.waitSignal(window.runs_opened, timeout=10_000) as opened:
        window.open_paths([str(folder)])  # a folder of checkpoints opens as a run
    view = opened.args[0]
    with qtbot.waitSignal(view.ready, timeout=60_000):
        pass
    return view


def test_run_tab_shows_the_exact_timeline_and_its_findings(window, qtbot, tmp_path):
    builders.training_run(tmp_path / "run", nan_at=4)
    view = _open_run(window, qtbot, tmp_path / "run")
    assert window.tabs.currentWidget() is view
    assert window.tabs.tabText(window.tabs.currentIndex()) == "Run: run"
    report = view.report
    assert not report.sampled and [s.step for s in report.steps] == [5, 10, 15, 20, 25, 30]
    values = view.values()
    assert values.shape == (4, 6)  # keys x checkpoints of the chosen metric (update)
    assert math.isnan(values[0, 0]) and values[0, 1] == 0.0  # 0.weight is frozen
    texts = [view.findings.item(i).text() for i in range(view.findings.count())]
    assert any("2.bias: first NaN at step 25" in t for t in texts)
    assert any("frozen" in t for t in texts)
    assert any("learning rate of group 0" in t for t in texts)
    assert view.findChild(object, "runHeat") is not None
    # one learning-rate group, one loss: the axes name them, no legend over the points
    assert not view.rates.getPlotItem().legend.isVisible()
    assert not view.losses.getPlotItem().legend.isVisible()
    assert view.findings.wordWrap()  # a finding wraps instead of running off the pane
    assert view.progress.isHidden() and view.cancel_button.isHidden()  # the exact pass is done
    # key labels no closer than one label's height
    shown_ticks = view.heat.getAxis("left")._tickLevels[0]
    assert len(shown_ticks) * 15 <= max(view.heat.getViewBox().height(), 15)


def test_clicking_a_cell_opens_that_tensor_in_that_checkpoint(window, qtbot, tmp_path):
    builders.training_run(tmp_path / "run", steps=3)
    view = _open_run(window, qtbot, tmp_path / "run")
    with qtbot.waitSignal(window.loaded, timeout=20_000) as loaded:
        view.choose(1, "2.weight")
    assert loaded.args[0].endswith("ckpt_10.pt")
    tab = window.tabs.currentWidget()
    assert isinstance(tab, CheckpointTab)
    qtbot.waitUntil(lambda: tab.selected_key() == "model_state_dict.2.weight", timeout=10_000)
    assert view.compare_button.isEnabled()


def test_choosing_a_finding_selects_its_cell(window, qtbot, tmp_path):
    builders.training_run(tmp_path / "run", steps=4, nan_at=2)
    view = _open_run(window, qtbot, tmp_path / "run")
    row = next(
        i for i in range(view.findings.count()) if "first NaN" in view.findings.item(i).text()
    )
    with qtbot.waitSignal(view.cell_clicked, timeout=5_000) as clicked:
        view.findings.itemClicked.emit(view.findings.item(row))
    assert clicked.args == [2, "2.bias"]


def test_compare_with_the_previous_checkpoint_at_that_key(window, qtbot, tmp_path):
    builders.training_run(tmp_path / "run", steps=3, frozen=False)
    view = _open_run(window, qtbot, tmp_path / "run")
    with qtbot.waitSignal(window.loaded, timeout=20_000):
        view.choose(2, "0.bias")
    with qtbot.waitSignal(window.compared, timeout=30_000) as compared:
        view.compare_button.click()
    assert compared.args[0].endswith("ckpt_10.pt") and compared.args[1].endswith("ckpt_15.pt")
    compare = window.tabs.currentWidget()
    current = compare.proxy.mapToSource(compare.table.currentIndex()).row()
    assert compare.model.rows[current][1][0] == "model_state_dict.0.bias"


def test_learning_rate_axis_labels_only_powers_of_ten():
    from ckpt_viewer.qt.run_view import decade_labels

    assert decade_labels([-2, -2.0457, -2.1549, -3, -4 + 1e-12]) == [
        "0.01",
        "",
        "",
        "0.001",
        "0.0001",
    ]


def test_screenshot_of_a_run_folder(tmp_path, gui_env):
    """`--screenshot` of a folder of checkpoints waits for its Run tab's exact pass and refuses
    to overwrite one of the run's files (the files come from the run's controller)."""
    import subprocess
    import sys

    from PySide6.QtGui import QImage

    builders.training_run(tmp_path / "run", steps=3)
    out = tmp_path / "shot.png"
    command = [sys.executable, "-m", "ckpt_viewer", str(tmp_path / "run"), "--screenshot"]
    result = subprocess.run(
        [*command, str(out)], capture_output=True, text=True, timeout=120, env=gui_env
    )
    assert result.returncode == 0, result.stderr
    assert (QImage(str(out)).width(), QImage(str(out)).height()) == (1366, 768)
    member = sorted((tmp_path / "run").iterdir())[0]
    before = member.read_bytes()
    refused = subprocess.run(
        [*command, str(member)], capture_output=True, text=True, timeout=120, env=gui_env
    )
    assert refused.returncode == 2 and refused.stderr.startswith("error: ")
    assert member.read_bytes() == before


def test_unchanged_and_nonfinite_cells_are_marked_over_the_colours(window, qtbot, tmp_path):
    """A log colour scale draws an update of exactly 0 and a tiny one alike, and the update
    metric says nothing of NaN: both get their own marks, whatever metric is shown."""
    builders.training_run(tmp_path / "run", nan_at=4)
    view = _open_run(window, qtbot, tmp_path / "run")
    keys = [k.key for k in view.report.keys]

    def marked(marks):
        x, y = marks.getData()
        return {(keys[int(r)], int(c)) for c, r in zip(x, y)}

    frozen_row = keys.index("0.weight")
    assert {(k, c) for k, c in marked(view.unchanged_marks) if k == "0.weight"} == {
        ("0.weight", c) for c in range(1, 6)
    }
    assert ("2.bias", 4) in marked(view.nonfinite_marks)
    assert ("2.bias", 3) not in marked(view.nonfinite_marks)
    view.metric_box.setCurrentIndex(view.metric_box.findData("l2"))
    assert ("2.bias", 4) in marked(view.nonfinite_marks)  # NaN is marked under any metric
    assert not marked(view.unchanged_marks)  # "unchanged" belongs to the update metric
    assert view.values()[frozen_row, 1] > 0
    icons = {view.findings.item(i).icon().cacheKey() for i in range(view.findings.count())}
    assert len(icons) >= 2  # errors and warnings look different


def test_a_run_opened_with_open_run_is_in_the_recent_list_and_reopens_as_a_run(
    window, qtbot, tmp_path
):
    builders.training_run(tmp_path / "run")
    folder = str(tmp_path / "run")
    with qtbot.waitSignal(window.runs_opened, timeout=10_000):
        window.open_run([folder])  # what File > Open Run does with the chosen folder
    assert window.recent_files()[0] == folder
    assert [a.text() for a in window.recent_menu.actions()] == [f"{folder} (run)"]
    window.close_tab(window.tabs.currentIndex())
    with qtbot.waitSignal(window.runs_opened, timeout=10_000) as reopened:
        window.recent_menu.actions()[0].trigger()
    assert window.tabs.currentWidget() is reopened.args[0]
