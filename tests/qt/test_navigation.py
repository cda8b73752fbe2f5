"""Moving around the key tree: natural order and File Order, Enter/Down from the filter into
its results and Esc back, revealing a key a filter hides, Expand All as rows come into view,
Go to Key (Ctrl+P), and the Pickle Imports icon's category."""

import torch
from PySide6.QtCore import QEvent, QModelIndex, QObject, Qt
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QApplication
from qt_helpers import open_and_wait
from safetensors.torch import save_file

import builders
from ckpt_viewer.qt import checkpoint_tab

LAYERS = 12


def gpt2_like(path) -> str:
    tensors = {
        f"h.{i}.{name}": torch.full((2,), float(i))
        for i in range(LAYERS)
        for name in ("attn.c_attn.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    }
    tensors["wte.weight"] = torch.zeros(3)
    save_file(tensors, str(path))
    return str(path)


header_keys = builders.safetensors_header_keys


def names_under(model, parent=QModelIndex()) -> list[str]:
    return [model.index(r, 0, parent).data() for r in range(model.rowCount(parent))]


def child(model, name, parent=QModelIndex()):
    return next(
        model.index(r, 0, parent)
        for r in range(model.rowCount(parent))
        if model.index(r, 0, parent).data() == name
    )


def opened(qtbot, window, path):
    open_and_wait(qtbot, window, path)
    tab = window.tabs.currentWidget()
    return tab, tab.model


def test_layers_in_natural_order_and_file_order_on_request(qtbot, window, tmp_path):
    path = gpt2_like(tmp_path / "model.safetensors")
    tab, model = opened(qtbot, window, path)
    h = child(model, "h")
    assert names_under(model, h) == [str(i) for i in range(LAYERS)]
    window.findChild(QAction, "actionFileOrder").trigger()
    stored = list(dict.fromkeys(k.split(".")[1] for k in header_keys(path) if k[:2] == "h."))
    h = child(model, "h")
    assert names_under(model, h) == stored != [str(i) for i in range(LAYERS)]
    window.findChild(QAction, "actionFileOrder").trigger()
    tab.tree.sortByColumn(0, Qt.DescendingOrder)
    assert names_under(model, child(model, "h")) == [str(i) for i in reversed(range(LAYERS))]
    tab.tree.sortByColumn(0, Qt.AscendingOrder)
    assert names_under(model, child(model, "h")) == [str(i) for i in range(LAYERS)]
    window.findChild(QAction, "actionFileOrder").trigger()  # the file's order, the other way
    tab.tree.sortByColumn(0, Qt.DescendingOrder)
    assert names_under(model, child(model, "h")) == stored[::-1]
    tab.tree.sortByColumn(0, Qt.AscendingOrder)
    assert names_under(model, child(model, "h")) == stored
    window.findChild(QAction, "actionFileOrder").trigger()
    assert names_under(model, child(model, "h")) == [str(i) for i in range(LAYERS)]


def test_filter_opens_the_way_to_many_matches_and_keys_move_in_and_out(
    qtbot, window, tmp_path, monkeypatch
):
    monkeypatch.setattr(checkpoint_tab, "AUTO_EXPAND_LIMIT", 30)  # 37 rows show: too many
    tab, model = opened(qtbot, window, gpt2_like(tmp_path / "model.safetensors"))
    with qtbot.waitSignal(tab.filter_applied, timeout=10_000):
        tab.filter.setText("c_fc")
    h = child(model, "h")
    assert tab.tree.isExpanded(h)  # the groups leading to matches are open, not one node
    first, last = child(model, "0", h), child(model, "11", h)
    assert tab.tree.isExpanded(first) and tab.tree.isExpanded(child(model, "mlp", first))
    assert not tab.tree.isExpanded(child(model, "mlp", last))  # past the budget
    tab.filter.setFocus()
    qtbot.keyClick(tab.filter, Qt.Key_Down)
    assert tab.tree.hasFocus()
    assert tab.selected_key() == "h.0.mlp.c_fc"  # the first match (a group)
    qtbot.keyClick(tab.tree, Qt.Key_Escape)
    assert tab.filter.hasFocus()
    qtbot.keyClick(tab.filter, Qt.Key_Return)
    assert tab.tree.hasFocus() and tab.selected_key() == "h.0.mlp.c_fc"
    # a selected group the new filter shows only for what it holds: Enter goes to a match
    assert tab.select_key("h.5.mlp")
    with qtbot.waitSignal(tab.filter_applied, timeout=10_000):
        tab.filter.setText("c_fc.weight")
    assert tab.selected_key() == "h.5.mlp"
    tab.filter.setFocus()
    qtbot.keyClick(tab.filter, Qt.Key_Return)
    assert tab.selected_key() == "h.0.mlp.c_fc.weight"


def test_showing_a_key_the_filter_hides_clears_it_and_says_so(qtbot, window, tmp_path):
    tab, model = opened(qtbot, window, gpt2_like(tmp_path / "model.safetensors"))
    with qtbot.waitSignal(tab.filter_applied, timeout=10_000):
        tab.filter.setText("wte")
    with qtbot.waitSignal(tab.tensor_selected, timeout=5000) as selected:
        window._opener(tab)("h.3.mlp.c_fc.weight")  # what Health, Layers, Verify call
    assert selected.args == ["h.3.mlp.c_fc.weight"]
    assert tab.filter.text() == ""
    assert tab.filter_status.text() == "filter cleared"  # short: the field keeps its width
    assert tab.filter_status.toolTip() == 'filter "wte" cleared to show h.3.mlp.c_fc.weight'
    tab.select_key("h.2.mlp.c_fc.weight")  # another row: the note was about the first
    assert tab.filter_status.text() == ""


def test_a_bytes_map_click_reveals_a_key_the_filter_hides(qtbot, window, tmp_path):
    tab, model = opened(qtbot, window, gpt2_like(tmp_path / "model.safetensors"))
    with qtbot.waitSignal(tab.filter_applied, timeout=10_000):
        tab.filter.setText("wte")
    assert tab.select_prefix("h.3.mlp")  # what a Bytes-map block's click calls
    assert tab.filter.text() == "" and tab.filter_status.text() == "filter cleared"
    assert tab.selected_key() in ("h.3.mlp", "h.3.mlp.c_fc.weight")


def opened_many_blocks(qtbot, window, tmp_path):
    """180 tensors in 60 blocks, opened in a tree too short to show them all."""
    tensors = {f"blocks.{i}.{j}.w": torch.zeros(1) for i in range(60) for j in range(3)}
    path = tmp_path / "many.safetensors"
    save_file(tensors, str(path))
    tab, model = opened(qtbot, window, str(path))
    tab.tree.resize(400, 300)
    return tab, model


def test_expand_all_expands_what_comes_into_view(qtbot, window, tmp_path):
    tab, model = opened_many_blocks(qtbot, window, tmp_path)
    window.findChild(QAction, "actionExpandAll").trigger()
    blocks = child(model, "blocks")
    first, last = child(model, "0", blocks), child(model, "59", blocks)
    assert tab.tree.isExpanded(blocks) and tab.tree.isExpanded(first)
    assert not tab.tree.isExpanded(last)  # far below the view: not asked about yet
    tab.tree.scrollToBottom()
    while not tab.tree.isExpanded(last):  # each scroll expands what it brought in
        bar = tab.tree.verticalScrollBar()
        assert bar.value() < bar.maximum() or tab.tree.isExpanded(last)
        tab.tree.scrollToBottom()
    window.findChild(QAction, "actionCollapseAll").trigger()
    assert not tab.tree.isExpanded(blocks) and not tab.expander.on


def test_expand_all_lays_a_big_group_out_in_a_turn_of_its_own(qtbot, window, tmp_path, monkeypatch):
    """A group of more than ROWS_PER_TURN rows is opened alone; its rows in view open in the
    next turns of the event loop, and Collapse All stops what is left."""
    from ckpt_viewer.qt import navigation

    monkeypatch.setattr(navigation, "ROWS_PER_TURN", 20)
    tab, model = opened_many_blocks(qtbot, window, tmp_path)
    window.findChild(QAction, "actionExpandAll").trigger()
    blocks = child(model, "blocks")
    first = child(model, "0", blocks)
    assert tab.tree.isExpanded(blocks) and not tab.tree.isExpanded(first)
    assert tab.expander.busy()
    qtbot.waitUntil(lambda: tab.tree.isExpanded(first) and not tab.expander.busy())
    window.findChild(QAction, "actionCollapseAll").trigger()
    tab.expander.start()
    window.findChild(QAction, "actionCollapseAll").trigger()
    assert not tab.expander.busy() and not tab.expander.on


def test_the_tensor_pane_follows_the_tree_in_the_next_turn(qtbot, window, tmp_path, monkeypatch):
    """The tree selects at once; the tensor pane shows the last of a run of selections in the
    next turn of the event loop, and a pane chosen in between stays in view."""
    tab, model = opened(qtbot, window, gpt2_like(tmp_path / "model.safetensors"))
    shown = []
    show = tab.tensor_view.show_tensor
    monkeypatch.setattr(
        tab.tensor_view, "show_tensor", lambda node: (shown.append(node.key), show(node))
    )
    with qtbot.waitSignal(tab.tensor_view.view_ready, timeout=10_000) as ready:
        assert tab.select_key("h.0.mlp.c_fc.weight") and tab.select_key("h.1.mlp.c_fc.weight")
        assert tab.selected_key() == "h.1.mlp.c_fc.weight" and shown == []
    assert ready.args == ["h.1.mlp.c_fc.weight"] and shown == ["h.1.mlp.c_fc.weight"]
    assert tab.panes.currentWidget() is tab.tensor_view
    with qtbot.waitSignal(tab.tensor_view.view_ready, timeout=10_000):
        tab.select_key("h.2.mlp.c_fc.weight")
        tab.panes.setCurrentWidget(tab.summary)
    assert shown[-1] == "h.2.mlp.c_fc.weight" and tab.panes.currentWidget() is tab.summary


def test_go_to_key_finds_characters_in_order_and_shows_the_key(qtbot, window, tmp_path):
    tab, model = opened(qtbot, window, gpt2_like(tmp_path / "model.safetensors"))
    box = window.go_to_key()
    with qtbot.waitSignal(box.searched, timeout=10_000) as searched:
        box.line.setText("h3fc")
    assert searched.args == ["h3fc"]
    assert box.found[:2] == ["h.3.mlp.c_fc", "h.3.mlp.c_fc.weight"]  # shortest first
    assert all(key.startswith("h.3.") for key in box.found)
    qtbot.keyClick(box.line, Qt.Key_Down)  # the list moves, the text keeps the focus
    with qtbot.waitSignal(tab.tensor_selected, timeout=5000) as selected:
        qtbot.keyClick(box.line, Qt.Key_Return)
    assert selected.args == ["h.3.mlp.c_fc.weight"]


def test_pickle_imports_icon_says_the_worst_category(qtbot, window, tmp_path):
    clean = builders.save({"w": torch.zeros(2)}, tmp_path / "clean.pt")
    open_and_wait(qtbot, window, clean)
    action = window.findChild(QAction, "actionPickleImports")
    assert "only torch's own globals" in action.toolTip()
    open_and_wait(qtbot, window, builders.whole_model_file(tmp_path / "whole.pt"))
    assert "names classes outside torch" in action.toolTip()
    QApplication.processEvents()


def test_optimizer_state_rows_name_their_parameter(qtbot, window, tmp_path):
    path = builders.training_checkpoint(tmp_path / "train.pth")
    group = torch.load(path, weights_only=True)["optimizer_state_dict"]["param_groups"][0]
    names = dict(zip(group["params"], group["param_names"]))  # torch's own record
    tab, model = opened(qtbot, window, path)
    state = child(model, "state", child(model, "optimizer_state_dict"))
    assert names_under(model, state) == [f"{i} \u2014 {names[i]}" for i in sorted(names)]


def test_welcome_page_opens_files_and_lists_recent_ones(qtbot, window, tmp_path, monkeypatch):
    from PySide6.QtWidgets import QFileDialog, QListWidget, QPushButton

    path = builders.save({"w": torch.zeros(2)}, tmp_path / "w.pt")
    monkeypatch.setattr(QFileDialog, "getOpenFileNames", lambda *a, **k: ([path], ""))
    with qtbot.waitSignal(window.loaded, timeout=30_000):
        window.welcome.findChild(QPushButton, "welcomeOpen").click()
    formats = window.welcome.findChild(object, "welcomeFormats").text()
    assert "safetensors" in formats and "\\n" not in formats and formats.count("\n") > 3
    window.close_tab(window.tabs.currentIndex())
    assert window.tabs.currentWidget() is window.welcome
    recent = window.welcome.findChild(QListWidget, "welcomeRecent")
    assert recent.count() == 1 and recent.item(0).text() == path
    with qtbot.waitSignal(window.loaded, timeout=30_000) as loaded:
        recent.itemActivated.emit(recent.item(0))
    assert loaded.args == [path]


def test_export_of_a_model_folder_proposes_a_file_beside_it(qtbot, window, tmp_path):
    builders.hf_directory(tmp_path / "gpt2_hf")
    open_and_wait(qtbot, window, str(tmp_path / "gpt2_hf"))
    assert window.windowTitle().startswith("gpt2_hf")  # as its tab says
    dialog = window.export_dialog()
    assert dialog.destination.text() == str(tmp_path / "gpt2_hf-export.pth")
    dialog.close()


def test_status_line_elides_in_the_middle_and_holds_the_whole_text(qtbot):
    from ckpt_viewer.qt.tensor_panels import ElidedLabel

    label = ElidedLabel()
    qtbot.addWidget(label)
    text = "10,000,000 elements: estimates; computing exact statistics..."
    label.setText(text)
    label.resize(label.fontMetrics().horizontalAdvance(text) // 2, 20)
    shown = label.elided()
    assert label.text() == label.toolTip() == text
    assert shown.startswith("10,000") and shown.endswith("statistics...") and "\u2026" in shown
    label.resize(label.fontMetrics().horizontalAdvance(text) + 20, 20)
    assert label.elided() == text


def wrapped_lines(facts) -> tuple[str, list[int]]:
    """The key's cell text in a FactsPanel, and where its wrapped lines start (not counting
    the line after its label)."""
    from ckpt_viewer.qt.tensor_panels import BREAK

    cell = facts.document().find(BREAK)
    layout, text = cell.block().layout(), cell.block().text()
    starts = [layout.lineAt(i).textStart() for i in range(layout.lineCount())]
    return text, [s for s in starts[1:] if text[s - 1] != "\u2028"]


def test_facts_break_keys_after_dots_and_copy_them_whole(qtbot):
    from ckpt_viewer.qt.tensor_panels import BREAK, FactsPanel

    key = "transformer.h.3.mlp.c_fc.weight"
    facts = FactsPanel()
    qtbot.addWidget(facts)
    facts.resize(facts.fontMetrics().horizontalAdvance("transformer.h.3.") + 60, 300)
    facts.show()
    facts.show_facts([("key", key)])
    assert key in facts.toPlainText()
    text, starts = wrapped_lines(facts)
    assert starts  # wrapped, and only where a key allows it
    assert all(text[start - 1] == BREAK for start in starts)
    facts.selectAll()
    assert facts.createMimeDataFromSelection().text().split()[-1] == key


def test_a_long_key_gets_the_facts_width_and_breaks_only_after_dots(qtbot):
    from ckpt_viewer.qt.tensor_panels import BREAK, FactsPanel

    key = "model.language_model.encoder.layers.11.self_attention.linear_qkv.layer_norm_weight"
    facts = FactsPanel()
    qtbot.addWidget(facts)
    # room for its longest name, not for that beside the labels' column
    facts.resize(facts.fontMetrics().horizontalAdvance("self_attention.linear_qkv.") + 40, 300)
    facts.show()
    facts.show_facts([("storage offset", "0"), ("key", key)])
    text, line_starts = wrapped_lines(facts)
    assert len(line_starts) > 1 and all(text[s - 1] == BREAK for s in line_starts)


def test_the_tensor_title_wraps_a_long_key_after_its_dots(qtbot, window, tmp_path):
    from qt_helpers import open_and_wait

    from ckpt_viewer.qt.tensor_panels import BREAK

    key = "model.language_model.encoder.layers.11.self_attention.linear_qkv.layer_norm_weight"
    open_and_wait(qtbot, window, builders.save({key: torch.ones(3)}, tmp_path / "k.pt"))
    tab = window.current_tab()
    view = tab.tensor_view
    with qtbot.waitSignal(view.view_ready, timeout=30_000):
        tab.select_key(key)
    title = view.title
    assert title.wordWrap() and title.text().replace(BREAK, "").startswith(f"{key}   [3]")
    assert title.text().count(BREAK) == key.count(".")  # after each dot of the key only
    assert title.heightForWidth(200) > title.heightForWidth(2000)  # wrapped, not cut
    assert title.textInteractionFlags() == Qt.NoTextInteraction  # no copy with the breaks


def test_welcome_page_opens_a_run_folder(qtbot, window, tmp_path, monkeypatch):
    from PySide6.QtWidgets import QFileDialog, QPushButton

    builders.training_run(tmp_path / "run", steps=2)
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(tmp_path / "run"))
    with qtbot.waitSignal(window.runs_opened, timeout=30_000) as opened:
        window.welcome.findChild(QPushButton, "welcomeOpenRun").click()
    assert window.tabs.currentWidget() is opened.args[0]
    with qtbot.waitSignal(opened.args[0].ready, timeout=60_000):
        pass


class LayoutRequests(QObject):
    """Counts the layout requests that reach a widget."""

    def __init__(self, widget) -> None:
        super().__init__()
        self.count = 0
        widget.installEventFilter(self)

    def eventFilter(self, watched, event) -> bool:
        self.count += event.type() == QEvent.LayoutRequest
        return False


def settled_tab(qtbot, window, path):
    tab, _ = opened(qtbot, window, path)
    qtbot.waitUntil(lambda: "What it needs to run" in tab.summary.toPlainText())  # built
    tab.filter.setFocus()
    for _ in range(3):  # what the tab's building posted (a layout request: each turn's own)
        QApplication.processEvents()
    return tab


def test_filtering_asks_the_window_for_no_new_layout(qtbot, window, tmp_path):
    """The match count and the clear button change nothing outside the filter row: a layout
    request reaching the window's tab widget repaints the whole tab (the tensor pane's plot
    included) in the keystroke's frame."""
    tab = settled_tab(qtbot, window, gpt2_like(tmp_path / "model.safetensors"))
    requests = LayoutRequests(window.tabs)
    with qtbot.waitSignal(tab.filter_applied, timeout=5_000):
        qtbot.keyClicks(tab.filter, "mlp")
    QApplication.processEvents()
    assert tab.filter_status.text() == "60 matches"  # 12 groups "mlp", 48 rows below them
    with qtbot.waitSignal(tab.filter_applied, timeout=5_000):
        tab.filter.findChild(QAction, "clearFilter").trigger()
    QApplication.processEvents()
    assert tab.filter.text() == "" and tab.filter_status.text() == ""
    window.tabs.removeEventFilter(requests)
    assert requests.count == 0


def test_selecting_tensors_asks_the_window_for_no_new_layout(qtbot, window, tmp_path):
    """The tensor pane's new texts and widgets are laid out inside the tab: a request reaching
    the window's tab widget repainted the whole tab, tree and plot, for each selection."""
    tab = settled_tab(qtbot, window, gpt2_like(tmp_path / "model.safetensors"))
    requests = LayoutRequests(window.tabs)
    for key in ("h.0.mlp.c_fc.weight", "wte.weight", "h.11.attn.c_attn.weight"):
        with qtbot.waitSignal(tab.tensor_view.view_ready, timeout=10_000):
            assert tab.select_key(key)
        QApplication.processEvents()
        assert tab.tensor_view.controller.node.key == key
    window.tabs.removeEventFilter(requests)
    assert requests.count == 0
