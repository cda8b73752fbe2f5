"""Time a command in a fresh process and read its peak RSS (shared by the benchmarks)."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time


def measure(argv, repeat=3, ok_codes=(0,), warmup=False):
    """(median wall seconds, max peak RSS in MB) over `repeat` fresh processes; `warmup` runs it
    once untimed first (the files it reads are then in the page cache for both sides)."""
    walls, peaks = [], []
    for run in range(repeat + warmup):
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        if os.waitstatus_to_exitcode(status) not in ok_codes:
            raise SystemExit(f"failed: {' '.join(argv)}\n{proc.stderr.read().decode()}")
        if run >= warmup:
            walls.append(time.perf_counter() - start)
            peaks.append(usage.ru_maxrss / 1024)
    return statistics.median(walls), max(peaks)


def python(code):
    return [sys.executable, "-c", code]


def print_table(rows):
    """rows: (what, ours (s, MB), baseline (s, MB), time budget, rss budget)."""
    head = (
        f"{'what':<44} {'ours s':>8} {'base s':>8} {'ratio':>6} {'budget':>6}   "
        f"{'ours MB':>8} {'base MB':>8} {'ratio':>6} {'budget':>6}"
    )
    print(head)
    print("-" * len(head))
    for what, ours, base, time_budget, rss_budget in rows:
        t_ratio, m_ratio = ours[0] / base[0], ours[1] / base[1]
        mark = lambda r, b: "ok" if b is None or r <= b else "OVER"  # noqa: E731
        print(
            f"{what:<44} {ours[0]:>8.3f} {base[0]:>8.3f} {t_ratio:>6.3f} "
            f"{'' if time_budget is None else time_budget:>6} {mark(t_ratio, time_budget):<3}"
            f"{ours[1]:>8.0f} {base[1]:>8.0f} {m_ratio:>6.3f} "
            f"{'' if rss_budget is None else rss_budget:>6} {mark(m_ratio, rss_budget)}"
        )
