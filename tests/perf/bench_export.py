"""Export benchmark (issue: export). Run by hand after make_files.py --only 16g:

    python tests/perf/bench_export.py [--data perf-data]

Fresh processes, each writing the 5.4 GB model_state_dict of the 16 GB training checkpoint:
`ckpt-viewer export --root model_state_dict` against mmap torch.load + torch.save(sub_dict) +
fsync. Unchanged records are copied file to file (os.copy_file_range).
"""

from __future__ import annotations

import argparse
import os
import sys

from runner import measure, print_table, python

BASELINE = """
import os, torch
ckpt = torch.load({src!r}, mmap=True, weights_only=True)
torch.save(ckpt["model_state_dict"], {dst!r})
with open({dst!r}, "rb+") as f:
    os.fsync(f.fileno())        # ours fsyncs (and reopens to verify) before it renames
"""


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="perf-data")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    src = os.path.join(args.data, "train-16g.pt")
    ours_dst, base_dst = (
        os.path.join(args.data, "export-ours.pth"),
        os.path.join(args.data, "export-base.pth"),
    )
    rows = []
    try:
        base = measure(python(BASELINE.format(src=src, dst=base_dst)), repeat=args.repeat)
        ours = measure(
            [
                sys.executable,
                "-m",
                "ckpt_viewer",
                "export",
                src,
                "-o",
                ours_dst,
                "--root",
                "model_state_dict",
                "--force",
            ],
            repeat=args.repeat,
        )
        rows.append(("export 5.4 GB model_state_dict (pth)", ours, base, 1.0, None))
        print_table(rows)
        print(
            f"peak RSS: ours {ours[1]:.0f} MB (budget 1024 MB), baseline {base[1]:.0f} MB; "
            f"sizes {os.path.getsize(ours_dst) / 1e9:.2f} GB vs {os.path.getsize(base_dst) / 1e9:.2f} GB"
        )
    finally:
        for path in (ours_dst, base_dst):
            if os.path.exists(path):
                os.remove(path)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(__file__))
    main()
