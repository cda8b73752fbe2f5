"""What the second UX review on a real display found annoying, fixed: each test drives the real
widgets the way the review did."""

import torch
from qt_helpers import open_and_wait

import builders


def test_summary_stays_at_its_top_when_the_memory_section_arrives(qtbot, window, tmp_path):
    """A summary shorter than its view scrolled to its end as "What it needs to run" was
    appended: the path and format left the view; the section's long lines wrap."""
    path = builders.save(
        {"0.weight": torch.zeros(64, 32), "0.bias": torch.zeros(64)}, tmp_path / "m.pt"
    )
    window.resize(1366, 768)
    open_and_wait(qtbot, window, path)
    tab = window.tabs.currentWidget()
    qtbot.waitUntil(lambda: "What it needs to run" in tab.summary.toPlainText(), timeout=10_000)
    bar = tab.summary.verticalScrollBar()
    assert bar.maximum() > 0  # the section made the summary taller than its view
    assert bar.value() == 0
    assert tab.summary.horizontalScrollBar().maximum() == 0


def test_enter_typed_before_the_filter_applies_lands_on_its_match(qtbot, window, tmp_path):
    """Typing a key and Enter at once: the tree still showed the previous filter (or none),
    and Enter selected its first row (the review's `conv1.weight` + Enter landed on `conv1`)."""
    from PySide6.QtCore import Qt

    path = builders.save(
        {"conv1.weight": torch.zeros(4, 3, 3, 3), "conv2.weight": torch.zeros(4, 4, 3, 3)},
        tmp_path / "conv.pt",
    )
    open_and_wait(qtbot, window, path)
    tab = window.tabs.currentWidget()
    tab.filter.setFocus()
    qtbot.keyClicks(tab.filter, "conv2.weight")
    assert tab.controller.busy("filter")  # the filter waits for a pause in typing
    with qtbot.waitSignal(tab.filter_applied, timeout=10_000):
        qtbot.keyClick(tab.filter, Qt.Key_Return)
    assert tab.tree.hasFocus() and tab.selected_key() == "conv2.weight"


def test_a_run_without_learning_rates_or_losses_keeps_the_steps_in_view(qtbot, window, tmp_path):
    """The key's line, the learning rates and the losses share the step axis; with no rate
    or loss in the files the empty plots held it at 0..1 and the line showed one point."""
    model = torch.nn.Linear(3, 2)
    (tmp_path / "run").mkdir()
    for epoch in range(5):
        with torch.no_grad():
            model.weight.add_(0.1)
        torch.save({"model": model.state_dict(), "epoch": epoch}, tmp_path / "run" / f"c{epoch}.pt")
    with qtbot.waitSignal(window.runs_opened, timeout=10_000) as opened:
        window.open_paths([str(tmp_path / "run")])
    view = opened.args[0]
    with qtbot.waitSignal(view.ready, timeout=60_000):
        pass
    low, high = view.lines.getViewBox().viewRange()[0]
    assert low <= 0 and high >= 4  # every checkpoint's step
    assert view.rates.getAxis("left").labelText == "no learning rate"


def test_page_down_after_expand_all_keeps_the_current_row_in_view(qtbot, window, tmp_path):
    """Expand All opens rows as they come into view: Page Down moved a page over the rows laid
    out, onto a collapsed layer dozens below, which opening then pushed out of view."""
    from PySide6.QtCore import Qt

    keys = {f"layers.{i}.sub{j}.weight": torch.zeros(2) for i in range(200) for j in range(10)}
    path = builders.save(keys, tmp_path / "deep.pt")
    window.resize(1366, 768)
    open_and_wait(qtbot, window, path)
    tab = window.tabs.currentWidget()
    tab.expander.start()
    assert tab.select_key("layers.0.sub7.weight")
    tab.tree.setFocus()

    def current_in_view() -> bool:
        rect = tab.tree.visualRect(tab.tree.currentIndex())
        return rect.isValid() and 0 <= rect.top() and rect.bottom() <= tab.tree.viewport().height()

    for _ in range(3):
        qtbot.keyClick(tab.tree, Qt.Key_PageDown)
        qtbot.waitUntil(current_in_view, timeout=2_000)
    assert int(tab.selected_key().split(".")[1]) < 20  # a few pages on, not dozens of layers


