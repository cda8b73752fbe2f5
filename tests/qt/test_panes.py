"""Health, Layers and Pickle Imports are panes docked beside the tree (Health and Pickle
Imports below it in a window narrower than 1600 pixels): one column of tabs the first time,
where the user put them after a restart, gone with their file's tab."""

import torch
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication, QDockWidget, QTabBar, QWidget
from qt_helpers import open_and_wait

import builders


def test_tools_views_dock_beside_the_tree_and_are_remembered(qtbot, window, tmp_path):
    from ckpt_viewer.qt.main_window import MainWindow

    path = builders.save({f"blocks.{i}.w": torch.ones(3, 3) for i in range(2)}, tmp_path / "m.pt")
    open_and_wait(qtbot, window, path)
    window.resize(1920, 1080)  # narrower, Health goes below the tree (the next test)
    tab = window.current_tab()
    health = window.health_current()
    with qtbot.waitSignal(health.checked, timeout=30_000):
        pass
    assert not health.progress_row.isVisible()  # done: the findings get the room
    imports = window.pickle_imports_current()
    health_dock = window.findChild(QDockWidget, "healthDock")
    imports_dock = window.findChild(QDockWidget, "pickleImportsDock")
    assert health_dock.widget() is health and imports_dock.widget() is imports
    assert window.dockWidgetArea(health_dock) == Qt.RightDockWidgetArea
    assert window.tabifiedDockWidgets(health_dock) == [imports_dock]  # one column, two tabs
    assert not health_dock.isFloating() and imports.isVisible()
    assert health_dock.windowTitle() == "Health - m.pt"
    assert imports_dock.windowTitle() == "Pickle Imports - m.pt"  # the path is on hover

    # the tabified docks' titles are whole (Qt's bar elided them to "Hea…"), scrolling if need be
    def dock_bar() -> QTabBar | None:
        bars = [b for b in window.findChildren(QTabBar) if b.parent() is window]
        return next((b for b in bars if b.isVisible()), None)

    qtbot.waitUntil(lambda: dock_bar() is not None, timeout=5_000)  # laid out in an event
    bar = dock_bar()
    assert sorted(bar.tabText(i) for i in range(bar.count())) == [
        "Health - m.pt",
        "Pickle Imports - m.pt",
    ]
    assert bar.elideMode() == Qt.ElideNone and bar.usesScrollButtons()

    imports.findChild(object, "pickleImportsClose").click()  # a view closing itself
    qtbot.waitUntil(lambda: not imports_dock.isVisible(), timeout=5_000)
    window.addDockWidget(Qt.BottomDockWidgetArea, health_dock)  # the user moves it
    window.close_tab(window.tabs.indexOf(tab))
    assert not health_dock.isVisible()  # its file is closed
    qtbot.waitUntil(lambda: window.findChild(object, "healthDialog") is None, timeout=5_000)
    window.close()  # saves where the panes are

    again = MainWindow()
    qtbot.addWidget(again)
    again.show()
    dock = again.findChild(QDockWidget, "healthDock")
    assert not dock.isVisible()  # nothing to show before a file is open
    open_and_wait(qtbot, again, path)
    again.health_current()
    assert dock.isVisible() and again.dockWidgetArea(dock) == Qt.BottomDockWidgetArea


