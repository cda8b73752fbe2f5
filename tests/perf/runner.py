"""Time a command in fresh processes and read its peak RSS (shared by the benchmarks).

Each row of a table sets ours against the *limit* of the machine for the same work (reading
the bytes, copying them with dd, cat), measured in the same run: min / median / max of the
runs on both sides, and the ratio of the medians against the row's goal."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from typing import NamedTuple

# an installed app runs from cached bytecode (pip compiles it; torch's is too): a benchmark
# that forbids writing .pyc files recompiles every module of ours in every timed run
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


class Timing(NamedTuple):
    wall: float  # the median
    rss: float  # peak RSS over the runs, MB
    walls: tuple = ()
    cpu: float = 0.0  # median user + system CPU seconds: telling on a busy machine

    def spread(self) -> str:
        return f"{min(self.walls):.3f}/{self.wall:.3f}/{max(self.walls):.3f}"


def evict(path: str) -> None:
    """Drop a file's pages from the page cache (no root needed): the next read is cold."""
    paths = [path]
    if os.path.isdir(path):
        paths = [os.path.join(path, name) for name in os.listdir(path)]
    for name in paths:
        fd = os.open(name, os.O_RDONLY)
        try:
            os.fdatasync(fd) if os.access(name, os.W_OK) else None
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def measure(argv, repeat=3, ok_codes=(0,), warmup=False, cold=(), before=None) -> Timing:
    """Timing over `repeat` fresh processes; `warmup` runs it once untimed first (the files it
    reads are then in the page cache for both sides); `cold` files are evicted from the page
    cache before each run; `before` is called before each run (not timed)."""
    walls, peaks, cpus = [], [], []
    for run in range(repeat + warmup):
        for path in cold:
            evict(path)
        if before is not None:
            before()
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        if os.waitstatus_to_exitcode(status) not in ok_codes:
            raise SystemExit(f"failed: {' '.join(argv)}\n{proc.stderr.read().decode()}")
        if run >= warmup:
            walls.append(time.perf_counter() - start)
            peaks.append(usage.ru_maxrss / 1024)
            cpus.append(usage.ru_utime + usage.ru_stime)
    return Timing(statistics.median(walls), max(peaks), tuple(walls), statistics.median(cpus))


def python(code):
    return [sys.executable, "-c", code]


def dd_copy(source: str, target: str, nbytes: int) -> list[str]:
    """The limit of a durable copy: `dd` of `nbytes` bytes in 16 MB blocks, then fsync."""
    return [
        "dd",
        f"if={source}",
        f"of={target}",
        "bs=16M",
        f"count={nbytes}",
        "iflag=count_bytes",
        "conv=fsync",
        "status=none",
    ]


def output_remover(paths: tuple[str, ...], sizes: list[int]):
    """A `before` for measure: deletes the previous run's outputs (their sizes appended to
    `sizes`), so that neither side pays for it, then syncs, so that the freed blocks are
    committed (and, mounted with discard, trimmed) now, not inside the next run's fsync."""

    def remove_outputs() -> None:
        for path in paths:
            if os.path.exists(path):
                sizes.append(os.path.getsize(path))
                os.remove(path)
        os.sync()

    return remove_outputs


def cat(*paths: str) -> list[str]:
    return ["sh", "-c", 'cat "$@" > /dev/null', "cat", *paths]


def print_table(rows):
    """rows: (what, ours Timing, baseline Timing, baseline name, time goal, rss goal); goals
    are the largest ratio ours/baseline that meets them (None: none)."""
    head = (
        f"{'what':<40} {'ours s min/med/max':>20} {'limit':<22} {'limit s min/med/max':>20} "
        f"{'ratio':>6} {'goal':>5}    {'cpu':>6} {'cpu':>6}  {'ours MB':>8} {'base MB':>8} {'ratio':>6} {'goal':>5}"
    )
    print(head)
    print("-" * len(head))
    for what, ours, base, name, time_goal, rss_goal in rows:
        t_ratio, m_ratio = ours.wall / base.wall, ours.rss / base.rss

        def mark(ratio, goal):
            return "" if goal is None else ("ok" if ratio <= goal else "OVER")

        print(
            f"{what:<40} {ours.spread():>20} {name:<22} {base.spread():>20} {t_ratio:>6.3f} "
            f"{'' if time_goal is None else time_goal:>5} {mark(t_ratio, time_goal):<4}"
            f"{ours.cpu:>6.2f} {base.cpu:>6.2f}  "
            f"{ours.rss:>8.0f} {base.rss:>8.0f} {m_ratio:>6.3f} "
            f"{'' if rss_goal is None else rss_goal:>5} {mark(m_ratio, rss_goal)}"
        )
