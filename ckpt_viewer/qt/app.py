"""QApplication set-up and `main()` (with --screenshot)."""

from __future__ import annotations

import sys
import tempfile

from PySide6.QtCore import QSettings, QTimer, qInstallMessageHandler
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QApplication

from ckpt_viewer.qt.theme import apply_theme, resource_path

SCREENSHOT_TIMEOUT_MS = 300_000


def _qt_messages(mode, context, message):
    # The offscreen platform (used for --screenshot and tests) warns on every window resize.
    if "propagateSizeHints" not in message:
        print(message, file=sys.stderr)


def make_app() -> QApplication:
    # A thread waiting for the GIL waits a whole switch interval each time; the GUI thread
    # takes it back hundreds of times per repaint while a worker computes, so a short interval
    # keeps repaints quick during a load without slowing the load itself.
    sys.setswitchinterval(0.0002)
    qInstallMessageHandler(_qt_messages)
    app = QApplication.instance()
    if app is None:
        app = QApplication(sys.argv[:1])
    app.setApplicationName("ckpt-viewer")
    app.setOrganizationName("ckpt-viewer")
    app.setWindowIcon(QIcon(resource_path("app.svg")))
    apply_theme(app, QSettings().value("dark", False, type=bool))
    return app


def scratch_settings(folder: str):
    """From now on settings are read from a copy of the user's (theme, splitters, columns) and
    written under `folder`: a screenshot leaves Open Recent, geometry and the rest as they were."""
    user = QSettings()
    values = {key: user.value(key) for key in user.allKeys()}
    QSettings.setDefaultFormat(QSettings.IniFormat)
    for scope in (QSettings.UserScope, QSettings.SystemScope):
        QSettings.setPath(QSettings.IniFormat, scope, folder)
    scratch = QSettings()
    for key, value in values.items():
        scratch.setValue(key, value)
    scratch.sync()


def take_screenshot(window, path: str, out: str, size=(1366, 768)) -> int:
    """Open path, select its largest tensor, wait for its statistics, save the window."""
    from ckpt_viewer.core import describe_error
    from ckpt_viewer.core.listing.text import safe_text

    app = QApplication.instance()
    result = {"code": 2, "done": False}

    def finish(code, message=""):
        if result["done"]:
            return
        result["done"] = True
        if message:
            print(safe_text(message), file=sys.stderr)
        result["code"] = code
        app.quit()

    def crashed(kind, exc, traceback):
        # an exception in any slot would print a traceback and leave the screenshot waiting
        finish(2, f"error: {path}: {describe_error(exc)}")

    def on_loaded(_path):
        tab = window.current_tab()
        key = tab.largest_tensor_key()
        if not key:
            save()
            return
        tab.tensor_view.view_ready.connect(lambda _key: QTimer.singleShot(100, save))
        tab.tensor_view.view_failed.connect(
            lambda failed_key, message: finish(2, f"error: {path}: {failed_key}: {message}")
        )
        tab.select_key(key)

    def on_run(view):  # a folder of checkpoints: its Run tab, once the exact pass is drawn
        view.ready.connect(lambda _report: QTimer.singleShot(100, lambda: save(view)))
        view.failed.connect(lambda message: finish(2, f"error: {path}: {message}"))

    def save(run_view=None):
        from ckpt_viewer.core import CheckpointError
        from ckpt_viewer.core.writing.destination import Sources

        shown = (
            run_view.controller.run.checkpoints if run_view else [window.current_tab().checkpoint]
        )
        try:  # `--screenshot model.pt` must not overwrite the checkpoint it shows
            for checkpoint in shown:
                Sources(checkpoint).refuse_source(out)
        except CheckpointError as exc:
            finish(2, f"error: {exc}")
            return
        if not window.grab().save(out):
            finish(2, f"error: {out}: the screenshot could not be written")
            return
        finish(0)

    window.resize(*size)  # offscreen: any size, whatever the (800 x 800) screen
    window.loaded.connect(on_loaded)
    window.runs_opened.connect(on_run)
    window.load_failed.connect(lambda p, message: finish(2, f"error: {p}: {message}"))
    QTimer.singleShot(SCREENSHOT_TIMEOUT_MS, lambda: finish(2, "error: screenshot timed out"))
    previous_hook, sys.excepthook = sys.excepthook, crashed
    try:
        window.open_paths([path])
        app.exec()
    finally:
        sys.excepthook = previous_hook
    return result["code"]


def finish_workers(timeout_ms: int = 5000):
    """Ask every worker to quit, then let the threads end before the interpreter does (their
    signals need live objects); a generator stops at its next step, well inside the timeout."""
    from ckpt_viewer.qt.workers import await_workers

    await_workers(timeout_ms)


def main(paths=(), screenshot: str | None = None, size=(1366, 768)) -> int:
    app = make_app()
    from ckpt_viewer.qt.main_window import MainWindow

    if screenshot:
        if len(paths) != 1:
            print("error: --screenshot needs exactly one PATH", file=sys.stderr)
            return 2
        scratch = tempfile.TemporaryDirectory(prefix="ckpt-viewer-screenshot-")
        scratch_settings(scratch.name)
    window = MainWindow()
    window.show()
    if screenshot:
        code = take_screenshot(window, paths[0], screenshot, size)
    else:
        if paths:
            window.open_paths(paths)
        code = app.exec()
    window.cancel_all()
    finish_workers()
    return code
