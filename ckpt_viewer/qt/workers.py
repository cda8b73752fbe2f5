"""Run core work off the GUI thread (superqt workers): progress, cooperative cancel, errors."""

from __future__ import annotations

from superqt.utils import create_worker

from ckpt_viewer.core import describe_error


def start(func, *args, on_result=None, on_error=None, on_progress=None, on_finished=None):
    """Start func(*args) in a worker thread; a generator func reports progress by yielding.

    The callbacks run on the GUI thread. Returns the worker; `worker.quit()` asks a generator to
    stop at its next yield (a plain function's result is then simply dropped by the caller).
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
