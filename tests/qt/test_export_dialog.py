"""Tick tensors in the tree, export them through the dialog, see the file."""

import torch
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QTreeView
from qt_helpers import open_and_wait

import builders


def test_tristate_ticks_and_export(qtbot, window, tmp_path):
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
    assert model.data(model.index(0, 0), Qt.CheckStateRole) is None       # epoch: no tensors
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

    # the same destination again: the dialog asks before replacing
    qtbot.mouseClick(dialog.export_button, Qt.LeftButton)
    assert "exists" in dialog.summary.text() and dialog.replace.isVisible()
    dialog.replace.setChecked(True)
    dialog.scope.setCurrentIndex(1)       # all tensors
    with qtbot.waitSignal(dialog.finished_export, timeout=30_000):
        qtbot.mouseClick(dialog.export_button, Qt.LeftButton)
    assert len(torch.load(destination, weights_only=True)) == 9


def test_dialog_shows_problems_inline(qtbot, window, tmp_path):
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
