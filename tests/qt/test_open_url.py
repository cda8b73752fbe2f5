"""File > Open URL and Open Recent with URLs, against a loopback HTTP Range server."""

import pytest
from PySide6.QtCore import QThreadPool
from PySide6.QtWidgets import QApplication, QInputDialog, QMessageBox, QTreeView
from rangeserver import RangeServer

import builders

pytest.importorskip("aiohttp")


@pytest.fixture
def server(tmp_path):
    builders.training_checkpoint(tmp_path / "train.pth")
    with RangeServer(str(tmp_path), lifetime=120) as running:
        yield running


def test_open_url_dialog_opens_a_tab_and_remembers_the_url(qtbot, window, server):
    url = f"{server.url}/train.pth"
    dialog = window.open_url_dialog()
    assert window.findChild(QInputDialog, "openUrlDialog") is dialog
    with qtbot.waitSignal(window.loaded, timeout=30_000) as blocker:
        dialog.setTextValue(f"  {url} ")
        dialog.accept()
    assert blocker.args == [url]
    assert window.tabs.tabText(window.tabs.currentIndex()) == "train.pth"
    assert window.tabs.currentWidget().findChild(QTreeView, "keyTree").model().rowCount() == 4
    assert window.recent_files()[0] == url
    action = next(a for a in window.recent_menu.actions() if a.text() == url)
    window.tabs.removeTab(window.tabs.currentIndex())
    with qtbot.waitSignal(window.loaded, timeout=30_000):
        action.trigger()


def test_missing_url_fails_with_one_line(qtbot, window, server):
    url = f"{server.url}/nothing.pt"
    with qtbot.waitSignal(window.load_failed, timeout=30_000) as blocker:
        window.open_paths([url])
    assert blocker.args == [url, "HTTP 404 not found"]
    dialog = window.findChild(QMessageBox, "errorDialog")  # window-modal: the loop runs on
    assert dialog is not None and dialog.text() == f"{url}\n\nHTTP 404 not found"


def test_remote_load_can_be_cancelled(qtbot, window, server):
    url = f"{server.url}/train.pth"
    with qtbot.waitSignal(window.load_failed, timeout=5000) as blocker:
        window.open_paths([url])
        assert window.findChild(object, "cancelButton").isVisible()
        window.cancel_loading()
    assert blocker.args == [url, "cancelled"]
    QThreadPool.globalInstance().waitForDone(30_000)
    QApplication.processEvents()
    assert window.tabs.tabText(0) == "Welcome" and window.tabs.count() == 1