def test_layers_pane_shows_its_whole_text_and_plot(qtbot, window, tmp_path):
    """The metric chooser's items arrive after the pane is shown (it was left at "mean ex");
    the legend has as many columns as the pane's width holds (wider, it pushed the plot's
    right part out of the pane)."""

    class Blocks(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList(
                torch.nn.ModuleDict(
                    {f"projection_with_a_long_name_{j}": torch.nn.Linear(4, 4) for j in range(4)}
                )
                for _ in range(3)
            )

    model = Blocks()
    optimizer = torch.optim.Adam(model.parameters())
    sum(layer(torch.ones(4)).sum() for b in model.blocks for layer in b.values()).backward()
    optimizer.step()
    path = builders.save(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict()}, tmp_path / "a.pt"
    )
    open_and_wait(qtbot, window, path)
    window.resize(1366, 768)
    view = window.layers_current()
    with qtbot.waitSignal(view.ready, timeout=30_000):
        pass
    assert not view.progress.isVisible() and not view.cancel_button.isVisible()  # all done
    box = view.metric_box
    texts = [box.itemText(i) for i in range(box.count())]
    assert "mean exp_avg_sq (Adam)" in texts
    assert box.width() >= max(box.fontMetrics().horizontalAdvance(text) for text in texts)
    plot_item = view.plot.getPlotItem()
    assert len(plot_item.legend.items) == 8 and plot_item.legend.columnCount < 4
    assert plot_item.geometry().width() <= view.plot.width()


