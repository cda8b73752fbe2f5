"""DCP -> one file benchmark (issue: beyond one disk). Run by hand:

    python tests/perf/bench_dcp.py [--data perf-data] [--work /tmp] [--repeat 2]

Builds a DCP folder from the 2.6 GB benchmark checkpoint (torch.load(mmap=True), then
dcp.save with four writer threads, so several .distcp files), then times in fresh processes
`ckpt-viewer export FOLDER -o out.pth` against torch's own
format_utils.dcp_to_torch_save(FOLDER, out) + fsync (ours fsyncs and verifies before its
rename). Budget: peak RSS <= 1 GB, time <= 1.0x. Everything it writes is deleted afterwards.
Ours writes the tensors (flat dotted keys); dcp_to_torch_save also writes the non-tensor items.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

from runner import measure, print_table, python

MAKE = """
import torch, torch.distributed.checkpoint as dcp
state = torch.load({src!r}, mmap=True, weights_only=True)
dcp.save(state, storage_writer=dcp.FileSystemWriter({folder!r}, thread_count=4))
"""

BASELINE = """
import os, warnings
warnings.simplefilter("ignore")
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
dcp_to_torch_save({folder!r}, {dst!r})
with open({dst!r}, "rb+") as f:
    os.fsync(f.fileno())
"""


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="perf-data")
    parser.add_argument("--work", default="/tmp")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="bench-dcp-", dir=args.work)
    folder = os.path.join(work, "dcp")
    ours_dst, base_dst = os.path.join(work, "ours.pth"), os.path.join(work, "base.pth")
    try:
        subprocess.run(
            python(MAKE.format(src=os.path.join(args.data, "train-2g6.pt"), folder=folder)),
            check=True,
        )
        files = [n for n in os.listdir(folder) if n.endswith(".distcp")]
        size = sum(os.path.getsize(os.path.join(folder, n)) for n in files)
        base = measure(python(BASELINE.format(folder=folder, dst=base_dst)), repeat=args.repeat)
        ours = measure(
            [sys.executable, "-m", "ckpt_viewer", "export", folder, "-o", ours_dst, "--force"],
            repeat=args.repeat,
        )
        print_table(
            [(f"DCP ({len(files)} files, {size / 1e9:.1f} GB) -> one .pth", ours, base, 1.0, None)]
        )
        print(
            f"peak RSS: ours {ours[1]:.0f} MB (budget 1024 MB), baseline {base[1]:.0f} MB; "
            f"sizes {os.path.getsize(ours_dst) / 1e9:.2f} GB vs "
            f"{os.path.getsize(base_dst) / 1e9:.2f} GB"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(__file__))
    main()
