"""Helpers for the GUI tests (a uniquely named module: `conftest` is taken by several folders)."""


def open_and_wait(qtbot, window, path, timeout=30_000):
    with qtbot.waitSignal(window.loaded, timeout=timeout) as blocker:
        window.open_paths([path])
    return blocker.args[0]
