"""Run core work off the GUI thread: progress, cooperative cancel, errors, stale results.

Every job belongs to a Controller, held by the pane's PaneController, the one place a pane's
work starts: a new job in a slot supersedes (cancels) the slot's old one, the owner's end
cancels all of them, and a callback never reaches an owner that is gone or a job that was
superseded. A generator job reports
progress by yielding; cancelling it stops it at its next yield and closes it there, on its own
thread. A plain function runs to its end and its result is dropped.

Synchronous mode (`CKPT_VIEWER_SYNCHRONOUS=1`, or `with workers.synchronous():` in tests) runs
each job inline, on the calling thread, callbacks included, and starts debounced jobs at once.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import shiboken6
from PySide6.QtCore import QCoreApplication, QObject, QThreadPool, QTimer, Signal

from ckpt_viewer.core import describe_error, paused
from ckpt_viewer.core.progress import cancelled_by

_mode = {"synchronous": os.environ.get("CKPT_VIEWER_SYNCHRONOUS") == "1"}
_live: set[Job] = set()  # jobs started and not yet finished (exit cancels them)


@contextlib.contextmanager
def synchronous(on: bool = True) -> Iterator[None]:
    """Run every job inline while inside (tests: no waiting for threads)."""
    before, _mode["synchronous"] = _mode["synchronous"], on
    try:
        yield
    finally:
        _mode["synchronous"] = before


def is_synchronous() -> bool:
    return _mode["synchronous"]


class Job(QObject):
    """One call of func(*args) on the thread pool; signals arrive on the GUI thread."""

    progressed = Signal(object)  # what a generator yielded
    returned = Signal(object)
    errored = Signal(str)  # one line (describe_error)
    finished = Signal()  # always last, cancelled or not

    def __init__(self, func: Callable, args: tuple):
        super().__init__()
        self.func, self.args = func, args
        self.stop = threading.Event()
        self.label = ""

    def cancel(self) -> None:
        """Stop at the next yield (a generator); the result, if any, is not delivered."""
        self.stop.set()

    def launch(self) -> None:
        _live.add(self)
        self.finished.connect(lambda: _live.discard(self))  # last: kept alive until delivered
        if _mode["synchronous"]:
            self.run()
        else:
            QThreadPool.globalInstance().start(self.run)

    def run(self) -> None:
        try:
            result = self._call()
        except Exception as exc:  # noqa: BLE001 - every failure becomes one line
            if not self.stop.is_set():
                self.errored.emit(describe_error(exc))
        else:
            if not self.stop.is_set():
                self.returned.emit(result)
        self.finished.emit()

    def _call(self) -> Any:
        if not inspect.isgeneratorfunction(self.func):
            return self.func(*self.args)
        with contextlib.closing(self.func(*self.args)) as generator, cancelled_by(self.stop):
            try:
                while not self.stop.is_set():
                    self.progressed.emit(next(generator))
            except StopIteration as end:
                return end.value
        return None


class Controller(QObject):
    """The jobs of one owner, one per slot ("load", "compare", "overlay", ...)."""

    def __init__(self, owner: QObject):
        super().__init__(owner)
        self.running: dict[str, Job] = {}
        self.timers: dict[str, QTimer] = {}  # start_later's wait, per slot
        self.waiting: dict[str, tuple] = {}  # what each wait starts
        running = self.running  # not self: the wrapper is going away
        self.destroyed.connect(lambda *_: _cancel_all(running))

    def start(
        self,
        slot: str,
        func: Callable,
        *args: Any,
        on_result: Callable | None = None,
        on_error: Callable[[str], Any] | None = None,
        on_progress: Callable | None = None,
        on_finished: Callable[[], Any] | None = None,
        label: str = "",
    ) -> Job:
        """Cancel the slot's previous job and start this one; callbacks only while it is
        current (not superseded, not cancelled, owner alive). The job leaves `running` as its
        result or error arrives, before its callback runs. `label` says what it does (the
        window's status bar lists the labelled jobs)."""
        self.cancel(slot)
        job = Job(func, args)
        job.label = label
        self.running[slot] = job

        def current() -> bool:
            return shiboken6.isValid(self) and self.running.get(slot) is job

        def live(callback: Callable | None, last: bool = False) -> Callable:
            def deliver(*values: Any) -> None:
                if not current():
                    return
                if last:
                    del self.running[slot]
                if callback is not None:
                    callback(*values)
                if last and on_finished is not None:
                    on_finished()

            return deliver

        job.returned.connect(live(on_result, last=True))
        job.errored.connect(live(on_error, last=True))
        if on_progress is not None:
            job.progressed.connect(live(on_progress))
        job.finished.connect(live(None, last=True))  # ended with neither (a stopped generator)
        job.launch()
        return job

    def labels(self) -> dict[str, str]:
        """slot -> label of the labelled jobs running now, oldest first."""
        return {slot: job.label for slot, job in self.running.items() if job.label}

    def start_later(self, slot: str, delay_ms: int, func: Callable, *args: Any, **callbacks: Any):
        """start() once `delay_ms` pass without another request for the slot (typing): each
        request cancels the slot's job and restarts the wait."""
        self.cancel(slot)
        if _mode["synchronous"]:
            self.start(slot, func, *args, **callbacks)
            return
        timer = self.timers.get(slot)
        if timer is None:
            timer = self.timers[slot] = QTimer(self)
            timer.setSingleShot(True)
            timer.timeout.connect(
                lambda: self.start(slot, *self.waiting[slot][0], **self.waiting[slot][1])
            )
        self.waiting[slot] = ((func, *args), callbacks)
        timer.start(delay_ms)

    def cancel(self, slot: str | None = None) -> None:
        """Stop the slot's job (every job when None), and a start still waiting; their
        callbacks are dropped."""
        for name in list(self.timers) if slot is None else [slot]:
            timer = self.timers.get(name)
            if timer is not None:
                timer.stop()
        if slot is None:
            _cancel_all(self.running)
            return
        job = self.running.pop(slot, None)
        if job is not None:
            job.cancel()

    def busy(self, slot: str | None = None) -> bool:
        if slot is None:
            return bool(self.running) or any(t.isActive() for t in self.timers.values())
        timer = self.timers.get(slot)
        return slot in self.running or (timer is not None and timer.isActive())


class PaneController(QObject):
    """What one pane computes: it owns the pane's jobs (`jobs`, whose slots are the one
    stale-result guard), decides what to start and emits what they give as its own signals;
    the pane's widgets only show what it emits and call its methods on user actions. Made
    with the pane as its parent, it ends the pane's jobs when the pane goes."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.jobs = Controller(self)

    def busy(self, slot: str | None = None) -> bool:
        return self.jobs.busy(slot)

    def cancel(self, slot: str | None = None) -> None:
        """Stop the slot's job (every job when None); nothing more arrives from it."""
        self.jobs.cancel(slot)


def _cancel_all(running: dict) -> None:
    for job in list(running.values()):
        job.cancel()
    running.clear()


def await_workers(timeout_ms: int = 5000) -> bool:
    """Cancel every job still running and wait for the threads (exit): True when all ended
    in time."""
    for job in list(_live):
        job.cancel()
    return QThreadPool.globalInstance().waitForDone(timeout_ms)


class GuiThreadCollector(QObject):
    """The window's one rule for garbage: automatic collection is off, and this collector,
    on the GUI thread every INTERVAL_MS, either freezes what a collection would walk, when
    that is a bulk (over BULK objects: what a load, an import or a comparison built, long
    lived by nature), or collects as CPython would (the generations whose thresholds were
    crossed; a full collection only once the objects moved to the old generation since the
    last exceed a quarter of those it held). So no young or middle collection walks more than
    BULK objects (a full one, rare by that quarter, walks the old generation too); frozen
    objects are still freed by reference counting, and a tab's closing
    unfreezes them (checkpoint_tab, main_window), so their cycles are collected then. Code
    that knows it made a bulk applies the same rule where it made it instead of at the next
    turn: a load or a comparison at its end (paused_gc(freeze=True), whose pause also keeps
    the collector off what it is still building, for LONGEST_PAUSE_S at most), PySide's
    types and pyqtgraph's import as they are made (plotting).

    Why on the GUI thread: left automatic, the collector runs on whichever thread allocates
    when a threshold is crossed, a worker included, and a Qt object freed among that garbage
    is destroyed on the wrong thread ("QBasicTimer::stop: Failed. Possibly trying to stop
    from a different thread", then a crash)."""

    INTERVAL_MS = 500
    LONGEST_PAUSE_S = 5.0  # a pause held longer (a slow URL, a stuck worker) is not obeyed
    # a bulk: frozen, not walked (torch's import, a comparison's trees and rows); a diff's
    # young objects, 50,000 to 90,000 between two turns of a diff that outlived its pause,
    # walked at once held the window over a frame: at most this many are walked
    BULK = 20_000

    def __init__(self, parent: QObject) -> None:
        super().__init__(parent)
        gc.disable()
        self.paused_since: float | None = None
        # CPython's guard on full collections, which gc.collect(2) skips: one only once the
        # objects moved to the old generation since the last exceed a quarter of those it held
        self.long_lived = len(gc.get_objects(2))
        self.pending = 0
        self.timer = QTimer(self)
        self.timer.timeout.connect(self.collect)
        self.timer.start(self.INTERVAL_MS)

    def collect(self) -> None:
        counts, thresholds = gc.get_count(), gc.get_threshold()
        if paused():  # a job builds its bulk: it freezes it at its end
            now = time.monotonic()
            self.paused_since = self.paused_since or now
            if now - self.paused_since < self.LONGEST_PAUSE_S:
                return
        else:
            self.paused_since = None
        generation = next(
            (
                level
                for level in (2, 1, 0)
                if counts[level] > thresholds[level]
                and (level < 2 or self.pending * 4 >= self.long_lived)
            ),
            -1,
        )
        # what the collection would walk: the young, and for the middle generation its own
        young = counts[0]
        if generation == 1:
            young = len(gc.get_objects(0)) + len(gc.get_objects(1))
        if young > self.BULK:
            gc.freeze()
            return
        if generation == 1:  # its survivors move to the old generation
            self.pending += young
        if generation >= 0:
            gc.collect(generation)
        if generation == 2:
            self.long_lived, self.pending = len(gc.get_objects(2)), 0


def collect_on_gui_thread() -> None:
    """Install the GUI-thread collector once per application (MainWindow calls it)."""
    app = QCoreApplication.instance()
    if app is not None and app.findChild(GuiThreadCollector) is None:
        GuiThreadCollector(app)
