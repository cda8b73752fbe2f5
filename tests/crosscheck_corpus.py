"""The cross-check corpus: small checkpoints of each kind, written with torch, safetensors and
the DCP writer, each with what the format's own loader gives for it (the reference)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import torch

import builders

REF_BUFFER_NAMES = ("running_mean", "running_var", "num_batches_tracked")


class Net(torch.nn.Module):
    """A whole model pickled with torch.save(model): parameters and BatchNorm buffers. Defined
    here so that torch.load(weights_only=False) of our own fixture can rebuild it."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(5, 4)
        self.norm = torch.nn.BatchNorm1d(4)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.norm(self.proj(x)))


@dataclass
class Entry:
    path: str
    tensors: dict  # key -> tensor, as the format's loader gives them
    split: dict  # {"model", "optimizer_state", "other"} elements
    buffers: int = 0  # of split["model"]: elements of buffers
    scalars: dict = field(default_factory=dict)
    listing: dict = field(default_factory=dict)  # key -> (shape, dtype, nbytes) where the
    #                                                values are not the stored dtype (GGUF)


def nonfinite(n=40, seed=1):
    torch.manual_seed(seed)
    values = torch.randn(n)
    values[[2, 17]] = float("nan")
    values[5] = float("inf")
    values[[11, 30, 31]] = float("-inf")
    return values


def torch_load(path, weights_only=True):
    return torch.load(path, weights_only=weights_only, map_location="cpu")


