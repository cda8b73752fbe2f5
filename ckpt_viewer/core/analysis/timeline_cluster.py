"""The timeline's per-key scan on a dask.distributed cluster (the `[cluster]` extra).

Each task names the run's checkpoint paths and one key; the worker opens the checkpoints itself
(by path or URL, metadata only, kept open between its tasks) and reads that key's byte ranges,
then runs the same `scan_key` as a local run, so the results are identical. dask schedules;
nothing here does."""

from __future__ import annotations

import functools
from collections.abc import Generator

from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.analysis.diff import Side, mapped

IN_FLIGHT_PER_WORKER = 2  # tasks queued per worker: bounded memory on the client


@functools.lru_cache(maxsize=64)
def _opened(path: str):
    from ckpt_viewer.core.listing.open import open_checkpoint

    return open_checkpoint(path)


@functools.lru_cache(maxsize=64)
def _keys(path: str, side: Side) -> dict:
    return mapped(_opened(path), side)


def scan_remote(paths: tuple, sides: tuple, key: str, metrics: tuple, variance: bool):
    """Runs on a worker: the key's tensors in every step, opened there, then `scan_key`."""
    from ckpt_viewer.core.analysis.timeline import _variance_tensors, scan_key

    tensors, variances = [], []
    for path, side in zip(paths, sides):
        found = _keys(path, side).get(key)
        tensors.append(found[1] if found else None)
        if variance:
            variances.append(_variance_tensors(_opened(path), side, [key]).get(key))
    return scan_key(key, tensors, metrics, None, variances if any(variances) else None)


def cluster_scan(address: str, steps: list, tasks: list, metrics) -> Generator:
    """Yields each task's KeyTimeline in task order, computed on the cluster at `address`."""
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise CheckpointError(
            "--cluster needs dask.distributed: pip install 'ckpt-viewer[cluster]'"
        ) from None
    try:
        client = Client(address, timeout="10s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise CheckpointError(f"cannot reach the dask scheduler at {address}: {exc}") from None
    paths = tuple(step.path for step in steps)
    sides = tuple(step.side for step in steps)
    metrics = tuple(metrics)
    try:
        workers = max(1, len(client.scheduler_info().get("workers", {})))
        limit = IN_FLIGHT_PER_WORKER * workers
        pending = list(reversed(range(len(tasks))))
        index_of: dict = {}
        done: dict = {}
        emitted = 0
        running = as_completed()
        while pending or index_of:
            while pending and len(index_of) < limit:
                index = pending.pop()
                task = tasks[index]
                future = client.submit(
                    scan_remote,
                    paths,
                    sides,
                    task.key,
                    metrics,
                    task.variances is not None,
                    pure=False,
                )
                index_of[future] = index
                running.add(future)
            future = next(running)
            index = index_of.pop(future)
            try:
                done[index] = future.result()
            except CheckpointError:
                raise
            except Exception as exc:  # a worker's failure, one line
                raise CheckpointError(
                    f"cluster task for {tasks[index].key!r} failed: {exc}"
                ) from None
            while emitted in done:
                yield done.pop(emitted)
                emitted += 1
    finally:
        client.close()