def test_compare_with_offers_the_other_open_files_first(qtbot, window, tmp_path, monkeypatch):
    """Both files open, Compare With asked for the other one through a file dialog."""
    from PySide6.QtWidgets import QFileDialog, QMenu

    a = builders.save({"w": torch.ones(3)}, tmp_path / "a.pt")
    b = builders.save({"w": torch.zeros(3)}, tmp_path / "b.pt")
    open_and_wait(qtbot, window, b)
    open_and_wait(qtbot, window, a)
    asked = []
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: asked.append(1) or ("", ""))
    window.compare_dialog()
    menu = window.findChild(QMenu, "compareMenu")
    assert [action.text() for action in menu.actions()] == ["b.pt", "", "Other File..."]
    assert not asked
    with qtbot.waitSignal(window.compared, timeout=30_000) as compared:
        menu.actions()[0].trigger()
    assert compared.args[:2] == [a, b]
    menu.close()
    kept = window._tab_of_path(b)
    for widget in [window.tabs.widget(i) for i in range(window.tabs.count())]:
        if widget is not kept:
            window.close_tab(window.tabs.indexOf(widget))
    window.compare_dialog()  # no other file open: the file dialog at once
    assert asked == [1]


def test_health_names_the_parameter_of_an_optimizer_state_finding(qtbot, window, tmp_path):
    """The tree, Layers and Compare label a state tensor with its parameter; Health listed the
    bare id (`optimizer.state.0.exp_avg`)."""
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.Adam(model.parameters())
    (model(torch.ones(2)) * 0).sum().backward()  # zero gradients: all-zero moments
    optimizer.step()
    path = tmp_path / "t.pt"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, path)
    open_and_wait(qtbot, window, str(path))
    health = window.health_current()
    with qtbot.waitSignal(health.checked, timeout=30_000):
        pass
    items = [health.findings.topLevelItem(i) for i in range(health.findings.topLevelItemCount())]
    keys = {item.data(0, 0x0100): item.text(2) for item in items}  # Qt.UserRole: the key
    assert keys["optimizer.state.0.exp_avg"] == "optimizer.state.0.exp_avg \u2014 weight"
    assert keys["optimizer.state.1.exp_avg"] == "optimizer.state.1.exp_avg \u2014 bias"


def test_closing_the_last_file_clears_its_status_line(qtbot, window, tmp_path):
    path = builders.save({"w": torch.ones(2)}, tmp_path / "w.pt")
    open_and_wait(qtbot, window, path)
    assert window.statusBar().currentMessage().startswith(path)
    window.close_tab(window.tabs.currentIndex())
    assert window.tabs.tabText(0) == "Welcome" and window.statusBar().currentMessage() == ""


def test_compare_pickers_stack_in_a_narrow_pane(qtbot, window, tmp_path):
    """Docked beside the tree at 1366 pixels, A's and B's root/strip pickers squeezed into one
    row drew their labels over the boxes' texts; there they stack, in a tab they share a row."""
    from PySide6.QtWidgets import QBoxLayout

    a = builders.save({"w": torch.ones(3)}, tmp_path / "a.pt")
    b = builders.save({"w": torch.zeros(3)}, tmp_path / "b.pt")
    window.resize(1366, 768)
    with qtbot.waitSignal(window.compared, timeout=30_000):
        window.compare_paths(a, b)
    view = window.tabs.currentWidget()
    qtbot.waitUntil(lambda: view.sides.direction() == QBoxLayout.LeftToRight, timeout=5_000)
    window.dock_comparison(view)
    qtbot.waitUntil(lambda: view.sides.direction() == QBoxLayout.TopToBottom, timeout=5_000)
