"""The tests never touch the user's own settings."""

import os


def test_settings_are_written_under_tmp(tmp_path_factory, window):
    from PySide6.QtCore import QSettings

    base = str(tmp_path_factory.getbasetemp())
    window.settings.setValue("probe", 1)
    window.settings.sync()
    assert window.settings.fileName().startswith(base)
    assert QSettings().fileName().startswith(base)
    assert os.environ["XDG_CONFIG_HOME"].startswith(base)
