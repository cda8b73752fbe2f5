"""Tools > Health and Tools > Layers in the window: findings listed, clicked, cancelled;
layer lines plotted and a point opening its tensor."""

import pytest
import torch
from PySide6.QtCore import QPoint, Qt
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QTreeWidget
from qt_helpers import open_and_wait

import builders
from ckpt_viewer.core.analysis import check as check_module
from ckpt_viewer.core.analysis.scan import worker_count
from ckpt_viewer.qt.health_view import HealthDialog
from ckpt_viewer.qt.layers_view import LayersDialog


def anomalies_file(tmp_path):
    torch.manual_seed(0)
    sd = {
        "ok.weight": torch.randn(8, 4),
        "nan.weight": torch.randn(8, 4),
        "zero.weight": torch.zeros(8, 4),
    }
    sd["nan.weight"][1, 1] = float("nan")
    return builders.save({"model": sd}, tmp_path / "bad.pt")


def trigger(window, name):
    window.findChild(QAction, name).trigger()


def test_health_lists_findings_and_a_click_opens_the_tensor(qtbot, window, tmp_path):
    open_and_wait(qtbot, window, anomalies_file(tmp_path))
    tab = window.tabs.currentWidget()
    trigger(window, "actionHealth")
    dialog = window.findChild(HealthDialog, "healthDialog")
    with qtbot.waitSignal(dialog.checked, timeout=30_000) as blocker:
        pass
    report = blocker.args[0]
    assert {(f.key, f.kind) for f in report.findings} == {
        ("model.nan.weight", "nan"),
        ("model.zero.weight", "all_zero"),
    }
    findings = dialog.findChild(QTreeWidget, "healthFindings")
    assert findings.topLevelItemCount() == 2
    item = findings.topLevelItem(0)
    assert (item.text(0), item.text(1), item.text(2)) == ("error", "nan", "model.nan.weight")
    rect = findings.visualItemRect(item)  # the whole row, wider than a narrow pane
    with qtbot.waitSignal(tab.tensor_selected, timeout=10_000) as selected:
        qtbot.mouseClick(
            findings.viewport(), Qt.LeftButton, pos=QPoint(rect.left() + 10, rect.center().y())
        )
    assert selected.args == ["model.nan.weight"]
    assert tab.selected_key() == "model.nan.weight"
    dialog.close()


def held_scan(monkeypatch, tmp_path):
    """A file of 100 tensors scanned in 6,400 segments of one read each, each read held until
    `gate` is set; `calls` counts the reads (segments) started."""
    import threading

    monkeypatch.setattr(check_module, "SEGMENT", 1 << 10)
    monkeypatch.setattr(check_module, "CHUNK", 1 << 10)
    gate, calls = threading.Event(), []
    reader_class = check_module.StorageReader
    real_mapped = reader_class.mapped

    def held(self, first, *args, **kwargs):
        calls.append(first)
        gate.wait(60)  # long enough for a loaded machine: released by the test before
        return real_mapped(self, first, *args, **kwargs)

    monkeypatch.setattr(reader_class, "mapped", held)
    path = builders.save({f"t{i}": torch.randn(1 << 16) for i in range(100)}, tmp_path / "big.pt")
    return path, gate, calls


def test_health_cancel_stops_the_scan_quietly(qtbot, window, tmp_path, monkeypatch):
    path, gate, calls = held_scan(monkeypatch, tmp_path)
    open_and_wait(qtbot, window, path)
    dialog = window.health_current()
    qtbot.waitUntil(lambda: bool(calls), timeout=5_000)
    worker = dialog.controller.jobs.running["check"]
    with qtbot.waitSignal(dialog.cancelled, timeout=5_000):
        qtbot.mouseClick(dialog.cancel_button, Qt.LeftButton)  # the scan is held: no race
    with qtbot.waitSignal(worker.finished, timeout=10_000):
        gate.set()
    assert dialog.status.text() == "Cancelled" and dialog.report is None
    assert len(calls) <= 2 * worker_count() + 1 < 6400  # stopped, not drained
    assert not dialog.controller.busy()
    dialog.close()


def test_health_closed_mid_scan_is_quiet(qtbot, window, tmp_path, monkeypatch):
    path, gate, calls = held_scan(monkeypatch, tmp_path)
    open_and_wait(qtbot, window, path)
    dialog = window.health_current()
    failed, checked = [], []
    dialog.failed.connect(failed.append)
    dialog.checked.connect(checked.append)
    qtbot.waitUntil(lambda: bool(calls), timeout=5_000)
    worker = dialog.controller.jobs.running["check"]
    dialog.close()  # deletes the dialog (WA_DeleteOnClose)
    with qtbot.waitSignal(worker.finished, timeout=10_000):
        gate.set()
    assert failed == [] and checked == [] and len(calls) < 6400
    assert window.findChild(HealthDialog, "healthDialog") is None


def test_layers_cancel_stops_the_exact_pass(qtbot, window, tmp_path, monkeypatch):
    import threading

    from ckpt_viewer.core.analysis import layers as layers_module

    gate, calls = threading.Event(), []
    real_measure = layers_module._measure

    def held(key, tensor, spectral, stop, sample=0):
        if not sample:
            calls.append(key)
            gate.wait(10)
        return real_measure(key, tensor, spectral, stop, sample)

    monkeypatch.setattr(layers_module, "_measure", held)
    monkeypatch.setattr(layers_module, "TINY_BYTES", 0)  # one tensor a task, as if large
    monkeypatch.setattr(layers_module, "BATCH_TENSORS", 1)
    path = builders.save(
        {f"blocks.{i}.w{j}.weight": torch.randn(4, 4) for i in range(50) for j in range(4)},
        tmp_path / "deep.pt",
    )
    open_and_wait(qtbot, window, path)
    dialog = window.layers_current()
    qtbot.waitUntil(lambda: bool(calls), timeout=30_000)
    worker = dialog.controller.jobs.running["exact"]
    qtbot.mouseClick(dialog.cancel_button, Qt.LeftButton)
    with qtbot.waitSignal(worker.finished, timeout=10_000):
        gate.set()
    assert len(calls) < 200 and not dialog.controller.busy()
    assert dialog.report.sampled  # the exact report never replaced the preview
    dialog.close()


