"""The Compare tab aligns itself: it shows the key rules it found with pickers to change them
(a change compares again), and the scalars side by side."""

import torch
from PySide6.QtCore import Qt

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
    assert scalars["epoch"] == ["7", "", "only in A"] and scalars["loss"] == [
        "0.25",
        "",
        "only in A",
    ]

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


def test_compare_rows_of_optimizer_state_name_their_parameter(qtbot, window, tmp_path):
    """A file whose optimizer names its parameters against one that has ids only: state is
    compared by id, and each state row says whose it is where A proves it."""
    from ckpt_viewer.qt.compare_view import SORT_ROLE

    a = builders.training_checkpoint(tmp_path / "named.pt")
    saved = torch.load(a, weights_only=True)["optimizer_state_dict"]
    group = saved["param_groups"][0]
    names = dict(zip(group["params"], group["param_names"]))  # torch's own record
    saved["param_groups"] = [
        {k: v for k, v in g.items() if k != "param_names"} for g in saved["param_groups"]
    ]
    b = builders.save({"optimizer_state_dict": saved}, tmp_path / "ids.pt")
    view = compare_tab(qtbot, window, a, b)
    proxy = view.table.model()
    labelled = {}
    for r in range(proxy.rowCount()):
        key, text = proxy.index(r, 0).data(SORT_ROLE), proxy.index(r, 0).data()
        if ".state." in f".{key}":
            state_id = int(key.split("state.")[1].split(".")[0])
            assert text == f"{key} \u2014 {names[state_id]}"
            labelled[key] = r
    assert len(labelled) == 3 * len(names)  # step, exp_avg, exp_avg_sq of each
    key = next(k for k in labelled if k.endswith("exp_avg"))
    with qtbot.waitSignal(view.overlay_ready, timeout=30_000) as drawn:
        view.table.setCurrentIndex(proxy.index(labelled[key], 0))
    assert drawn.args == [key]  # the row's key, not its label


def test_scalars_and_pickers_show_their_whole_texts(qtbot, window, tmp_path):
    """Each scalar column is as wide as its texts plus a gap where the pane has room; in a
    narrow pane the columns share its width (no scroll bar) and hovering shows the whole
    text. The root and prefix pickers ask for room for their texts."""
    a = builders.training_checkpoint(tmp_path / "train.pt")
    model, optimizer = builders.trained(named=True)
    b = builders.save(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": 400},
        tmp_path / "b.pt",
    )
    window.resize(1300, 700)
    view = compare_tab(qtbot, window, a, b)
    table, header = view.scalars, view.scalars.header()
    for column in range(3):
        assert header.sectionSize(column) > table.sizeHintForColumn(column)
    shown = [header.sectionSize(c) for c in range(4)]
    assert sum(shown) <= table.viewport().width()
    for label in ("A", "B"):
        for box in (view.root_boxes[label], view.strip_boxes[label]):
            assert box.minimumContentsLength() > len(box.currentText())

    view.resize(360, view.height())  # a narrow pane
    assert table.horizontalScrollBarPolicy() == Qt.ScrollBarAlwaysOff
    assert sum(header.sectionSize(c) for c in range(4)) <= table.viewport().width()
    item = table.topLevelItem(0)
    assert [item.toolTip(c) for c in range(3)] == [item.text(c) for c in range(3)]
