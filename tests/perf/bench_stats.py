"""Statistics benchmark (issue: tensor views). Run by hand after make_files.py --only stats:

    python tests/perf/bench_stats.py [--data perf-data]

Fresh processes: `ckpt-viewer stats FILE model.big.weight --bins 256 --json` (open + all
statistics + histogram) against plain torch: mmap load + aminmax + histc + std_mean +
NaN/Inf/zero counts.
"""

from __future__ import annotations

import argparse
import os
import sys

from runner import measure, print_table, python

BASELINE = """
import torch
t = torch.load({path!r}, mmap=True, weights_only=True)["model"]["big.weight"]
lo, hi = torch.aminmax(t)
hist = torch.histc(t, bins=256, min=lo.item(), max=hi.item())
std, mean = torch.std_mean(t)
counts = (torch.isnan(t).sum().item(), torch.isinf(t).sum().item(), (t == 0).sum().item())
"""


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="perf-data")
    args = parser.parse_args()
    path = os.path.join(args.data, "stats-100m.pt")
    ours = measure(
        [
            sys.executable,
            "-m",
            "ckpt_viewer",
            "stats",
            path,
            "model.big.weight",
            "--bins",
            "256",
            "--json",
        ]
    )
    base = measure(python(BASELINE.format(path=path)))
    print_table([("stats + 256-bin histogram, 100M fp32", ours, base, 0.25, 0.1)])


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(__file__))
    main()
