"""DCP -> one file benchmark (issue #24). Run by hand after make_files.py --only 2g6:

    python tests/perf/bench_dcp.py [--data perf-data] [--work /tmp] [--repeat 3] [--torch]

Builds a DCP folder from the 2.6 GB benchmark checkpoint (torch.load(mmap=True), then dcp.save
with four writer threads, so several .distcp files), then times in fresh processes, warm page
cache, `ckpt-viewer export FOLDER -o out.pth` (written, fsynced and checked, then renamed)
against the limit, `dd` of the same number of bytes with conv=fsync (goal <= 1.2x); with
--torch also against torch's format_utils.dcp_to_torch_save + fsync. Everything it writes is
deleted afterwards, and each run's output before the next run (untimed, as in bench_export).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

from runner import dd_copy, measure, output_remover, print_table, python

MAKE = """
import torch, torch.distributed.checkpoint as dcp
state = torch.load({src!r}, mmap=True, weights_only=True)
dcp.save(state, storage_writer=dcp.FileSystemWriter({folder!r}, thread_count=4))
"""

TORCH = """
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
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--torch", action="store_true")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="bench-dcp-", dir=args.work)
    folder = os.path.join(work, "dcp")
    ours_dst, base_dst = os.path.join(work, "ours.pth"), os.path.join(work, "base.pth")
    try:
        src = os.path.join(args.data, "train-2g6.pt")
        subprocess.run(python(MAKE.format(src=src, folder=folder)), check=True)
        files = [n for n in os.listdir(folder) if n.endswith(".distcp")]
        argv = [sys.executable, "-m", "ckpt_viewer", "export", folder, "-o", ours_dst, "--force"]
        sizes: list[int] = []
        remove_outputs = output_remover((ours_dst, base_dst), sizes)

        ours = measure(argv, repeat=args.repeat, warmup=True, before=remove_outputs)
        remove_outputs()
        nbytes = sizes[-1]
        what = f"DCP ({len(files)} files) -> one {nbytes / 1e9:.1f} GB .pth"
        limit = measure(
            dd_copy(src, base_dst, nbytes), repeat=args.repeat, warmup=True, before=remove_outputs
        )
        rows = [(what, ours, limit, "dd conv=fsync", 1.2, None)]
        if args.torch:
            torch_side = measure(
                python(TORCH.format(folder=folder, dst=base_dst)), repeat=2, before=remove_outputs
            )
            rows.append((what, ours, torch_side, "dcp_to_torch_save", None, None))
        print_table(rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(__file__))
    main()