def flat(obj, prefix=""):
    """key -> tensor as the listing names them: dict keys, list indices, a module's state_dict."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict(keep_vars=True)
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return {}
    out = {}
    for name, value in items:
        out.update(flat(value, f"{prefix}.{name}" if prefix else str(name)))
    return out


def numel(tensors) -> int:
    return sum(t.numel() for t in tensors)


def plain_state_dict(folder) -> Entry:
    torch.manual_seed(0)
    state = {
        "f32": torch.randn(4, 5),
        "f16": torch.randn(6).half() * 3,
        "bf16": torch.randn(3, 3).bfloat16(),
        "i64": torch.randint(-50, 50, (7,)),
        "flags": torch.rand(9) > 0.5,
        "u8": torch.randint(0, 256, (8,), dtype=torch.uint8),
        "empty": torch.zeros(0, 3),
        "scalar": torch.tensor(2.5),
        "one": torch.tensor([-1.5]),
        "nonfinite": nonfinite(),
        "zeros": torch.zeros(5),
    }
    torch.manual_seed(34)
    state["bf16_on_edges"] = (torch.randn(100) * 5 + 100).bfloat16()  # 10 auto bins
    state["c64"] = torch.randn(6, dtype=torch.complex64)  # figures of |z|
    state["f64_offset"] = torch.randn(50, dtype=torch.float64) * 1e-3 + 1e9  # spread << mean
    state["i32_wide"] = torch.randint(-(2**31), 2**31 - 1, (20,), dtype=torch.int32)
    state.update(
        all_nan=torch.full((4,), float("nan")),
        inf_only=torch.tensor([math.inf] * 2),
        f8=torch.randn(16).to(torch.float8_e4m3fn),
        i8=torch.tensor([-128, 0, 127], dtype=torch.int8),
    )
    path = builders.save(state, os.path.join(folder, "plain.pt"))
    tensors = flat(torch_load(path))
    return Entry(
        path, tensors, {"model": numel(tensors.values()), "optimizer_state": 0, "other": 0}
    )


def training(folder) -> Entry:
    path = builders.training_checkpoint(os.path.join(folder, "train.pth"))
    loaded = torch_load(path)
    tensors = flat(loaded)
    model = loaded["model_state_dict"]
    buffers = numel(t for k, t in model.items() if k.rsplit(".", 1)[-1] in REF_BUFFER_NAMES)
    state = loaded["optimizer_state_dict"]["state"]
    return Entry(
        path,
        tensors,
        {
            "model": numel(model.values()),
            "optimizer_state": numel(flat(state).values()),
            "other": 0,
        },
        buffers,
        {"epoch": 7, "loss": 0.25},
    )


def preview_first(folder) -> Entry:
    """Over a million elements: the window shows a sampled preview before the exact pass."""
    torch.manual_seed(8)
    big = (torch.randn(1_100_000) * 0.02).half()
    big[[10, 500_000]] = float("nan")
    path = builders.save({"big": big, "small": torch.arange(5.0)}, os.path.join(folder, "big.pt"))
    tensors = flat(torch_load(path))
    return Entry(
        path, tensors, {"model": numel(tensors.values()), "optimizer_state": 0, "other": 0}
    )


def mixed(folder) -> Entry:
    """Model tensors beside other tensors: an RNG state, a list of 0-d losses."""
    torch.manual_seed(9)
    model = builders.tiny_model().state_dict()
    ema = {"0.weight": torch.randn(3, 4)}
    state = {
        "model": model,
        "ema": ema,
        "rng_state": torch.get_rng_state(),
        "losses": [torch.tensor(0.5), torch.tensor(0.25)],
        "step": 3,
    }
    path = builders.save(state, os.path.join(folder, "mixed.pt"))
    loaded = torch_load(path)
    tensors = flat(loaded)
    buffers = numel(
        t for k, t in loaded["model"].items() if k.rsplit(".", 1)[-1] in REF_BUFFER_NAMES
    )
    other = numel([loaded["rng_state"], *loaded["losses"]])
    return Entry(
        path,
        tensors,
        {"model": numel(tensors.values()) - other, "optimizer_state": 0, "other": other},
        buffers,
        scalars={"step": 3},
    )


def legacy(folder) -> Entry:
    """The pre-1.6 (non-zip) serialization: the same training checkpoint."""
    entry = training(folder)
    path = builders.training_checkpoint(os.path.join(folder, "legacy.pth"), legacy=True)
    entry.path, entry.tensors = path, flat(torch_load(path))
    return entry


def whole_model(folder) -> Entry:
    torch.manual_seed(2)
    net = Net()
    net(torch.randn(8, 5))  # train mode: BatchNorm's running statistics move
    path = builders.save(net, os.path.join(folder, "whole.pt"))
    loaded = torch_load(path, weights_only=False)  # our own fixture: its class is here
    tensors = flat(loaded)
    parameters, buffers = numel(loaded.parameters()), numel(loaded.buffers())
    return Entry(
        path, tensors, {"model": parameters + buffers, "optimizer_state": 0, "other": 0}, buffers
    )


def tied(folder) -> Entry:
    torch.manual_seed(3)
    embed = torch.randn(10, 4)
    qkv = torch.randn(3, 4, 4)
    state = {
        "embed.weight": embed,
        "lm_head.weight": embed,
        "norm.weight": torch.ones(4),
        "attn.q": qkv[0],
        "attn.k": qkv[1],
        "attn.v": qkv[2],
        "probe.column": embed[:, 1],
        "probe.transposed": qkv[1].t(),
    }
    path = builders.save(state, os.path.join(folder, "tied.pt"))
    tensors = flat(torch_load(path))
    return Entry(path, tensors, {"model": 40 + 4 + 48, "optimizer_state": 0, "other": 0})


def safetensors_file(folder) -> Entry:
    from safetensors.torch import load_file

    torch.manual_seed(4)
    state = {
        "encoder.weight": torch.randn(3, 4),
        "encoder.bias": torch.zeros(3),
        "head.weight": torch.randn(2, 3).bfloat16(),
        "head.scale": torch.randn(5).half(),
        "ids": torch.arange(-3, 9, dtype=torch.int32),
        "mask": torch.tensor([True, False]),
        "nonfinite": nonfinite(36, seed=5).half(),
        "empty": torch.zeros(0),
    }
    path = builders.safetensors_file(os.path.join(folder, "w.safetensors"), state)
    tensors = load_file(path)
    return Entry(
        path, tensors, {"model": numel(tensors.values()), "optimizer_state": 0, "other": 0}
    )


def hf_sharded(folder, shard_format="safetensors") -> Entry:
    from safetensors.torch import load_file

    torch.manual_seed(5)
    path = builders.hf_directory(os.path.join(folder, "hf"), shard_format)
    tensors = {}
    for name in sorted(os.listdir(path)):
        if name.endswith(".safetensors"):
            tensors.update(load_file(os.path.join(path, name)))
        elif name.endswith(".bin"):
            tensors.update(torch_load(os.path.join(path, name)))
    return Entry(
        path, tensors, {"model": numel(tensors.values()), "optimizer_state": 0, "other": 0}
    )


def dcp_folder(folder) -> Entry:
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    torch.manual_seed(6)
    path, _ = builders.dcp_directory(os.path.join(folder, "dcp"))
    converted = os.path.join(folder, "dcp.pt")
    dcp_to_torch_save(path, converted)
    tensors = flat(torch_load(converted))
    buffers = numel(t for k, t in tensors.items() if k.rsplit(".", 1)[-1] in REF_BUFFER_NAMES)
    return Entry(
        path,
        tensors,
        {"model": numel(tensors.values()), "optimizer_state": 0, "other": 0},
        buffers,
        scalars={"step": 11},
    )


def gguf_file(folder) -> Entry:
    """Written and read back (dequantized) by the gguf package, llama.cpp's own."""
    import gguf
    import numpy as np

    kinds = gguf.GGMLQuantizationType
    rng = np.random.default_rng(7)
    path = os.path.join(folder, "m.gguf")
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", rng.standard_normal((8, 32)).astype(np.float16))
    writer.add_tensor(
        "blk.0.attn_q.weight",
        gguf.quants.quantize(rng.standard_normal((32, 32)).astype(np.float32), kinds.Q8_0),
        raw_dtype=kinds.Q8_0,
    )
    writer.add_tensor(
        "blk.0.attn_k.weight",
        gguf.quants.quantize(rng.standard_normal((16, 32)).astype(np.float32), kinds.Q4_0),
        raw_dtype=kinds.Q4_0,
    )
    writer.add_tensor("output_norm.weight", rng.standard_normal(32).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tensors, listing = {}, {}
    names = {"F32": "float32", "F16": "float16"}
    for t in gguf.GGUFReader(path).tensors:
        values = gguf.quants.dequantize(t.data, t.tensor_type)
        tensors[t.name] = torch.from_numpy(np.array(values))  # writable
        listing[t.name] = (
            [int(d) for d in t.shape][::-1],
            names.get(t.tensor_type.name, t.tensor_type.name),
            int(t.n_bytes),
        )
    return Entry(
        path,
        tensors,
        {"model": numel(tensors.values()), "optimizer_state": 0, "other": 0},
        listing=listing,
    )


CORPUS = {
    "plain": plain_state_dict,
    "training": training,
    "legacy": legacy,
    "whole_model": whole_model,
    "tied": tied,
    "safetensors": safetensors_file,
    "hf_sharded": hf_sharded,
    "hf_sharded_bin": lambda folder: hf_sharded(folder, "bin"),
    "dcp": dcp_folder,
    "gguf": gguf_file,
    "preview_first": preview_first,
    "mixed": mixed,
}
