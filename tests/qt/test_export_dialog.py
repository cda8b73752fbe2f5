"""Tick tensors in the tree, export them through the dialog, see the file."""

import sys

import pytest
import torch
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication, QTreeView
from qt_helpers import open_and_wait

import builders
from ckpt_viewer.qt import export_dialog


def _check_box_center(tree, index):
    """Where the row's check box is drawn (the delegate's own layout of the cell)."""
    from PySide6.QtWidgets import QStyle, QStyleOptionViewItem

    option = QStyleOptionViewItem()
    tree.initViewItemOption(option)
    option.rect = tree.visualRect(index)
    tree.itemDelegate().initStyleOption(option, index)
    box = tree.style().subElementRect(QStyle.SE_ItemViewItemCheckIndicator, option, tree)
    return box.center()


def test_click_and_space_tick_a_row(qtbot, window, tmp_path, synchronous_jobs):
    """The model leaves flags() to Qt (no ItemIsUserCheckable): its delegate ticks a box on a
    click on the box or on Space, and a click beside the box only selects."""
    src = builders.training_checkpoint(tmp_path / "c.pt")
    open_and_wait(qtbot, window, src)
    tree = window.current_tab().findChild(QTreeView, "keyTree")
    model = tree.model()
    msd = model.index(2, 0)
    tree.scrollTo(msd)
    qtbot.mouseClick(tree.viewport(), Qt.LeftButton, pos=_check_box_center(tree, msd))
    assert model.data(msd, Qt.CheckStateRole) == Qt.Checked
    assert len(model.checked_keys()) == 9
    beside = tree.visualRect(msd).center()
    qtbot.mouseClick(tree.viewport(), Qt.LeftButton, pos=beside)
    assert model.data(msd, Qt.CheckStateRole) == Qt.Checked
    assert tree.currentIndex().row() == 2
    qtbot.mouseClick(tree.viewport(), Qt.LeftButton, pos=_check_box_center(tree, msd))
    assert model.checked_keys() == []
    epoch = model.index(0, 0)  # no tensors, no box: a click there ticks nothing
    qtbot.mouseClick(tree.viewport(), Qt.LeftButton, pos=_check_box_center(tree, epoch))
    assert model.checked_keys() == []
    tree.setCurrentIndex(msd)
    tree.setFocus()
    qtbot.keyClick(tree, Qt.Key_Space)
    assert model.data(msd, Qt.CheckStateRole) == Qt.Checked
    qtbot.keyClick(tree, Qt.Key_Space)
    assert model.data(msd, Qt.CheckStateRole) == Qt.Unchecked


def test_tristate_ticks_and_export(qtbot, window, tmp_path, synchronous_jobs):
    src = builders.training_checkpoint(tmp_path / "c.pt")
    open_and_wait(qtbot, window, src)
    tab = window.current_tab()
    model = tab.findChild(QTreeView, "keyTree").model()
    msd = model.index(2, 0)
    assert model.data(msd, Qt.CheckStateRole) == Qt.Unchecked
    group0 = model.index(0, 0, msd)
    assert model.setData(group0, Qt.Checked, Qt.CheckStateRole)
    assert model.data(msd, Qt.CheckStateRole) == Qt.PartiallyChecked
    assert model.checked_keys() == ["model_state_dict.0.weight", "model_state_dict.0.bias"]
    model.setData(msd, Qt.Checked, Qt.CheckStateRole)
    assert model.data(msd, Qt.CheckStateRole) == Qt.Checked
    assert model.data(model.index(0, 0), Qt.CheckStateRole) is None  # epoch: no tensors
    model.setData(model.index(0, 0, group0), Qt.Unchecked, Qt.CheckStateRole)
    assert model.data(group0, Qt.CheckStateRole) == Qt.PartiallyChecked
    assert len(model.checked_keys()) == 8
    assert "8 ticked" in tab.ticked.text()

    dialog = window.export_dialog()
    dialog.root.setText("model_state_dict")
    dialog.strip.setText("1.")
    dialog.add.setText("enc.")
    dialog.dtype.setCurrentText("float16")
    destination = tmp_path / "out.pth"
    dialog.destination.setText(str(destination))
    preview = dialog.preview.toPlainText().splitlines()
    assert preview[0].startswith("model_state_dict.0.bias  ->  enc.0.bias   float16")
    assert any("->  enc.running_mean" in line for line in preview)
    with qtbot.waitSignal(dialog.finished_export, timeout=30_000) as blocker:
        qtbot.mouseClick(dialog.export_button, Qt.LeftButton)
    assert blocker.args == [str(destination)]
    assert "checked after writing" in dialog.summary.text()
    state = torch.load(destination, weights_only=True)
    assert len(state) == 8 and state["enc.0.bias"].dtype == torch.float16

    # the file it just wrote: replacing it again needs no second question
    assert dialog.replace.isVisible() and dialog.replace.isChecked()
    assert dialog.export_button.isEnabled()
    dialog.scope.setCurrentIndex(1)  # all tensors: the proposed root goes with the ticks
    assert dialog.root.text() == ""
    dialog.root.setText("model_state_dict")
    with qtbot.waitSignal(dialog.finished_export, timeout=30_000):
        qtbot.mouseClick(dialog.export_button, Qt.LeftButton)
    assert len(torch.load(destination, weights_only=True)) == 9


