"""The bounded scan engine (check, layers) and the progress driver: results in the items' order,
at most two tasks per worker in flight, cancel by closing, progress by weight."""

import threading

import pytest

from ckpt_viewer.core.analysis.scan import scan
from ckpt_viewer.core.progress import Cancelled, run, within


def test_results_come_in_the_items_order_whatever_order_they_finish_in():
    second_done = threading.Event()

    def work(item, stop):
        if item == 0:
            assert second_done.wait(10)  # the first item finishes last
        else:
            second_done.set()
        return item * 2

    assert run(scan([0, 1], work, workers=2)) == [0, 2]


def test_progress_is_by_weight_and_ends_at_one():
    progress = list(scan(list(range(5)), lambda item, stop: item, weight=lambda item: item))
    assert progress[-1] == 1.0 and progress == sorted(progress)


def test_closing_stops_the_work_and_leaves_the_rest_unstarted():
    started, release = [], threading.Event()

    def work(item, stop):
        started.append(item)
        release.wait(10)
        return stop.is_set()

    stop = threading.Event()
    job = scan(list(range(100)), work, workers=1, stop=stop)
    next(job)
    job.close()
    release.set()
    assert stop.is_set() and len(started) <= 2  # one running, one queued at the most


def test_an_error_in_the_work_ends_the_scan_with_it():
    def work(item, stop):
        if item == 3:
            raise ValueError("bad item")
        return item

    with pytest.raises(ValueError, match="bad item"):
        run(scan(list(range(6)), work, workers=2))


def steps(n, result="done"):
    for _ in range(n):
        yield 0.5
    return result


def test_within_maps_steps_into_a_span_and_returns_the_result():
    def outer():
        value = yield from within(steps(4), (0.2, 0.6), steps=4)
        return value

    job = outer()
    seen = []
    while True:
        try:
            seen.append(next(job))
        except StopIteration as end:
            assert end.value == "done"
            break
    assert seen == pytest.approx([0.3, 0.4, 0.5, 0.6])
    assert list(within(steps(2), (0.0, 0.5))) == [0.25, 0.25]  # its own progress, scaled


def test_run_drives_to_the_result_or_stops_when_cancelled():
    assert run(steps(3)) == "done"
    closed = []

    def endless():
        try:
            while True:
                yield 0.0
        finally:
            closed.append(True)

    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        run(endless(), cancel)
    assert closed == [True]


def test_a_task_sees_its_callers_cancel_at_its_next_step():
    """The caller's cancel reaches a running task at once, not when the generator is next
    resumed: a task released right after the cancel stops at its next step."""
    cancel, started, release, steps = threading.Event(), threading.Event(), threading.Event(), []

    def work(item, stop):
        started.set()
        assert release.wait(10)
        for step in range(1000):
            if stop.is_set():
                return step
            steps.append(step)
        return None

    def cancel_then_release():
        assert started.wait(10)
        cancel.set()
        release.set()

    threading.Thread(target=cancel_then_release).start()
    with pytest.raises(Cancelled):
        run(scan([0], work, workers=1), cancel)
    assert len(steps) < 1000