def test_layers_plots_one_line_per_role_and_a_point_opens_it(qtbot, window, tmp_path):
    torch.manual_seed(0)
    sd = {}
    for i in range(3):
        sd[f"blocks.{i}.attn.weight"] = torch.randn(6, 6) * (i + 1)
        sd[f"blocks.{i}.attn.bias"] = torch.randn(6)
    path = builders.save(sd, tmp_path / "g.pt")
    open_and_wait(qtbot, window, path)
    tab = window.tabs.currentWidget()
    trigger(window, "actionLayers")
    dialog = window.findChild(LayersDialog, "layersDialog")
    with qtbot.waitSignal(dialog.ready, timeout=30_000):
        pass
    qtbot.waitUntil(lambda: dialog.plot is not None, timeout=30_000)
    curves = dialog.curves()
    assert [c[0] for c in curves] == ["attn.weight", "attn.bias"]
    assert curves[0][1] == [0, 1, 2]
    plot_item = dialog.plot.getPlotItem()
    legend = plot_item.legend
    assert len(legend.items) == 2
    # outside the data: below the axes, not over the first layers' points
    view_box = plot_item.vb.sceneBoundingRect()
    assert legend.sceneBoundingRect().top() >= view_box.bottom()
    assert not legend.sceneBoundingRect().intersects(view_box)
    assert not dialog.plot.getAxis("left").autoSIPrefix  # never "L2 norm (x0.001)"
    bottom = dialog.plot.getAxis("bottom")  # three layers: ticks on 0, 1, 2, never 0.5
    assert all(float(v).is_integer() for _, ticks in bottom.tickValues(0, 2, 400) for v in ticks)
    expected = [torch.linalg.norm(sd[f"blocks.{i}.attn.weight"].double()).item() for i in range(3)]
    assert curves[0][2] == pytest.approx(expected, rel=1e-6)
    metric_box = dialog.metric_box
    longest = max(metric_box.itemText(i) for i in range(metric_box.count()))
    assert metric_box.width() >= metric_box.fontMetrics().horizontalAdvance(
        longest
    )  # not "mean ex"
    metric_box.setCurrentIndex(metric_box.findData("max_abs"))
    assert dialog.curves()[0][2][2] == sd["blocks.2.attn.weight"].abs().max().item()
    scatter = dialog.scatters[0]
    point = scatter.points()[2]
    with qtbot.waitSignal(dialog.point_clicked, timeout=5_000) as clicked:
        scatter.sigClicked.emit(scatter, [point], None)
    assert clicked.args == ["blocks.2.attn.weight"]
    assert tab.selected_key() == "blocks.2.attn.weight"
    with qtbot.waitSignal(dialog.ready, timeout=60_000):
        dialog.spectral_box.setChecked(True)
    dialog.metric_box.setCurrentIndex(dialog.metric_box.findData("stable_rank"))
    ranks = dialog.curves()[0][2]
    assert len(ranks) == 3 and all(1 <= r <= 6 for r in ranks)
    dialog.close()


def blocks_with_adam(path) -> tuple[str, dict]:
    """Three blocks trained a step with Adam over named parameters (torch records
    param_names): the file and {state id: parameter name} as torch saved them."""
    torch.manual_seed(0)
    model = torch.nn.Module()
    model.blocks = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(3))
    optimizer = torch.optim.Adam(model.named_parameters())
    sum(block(torch.randn(2, 4)).sum() for block in model.blocks).backward()
    optimizer.step()
    state = optimizer.state_dict()
    names = dict(zip(state["param_groups"][0]["params"], state["param_groups"][0]["param_names"]))
    builders.save({"model": model.state_dict(), "optimizer": state}, path)
    return str(path), names


def test_layers_points_of_optimizer_state_name_their_parameter(qtbot, window, tmp_path):
    path, names = blocks_with_adam(tmp_path / "adam.pt")
    open_and_wait(qtbot, window, path)
    trigger(window, "actionLayers")
    dialog = window.findChild(LayersDialog, "layersDialog")
    qtbot.waitUntil(lambda: dialog.report is not None and not dialog.report.sampled, timeout=30_000)
    qtbot.waitUntil(lambda: dialog.plot is not None, timeout=30_000)
    with qtbot.waitSignal(dialog.ready, timeout=30_000):
        dialog.metric_box.setCurrentIndex(dialog.metric_box.findData("exp_avg_sq_mean"))
        dialog.redraw(then=dialog.ready)
    tips = []
    for scatter in dialog.scatters:
        for point in scatter.points():
            tips.append(
                scatter.opts["tip"](x=point.pos().x(), y=point.pos().y(), data=point.data())
            )
    expected = {
        f"optimizer.state.{i}.exp_avg_sq \u2014 {name}" for i, name in names.items()
    }  # the id as stored, and the name torch recorded for it
    assert {tip.splitlines()[-1] for tip in tips} == expected
    dialog.close()