def test_dialog_shows_problems_inline(qtbot, window, tmp_path, synchronous_jobs):
    src = builders.save({"module.w": torch.ones(2), "w": torch.zeros(2)}, tmp_path / "c.pt")
    open_and_wait(qtbot, window, src)
    dialog = window.export_dialog()
    dialog.strip.setText("module.")
    assert "would both be written" in dialog.summary.text()
    assert not dialog.export_button.isEnabled()
    dialog.device.setCurrentText("cuda:0")
    dialog.strip.setText("")
    assert "cuda:0" in dialog.device_note.text()
    dialog.root.setText("missing")
    assert "no key" in dialog.summary.text()


def test_preview_is_planned_in_a_worker_for_the_last_keystroke(
    qtbot, window, tmp_path, monkeypatch
):
    """Typing re-plans off the GUI thread once typing pauses; only the last plan is shown, and
    Export waits for it."""
    import threading

    from ckpt_viewer.core.writing import export as core_export

    src = builders.training_checkpoint(tmp_path / "c.pt")
    open_and_wait(qtbot, window, src)
    threads = []
    real = core_export.plan_items

    def recorded(*args):
        threads.append(threading.current_thread())
        return real(*args)

    monkeypatch.setattr(export_dialog, "plan_items", recorded)
    dialog = window.export_dialog()
    dialog.destination.setText(str(tmp_path / "out.pth"))
    qtbot.waitUntil(dialog.export_button.isEnabled, timeout=10_000)
    shown_plans = []
    dialog.planned.connect(lambda: shown_plans.append(dialog.preview.toPlainText()))
    before = dialog.preview.toPlainText()
    for typed in ("m", "missing", "model_state_dict"):
        dialog.root.setText(typed)
        assert not dialog.export_button.isEnabled()  # the old plan is not the one to write
        assert dialog.preview.toPlainText() == before  # the last plan, said to be replanned
        assert dialog.summary.text() == export_dialog.PLANNING
    qtbot.waitUntil(lambda: bool(shown_plans), timeout=10_000)
    qtbot.waitUntil(lambda: not dialog.controller.busy(), timeout=10_000)
    assert len(shown_plans) == 1 and "model_state_dict.0.weight  ->  0.weight" in shown_plans[0]
    assert dialog.export_button.isEnabled()
    assert threads and threading.main_thread() not in threads


def test_existing_file_tick_replace_then_export_twice(qtbot, window, tmp_path, synchronous_jobs):
    src = builders.save({"w": torch.ones(2)}, tmp_path / "c.pt")
    open_and_wait(qtbot, window, src)
    dialog = window.export_dialog()
    precious = tmp_path / "taken.pth"
    precious.write_bytes(b"precious")
    dialog.destination.setText(str(precious))
    assert not dialog.export_button.isEnabled() and dialog.replace.isVisible()
    assert "taken.pth exists" in dialog.summary.text()
    dialog.replace.click()  # the tick re-validates
    assert dialog.replace.isChecked() and dialog.export_button.isEnabled()
    assert "replaces taken.pth" in dialog.summary.text()
    for _ in range(2):  # the tick stays for a 2nd export
        with qtbot.waitSignal(dialog.finished_export, timeout=30_000) as blocker:
            qtbot.mouseClick(dialog.export_button, Qt.LeftButton)
        assert blocker.args == [str(precious)] and dialog.replace.isChecked()
    assert list(torch.load(precious, weights_only=True)) == ["w"]
    other = tmp_path / "other.pth"
    other.write_bytes(b"keep")
    dialog.destination.setText(str(other))  # agreeing was for the other file
    assert not dialog.replace.isChecked() and not dialog.export_button.isEnabled()


