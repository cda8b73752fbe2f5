"""The window's chrome: toolbar, title, size within the screen, tab order and reuse, the
Welcome tab, the drop highlight, the tree's columns and its filter."""

import os
import threading

import torch
from PySide6.QtCore import QMimeData, QPoint, Qt, QThreadPool, QUrl
from PySide6.QtGui import QAction, QDragEnterEvent
from PySide6.QtWidgets import QApplication
from qt_helpers import open_and_wait

import builders
from ckpt_viewer.qt.checkpoint_tab import KEY_MIN_WIDTH


def test_toolbar_title_and_size_within_the_screen(qtbot, window, training_file):
    names = [action.objectName() for action in window.toolbar.actions()]
    assert names[:4] == ["actionOpen", "actionExport", "actionCompare", "actionVerify"]
    if window.findChild(QAction, "actionPickleImports") is not None:
        assert "actionPickleImports" in names
    available = window.screen().availableGeometry()
    assert window.frameGeometry().width() <= available.width()
    assert window.frameGeometry().height() <= available.height()
    assert window.windowTitle() == "ckpt-viewer"
    export, verify = (window.findChild(QAction, n) for n in ("actionExport", "actionVerify"))
    assert not export.isEnabled() and not verify.isEnabled()  # nothing to act on yet
    open_and_wait(qtbot, window, training_file)
    assert window.windowTitle() == "train.pth - ckpt-viewer"
    assert export.isEnabled() and verify.isEnabled()
    assert window.windowFilePath() == os.path.abspath(training_file)
    window.tabs.tabCloseRequested.emit(window.tabs.currentIndex())
    assert not export.isEnabled()  # the Welcome tab is back


def test_tabs_keep_the_opening_order_and_reopening_switches(qtbot, window, tmp_path):
    big = builders.save({f"k{i}": torch.zeros(1) for i in range(3000)}, tmp_path / "big.pt")
    small = builders.save({"w": torch.zeros(2)}, tmp_path / "small.pt")
    loaded = []
    window.loaded.connect(loaded.append)
    window.open_paths([big, small])  # small finishes first
    assert [window.tabs.tabText(i) for i in range(window.tabs.count())] == ["big.pt", "small.pt"]
    qtbot.waitUntil(lambda: len(loaded) == 2, timeout=30_000)
    assert [window.tabs.tabText(i) for i in range(window.tabs.count())] == ["big.pt", "small.pt"]
    window.tabs.setCurrentIndex(1)
    window.open_paths([big])
    assert (
        window.tabs.count() == 2
        and window.tabs.currentIndex() == 0
        and not window.controller.busy()
    )


def test_welcome_stays_until_a_file_opens_and_returns_after(qtbot, window, training_file):
    from PySide6.QtWidgets import QTabBar

    assert window.tabs.tabText(0) == "Welcome"
    assert window.tabs.tabBar().tabButton(0, QTabBar.RightSide) is None  # no close box
    window.tabs.tabCloseRequested.emit(0)
    assert window.tabs.count() == 1
    open_and_wait(qtbot, window, training_file)
    assert window.tabs.count() == 1  # the file's tab replaced it
    window.tabs.tabCloseRequested.emit(0)
    assert window.tabs.count() == 1 and window.tabs.tabText(0) == "Welcome"


def test_drop_highlight_shows_while_dragging(qtbot, window, training_file):
    data = QMimeData()
    data.setUrls([QUrl.fromLocalFile(training_file)])
    event = QDragEnterEvent(QPoint(10, 10), Qt.CopyAction, data, Qt.LeftButton, Qt.NoModifier)
    QApplication.sendEvent(window, event)
    hint = window.findChild(object, "dropHint")
    assert event.isAccepted() and hint.isVisible()
    window.dragLeaveEvent(_leave())
    assert not hint.isVisible()


def _leave():
    from PySide6.QtGui import QDragLeaveEvent

    return QDragLeaveEvent()


