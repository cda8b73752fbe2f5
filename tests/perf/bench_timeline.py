"""Timeline benchmark (issue: a training run as one object). Run by hand:

    python tests/perf/bench_timeline.py --make perf-data/run   # once: 10 x the 2.6 GB recipe
    python tests/perf/bench_timeline.py --run perf-data/run [--repeat 3]

The run is 10 training checkpoints of make_files.py's 2.6 GB recipe (GPT-like fp32 model with
Adam state) holding random values, each step the previous one perturbed. Rows, each against its
baseline in the same run, fresh processes:
- `ckpt-viewer timeline RUN --json` (the exact timeline) against `cat` of the same files, page
  cache dropped (POSIX_FADV_DONTNEED) before every run of either side: time, and throughput
  two ways (budget: >= 70% of cat's): the bytes each reads per second (the timeline reads only
  weights and exp_avg_sq), and the same files per second (cat's time / the timeline's); the CPU
  seconds of each (on a busy machine the wall time measures the others' load too); peak RSS
  (budget: 1 GB);
- the window: File > Open Run to the first (sampled) heat-strip drawn (budget: 3 s), against
  the window's own launch to its first paint.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time

STEPS = 10
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # as installed: from cached bytecode (runner.py)

WINDOW = """
import sys, time
start = time.perf_counter()
from ckpt_viewer.qt.app import make_app
from ckpt_viewer.qt.main_window import MainWindow
app = make_app()
w = MainWindow(); w.resize(1366, 768); w.show(); app.processEvents()
shown = time.perf_counter()
view = w.open_run([sys.argv[1]])
view.preview_ready.connect(lambda _r: (print(shown - start, time.perf_counter() - shown), app.quit()))
view.failed.connect(lambda m: (print("failed", m), app.quit()))
app.exec()
"""


def make_run(folder: str, steps: int = STEPS, width: int = 1024):
    import torch

    sys.path.insert(0, os.path.dirname(__file__))
    from make_files import training_checkpoint

    os.makedirs(folder, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    checkpoint = training_checkpoint(
        lambda *shape: torch.randn(*shape, generator=generator) * 0.02, 32000, width, 12
    )
    model = checkpoint["model_state_dict"]
    for step in range(steps):
        if step:
            for tensor in model.values():
                if tensor.is_floating_point():
                    tensor.add_(torch.randn(tensor.shape, generator=generator), alpha=1e-3)
        checkpoint["global_step"] = (step + 1) * 1000
        path = os.path.join(folder, f"step_{(step + 1) * 1000}.pt")
        start = time.perf_counter()
        torch.save(checkpoint, path)
        print(
            f"wrote {path}: {os.path.getsize(path) / 1e9:.2f} GB in {time.perf_counter() - start:.1f} s"
        )


def drop_cache(paths):
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed(argv, files):
    """Wall seconds of argv from a dropped page cache, its stdout, and its CPU seconds (user
    + system: telling on a busy machine, where the wall time is shared)."""
    drop_cache(files)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode not in (0, 1):
        raise SystemExit(f"failed: {' '.join(argv)}: {done.stderr.decode()[-500:]}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return wall, done.stdout, cpu


def peak_rss_mb(argv) -> float:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, _, usage = os.wait4(proc.pid, 0)
    return usage.ru_maxrss / 1024


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--make", metavar="FOLDER")
    parser.add_argument("--run", metavar="FOLDER")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--width", type=int, default=1024, help="hidden size of --make (1024: the 2.6 GB recipe)"
    )
    args = parser.parse_args()
    if args.make:
        make_run(args.make, width=args.width)
    if not args.run:
        return
    import json

    files = sorted(os.path.join(args.run, n) for n in os.listdir(args.run) if n.endswith(".pt"))
    total = sum(os.path.getsize(f) for f in files)
    ours_argv = [sys.executable, "-m", "ckpt_viewer", "timeline", args.run, "--json"]
    cat_argv = ["sh", "-c", 'cat "$@" > /dev/null', "cat", *files]
    ours, cat, ours_cpu, cat_cpu = [], [], [], []
    scanned = 0
    for _ in range(args.repeat):  # alternating, each from a dropped cache
        wall, out, cpu = timed(ours_argv, files)
        ours.append(wall)
        ours_cpu.append(cpu)
        scanned = json.loads(out)["bytes_scanned"]
        wall, _, cpu = timed(cat_argv, files)
        cat.append(wall)
        cat_cpu.append(cpu)
    drop_cache(files)
    rss = peak_rss_mb(ours_argv)
    window = []
    for _ in range(args.repeat):
        drop_cache(files)
        line = subprocess.run(
            [sys.executable, "-c", WINDOW, args.run],
            capture_output=True,
            text=True,
            env={**os.environ, "QT_QPA_PLATFORM": "offscreen"},
        ).stdout.split()
        window.append((float(line[0]), float(line[1])))

    def spread(values):
        return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"

    ours_rate = [scanned / w / 1e9 for w in ours]
    cat_rate = [total / w / 1e9 for w in cat]
    share = statistics.median(ours_rate) / statistics.median(cat_rate)
    same_files = statistics.median(cat) / statistics.median(ours)
    print(f"{len(files)} checkpoints, {total / 1e9:.1f} GB; timeline reads {scanned / 1e9:.1f} GB")
    print(f"{'row':<52} {'min / median / max':>24}")
    print(f"{'timeline --json, s (cold cache)':<52} {spread(ours):>24}")
    print(f"{'cat of the same files, s (cold cache)':<52} {spread(cat):>24}")
    print(f"{'timeline CPU, user + system s':<52} {spread(ours_cpu):>24}")
    print(f"{'cat CPU, user + system s':<52} {spread(cat_cpu):>24}")
    print(f"{'timeline throughput, GB read from disk / s':<52} {spread(ours_rate):>24}")
    print(f"{'cat throughput, GB read from disk / s':<52} {spread(cat_rate):>24}")
    print(f"bytes-read throughput, timeline / cat's (medians): {share:.0%} (budget >= 70%)")
    print(
        f"same files' throughput, {total / 1e9:.1f} GB over each side's time "
        f"(cat time / timeline time, medians): {same_files:.0%} (budget >= 70%)"
    )
    print(f"timeline peak RSS: {rss:.0f} MB (budget 1024 MB)")
    first = [w[1] for w in window]
    launch = [w[0] for w in window]
    print(f"{'window launch to first paint, s':<52} {spread(launch):>24}")
    print(f"{'Open Run to the first heat-strip, s (budget 3)':<52} {spread(first):>24}")


if __name__ == "__main__":
    main()
