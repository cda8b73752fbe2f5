"""Run core work off the GUI thread (superqt workers): progress, cooperative cancel, errors.

Every job a widget starts belongs to that widget's Controller: a new job in the same slot
supersedes (quits) the old one, the widget's end quits all of them, and a callback never
reaches a widget that is gone or a job that was cancelled. Generators stop at their next
yield, and are closed on their own thread (a generator left suspended inside a `with` would
be finalized later on another thread: numpy's errstate, for one, then fails); a plain function
runs to its end and its result is dropped.
"""

from __future__ import annotations

import contextlib
import inspect
import threading

import shiboken6
from PySide6.QtCore import QObject, QThreadPool
from superqt.utils import WorkerBase, create_worker

from ckpt_viewer.core import describe_error


def start(func, *args, on_result=None, on_error=None, on_progress=None, on_finished=None):
    """Start func(*args) in a worker thread; a generator func reports progress by yielding.

    The callbacks run on the GUI thread. Returns the worker; `worker.quit()` asks a generator to
    stop at its next yield (a plain function's result is then simply dropped by the caller).
    Widgets should prefer a Controller, which also guards against late callbacks.
    """
    worker = create_worker(func, *args, _start_thread=False, _ignore_errors=True)
    if on_result is not None:
        worker.returned.connect(on_result)
    if on_error is not None:
        worker.errored.connect(lambda exc: on_error(describe_error(exc)))
    if on_progress is not None and hasattr(worker, "yielded"):
        worker.yielded.connect(on_progress)
    if on_finished is not None:
        worker.finished.connect(on_finished)
    worker.start()
    return worker


_stops: set[threading.Event] = set()      # of every controlled job still running


def _stoppable(func, stop: threading.Event):
    """func's generator, ended (and closed, in the worker's thread) at the first yield after
    `stop` is set; its progress and return value pass through."""
    def run(*args):
        with contextlib.closing(func(*args)) as generator:
            try:
                value = next(generator)
                while True:
                    yield value
                    if stop.is_set():
                        return None
                    value = next(generator)
            except StopIteration as end:
                return end.value
    return run


def _quit_all(running: dict):
    for worker, stop in list(running.values()):
        _stop(worker, stop)
    running.clear()


def _stop(worker, stop):
    if stop is None:
        worker.quit()            # a plain function: its result will be dropped
    else:
        stop.set()               # the generator ends itself at its next yield


class Controller(QObject):
    """The workers of one owner widget, one per slot ("load", "compare", "overlay", ...)."""

    def __init__(self, owner: QObject):
        super().__init__(owner)
        self.running: dict[str, tuple[WorkerBase, threading.Event | None]] = {}
        running = self.running                       # not self: the wrapper is going away
        self.destroyed.connect(lambda *_: _quit_all(running))

    def start(self, slot: str, func, *args, on_result=None, on_error=None, on_progress=None,
              on_finished=None) -> WorkerBase:
        """Quit the slot's previous job and start this one; callbacks only while it is current."""
        self.cancel(slot)
        stop = threading.Event() if inspect.isgeneratorfunction(func) else None
        job = _stoppable(func, stop) if stop is not None else func
        worker = create_worker(job, *args, _start_thread=False, _ignore_errors=True)
        self.running[slot] = (worker, stop)
        if stop is not None:
            _stops.add(stop)

        def current() -> bool:
            return shiboken6.isValid(self) and self.running.get(slot, (None,))[0] is worker

        def live(callback):
            def deliver(*values):
                if current():
                    callback(*values)
            return deliver

        def ended():
            _stops.discard(stop)
            if current():
                del self.running[slot]
                if on_finished is not None:
                    on_finished()
        if on_result is not None:
            worker.returned.connect(live(on_result))
        if on_error is not None:
            worker.errored.connect(live(lambda exc: on_error(describe_error(exc))))
        if on_progress is not None and hasattr(worker, "yielded"):
            worker.yielded.connect(live(on_progress))
        worker.finished.connect(ended)
        worker.start()
        return worker

    def cancel(self, slot: str | None = None):
        """Ask the slot's job (every job when None) to stop; its callbacks are dropped."""
        if slot is None:
            _quit_all(self.running)
            return
        worker, stop = self.running.pop(slot, (None, None))
        if worker is not None:
            _stop(worker, stop)

    def busy(self, slot: str | None = None) -> bool:
        return bool(self.running) if slot is None else slot in self.running


def await_workers(timeout_ms: int = 5000) -> bool:
    """Stop every worker still running and wait for the threads (exit): True when all ended."""
    for stop in list(_stops):
        stop.set()
    try:
        WorkerBase.await_workers(timeout_ms)
    except RuntimeError:
        return False
    return QThreadPool.globalInstance().activeThreadCount() == 0
