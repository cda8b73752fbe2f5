"""diff benchmark (issue: compare). Run by hand after make_files.py --only 2g6,legacy (and
changed, for the every-tensor-changed row: the same recipe with every float tensor 1):

    python tests/perf/bench_diff.py [--data perf-data]

Fresh processes, warm page cache (one untimed run first): `ckpt-viewer diff A B --json` against
the limit, `cat A B > /dev/null` (goal: >= 70 % of its throughput, i.e. <= 1.43x its time); with
--torch also against mmap-loading both and torch.equal on every pair of tensors.
"""

from __future__ import annotations

import argparse
import os
import sys

from runner import cat, measure, print_table, python

BASELINE = """
import torch
def flat(obj, prefix=""):
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from flat(v, f"{{prefix}}.{{k}}" if prefix else str(k))
a = dict(flat(torch.load({a!r}, mmap=True, weights_only=True)))
b = dict(flat(torch.load({b!r}, mmap={mmap_b}, weights_only=True)))
same = sum(torch.equal(a[k], b[k]) for k in a if k in b)
"""


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="perf-data")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--torch", action="store_true", help="also against plain torch")
    args = parser.parse_args()
    zip_file = os.path.join(args.data, "train-2g6.pt")
    rows = []
    # torch cannot mmap a legacy file: that baseline loads it into memory
    for label, b, mmap_b in (
        ("diff 2.6 GB zip vs every float +1", "train-2g6-changed.pt", True),
        ("diff 2.6 GB zip vs 2.6 GB legacy", "train-2g6-legacy.pt", False),
        ("diff 2.6 GB zip vs itself", "train-2g6.pt", True),
    ):
        b = os.path.join(args.data, b)
        if not os.path.exists(b):
            print(f"skipping {label}: {b} not built")
            continue
        ours = measure(
            [sys.executable, "-m", "ckpt_viewer", "diff", zip_file, b, "--json"],
            repeat=args.repeat,
            ok_codes=(0, 1),
            warmup=True,
        )
        limit = measure(cat(zip_file, b), repeat=args.repeat, warmup=True)
        rows.append((label, ours, limit, "cat A B", round(1 / 0.7, 2), None))
        if args.torch:
            torch_side = measure(
                python(BASELINE.format(a=zip_file, b=b, mmap_b=mmap_b)), repeat=args.repeat
            )
            rows.append((label, ours, torch_side, "torch.load + equal", None, None))
    print_table(rows)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(__file__))
    main()
