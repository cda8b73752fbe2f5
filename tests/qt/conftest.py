import pytest

import builders


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path, monkeypatch):
    """QSettings (recent files, geometry, theme) go to a temporary folder, not the user's."""
    from PySide6.QtCore import QSettings
    QSettings.setDefaultFormat(QSettings.IniFormat)
    QSettings.setPath(QSettings.IniFormat, QSettings.UserScope, str(tmp_path / "settings"))
    yield


@pytest.fixture
def window(qtbot, qapp):
    from ckpt_viewer.qt.app import make_app
    from ckpt_viewer.qt.main_window import MainWindow

    make_app()
    win = MainWindow()
    qtbot.addWidget(win)
    win.show()
    return win


def open_and_wait(qtbot, window, path, timeout=30_000):
    with qtbot.waitSignal(window.loaded, timeout=timeout) as blocker:
        window.open_paths([path])
    return blocker.args[0]


@pytest.fixture
def training_file(tmp_path):
    return builders.training_checkpoint(tmp_path / "train.pth")
