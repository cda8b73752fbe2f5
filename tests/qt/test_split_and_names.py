"""The summary panel and the status bar split elements into model parameters, optimizer state
and other (optimizer state is never counted as parameters); the optimizer pane says which rule
gave the parameter names, or that ids are shown."""

from PySide6.QtWidgets import QLabel
from qt_helpers import open_and_wait

import builders


def test_summary_and_status_bar_show_the_split(qtbot, window, training_file):
    open_and_wait(qtbot, window, training_file)
    assert (
        window.statusBar()
        .currentMessage()
        .endswith("27 tensors, 29 model + 7 buffers, 64 optimizer state, 0 other")
    )
    summary = window.tabs.currentWidget().findChild(object, "summaryPanel").toPlainText()
    assert "Model parameters\n29 (29)" in summary and "Model buffers\n7 elements" in summary
    assert "Optimizer state\n64 elements" in summary and "Other tensors\n0 elements" in summary
    assert "All elements\n100 (100), each storage counted once" in summary


def test_optimizer_pane_names_the_rule(qtbot, window, tmp_path):
    named = builders.training_checkpoint(tmp_path / "named.pt", named=True)
    _, optimizer = builders.trained(named=False)
    bare = builders.save(optimizer.state_dict(), tmp_path / "optimizer.pt")
    for path, expected in (
        (named, "Parameter names: param_names saved with the optimizer."),
        (bare, "Parameter names: not provable from this file; ids shown."),
    ):
        open_and_wait(qtbot, window, path)
        label = window.tabs.currentWidget().findChild(QLabel, "namesSource")
        assert label.text() == expected


def test_one_of_a_kind_is_singular(qtbot, window, tmp_path):
    import torch

    path = builders.save(
        {"model": {"w": torch.ones(3)}, "extra": torch.ones(1)}, tmp_path / "one.pt"
    )
    open_and_wait(qtbot, window, path)
    assert ": 2 tensors," in window.statusBar().currentMessage()
    summary = window.tabs.currentWidget().findChild(object, "summaryPanel").toPlainText()
    assert "Other tensors\n1 element\n" in summary
    single = builders.save({"w": torch.ones(3)}, tmp_path / "single.pt")
    open_and_wait(qtbot, window, single)
    assert ": 1 tensor," in window.statusBar().currentMessage()
