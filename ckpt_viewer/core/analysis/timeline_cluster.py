"""The timeline's per-key scan on a dask.distributed cluster (the `[cluster]` extra).

Each task names the run's checkpoint paths and one key; the worker opens the checkpoints itself
(by path or URL, metadata only, kept open between its tasks) and reads that key's byte ranges,
then runs the same `scan_key` as a local run, so the results are identical. dask schedules;
nothing here does."""

from __future__ import annotations

from collections.abc import Generator

from ckpt_viewer.core import CheckpointError

IN_FLIGHT_PER_WORKER = 2  # tasks queued per worker: bounded memory on the client


def cluster_scan(address: str, steps: list, tasks: list, metrics, scan_remote) -> Generator:
    """Yields each task's KeyTimeline in task order: `scan_remote(paths, sources, key, metrics,
    variance)` run on the cluster at `address`."""
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
                    tuple(task.sources),
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