def test_tree_columns_fit_their_contents_and_key_stretches(qtbot, window, tmp_path):
    path = builders.save(
        {
            "layer.weight": torch.zeros(3, 4, dtype=torch.float8_e4m3fn),
            "layer.bias": torch.zeros(123_456_789 // 1000),
        },
        tmp_path / "c.pt",
    )
    open_and_wait(qtbot, window, path)
    tab = window.current_tab()
    header = tab.tree.header()
    window.resize(1600, 700)
    tab.splitter.setSizes([1100, 500])

    def key_fills_the_rest():
        others = sum(header.sectionSize(c) for c in range(1, 7))
        return header.sectionSize(0) == max(180, tab.tree.viewport().width() - others)

    qtbot.waitUntil(key_fills_the_rest)
    assert header.sectionSize(0) > 180
    tab.splitter.setSizes([150, 1250])
    qtbot.waitUntil(lambda: header.sectionSize(0) == 180)  # then scrolls, never cut short
    metrics = tab.tree.fontMetrics()
    assert header.sectionSize(3) >= metrics.horizontalAdvance("float8_e4m3fn")
    assert "export" in tab.model.headerData(0, Qt.Horizontal, Qt.ToolTipRole)
    tab.show_column(6, False)
    assert header.isSectionHidden(6)


def test_filter_waits_for_typing_and_clearing_restores_the_tree(qtbot, window, tmp_path):
    keys = {f"block{i}.layer{j}.weight": torch.zeros(2) for i in range(3) for j in range(3)}
    open_and_wait(qtbot, window, builders.save(keys, tmp_path / "f.pt"))
    tab = window.current_tab()
    tab.tree.collapseAll()
    tab.tree.expand(tab.model.index_of_key("block1"))
    with qtbot.waitSignal(tab.tensor_view.view_ready, timeout=20_000):
        tab.select_key("block1.layer2.weight")
    applied = []
    tab.filter_applied.connect(applied.append)
    qtbot.keyClicks(tab.filter, "layer0")
    assert tab.filter.text() == "layer0" and applied == []  # the field shows every key now
    qtbot.waitUntil(lambda: applied == ["layer0"], timeout=5_000)
    tab.filter.clear()
    assert applied == ["layer0", ""]  # clearing never waits
    assert tab.selected_key() == "block1.layer2.weight"
    assert tab.tree.isExpanded(tab.model.index_of_key("block1"))
    assert tab.tree.isExpanded(tab.model.index_of_key("block1.layer2"))
    assert not tab.tree.isExpanded(tab.model.index_of_key("block0"))


def test_filter_searches_in_a_worker_and_the_latest_text_wins(qtbot, window, tmp_path, monkeypatch):
    from ckpt_viewer.qt import checkpoint_tab

    keys = {f"layers.{i}.sub{j}.weight": torch.zeros(1) for i in range(200) for j in range(10)}
    open_and_wait(qtbot, window, builders.save(keys, tmp_path / "many.pt"))
    tab = window.current_tab()
    on_gui_thread = []
    search = checkpoint_tab.filter_rows

    def watched(text, index):
        on_gui_thread.append(threading.current_thread() is threading.main_thread())
        return search(text, index)

    monkeypatch.setattr(checkpoint_tab, "filter_rows", watched)
    applied = []
    tab.filter_applied.connect(applied.append)
    tab.apply_filter("layers.1")
    with qtbot.waitSignal(tab.filter_applied, timeout=10_000):
        tab.apply_filter("sub7")  # supersedes the search still running
    QThreadPool.globalInstance().waitForDone(10_000)
    QApplication.processEvents()  # a late result of "layers.1" would land now
    assert applied == ["sub7"] and on_gui_thread and not any(on_gui_thread)
    assert tab.model.visible_count == 1 + 200 + 2 * 200  # layers, layers.i, .sub7, .weight
    assert tab.filter_status.text() == "400 matches"  # the groups and their weights


def test_a_narrow_tree_hides_device_then_type_until_the_user_chooses(qtbot, window, training_file):
    open_and_wait(qtbot, window, training_file)
    tab = window.current_tab()
    header = tab.tree.header()
    window.resize(1600, 700)
    tab.splitter.setSizes([1000, 600])
    qtbot.waitUntil(lambda: not header.isSectionHidden(6) and not header.isSectionHidden(1))
    tab.splitter.setSizes([560, 1040])
    qtbot.waitUntil(lambda: header.isSectionHidden(6))
    assert not any(header.isSectionHidden(c) for c in (2, 3, 4, 5))  # Elements, Size stay
    tab.show_column(6, True)  # the user's choice wins from now on
    viewport = tab.tree.viewport()
    before = viewport.width()
    tab.splitter.setSizes([500, 1100])

    def refitted() -> bool:  # Key was fitted again, to the narrower tree
        others = sum(header.sectionSize(c) for c in range(1, 7) if not header.isSectionHidden(c))
        width = viewport.width()
        return width < before and header.sectionSize(0) == max(KEY_MIN_WIDTH, width - others)

    qtbot.waitUntil(refitted)
    assert not header.isSectionHidden(6)


def test_type_column_gives_way_before_nested_names_are_cut(qtbot, window, tmp_path):
    """Issue #13 screenshot at 1366x768: Type / Class stayed while a nested
    'num_batches_tracked' was cut to 'num_batches_...'."""
    model = torch.nn.Sequential(torch.nn.BatchNorm1d(3))
    path = builders.save({"state_dict": {"model": {"0": model[0].state_dict()}}}, tmp_path / "n.pt")
    open_and_wait(qtbot, window, path)
    tab = window.current_tab()
    tab.tree.expandAll()
    header = tab.tree.header()
    window.resize(1366, 768)
    tab.splitter.setSizes([595, 771])
    index = tab.model.index_of_key("state_dict.model.0.num_batches_tracked")
    needed = tab.tree.visualRect(index).left() + tab.tree.fontMetrics().horizontalAdvance(
        "num_batches_tracked"
    )
    qtbot.waitUntil(lambda: header.sectionSize(0) >= needed)


def test_drops_are_copies_never_moves(qtbot, window, training_file):
    """A file manager deletes the source of an accepted move: a drop is taken as a copy, or
    not at all when the source offers only a move."""
    from PySide6.QtCore import QPointF
    from PySide6.QtGui import QDropEvent

    data = QMimeData()
    data.setUrls([QUrl.fromLocalFile(training_file)])
    enter = QDragEnterEvent(
        QPoint(10, 10), Qt.CopyAction | Qt.MoveAction, data, Qt.LeftButton, Qt.NoModifier
    )
    enter.setDropAction(Qt.MoveAction)
    QApplication.sendEvent(window, enter)
    assert enter.isAccepted() and enter.dropAction() == Qt.CopyAction
    window.dragLeaveEvent(_leave())
    only_move = QDropEvent(QPointF(50, 50), Qt.MoveAction, data, Qt.LeftButton, Qt.NoModifier)
    window.dropEvent(only_move)
    assert not only_move.isAccepted() and not window.controller.busy()
    drop = QDropEvent(
        QPointF(50, 50), Qt.MoveAction | Qt.LinkAction, data, Qt.LeftButton, Qt.NoModifier
    )
    drop.setDropAction(Qt.MoveAction)
    loaded = []
    window.loaded.connect(loaded.append)
    window.dropEvent(drop)
    assert drop.isAccepted() and drop.dropAction() == Qt.LinkAction
    qtbot.waitUntil(lambda: loaded == [training_file], timeout=30_000)


def test_open_dialog_lists_every_format_we_read():
    import fnmatch

    from ckpt_viewer.qt.main_window import OPEN_FILTER

    patterns = OPEN_FILTER.split(";;")[0].split("(")[1].rstrip(")").split()
    for name in (
        "model.pth",
        "model.pt",
        "exported.pt2",
        "last.ckpt",
        "pytorch_model.bin",
        "model_best.pth.tar",
        "model.safetensors",
        "llama-q4_k_m.gguf",
        "state.pkl",
        "state.pickle",
        "model.safetensors.index.json",
        "pytorch_model.bin.index.json",
        "weights.npy",
        "arrays.npz",
        "model.onnx",
        "tf_model.h5",
        "model.weights.h5",
        "model.keras",
        "flax_model.msgpack",
    ):
        assert any(fnmatch.fnmatch(name, p) for p in patterns), name


LAPTOP = (0, 0, 1366, 740)  # a 1366 x 768 screen less a 28 px panel
DESKTOP = (0, 0, 1920, 1040)


def _window_on(qtbot, monkeypatch, available):
    from PySide6.QtCore import QRect

    from ckpt_viewer.qt.main_window import MainWindow

    monkeypatch.setattr(MainWindow, "_available", lambda self: QRect(*available))
    window = MainWindow()
    qtbot.addWidget(window)
    window.show()
    return window


def _frame_fits(window, available):
    """The window and a usual title bar and borders lie within the available area."""
    from PySide6.QtCore import QRect

    from ckpt_viewer.qt.main_window import FRAME_GUESS

    frame = window.frameGeometry()
    outer = QRect(frame.topLeft(), window.size() + FRAME_GUESS)
    return QRect(*available).contains(outer)


def test_first_window_fits_a_small_screen_with_its_status_bar(qtbot, monkeypatch):
    window = _window_on(qtbot, monkeypatch, LAPTOP)
    assert _frame_fits(window, LAPTOP)
    assert window.width() == 1280 and window.height() == 740 - 48
    assert window.statusBar().isVisible()
    big = _window_on(qtbot, monkeypatch, DESKTOP)
    assert (big.width(), big.height()) == (1280, 800) and _frame_fits(big, DESKTOP)


def test_a_window_saved_on_a_big_screen_comes_back_fitted(qtbot, monkeypatch):
    from PySide6.QtCore import QPoint, QSettings

    first = _window_on(qtbot, monkeypatch, DESKTOP)
    first.resize(1280, 800)
    first.move(500, 150)
    first.close()
    assert QSettings().value("window/size").width() == 1280
    again = _window_on(qtbot, monkeypatch, DESKTOP)  # the same screen: as it was
    assert (again.width(), again.height()) == (1280, 800)
    assert again.frameGeometry().topLeft() == QPoint(500, 150)
    again.close()
    laptop = _window_on(qtbot, monkeypatch, LAPTOP)  # never 640 x 480, never off-screen
    assert laptop.width() == 1280 and laptop.height() == 740 - 48
    assert _frame_fits(laptop, LAPTOP)
    assert laptop.current_tab() is None and laptop.tabs.width() > 1000


def test_a_place_off_every_screen_is_moved_onto_this_one(qtbot, monkeypatch):
    from PySide6.QtCore import QPoint, QSettings, QSize

    settings = QSettings()
    settings.setValue("window/size", QSize(900, 600))
    settings.setValue("window/pos", QPoint(2500, 1500))  # a monitor no longer there
    settings.setValue("window/screen", QSize(*LAPTOP[2:]))
    window = _window_on(qtbot, monkeypatch, LAPTOP)
    assert (window.width(), window.height()) == (900, 600) and _frame_fits(window, LAPTOP)


def test_a_maximized_window_comes_back_maximized(qtbot, monkeypatch):
    first = _window_on(qtbot, monkeypatch, LAPTOP)
    first.showMaximized()
    qtbot.waitUntil(first.isMaximized)
    first.close()
    again = _window_on(qtbot, monkeypatch, LAPTOP)
    assert again.isMaximized()
    again.showNormal()
    assert _frame_fits(again, LAPTOP)
