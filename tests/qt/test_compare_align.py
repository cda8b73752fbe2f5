"""The Compare tab aligns itself: it shows the key rules it found with pickers to change them
(a change compares again), and the scalars side by side."""

import torch

import builders


def compare_tab(qtbot, window, a, b):
    with qtbot.waitSignal(window.compared, timeout=30_000):
        window.compare_paths(a, b)
    view = window.tabs.currentWidget()
    assert view.objectName() == "compareView"
    return view


def rows(view) -> dict:
    proxy = view.table.model()
    return {proxy.index(r, 0).data(): proxy.index(r, 1).data() for r in range(proxy.rowCount())}


def test_compare_aligns_a_training_checkpoint_with_a_dataparallel_export(qtbot, window, tmp_path):
    a = builders.training_checkpoint(tmp_path / "train.pt")
    state = torch.load(a, weights_only=True)["model_state_dict"]
    b = builders.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "dp.pt")
    view = compare_tab(qtbot, window, a, b)
    assert rows(view) == dict.fromkeys(state, "= identical")  # optimizer state left aside
    assert view.alignment_label.text() == (
        f"Keys aligned: A: model_state_dict, strip module. from B ({len(state)} keys in both)."
    )
    assert view.root_boxes["A"].currentData() == "model_state_dict"
    assert view.strip_boxes["B"].currentText() == "module."
    assert not view.use_suggestion.isVisible()
    scalars = {
        view.scalars.topLevelItem(i).text(0): [
            view.scalars.topLevelItem(i).text(c) for c in (1, 2, 3)
        ]
        for i in range(view.scalars.topLevelItemCount())
    }
    assert scalars["epoch"] == ["7", "", "\u2260"] and scalars["loss"] == ["0.25", "", "\u2260"]

    # the B prefix taken away by hand: nothing lines up, and the suggestion is offered
    with qtbot.waitSignal(view.realigned, timeout=30_000):
        view.strip_boxes["B"].setCurrentText("")
        view.strip_boxes["B"].lineEdit().editingFinished.emit()
    assert view.report.alignment.b.strip_prefix == "" and not view.report.tensors
    assert "0 keys in both files" in view.summary.text()
    assert set(view.legend_buttons) == {"only in A", "only in B"}
    assert view.use_suggestion.isVisibleTo(view)
    assert "strip module. from B" in view.use_suggestion.text()
    with qtbot.waitSignal(view.realigned, timeout=30_000):
        view.use_suggestion.click()
    assert rows(view) == dict.fromkeys(state, "= identical")

    # the whole file on A: optimizer state now shows as only in A
    box = view.root_boxes["A"]
    with qtbot.waitSignal(view.realigned, timeout=30_000):
        box.setCurrentIndex(box.findData(""))
        box.activated.emit(box.currentIndex())
    only_a = [k for k, status in rows(view).items() if status == "\u25c0 only in A"]
    assert len(only_a) == len(torch.load(a, weights_only=True)["model_state_dict"]) + sum(
        len(s) for s in torch.load(a, weights_only=True)["optimizer_state_dict"]["state"].values()
    )


def test_compare_of_one_layout_shows_no_rules(qtbot, window, tmp_path):
    a = builders.save({"w": torch.ones(3)}, tmp_path / "a.pt")
    view = compare_tab(qtbot, window, a, a)
    assert view.alignment_label.text() == "Keys aligned: keys as they are (1 key in both)."
    assert not view.scalars.isVisibleTo(view)
