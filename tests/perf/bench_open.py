"""Listing benchmark (issue: core). Run by hand after tests/perf/make_files.py:

    python tests/perf/bench_open.py [--data perf-data]

Each row is a fresh process, warm page cache: `ckpt-viewer inspect --json` (the full JSON) against
plain torch in the same run (the 16 GB file's goal: <= 0.05x mmap torch.load, time and RSS).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from runner import measure, print_table, python

INSPECT = [sys.executable, "-m", "ckpt_viewer", "inspect", "--json"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="perf-data")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rows = []
    for name, baseline, what in [
        (
            "train-16g.pt",
            "torch.load(p, mmap=True, weights_only=True)",
            "open 16 GB zip (1.3B + Adam)",
        ),
        ("train-2g6-legacy.pt", "torch.load(p, weights_only=True)", "open 2.6 GB legacy file"),
        ("train-2g6.pt", "torch.load(p, mmap=True, weights_only=True)", "open 2.6 GB zip file"),
    ]:
        path = os.path.join(args.data, name)
        if not os.path.exists(path):
            print(f"skipping {name}: not built")
            continue
        ours = measure(INSPECT + [path], repeat=args.repeat, warmup=True)
        base = measure(
            python(f"import torch; p = {path!r}; {baseline}"), repeat=args.repeat, warmup=True
        )
        goal = 0.05 if name == "train-16g.pt" else None
        name = "mmap torch.load" if "mmap=True" in baseline else "torch.load"
        rows.append((what, ours, base, name, goal, goal))
    print_table(rows)

    path = os.path.join(args.data, "keys-50k.pt")
    if os.path.exists(path):
        from ckpt_viewer.core.listing.open import open_checkpoint
        from ckpt_viewer.core.listing.summary import inspect_dict

        start = time.perf_counter()
        checkpoint = open_checkpoint(path)
        listed = time.perf_counter() - start
        info = inspect_dict(checkpoint)
        with_json = time.perf_counter() - start
        wall, rss = measure(INSPECT + [path])[:2]
        print(
            f"\n50,000-key file: {len(info['tensors'])} tensors listed in {listed:.3f} s "
            f"(budget 1 s), {with_json:.3f} s with the inspect object built; "
            f"`ckpt-viewer inspect --json` fresh process {wall:.3f} s, {rss:.0f} MB"
        )


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(__file__))
    main()
