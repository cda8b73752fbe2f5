"""Run a per-item function over many items (tensors, segments of tensors, batches) on a
bounded thread pool: a fixed number of workers, at most two tasks per worker in flight (the
memory tasks hold stays bounded), progress by weight, cancel by closing the generator, and the
results in the items' order whatever order the tasks finish in."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import TypeVar

from ckpt_viewer.core.progress import cancel_event

Item = TypeVar("Item")
Result = TypeVar("Result")

REPORT_INTERVAL = 0.05  # seconds between progress reports (and chances to cancel)


class _Stop(threading.Event):
    """Set by the scan itself (closed, failed) or by the caller's own cancel event, which the
    tasks then see at their next step: the generator may not be resumed (and closed) soon."""

    def __init__(self, outer: threading.Event | None) -> None:
        super().__init__()
        self.outer = outer

    def is_set(self) -> bool:
        return super().is_set() or (self.outer is not None and self.outer.is_set())


def worker_count() -> int:
    return max(2, min(8, os.cpu_count() or 2))


def scan(
    items: Sequence[Item],
    work: Callable[[Item, threading.Event], Result],
    weight: Callable[[Item], float] = lambda item: 1.0,
    workers: int = 0,
    stop: threading.Event | None = None,
    name: str = "scan",
) -> Generator[float, None, list[Result]]:
    """Generator: work(item, stop) for every item on `workers` threads (worker_count() when
    0); yields progress in [0, 1] (the weight of the items done over the total) and returns
    [result per item] in the items' order. An exception in `work` ends the scan with it: work
    that must go on past a bad item returns its failure as a result. Closing the generator, or
    an error, sets `stop` (work should check it between its steps and return early) and drops
    the tasks not yet started."""
    stop = stop if stop is not None else _Stop(cancel_event())
    workers = workers or worker_count()
    total = sum(weight(item) for item in items) or 1.0
    results: list = [None] * len(items)
    done = 0.0
    position = 0
    running: dict = {}
    last_report = 0.0
    pool = ThreadPoolExecutor(workers, thread_name_prefix=name)
    try:
        while position < len(items) or running:
            while position < len(items) and len(running) < 2 * workers:
                running[pool.submit(work, items[position], stop)] = position
                position += 1
            finished, _ = wait(running, timeout=0.1, return_when=FIRST_COMPLETED)
            for future in finished:
                index = running.pop(future)
                results[index] = future.result()
                done += weight(items[index])
            if time.perf_counter() - last_report >= REPORT_INTERVAL or not running:
                last_report = time.perf_counter()
                yield min(done / total, 1.0)
    except BaseException:  # closed (cancelled) or failed: running tasks stop early
        stop.set()
        raise
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return results
