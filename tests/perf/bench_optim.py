"""Optimizer recognition benchmark, run by hand (the files are built in a temporary folder):

    python tests/perf/bench_optim.py

CPU time of open_checkpoint on the files tests/core/test_optim.py checks for what is found;
each had a budget as a test assertion until that failed on a slower machine (1.008 s).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, ".."), os.path.join(HERE, "..", "core")]

import test_optim  # noqa: E402

from ckpt_viewer.core.listing.open import open_checkpoint  # noqa: E402

CASES = [  # builder, what, budget in CPU seconds on the development machine
    (test_optim.flat_trainer_file, "15,000 params, 3 optimizers (views)", 1.0),
    (test_optim.many_optimizers_file, "1,500 optimizers, 15,000 tensors", 2.0),
    (test_optim.block_order_file, "60 stateless groups, any order fits", 2.0),
    (test_optim.late_failure_file, "20 groups failing at the last tensor", 2.0),
]


def main():
    print(f"{'what':<40} {'cpu s':>7} {'budget':>7}")
    with tempfile.TemporaryDirectory() as folder:
        for build, what, budget in CASES:
            path = build(os.path.join(folder, build.__name__ + ".pt"))
            start = time.process_time()
            open_checkpoint(path)
            used = time.process_time() - start
            print(f"{what:<40} {used:>7.3f} {budget:>7.1f} {'ok' if used <= budget else 'OVER'}")


if __name__ == "__main__":
    main()
