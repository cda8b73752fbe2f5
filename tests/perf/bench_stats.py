"""Statistics benchmark (issue #24). Run by hand after make_files.py --only stats:

    python tests/perf/bench_stats.py [--data perf-data] [--repeat 5]

Fresh processes, warm page cache: `ckpt-viewer stats FILE model.big.weight --bins 256 --json`
(open + record check + exact statistics, quantiles and histogram) against the limit, reading the
tensor's 400 MB and a numpy min/max in one process (goal <= 2x), and against plain torch: mmap
load + aminmax + histc + std_mean + NaN/Inf/zero counts (goal <= 0.35x).
"""

from __future__ import annotations

import argparse
import os
import sys

from runner import measure, print_table, python

LIMIT = """
import struct, zipfile, numpy as np
with zipfile.ZipFile({path!r}) as zf:
    info = max(zf.infolist(), key=lambda i: i.file_size)
with open({path!r}, "rb") as f:
    f.seek(info.header_offset + 26)
    name, extra = struct.unpack("<HH", f.read(4))
    f.seek(info.header_offset + 30 + name + extra)
    values = np.fromfile(f, dtype=np.float32, count=info.file_size // 4)
values.min(), values.max()
"""

TORCH = """
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
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    path = os.path.join(args.data, "stats-100m.pt")
    argv = [sys.executable, "-m", "ckpt_viewer", "stats", path, "model.big.weight"]
    ours = measure(argv + ["--bins", "256", "--json"], repeat=args.repeat, warmup=True)
    limit = measure(python(LIMIT.format(path=path)), repeat=args.repeat, warmup=True)
    torch_side = measure(python(TORCH.format(path=path)), repeat=args.repeat, warmup=True)
    what = "stats 100M fp32 (quantiles, 256 bins)"
    print_table(
        [
            (what, ours, limit, "read + numpy min/max", 2.0, None),
            (what, ours, torch_side, "plain torch", 0.35, None),
        ]
    )


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(__file__))
    main()
