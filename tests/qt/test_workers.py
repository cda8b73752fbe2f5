"""Jobs: a generator stops at its next yield and is closed on its own thread; a controller
drops the callbacks of a superseded job; synchronous mode runs jobs inline; start_later waits
for the last of a burst of requests."""

import threading

import pytest
from PySide6.QtWidgets import QWidget

from ckpt_viewer.qt import workers


@pytest.fixture
def jobs(qtbot):
    owner = QWidget()
    qtbot.addWidget(owner)
    yield workers.Controller(owner)
    owner.deleteLater()


def test_cancel_closes_the_generator_on_its_worker_thread(qtbot, jobs):
    gate, started, closed_on, returned = threading.Event(), threading.Event(), [], []

    def job():
        try:
            while True:
                started.set()
                yield 0.5
                gate.wait(10)
        finally:
            closed_on.append(threading.current_thread())

    worker = jobs.start("slot", job, on_result=returned.append)
    qtbot.waitUntil(started.is_set, timeout=5000)
    with qtbot.waitSignal(worker.finished, timeout=5000):
        jobs.cancel("slot")
        gate.set()
    assert closed_on and closed_on[0] is not threading.main_thread() and returned == []
    assert not jobs.busy()


def test_controller_supersedes_and_drops_late_results(qtbot, jobs):
    gate, results = threading.Event(), []

    def slow():
        gate.wait(10)
        return "first"

    first = jobs.start("slot", slow, on_result=results.append)
    jobs.start("slot", lambda: "second", on_result=results.append)
    qtbot.waitUntil(lambda: results == ["second"], timeout=5000)
    with qtbot.waitSignal(first.finished, timeout=5000):  # still blocked: connected in time
        gate.set()
    assert results == ["second"] and not jobs.busy()


def test_synchronous_mode_runs_jobs_inline_with_their_callbacks(jobs):
    seen, threads = [], []

    def job(n):
        threads.append(threading.current_thread())
        yield from range(n)
        return "done"

    def broken():
        raise ValueError("bad\nsecond line")

    with workers.synchronous():
        jobs.start("a", job, 3, on_progress=seen.append, on_result=seen.append)
        jobs.start_later("b", 10_000, broken, on_error=seen.append)  # no wait either
    assert seen == [0, 1, 2, "done", "unexpected ValueError: bad"]
    assert threads == [threading.main_thread()] and not jobs.busy()


def test_start_later_runs_only_the_last_request(qtbot, jobs):
    results = []
    for word in ("a", "ab", "abc"):
        jobs.start_later("plan", 20, str.upper, word, on_result=results.append)
    assert jobs.busy("plan")
    qtbot.waitUntil(lambda: results == ["ABC"], timeout=5000)
    qtbot.waitUntil(lambda: not jobs.busy(), timeout=5000)
    jobs.start_later("plan", 20, str.upper, "x", on_result=results.append)
    jobs.cancel("plan")  # a wait cancelled starts nothing
    assert not jobs.busy() and results == ["ABC"]


def test_pane_controller_owns_its_jobs_and_ends_them_with_its_pane(qtbot):
    pane = QWidget()
    controller = workers.PaneController(pane)
    gate, started = threading.Event(), threading.Event()

    def held():
        started.set()
        yield 0.0
        gate.wait(10)
        yield 1.0

    worker = controller.jobs.start("slot", held)
    qtbot.waitUntil(started.is_set, timeout=5000)
    assert controller.busy("slot") and controller.busy()
    with qtbot.waitSignal(worker.finished, timeout=5000):
        pane.deleteLater()  # the pane goes: its controller cancels the job
        qtbot.waitUntil(lambda: worker.stop.is_set(), timeout=5000)
        gate.set()