def test_ticked_state_dict_proposes_root_so_load_state_dict_works(
    qtbot, window, tmp_path, synchronous_jobs
):
    import os
    import stat

    src = builders.training_checkpoint(tmp_path / "c.pt")
    open_and_wait(qtbot, window, src)
    tab = window.current_tab()
    model = tab.findChild(QTreeView, "keyTree").model()
    model.setData(model.index(2, 0), Qt.Checked, Qt.CheckStateRole)  # model_state_dict
    dialog = window.export_dialog()
    assert dialog.root.text() == "model_state_dict"
    destination = tmp_path / "weights.pth"
    dialog.destination.setText(str(destination))
    opened = []
    monkey = pytest.MonkeyPatch()
    monkey.setattr(export_dialog.QDesktopServices, "openUrl", lambda url: opened.append(url))
    try:
        with qtbot.waitSignal(dialog.finished_export, timeout=30_000):
            qtbot.mouseClick(dialog.export_button, Qt.LeftButton)
        model_again, _ = builders.trained()
        model_again.load_state_dict(torch.load(destination, weights_only=True))  # strict
        assert stat.S_IMODE(destination.stat().st_mode) == 0o666 & ~_umask()
        assert dialog.show_button.isVisible()
        qtbot.mouseClick(dialog.show_button, Qt.LeftButton)
        assert [u.toLocalFile() for u in opened] == [os.fspath(tmp_path)]
    finally:
        monkey.undo()
    dialog.root.clear()  # the user's choice is kept
    dialog.scope.setCurrentIndex(1)
    dialog.scope.setCurrentIndex(0)
    assert dialog.root.text() == ""


def _umask() -> int:
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _export_held_open(qtbot, window, tmp_path, monkeypatch):
    """A file open, its export dialog planned, and every record write held at a gate:
    (dialog, gate, started) - `started` is set once the write is under way."""
    import threading

    from ckpt_viewer.core.writing import export as core_export

    src = builders.save({f"w{i}": torch.ones(1000) for i in range(8)}, tmp_path / "c.pt")
    open_and_wait(qtbot, window, src)
    gate, started = threading.Event(), threading.Event()

    def held(real):
        def slow(*args, **kwargs):
            started.set()
            gate.wait(30)
            return real(*args, **kwargs)

        return slow

    # records are copied file to file, or read and written when they must be transformed
    for name in ("_record_bytes", "_copy_spans"):
        monkeypatch.setattr(core_export, name, held(getattr(core_export, name)))
    dialog = window.export_dialog()
    dialog.destination.setText(str(tmp_path / "out.pth"))
    qtbot.waitUntil(dialog.export_button.isEnabled, timeout=10_000)  # the preview is planned
    return dialog, gate, started


def test_closing_the_dialog_mid_export_stops_it_quietly(qtbot, window, tmp_path, monkeypatch):
    """A late callback must not reach the deleted dialog; the part file goes."""
    dialog, gate, started = _export_held_open(qtbot, window, tmp_path, monkeypatch)
    errors = []
    monkeypatch.setattr(sys, "excepthook", lambda *info: errors.append(info))
    qtbot.mouseClick(dialog.export_button, Qt.LeftButton)
    worker = dialog.controller.jobs.running["export"]
    qtbot.waitUntil(started.is_set, timeout=10_000)
    with qtbot.waitSignal(dialog.destroyed, timeout=5000):
        dialog.close()
    with qtbot.waitSignal(worker.finished, timeout=10_000):
        gate.set()
    QApplication.processEvents()
    assert errors == []
    assert not any(p.name.endswith(".part") or p.name == "out.pth" for p in tmp_path.iterdir())


