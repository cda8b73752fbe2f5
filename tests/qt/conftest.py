import pytest

import builders


@pytest.fixture(autouse=True)
def fresh_settings(tmp_path, private_user_folders):
    """Each GUI test starts with empty settings (recent files, geometry, theme); the session-wide
    fixture in tests/conftest.py already keeps them out of the user's folders."""
    from PySide6.QtCore import QSettings

    QSettings.setPath(QSettings.IniFormat, QSettings.UserScope, str(tmp_path / "settings"))
    yield
    QSettings.setPath(
        QSettings.IniFormat, QSettings.UserScope, str(private_user_folders / "settings")
    )


@pytest.fixture
def window(qtbot, qapp):
    from ckpt_viewer.qt.app import make_app
    from ckpt_viewer.qt.main_window import MainWindow

    make_app()
    win = MainWindow()
    qtbot.addWidget(win)
    win.show()
    return win


@pytest.fixture
def training_file(tmp_path):
    return builders.training_checkpoint(tmp_path / "train.pth")


@pytest.fixture
def synchronous_jobs():
    """Controllers run their jobs inline: a test reads the result right after the request."""
    from ckpt_viewer.qt import workers

    with workers.synchronous():
        yield
