"""Run core work off the GUI thread (superqt workers): progress, cooperative cancel, errors.

Every job a widget starts belongs to that widget's Controller: a new job in the same slot
supersedes (quits) the old one, the widget's end quits all of them, and a callback never
reaches a widget that is gone or a job that was cancelled. `worker.quit()` on a generator job
makes it stop at its next yield and close there, on its own thread (superqt would leave it
suspended, to be finalized later on another thread, where a `with np.errstate()` inside it
fails); a plain function runs to its end and its result is dropped.
"""

from __future__ import annotations

import contextlib
import inspect
import threading

import shiboken6
from PySide6.QtCore import QObject, QThreadPool
from superqt.utils import WorkerBase, create_worker

from ckpt_viewer.core import describe_error


def _create(func, args) -> WorkerBase:
    if not inspect.isgeneratorfunction(func):
        return create_worker(func, *args, _start_thread=False, _ignore_errors=True)
    stop = threading.Event()
    abort = []  # superqt's own quit, once the worker exists

    def run(*values):
        with contextlib.closing(func(*values)) as generator:
            try:
                value = next(generator)
                while True:
                    yield value
                    if stop.is_set():
                        break
                    value = next(generator)
            except StopIteration as end:
                return end.value
        abort[0]()  # closed here; now superqt drops the (absent) result
        return None

    worker = create_worker(run, *args, _start_thread=False, _ignore_errors=True)
    abort.append(worker.quit)
    worker.quit = stop.set  # what Cancel, a controller and await_workers call
    return worker


def start(func, *args, on_result=None, on_error=None, on_progress=None, on_finished=None):
    """Start func(*args) in a worker thread; a generator func reports progress by yielding.

    The callbacks run on the GUI thread. Returns the worker; `worker.quit()` asks a generator to
    stop at its next yield (a plain function's result is then simply dropped by the caller).
    Widgets should prefer a Controller, which also guards against late callbacks.
    """
    worker = _create(func, args)
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


def _quit_all(running: dict):
    for worker in list(running.values()):
        worker.quit()
    running.clear()


class Controller(QObject):
    """The workers of one owner widget, one per slot ("load", "compare", "overlay", ...)."""

    def __init__(self, owner: QObject):
        super().__init__(owner)
        self.running: dict[str, WorkerBase] = {}
        running = self.running  # not self: the wrapper is going away
        self.destroyed.connect(lambda *_: _quit_all(running))

    def start(
        self,
        slot: str,
        func,
        *args,
        on_result=None,
        on_error=None,
        on_progress=None,
        on_finished=None,
    ) -> WorkerBase:
        """Quit the slot's previous job and start this one; callbacks only while it is current."""
        self.cancel(slot)
        worker = _create(func, args)
        self.running[slot] = worker

        def current() -> bool:
            return shiboken6.isValid(self) and self.running.get(slot) is worker

        def live(callback):
            def deliver(*values):
                if current():
                    callback(*values)

            return deliver

        def ended():
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
        worker = self.running.pop(slot, None)
        if worker is not None:
            worker.quit()

    def busy(self, slot: str | None = None) -> bool:
        return bool(self.running) if slot is None else slot in self.running


def await_workers(timeout_ms: int = 5000) -> bool:
    """Ask every worker still running to quit and wait for the threads (exit): True when all
    ended in time."""
    try:
        WorkerBase.await_workers(timeout_ms)
    except RuntimeError:
        return False
    return QThreadPool.globalInstance().activeThreadCount() == 0
