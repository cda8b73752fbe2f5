"""pyqtgraph, imported once in a worker (an import the GUI thread must not wait for); views that
need it wait for `plotting_ready(message)`."""

from __future__ import annotations

import gc
import importlib
import threading
import time
import weakref
from collections.abc import Callable, Generator, Iterator
from typing import Any

import shiboken6
from PySide6 import QtCore, QtGui, QtWidgets
from PySide6.QtCore import QObject, QTimer
from PySide6.QtWidgets import QApplication, QWidget

from ckpt_viewer.qt import workers

TOUCH_SLICE = 0.008  # seconds of type creation per event-loop turn (half a frame)
# "settled": set once the import ended (or failed) and the waiting views were told
_plotting = {
    "module": None,
    "started": False,
    "failed": "",
    "waiting": weakref.WeakSet(),
    "settled": threading.Event(),
    "jobs": None,
}


def preload_plotting():
    """Start the import, once; the application owns the job (exit waits for it)."""
    if _plotting["started"]:
        return
    _plotting["started"] = True
    names = [(module, name) for module in (QtCore, QtGui, QtWidgets) for name in dir(module)]
    _create_qt_types(names)


def _create_qt_types(names: list) -> None:
    """Have PySide create its lazily made types here, on the GUI thread, a few at a time, then
    import pyqtgraph: its import reads every name of QtCore/QtGui/QtWidgets, and PySide making
    a type (and its Python enums) on the worker while the GUI thread made another crashed the
    process now and then (a segfault inside enum creation)."""
    deadline = time.perf_counter() + TOUCH_SLICE
    while names and (workers.is_synchronous() or time.perf_counter() < deadline):
        module, name = names.pop()
        getattr(module, name, None)
    # types and their descriptors live as long as the process: a young collection walking the
    # tens of thousands made here (and by the import) was a stall of its own
    gc.freeze()
    if names:
        QTimer.singleShot(0, lambda: _create_qt_types(names))
        return
    jobs = _plotting["jobs"] = workers.Controller(QApplication.instance())
    jobs.start(
        "import",
        importlib.import_module,
        "pyqtgraph",
        on_result=_plotting_ready,
        on_error=lambda message: _plotting_ready(None, message),
    )


def wait_for_plotting(view):
    """view.plotting_ready(message) is called once pyqtgraph has been imported (or failed)."""
    _plotting["waiting"].add(view)
    preload_plotting()


def plotting_or_wait(view: QWidget) -> bool:
    """True when the import has ended (plotting_module() is pyqtgraph, or None when it
    failed); otherwise False, and view.plotting_ready(message) is called once it ends."""
    if _plotting["module"] is not None or _plotting["failed"]:
        return True
    wait_for_plotting(view)
    return False


def plotting_module():
    """The pyqtgraph module, or None while it is being imported (or when it failed)."""
    return _plotting["module"]


def _plotting_ready(module, message=""):
    _plotting["module"], _plotting["failed"] = module, message
    gc.freeze()  # the import's modules (see _create_qt_types)
    for view in list(_plotting["waiting"]):
        if shiboken6.isValid(view):  # not a closed tab's view
            view.plotting_ready(message)
    _plotting["waiting"].clear()
    _plotting["settled"].set()


def plot_widget_steps(pg: Any, background: Any = "default") -> Generator[None, None, Any]:
    """A pyqtgraph PlotWidget made in pieces, yielding between them (PlotWidget() in one call
    held the GUI thread over a frame): `plot = yield from plot_widget_steps(pg)`."""
    box = pg.ViewBox()
    yield
    axes = {side: pg.AxisItem(side) for side in ("left", "bottom", "top", "right")}
    yield
    item = pg.PlotItem(viewBox=box, axisItems=axes)
    yield
    return pg.PlotWidget(background=background, plotItem=item)


class StepBuild:
    """A build run one step per event-loop turn (`start`), or at once (`finish`, which also
    completes one under way). `make` returns the steps: an iterator that yields between them;
    `done` is called once they have all run."""

    def __init__(
        self,
        owner: QObject,
        make: Callable[[], Iterator[None]],
        done: Callable[[], object] | None = None,
    ) -> None:
        self.owner, self.make, self.done_call = owner, make, done
        self.steps: Iterator[None] | None = None
        self.done = False

    def start(self) -> None:
        if self.steps is None and not self.done:
            self.steps = self.make()
            QTimer.singleShot(1, self.owner, self._next)

    def _next(self) -> None:
        if self.step():
            QTimer.singleShot(1, self.owner, self._next)

    def step(self) -> bool:
        """Run one step; False once the build is complete."""
        if self.done:
            return False
        if self.steps is None:
            self.steps = self.make()
        try:
            next(self.steps)
        except StopIteration:
            self.done = True
            if self.done_call is not None:
                self.done_call()
        return not self.done

    def finish(self) -> None:
        while self.step():
            pass
