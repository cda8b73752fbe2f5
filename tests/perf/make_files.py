"""Build the benchmark files README.md's Test section names (run by hand; they are large).

    python tests/perf/make_files.py [--out perf-data] [--only 16g,2g6,changed,legacy,50k,stats]

GPT-like fp32 state_dict (vocab 32000; hidden 2048 and 24 blocks for the 16 GB file, hidden
1024 and 12 blocks for the 2.6 GB ones; each block qkv/proj/mlp(4x)/2 layernorms plus a
running_mean and num_batches_tracked; separate head) with Adam state, saved as
{'epoch', 'loss', 'model_state_dict', 'optimizer_state_dict'}. Tensor bytes come from sparse
scratch files mapped with torch.from_file, so a 16 GB checkpoint is written without 16 GB of RAM
(their values are zeros; the stats file holds real random values).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import torch


class ScratchTensors:
    """Zero tensors backed by sparse files: the page cache holds them, not the heap."""

    def __init__(self):
        self.folder = tempfile.mkdtemp(prefix="ckpt-scratch-", dir=os.environ.get("SCRATCH"))
        self.count = 0

    def ones(self, *shape, dtype=torch.float32):
        """Like zeros, filled with 1 (the scratch file then takes its full size on disk)."""
        return self.zeros(*shape, dtype=dtype).fill_(1)

    def zeros(self, *shape, dtype=torch.float32):
        numel = 1
        for d in shape:
            numel *= d
        path = os.path.join(self.folder, str(self.count))
        self.count += 1
        with open(path, "wb") as f:
            f.truncate(max(numel, 1) * dtype.itemsize)
        return torch.from_file(path, shared=True, size=numel, dtype=dtype).view(*shape)

    def close(self):
        shutil.rmtree(self.folder, ignore_errors=True)


def gpt_state(make, vocab, hidden, blocks):
    sd = {"embed.weight": make(vocab, hidden)}
    for i in range(blocks):
        p = f"blocks.{i}."
        sd.update(
            {
                p + "attn.qkv.weight": make(3 * hidden, hidden),
                p + "attn.qkv.bias": make(3 * hidden),
                p + "attn.proj.weight": make(hidden, hidden),
                p + "attn.proj.bias": make(hidden),
                p + "mlp.fc1.weight": make(4 * hidden, hidden),
                p + "mlp.fc1.bias": make(4 * hidden),
                p + "mlp.fc2.weight": make(hidden, 4 * hidden),
                p + "mlp.fc2.bias": make(hidden),
                p + "ln1.weight": make(hidden),
                p + "ln1.bias": make(hidden),
                p + "ln2.weight": make(hidden),
                p + "ln2.bias": make(hidden),
                p + "norm.running_mean": make(hidden),
                p + "norm.num_batches_tracked": torch.tensor(0, dtype=torch.int64),
            }
        )
    sd["head.weight"] = make(vocab, hidden)
    return sd


def training_checkpoint(make, vocab, hidden, blocks):
    model = gpt_state(make, vocab, hidden, blocks)
    params = [k for k in model if not k.endswith(("running_mean", "num_batches_tracked"))]
    state = {
        i: {
            "step": torch.tensor(100.0),
            "exp_avg": make(*model[k].shape),
            "exp_avg_sq": make(*model[k].shape),
        }
        for i, k in enumerate(params)
    }
    groups = [
        {
            "lr": 3e-4,
            "betas": (0.9, 0.95),
            "eps": 1e-8,
            "weight_decay": 0.1,
            "amsgrad": False,
            "maximize": False,
            "foreach": None,
            "capturable": False,
            "differentiable": False,
            "fused": None,
            "decoupled_weight_decay": True,
            "params": list(range(len(params))),
        }
    ]
    return {
        "epoch": 3,
        "loss": 2.125,
        "model_state_dict": model,
        "optimizer_state_dict": {"state": state, "param_groups": groups},
    }


def timed_save(obj, path, **kwargs):
    start = time.perf_counter()
    torch.save(obj, path, **kwargs)
    print(
        f"wrote {path}: {os.path.getsize(path) / 1e9:.2f} GB in {time.perf_counter() - start:.1f} s"
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="perf-data")
    parser.add_argument("--only", default="16g,2g6,legacy,50k,stats")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    wanted = set(args.only.split(","))
    scratch = ScratchTensors()
    try:
        if "16g" in wanted:
            timed_save(
                training_checkpoint(scratch.zeros, 32000, 2048, 24),
                os.path.join(args.out, "train-16g.pt"),
            )
        if "2g6" in wanted:
            timed_save(
                training_checkpoint(scratch.zeros, 32000, 1024, 12),
                os.path.join(args.out, "train-2g6.pt"),
            )
        if "changed" in wanted:  # train-2g6.pt with every float tensor 1: diff's worst case
            timed_save(
                training_checkpoint(scratch.ones, 32000, 1024, 12),
                os.path.join(args.out, "train-2g6-changed.pt"),
            )
        if "legacy" in wanted:
            timed_save(
                training_checkpoint(scratch.zeros, 32000, 1024, 12),
                os.path.join(args.out, "train-2g6-legacy.pt"),
                _use_new_zipfile_serialization=False,
            )
    finally:
        scratch.close()
    if "50k" in wanted:
        sd = {f"layers.{i // 10}.sub{i % 10}.weight": torch.zeros(4) for i in range(50_000)}
        timed_save(sd, os.path.join(args.out, "keys-50k.pt"))
    if "stats" in wanted:
        torch.manual_seed(0)
        timed_save(
            {"model": {"big.weight": torch.randn(100_000_000), "small.bias": torch.zeros(10)}},
            os.path.join(args.out, "stats-100m.pt"),
        )


if __name__ == "__main__":
    main()
