"""What the outside scenario of issue #23's flows (xdotool on Xvfb) found, fixed: each test
drives the real widgets the way the scenario did."""

import torch
from PySide6.QtCore import QEvent, QObject, Qt
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QApplication
from qt_helpers import open_and_wait

import builders


class X11LineKeys(QObject):
    """What a line edit does on X11 (offscreen Qt uses another key scheme): it claims Ctrl+E,
    "end of line", before the window's shortcuts see it."""

    def eventFilter(self, watched, event) -> bool:
        if event.type() == QEvent.ShortcutOverride and event.keyCombination() == (
            Qt.ControlModifier | Qt.Key_E
        ):
            event.accept()
        return False


def test_window_shortcuts_win_over_the_filter_s_own_keys(qtbot, window, tmp_path):
    """Ctrl+E (Export Selection) did nothing while the key filter had focus on X11, right after
    filtering to the keys to export: the field took it as "end of line"."""
    path = builders.save(
        {"a.weight": torch.zeros(2), "b.weight": torch.zeros(2)}, tmp_path / "m.pt"
    )
    open_and_wait(qtbot, window, path)
    tab = window.tabs.currentWidget()
    x11 = X11LineKeys(tab.filter)
    tab.filter.installEventFilter(x11)  # runs before the tab's own filter, as the field would
    tab.filter.setFocus()
    qtbot.keyClicks(tab.filter, "a.w")
    opened = []
    window.findChild(QAction, "actionExport").triggered.connect(lambda: opened.append(True))
    qtbot.keyClick(tab.filter, Qt.Key_E, Qt.ControlModifier)
    assert opened
    qtbot.keyClick(tab.filter, Qt.Key_A, Qt.ControlModifier)  # the field's own keys stay its
    assert tab.filter.selectedText() == "a.w"


def test_enter_in_the_compare_with_menu_compares_with_the_first_open_file(qtbot, window, tmp_path):
    """Ctrl+D, Enter: the menu of open files popped up with nothing highlighted, and Enter only
    highlighted its first entry; the comparison needed a second Enter."""
    a = builders.save({"w": torch.zeros(2)}, tmp_path / "a.pt")
    b = builders.save({"w": torch.ones(2)}, tmp_path / "b.pt")
    open_and_wait(qtbot, window, a)
    open_and_wait(qtbot, window, b)
    window.compare_dialog()
    menu = QApplication.activePopupWidget()
    assert menu is not None and menu.objectName() == "compareMenu"
    with qtbot.waitSignal(window.compared, timeout=30_000) as blocker:
        qtbot.keyClick(menu, Qt.Key_Return)
    assert blocker.args == [str(b), str(a)]


def test_a_small_kernel_grid_draws_fewer_channel_labels_not_overlapping_ones(
    qtbot, window, tmp_path
):
    """conv1.weight [64, 3, 7, 7] at 1366x768 with a pane below: the grid was ~80 px tall and
    its row labels ("0-7" ... "56-63") and column labels ("+0" ... "+7") were drawn over each
    other. Now every n-th tile is labelled, n as small as the tiles' size allows."""
    path = builders.save({"conv1.weight": torch.randn(64, 3, 7, 7)}, tmp_path / "conv.pt")
    window.resize(1600, 1000)
    open_and_wait(qtbot, window, path)
    tab = window.tabs.currentWidget()
    view = tab.tensor_view
    assert tab.select_key("conv1.weight")
    with qtbot.waitSignal(view.heatmap.ready, timeout=20_000):
        view.pages.setCurrentWidget(view.heatmap)
    plot = view.heatmap.plot

    def labels(axis):
        return [label for _, label in plot.getAxis(axis)._tickLevels[0]]

    plot.setFixedSize(800, 800)  # 90-pixel tiles: every label
    qtbot.waitUntil(lambda: len(labels("left")) == 8 and len(labels("bottom")) == 8)
    assert labels("left")[:2] == ["0-7", "8-15"] and labels("bottom")[:2] == ["+0", "+1"]
    plot.setFixedSize(160, 120)  # a few pixels a tile: fewer labels, the first kept
    qtbot.waitUntil(lambda: len(labels("left")) < 8 and len(labels("bottom")) < 8)
    assert labels("left")[0] == "0-7" and labels("bottom")[0] == "+0"


def test_the_opened_file_s_status_line_leaves_with_its_tab(qtbot, window, tmp_path):
    """Four files opened at once, another tab shown: the status bar still said "LAST.pt: 149
    tensors ..." under conv.pt's tab."""
    a = builders.save({"w": torch.zeros(2)}, tmp_path / "a.pt")
    b = builders.save({"w": torch.zeros(2), "v": torch.zeros(2)}, tmp_path / "b.pt")
    open_and_wait(qtbot, window, a)
    open_and_wait(qtbot, window, b)
    assert window.statusBar().currentMessage().startswith(f"{b}: 2 tensors")
    window.tabs.setCurrentIndex(window.tabs.indexOf(window._tab_of_path(str(a))))
    assert window.statusBar().currentMessage() == ""


def test_a_wrapped_vector_s_columns_fit_beside_its_scroll_bar(qtbot, window, tmp_path):
    """A 1-D tensor at 1366x768 with Layers docked: the columns were counted for the table's
    width before its vertical scroll bar appeared and its longer row labels widened, and the
    last one needed a sideways scroll."""
    path = builders.save({"tiny": torch.zeros(3), "vec": torch.randn(4096)}, tmp_path / "v.pt")
    open_and_wait(qtbot, window, path)
    tab = window.tabs.currentWidget()
    view = tab.tensor_view
    table = view.values.table
    assert tab.select_key("vec")
    view.pages.setCurrentWidget(view.values)
    for width in range(900, 1120, 4):  # two columns' worth of places a boundary can fall
        window.resize(width, 768)
        assert tab.select_key("tiny")  # a few rows: narrow row labels, no scroll bar
        QApplication.processEvents()
        assert tab.select_key("vec")
        qtbot.waitUntil(
            lambda: (
                table.verticalScrollBar().isVisible() and table.horizontalScrollBar().maximum() == 0
            ),
            timeout=5000,
        )
        assert table.model().width >= 2


def test_a_comparison_beside_the_tree_shows_each_key_s_status(qtbot, window, tmp_path):
    """Compare moved beside the tree at 1366x768: the key column took the pane's whole width
    and Status, A and B sat past its right edge (a sideways scroll to see any difference)."""
    a = builders.save({f"layer{i}.weight": torch.zeros(2) for i in range(5)}, tmp_path / "a.pt")
    b = builders.save({f"layer{i}.weight": torch.ones(2) for i in range(5)}, tmp_path / "b.pt")
    window.resize(1366, 768)
    open_and_wait(qtbot, window, a)
    with qtbot.waitSignal(window.compared, timeout=30_000):
        window.compare_paths(str(a), str(b))
    view = window.tabs.currentWidget()
    window.dock_comparison(view)
    table = view.table
    qtbot.waitUntil(lambda: table.isVisible() and table.viewport().width() < 600)
    QApplication.processEvents()
    status = table.columnViewportPosition(1) + table.columnWidth(1)
    assert status <= table.viewport().width()  # the status column whole in view
    assert table.columnWidth(0) >= table.fontMetrics().horizontalAdvance("layer0.weight")