def test_a_cancelled_export_keeps_the_preview(qtbot, window, tmp_path, monkeypatch):
    """Cancel mid-export: the write stops, and the keys it would write stay listed (the preview
    went blank), ready to export again."""
    dialog, gate, started = _export_held_open(qtbot, window, tmp_path, monkeypatch)
    planned = dialog.preview.toPlainText()
    assert planned.startswith("w0  ->  w0")
    qtbot.mouseClick(dialog.export_button, Qt.LeftButton)
    qtbot.waitUntil(started.is_set, timeout=10_000)
    qtbot.mouseClick(dialog.cancel_button, Qt.LeftButton)  # Cancel while writing
    with qtbot.waitSignal(dialog.finished_export, timeout=10_000) as blocker:
        gate.set()
    assert blocker.args == [""] and "cancel" in dialog.summary.text()
    assert dialog.preview.toPlainText() == planned
    assert dialog.export_button.isEnabled() and dialog.cancel_button.text() == "Close"
    assert not (tmp_path / "out.pth").exists()
    dialog.close()


def test_dialog_and_sanitize_refuse_a_source_shard(qtbot, window, tmp_path, synchronous_jobs):
    """The GUI writes through the same core check: a shard of the open model is never replaced,
    even with 'Replace' ticked (issue #21)."""
    import os

    folder = builders.hf_directory(tmp_path / "hf")
    shard = os.path.join(folder, "model-00001-of-00002.safetensors")
    before = open(shard, "rb").read()
    open_and_wait(qtbot, window, folder)
    dialog = window.export_dialog()
    dialog.destination.setText(shard)
    dialog.replace.click()
    with qtbot.waitSignal(dialog.finished_export, timeout=30_000) as blocker:
        qtbot.mouseClick(dialog.export_button, Qt.LeftButton)
    assert blocker.args == [""] and "source" in dialog.summary.text()
    dialog.close()
    with qtbot.waitSignal(window.sanitized, timeout=30_000) as blocker:
        window.sanitize_current(shard)
    assert blocker.args[1] is False and "is the source" in blocker.args[2]
    assert open(shard, "rb").read() == before


def test_export_controller_plans_without_a_dialog(qtbot, tmp_path, synchronous_jobs):
    """The controller decides and computes, the dialog only shows: driven alone, it emits the
    plan torch's own state dict implies."""
    from ckpt_viewer.core.listing.open import open_checkpoint
    from ckpt_viewer.core.writing.export import ExportPlan

    path = builders.training_checkpoint(tmp_path / "c.pt")
    controller = export_dialog.ExportController(open_checkpoint(path))
    with qtbot.waitSignal(controller.planned, timeout=5000) as planned:
        controller.replan(ExportPlan(root="model_state_dict", exclude=["*.num_batches_tracked"]))
    text, tensors, total = planned.args[0]
    state = torch.load(path, weights_only=True)["model_state_dict"]
    kept = {k: t for k, t in state.items() if not k.endswith("num_batches_tracked")}
    assert [line.split("  ->  ")[1].split()[0] for line in text.splitlines()] == list(kept)
    assert tensors == len(kept)
    assert total == sum(t.numel() * t.element_size() for t in kept.values())
    with qtbot.waitSignal(controller.plan_failed, timeout=5000) as failed:
        controller.replan(ExportPlan(root="missing"))
    assert "no key" in failed.args[0] and not controller.busy()


def test_reopening_export_offers_what_was_typed_for_that_file(qtbot, window, tmp_path):
    path = builders.save({"enc.w": torch.ones(2), "dec.w": torch.ones(2)}, tmp_path / "m.pt")
    open_and_wait(qtbot, window, path)
    dialog = window.export_dialog()
    dialog.include.setText("enc.*")
    dialog.format.setCurrentText("safetensors")
    dialog.destination.setText(str(tmp_path / "mine.safetensors"))
    dialog.reject()
    again = window.export_dialog()
    assert again.include.text() == "enc.*" and again.format.currentText() == "safetensors"
    assert again.destination.text() == str(tmp_path / "mine.safetensors")
    again.reject()
    one = window.export_dialog()
    one.include.setText("dec.w")
    one.format.setCurrentText("pth")
    qtbot.waitUntil(lambda: one.summary.text().startswith("1 tensor,"), timeout=10_000)
    one.reject()