def test_nan_and_inf_counts_need_no_scrolling_at_1366x768(qtbot, window, tmp_path):
    from PySide6.QtWidgets import QTableWidget

    values = torch.randn(1000)
    values[:3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    path = builders.save({"w": values, "blocks.0.w": torch.ones(2)}, tmp_path / "n.pt")
    open_and_wait(qtbot, window, path)
    window.resize(1366, 768)
    tab = window.current_tab()
    table = tab.findChild(QTableWidget, "statsTable")

    def alarms_in_sight() -> dict:
        shown = {}
        for row in range(table.rowCount()):
            for column in range(0, table.columnCount(), 2):
                label = table.item(row, column)
                if label is not None and label.text() in ("NaN", "+Inf", "-Inf"):
                    value = table.item(row, column + 1)
                    inside = table.viewport().rect().contains(table.visualItemRect(value))
                    shown[label.text()] = (value.text(), inside)
        return shown

    with qtbot.waitSignal(tab.tensor_view.view_ready, timeout=30_000):
        tab.select_key("w")
    expected = {"NaN": ("1", True), "+Inf": ("1", True), "-Inf": ("1", True)}
    assert alarms_in_sight() == expected
    height = table.viewport().height()
    window.health_current()  # below the tree at 1366 pixels: the strip keeps less height
    assert window.dockWidgetArea(window.panes["healthDock"]) == Qt.BottomDockWidgetArea
    qtbot.waitUntil(lambda: table.viewport().height() < height, timeout=5_000)
    assert alarms_in_sight() == expected
    window.panes["healthDock"].close()
    window.layers_current()  # beside the tree: the strip narrower
    qtbot.waitUntil(lambda: table.columnCount() == 2, timeout=5_000)
    assert alarms_in_sight() == expected


def test_a_vectors_values_use_the_width(qtbot, window, tmp_path):
    from PySide6.QtCore import Qt

    vector = torch.arange(1234, dtype=torch.float32) / 8
    path = builders.save({"v": vector, "m": torch.ones(3, 2)}, tmp_path / "v.pt")
    open_and_wait(qtbot, window, path)
    window.resize(1366, 768)
    tab = window.current_tab()
    view = tab.tensor_view
    with qtbot.waitSignal(view.view_ready, timeout=30_000):
        tab.select_key("v")
    view.pages.setCurrentWidget(view.values)
    table = view.values.table
    model = table.model()
    width = model.columnCount()
    assert width in (4, 5, 8, 10, 16) and model.rowCount() == -(-1234 // width)
    # the columns fill the table's width: one more would not fit
    section = table.horizontalHeader().defaultSectionSize()
    assert width * section <= table.viewport().width() < 2 * width * section
    last = model.index(1233 // width, 1233 % width)
    last.data()
    qtbot.waitUntil(lambda: last.data() != "...", timeout=20_000)
    assert last.data() == f"{vector[1233].item():.6f}"
    assert model.index(1, 2).data(Qt.ToolTipRole) == str(vector[width + 2].item())
    assert model.headerData(3, Qt.Vertical) == f"{3 * width:,}"
    assert model.headerData(2, Qt.Horizontal) == "+2"
    if 1234 % width:
        assert model.index(model.rowCount() - 1, width - 1).data() is None  # past the end
    table.setCurrentIndex(model.index(0, 0))
    table.selectRow(1)
    assert view.values.copy_selection() == "\t".join(
        str(v) for v in vector[width : 2 * width].tolist()
    )
    with qtbot.waitSignal(view.view_ready, timeout=30_000):
        tab.select_key("m")
    assert (table.model().rowCount(), table.model().columnCount()) == (3, 2)  # a matrix as is


def test_log_y_tick_labels_do_not_overlap(qtbot, window, tmp_path):
    import math

    from PySide6.QtGui import QImage, QPainter

    from ckpt_viewer.qt.histogram_view import count_labels

    values = [math.log10(c) for c in (0.9, 1, 2, 3, 5, 7, 9, 10, 20, 50, 100, 2e5)]
    assert count_labels(values) == ["", "1", "2", "", "5", "", "", "10", "20", "50", "100", "2e5"]
    torch.manual_seed(0)
    path = builders.save({"s": torch.randn(60)}, tmp_path / "s.pt")  # counts of 1 to ~15
    open_and_wait(qtbot, window, path)
    window.resize(1366, 768)
    tab = window.current_tab()
    view = tab.tensor_view
    with qtbot.waitSignal(view.view_ready, timeout=30_000):
        tab.select_key("s")
    view.controls.log_y.setChecked(True)
    axis = view.histogram.plot.getAxis("left")
    qtbot.waitUntil(lambda: 0.5 < axis.range[1] < 2, timeout=5_000)  # log10 of ~15 counts
    image = QImage(10, 10, QImage.Format_ARGB32)
    painter = QPainter(image)
    try:
        _, _, texts = axis.generateDrawSpecs(painter)
        _, _, right = view.histogram.plot.getAxis("right").generateDrawSpecs(painter)
    finally:
        painter.end()
    shown = [(rect, text) for rect, _, text in texts if text]
    assert {text for _, text in shown} <= {"1", "2", "5", "10", "20"} and len(shown) >= 2
    for i, (rect, _) in enumerate(shown):
        assert not any(rect.intersects(other) for other, _ in shown[i + 1 :])
    assert [text for _, _, text in right] == [text for _, _, text in texts]  # the same labels


def test_a_comparison_tab_moves_beside_the_tree(qtbot, window, tmp_path):
    from PySide6.QtWidgets import QMenu

    a = builders.save({"w": torch.ones(4)}, tmp_path / "a.pt")
    b = builders.save({"w": torch.zeros(4)}, tmp_path / "b.pt")
    open_and_wait(qtbot, window, a)
    tab = window.current_tab()
    with qtbot.waitSignal(window.compared, timeout=30_000):
        window.compare_paths(tab.checkpoint.path, b)
    view = window.tabs.currentWidget()
    assert view.objectName() == "compareView"
    label = window.tabs.tabText(window.tabs.currentIndex())
    assert window.windowTitle() == f"{label} - ckpt-viewer"  # not a bare "ckpt-viewer"
    bar = window.tabs.tabBar()
    window._tab_menu(bar.tabRect(window.tabs.indexOf(view)).center())
    menu = next(m for m in window.findChildren(QMenu) if m.isVisible())
    next(a for a in menu.actions() if a.text() == "Show Beside the Tree").trigger()
    dock = window.findChild(QDockWidget, "compareDock")
    assert dock.widget() is view and dock.isVisible() and window.tabs.indexOf(view) < 0
    assert dock.windowTitle() == "Compare - a.pt vs b.pt" and window.current_tab() is tab
    window.close_tab(window.tabs.indexOf(tab))
    assert dock.isVisible()  # the comparison holds its own copies of both files
    dock.close()
    assert not dock.isVisible()
    qtbot.waitUntil(lambda: window.findChild(QWidget, "compareView") is None, timeout=5_000)


def test_panes_open_at_quit_come_back_with_the_first_file(qtbot, window, tmp_path):
    from PySide6.QtWidgets import QPushButton

    from ckpt_viewer.qt.health_view import HealthDialog
    from ckpt_viewer.qt.main_window import MainWindow

    path = builders.save({"w": torch.ones(3)}, tmp_path / "m.pt")
    open_and_wait(qtbot, window, path)
    with qtbot.waitSignal(window.health_current().checked, timeout=30_000):
        pass
    window.pickle_imports_current()
    window.close()

    again = MainWindow()
    qtbot.addWidget(again)
    again.show()
    health = again.findChild(QDockWidget, "healthDock")
    imports = again.findChild(QDockWidget, "pickleImportsDock")
    assert not health.isVisible() and not imports.isVisible()
    open_and_wait(qtbot, again, path)
    assert imports.widget().objectName() == "pickleImportsView"  # cheap: filled at once
    assert not again.findChildren(HealthDialog)  # a full read waits for the user
    start = health.widget().findChild(QPushButton, "healthDockStart")
    assert start.text() == "Scan every tensor for findings"
    start.click()
    assert isinstance(health.widget(), HealthDialog)
    with qtbot.waitSignal(health.widget().checked, timeout=30_000):
        pass
    assert not again.findChild(QDockWidget, "layersDock").isVisible()


def test_docked_panes_never_widen_the_window_past_its_screen(qtbot, window, tmp_path):
    """Health, Layers and Pickle Imports docked at once: each can shrink to a pane's width, so
    the window's minimum grows by one pane at most (their controls' own minimums summed to
    more: the window grew to 1,634 pixels on a 1366-pixel screen)."""
    from ckpt_viewer.qt.main_window import PANE_MIN_WIDTH

    open_and_wait(qtbot, window, builders.training_checkpoint(tmp_path / "train.pt"))
    health = window.health_current()
    with qtbot.waitSignal(health.checked, timeout=30_000):
        pass
    window.layers_current()
    window.pickle_imports_current()
    QApplication.processEvents()
    # one column of docks, no wider at its least than a pane (and the dock's frame), beside
    # what the tab itself needs (measured now: the tab builds its parts over several turns)
    tab_needs = window.centralWidget().minimumSizeHint().width()
    assert window.minimumSizeHint().width() <= tab_needs + PANE_MIN_WIDTH + 40


def test_panes_name_a_model_folder_as_its_tab_does(qtbot, window, tmp_path):
    folder = builders.hf_directory(tmp_path / "tiny_hf")
    open_and_wait(qtbot, window, folder)
    assert window.tabs.tabText(window.tabs.currentIndex()) == "tiny_hf"
    health = window.health_current()
    with qtbot.waitSignal(health.checked, timeout=30_000):
        pass
    window.pickle_imports_current()
    docks = ("healthDock", "pickleImportsDock")
    titles = {window.findChild(QDockWidget, name).windowTitle() for name in docks}
    assert titles == {"Health - tiny_hf", "Pickle Imports - tiny_hf"}


def test_layers_opened_beside_health_below_the_tree_goes_beside_the_tree(qtbot, window, tmp_path):
    """At 1366 pixels Health docks below the tree; Layers, opened next, was tabbed with it there
    and its plot had no height: it goes beside the tree, where a plot has room."""
    path = builders.save({f"blocks.{i}.w": torch.ones(3, 3) for i in range(3)}, tmp_path / "m.pt")
    window.resize(1366, 768)
    open_and_wait(qtbot, window, path)
    window.health_current()
    window.layers_current()
    health, layers = window.panes["healthDock"], window.panes["layersDock"]
    assert window.dockWidgetArea(health) == Qt.BottomDockWidgetArea
    assert window.dockWidgetArea(layers) == Qt.RightDockWidgetArea
    assert window.tabifiedDockWidgets(layers) == []
