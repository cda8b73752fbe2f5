"""diff benchmark (issue: compare). Run by hand after make_files.py --only 2g6,legacy (and, for
the all-changed row, a copy of train-2g6.pt with 1 added to every float tensor saved as
train-2g6-changed.pt):

    python tests/perf/bench_diff.py [--data perf-data]

Fresh processes (median of 3, after one untimed run that brings both files into the page
cache) comparing the two 2.6 GB checkpoints (zip and legacy copies of one recipe):
`ckpt-viewer diff A B` against mmap-loading both and torch.equal on every pair of tensors.
"""

from __future__ import annotations

import argparse
import os
import sys

from runner import measure, print_table, python

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
    args = parser.parse_args()
    zip_file = os.path.join(args.data, "train-2g6.pt")
    rows = []
    # torch cannot mmap a legacy file: that baseline loads it into memory
    for label, b, mmap_b in (
        ("diff 2.6 GB zip vs 2.6 GB legacy", "train-2g6-legacy.pt", False),
        ("diff 2.6 GB zip vs itself (both mmap)", "train-2g6.pt", True),
        ("diff 2.6 GB zip vs every float +1 (mmap)", "train-2g6-changed.pt", True),
    ):
        b = os.path.join(args.data, b)
        if not os.path.exists(b):
            print(f"skipping {label}: {b} not built")
            continue
        ours = measure(
            [sys.executable, "-m", "ckpt_viewer", "diff", zip_file, b, "--json"],
            repeat=3,
            ok_codes=(0, 1),
            warmup=True,
        )
        base = measure(python(BASELINE.format(a=zip_file, b=b, mmap_b=mmap_b)), repeat=3)
        rows.append((label, ours, base, 1.5, None))
    print_table(rows)
    print("peak RSS budget for ours: 1024 MB")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(__file__))
    main()
