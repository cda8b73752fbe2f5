"""Export benchmark (issue #24). Run by hand after make_files.py --only 16g:

    python tests/perf/bench_export.py [--data perf-data] [--work /tmp] [--repeat 3]

Fresh processes, warm page cache, each writing the 5.4 GB model_state_dict of the 16 GB training
checkpoint: `ckpt-viewer export --root model_state_dict` (written, fsynced and checked, then
renamed) against the limit, `dd if=train-16g.pt of=out bs=16M count=<the same bytes>
conv=fsync` (goal <= 1.15x). Both write into --work (the data folder is only read); everything
written is deleted after each run, so one output at most is on disk at a time.
"""

from __future__ import annotations

import argparse
import os
import sys

from runner import dd_copy, measure, output_remover, print_table


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="perf-data")
    parser.add_argument("--work", default="/tmp")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    src = os.path.join(args.data, "train-16g.pt")
    ours_dst = os.path.join(args.work, "bench-export-ours.pth")
    limit_dst = os.path.join(args.work, "bench-export-dd.bin")
    argv = [sys.executable, "-m", "ckpt_viewer", "export", src, "-o", ours_dst]
    sizes: list[int] = []
    remove_outputs = output_remover((ours_dst, limit_dst), sizes)

    try:
        ours = measure(
            argv + ["--root", "model_state_dict", "--force"],
            repeat=args.repeat,
            warmup=True,
            before=remove_outputs,
        )
        remove_outputs()
        nbytes = sizes[-1]
        limit = measure(
            dd_copy(src, limit_dst, nbytes), repeat=args.repeat, warmup=True, before=remove_outputs
        )
        print_table(
            [
                (
                    f"export {nbytes / 1e9:.1f} GB model_state_dict",
                    ours,
                    limit,
                    "dd conv=fsync",
                    1.15,
                    None,
                )
            ]
        )
    finally:
        remove_outputs()


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(__file__))
    main()
