import os
import sys

import pytest

# Qt runs without a screen in every test; set before anything imports Qt.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("QT_LOGGING_RULES", "qt.qpa.*=false")

sys.path.insert(0, os.path.dirname(__file__))  # tests/builders.py


@pytest.fixture(scope="session", autouse=True)
def private_user_folders(tmp_path_factory):
    """Settings, caches and data of this process and of every GUI it starts stay under tmp.

    Session-wide and autouse, so it is in place before pytest-qt's QApplication or any QSettings
    exists; subprocesses inherit the environment.
    """
    from PySide6.QtCore import QSettings

    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as patch:
        for name in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME"):
            patch.setenv(name, str(home / name.lower()))
        QSettings.setDefaultFormat(QSettings.IniFormat)
        # Apart: a user-scope key that is missing is looked up in the system scope.
        QSettings.setPath(QSettings.IniFormat, QSettings.UserScope, str(home / "settings"))
        QSettings.setPath(QSettings.IniFormat, QSettings.SystemScope, str(home / "system"))
        yield home


@pytest.fixture
def gui_env(tmp_path):
    """The environment for a subprocess that starts the GUI: its home is a tmp folder."""
    return {
        **os.environ,
        "HOME": str(tmp_path),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
    }
