"""Health-check benchmark (issue: checkpoint health). Run by hand after make_files.py --only 16g:

    python tests/perf/bench_check.py [--file perf-data/train-16g.pt]

Fresh processes: `ckpt-viewer check FILE --json` against the limit, `cat FILE > /dev/null`
(goal: >= 90 % of its throughput, i.e. <= 1.11x its time), warm (page cache warmed by one untimed
run of each) and cold (the file's pages dropped with posix_fadvise before every run); with
--torch also against plain torch, mmap load + isnan().any() / isinf().any() / (t == 0).all() per
tensor (budget <= 0.5x its time).
Then, in this process: the largest tensor's exact statistics without and with a prior health
pass (its facts let the moments and histogram passes be one), and selected again (cached).
`--stats-only` runs just that.
"""

from __future__ import annotations

import argparse
import os
import sys

from runner import cat, measure, print_table, python

BASELINE = """
import torch
def tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from tensors(v)
for t in tensors(torch.load({path!r}, mmap=True, weights_only=True)):
    t.isnan().any().item(), t.isinf().any().item(), (t == 0).all().item()
"""


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--file", default=os.path.join("perf-data", "train-16g.pt"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--stats-only", action="store_true")
    parser.add_argument("--torch", action="store_true", help="also against plain torch")
    args = parser.parse_args()
    path, repeat = args.file, args.repeat
    if args.stats_only:
        stats_with_health_facts(path)
        return
    gb = os.path.getsize(path) / 1e9
    argv = [sys.executable, "-m", "ckpt_viewer", "check", path, "--json"]
    rows = []
    for label, cold in (("warm", ()), ("cold", (path,))):
        ours = measure(argv, repeat=repeat, ok_codes=(0, 1), warmup=not cold, cold=cold)
        limit = measure(cat(path), repeat=repeat, warmup=not cold, cold=cold)
        print(
            f"{label}: check {gb / ours.wall:.2f} GB/s, cat {gb / limit.wall:.2f} GB/s "
            f"({limit.wall / ours.wall:.0%} of cat's throughput, goal >= 90%)"
        )
        rows.append(
            (f"check {gb:.1f} GB, {label}", ours, limit, "cat FILE", round(1 / 0.9, 2), None)
        )
    if args.torch:
        torch_side = measure(python(BASELINE.format(path=path)), repeat=repeat, warmup=True)
        rows.append(
            (f"check {gb:.1f} GB, warm", rows[0][1], torch_side, "mmap + isnan...", 0.5, None)
        )
    print_table(rows)
    stats_with_health_facts(path)


def stats_with_health_facts(path):
    import time

    from ckpt_viewer.core.analysis.check import check
    from ckpt_viewer.core.listing.open import open_checkpoint
    from ckpt_viewer.core.progress import run
    from ckpt_viewer.core.values.stats import stats_job

    checkpoint = open_checkpoint(path)
    key, tensor, _ = max(checkpoint.tensors(), key=lambda item: item[1].numel)
    timings = {}
    for label in ("without", "with"):
        if label == "with":
            start = time.perf_counter()
            run(check(checkpoint))
            timings["check"] = time.perf_counter() - start
        for attempt in ("first", "again"):  # the first run also warms the page cache
            cache = checkpoint.stats_cache if label == "with" else None
            start = time.perf_counter()
            run(stats_job(tensor, 256, "magnitude", None, cache=cache))
            timings[label, attempt] = time.perf_counter() - start
    print(
        f"{key} ({tensor.numel:,} {tensor.dtype}): exact stats {timings['without', 'again']:.2f} s "
        f"without a health pass, {timings['with', 'first']:.2f} s after one "
        f"({timings['check']:.1f} s), {1000 * timings['with', 'again']:.1f} ms selected again"
    )


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(__file__))
    main()
