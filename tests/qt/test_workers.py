"""Worker quit: a generator stops at its next yield and is closed on its own thread; a
controller drops the callbacks of a superseded job."""

import threading

from ckpt_viewer.qt import workers


def test_quit_closes_the_generator_on_its_worker_thread(qtbot):
    gate, started, closed_on, returned = threading.Event(), threading.Event(), [], []

    def job():
        try:
            while True:
                started.set()
                yield 0.5
                gate.wait(10)
        finally:
            closed_on.append(threading.current_thread())

    worker = workers.start(job, on_result=returned.append)
    qtbot.waitUntil(started.is_set, timeout=5000)
    with qtbot.waitSignal(worker.finished, timeout=5000):
        worker.quit()
        gate.set()
    assert closed_on and closed_on[0] is not threading.main_thread() and returned == []


def test_controller_supersedes_and_drops_late_results(qtbot):
    from PySide6.QtWidgets import QWidget

    owner = QWidget()
    qtbot.addWidget(owner)
    jobs = workers.Controller(owner)
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
