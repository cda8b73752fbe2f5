"""The Bytes pane: a treemap of where the bytes are, and what the model needs to run."""

from __future__ import annotations

import torch

import builders


def _open(window, qtbot, path):
    with qtbot.waitSignal(window.loaded, timeout=20_000):
        window.open_paths([str(path)])
    return window.current_tab()


def test_bytes_pane_maps_modules_and_a_click_selects_in_the_tree(window, qtbot, tmp_path):
    path = builders.training_checkpoint(tmp_path / "train.pth")
    tab = _open(window, qtbot, path)
    tab.panes.setCurrentIndex(3)
    view = tab.bytes_map
    with qtbot.waitSignal(view.ready, timeout=10_000) as ready:
        pass
    top = ready.args[0]
    saved = torch.load(path, weights_only=True)
    model_bytes = sum(t.nbytes for t in saved["model_state_dict"].values())
    assert top.children["model_state_dict"].bytes == model_bytes
    drawn = {block.path for _, block, _ in view.canvas.rects}
    assert {"model_state_dict", "optimizer_state_dict"} <= drawn
    box = next(b for b, block, _ in view.canvas.rects if block.path == "model_state_dict")
    assert view.canvas.block_at(box.center()) is not None
    with qtbot.waitSignal(view.block_clicked, timeout=5_000) as clicked:
        view._clicked(view.canvas.block_at(box.topLeft() + (box.bottomRight() - box.topLeft()) / 2))
    assert clicked.args[0].startswith("model_state_dict")
    assert tab.selected_key().startswith("model_state_dict")
    assert "training:" in view.needs.toPlainText()
    view.colour_box.setCurrentIndex(1)  # by dtype
    assert "float32" in view.legend.text()


def test_summary_says_what_the_model_needs(window, qtbot, tmp_path):
    path = builders.training_checkpoint(tmp_path / "train.pth")
    with qtbot.waitSignal(window.loaded, timeout=20_000):
        window.open_paths([str(path)])
    tab = window.current_tab()
    qtbot.waitUntil(lambda: "What it needs to run" in tab.summary.toPlainText(), timeout=10_000)
    section = tab.summary.toPlainText().split("What it needs to run")[1]
    assert "\\n" not in section and section.count("\n") > 2  # one line per figure
    text = tab.summary.toPlainText()
    assert "ZeRO-1 / ZeRO-2 / ZeRO-3" in text and "(this file)" in text
