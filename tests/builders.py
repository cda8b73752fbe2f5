"""Small checkpoints of every kind, made with torch itself inside the tests."""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap

import torch


class Call:
    """Pickles as a call of func(*args): what a malicious checkpoint contains."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def tiny_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.ReLU(), torch.nn.Linear(3, 2)
    )


def trained(optimizer_cls=torch.optim.Adam, named=True, **kwargs):
    model = tiny_model()
    params = model.named_parameters() if named else model.parameters()
    optimizer = optimizer_cls(params, **kwargs)
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()
    return model, optimizer


def save(obj, path, **kwargs):
    torch.save(obj, path, **kwargs)
    return str(path)


def training_checkpoint(path, named=True, legacy=False):
    model, optimizer = trained(named=named)
    return save(
        {
            "epoch": 7,
            "loss": 0.25,
            "model_state_dict": model.state_dict(),
            "optimizer_state_dict": optimizer.state_dict(),
        },
        path,
        _use_new_zipfile_serialization=not legacy,
    )


@dataclasses.dataclass
class Config:
    hidden: int = 16
    name: str = "tiny"


def every_dtype():
    base = {
        f"t_{d}".replace("torch.", ""): torch.zeros(3, dtype=d)
        for d in (
            torch.float64,
            torch.float32,
            torch.float16,
            torch.bfloat16,
            torch.complex64,
            torch.complex128,
            torch.bool,
            torch.uint8,
            torch.int8,
            torch.int16,
            torch.int32,
            torch.int64,
            torch.float8_e4m3fn,
            torch.float8_e5m2,
        )
    }
    base["scalar0d"] = torch.tensor(3.5)
    base["empty"] = torch.zeros(0, 4)
    base["qint8"] = torch.quantize_per_tensor(torch.randn(4), 0.1, 0, torch.qint8)
    base["qchannel"] = torch.quantize_per_channel(
        torch.randn(2, 3), torch.tensor([0.1, 0.2]), torch.tensor([0, 1]), 0, torch.quint8
    )
    base["coo"] = torch.eye(4).to_sparse()
    base["csr"] = torch.eye(4).to_sparse_csr()
    return base


def run_python(code: str, cwd, extra_path=None):
    """Run code in a fresh interpreter (classes defined there do not exist in the tests)."""
    env = dict(os.environ)
    if extra_path:
        env["PYTHONPATH"] = str(extra_path) + os.pathsep + env.get("PYTHONPATH", "")
    subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env=env,
        check=True,
        capture_output=True,
    )


WHOLE_MODEL_CLASSES = """
import torch
class Encoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(4, 3)
        self.register_buffer("scale", torch.ones(3))
        self.register_buffer("cache", torch.zeros(2), persistent=False)
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = Encoder()
        self.head = torch.nn.Linear(3, 2)
"""  # these classes exist only in the process that writes the file (and a trusted reader)


_MADE: dict[str, str] = {}  # builder name -> its file, made once per test process


def made_once(make, path) -> str:
    """A copy of the file make(path) writes, made once per test process: the builders that
    need a fresh interpreter take seconds each (its zip records keep the first file's name)."""
    if make.__name__ not in _MADE:
        folder = tempfile.mkdtemp(prefix="ckpt-viewer-tests-")
        atexit.register(shutil.rmtree, folder, True)
        _MADE[make.__name__] = make(os.path.join(folder, os.path.basename(str(path))))
    shutil.copyfile(_MADE[make.__name__], path)
    return str(path)


def whole_model_file(path):
    """torch.save(model) of a class that only exists in another process."""
    return made_once(_whole_model_file, path)


def _whole_model_file(path):
    run_python(
        WHOLE_MODEL_CLASSES
        + f"""
torch.save({{"model": Net(), "ema": Net()}}, {str(path)!r})
""",
        cwd=os.path.dirname(path),
    )
    return str(path)


def lightning_stub(folder) -> str:
    """A stand-in lightning_fabric package under folder/stub (for a reader that trusts it)."""
    stub = os.path.join(folder, "stub")
    package = os.path.join(stub, "lightning_fabric", "utilities")
    os.makedirs(package, exist_ok=True)
    for part in (os.path.join(stub, "lightning_fabric"), package):
        open(os.path.join(part, "__init__.py"), "w").close()
    with open(os.path.join(package, "data.py"), "w") as f:
        f.write("class AttributeDict(dict):\n    pass\n")
    return stub


def lightning_file(path):
    """A Lightning-style .ckpt with an AttributeDict, made with a stand-in lightning module
    (left beside it in stub/)."""
    lightning_stub(os.path.dirname(path))
    return made_once(_lightning_file, path)


def _lightning_file(path):
    stub = lightning_stub(os.path.dirname(path))
    run_python(
        f"""
        import torch
        from lightning_fabric.utilities.data import AttributeDict
        model = torch.nn.Linear(4, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        model(torch.randn(3, 4)).sum().backward(); opt.step()
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5)
        sd = {{"model." + k: v for k, v in model.state_dict().items()}}
        torch.save({{"epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.4.0",
                    "state_dict": sd, "optimizer_states": [opt.state_dict()],
                    "lr_schedulers": [sched.state_dict()], "loops": {{"fit_loop": {{"epoch_progress": {{"current": {{"completed": 3}}}}}}}},
                    "hyper_parameters": AttributeDict(lr=0.1, hidden=64, name="run-1")}},
                   {str(path)!r})
    """,
        cwd=os.path.dirname(path),
        extra_path=stub,
    )
    return str(path)


def misc_objects_file(path):
    args = argparse.Namespace(lr=0.01, batch_size=32, arch="resnet18")
    return save({"args": args, "config": Config(), "model": tiny_model().state_dict()}, path)


def torchscript_file(path):
    module = torch.jit.trace(tiny_model().eval(), torch.randn(2, 4))
    torch.jit.save(module, path)
    return str(path)


def safetensors_file(path, tensors=None, metadata=None):
    from safetensors.torch import save_file

    tensors = (
        tensors
        if tensors is not None
        else {
            "encoder.weight": torch.randn(3, 4),
            "encoder.bias": torch.zeros(3),
            "head.weight": torch.randn(2, 3).to(torch.bfloat16),
        }
    )
    save_file(tensors, str(path), metadata=metadata or {"format": "pt"})
    return str(path)


def safetensors_header_keys(path) -> list[str]:
    """The keys in the order a safetensors file itself stores them (read from its header, not
    through our reader: the oracle for file order)."""
    import struct

    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        return [k for k in json.loads(f.read(size)) if k != "__metadata__"]


def hf_directory(folder, shard_format="safetensors"):
    """A sharded Hugging Face model directory with an index, two shards and a config."""
    os.makedirs(folder, exist_ok=True)
    shards = {
        "a": {"embed.weight": torch.randn(10, 4), "layers.0.weight": torch.randn(4, 4)},
        "b": {"layers.1.weight": torch.randn(4, 4), "lm_head.weight": torch.randn(10, 4)},
    }
    weight_map = {}
    for index, tensors in enumerate(shards.values(), start=1):
        if shard_format == "safetensors":
            filename = f"model-0000{index}-of-00002.safetensors"
            safetensors_file(os.path.join(folder, filename), tensors)
            index_name = "model.safetensors.index.json"
        else:
            filename = f"pytorch_model-0000{index}-of-00002.bin"
            torch.save(tensors, os.path.join(folder, filename))
            index_name = "pytorch_model.bin.index.json"
        weight_map.update({key: filename for key in tensors})
    with open(os.path.join(folder, index_name), "w") as f:
        json.dump({"metadata": {"total_size": 1234}, "weight_map": weight_map}, f)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"model_type": "tiny", "hidden_size": 4, "vocab_size": 10}, f)
    return str(folder)


def dcp_directory(folder):
    import torch.distributed.checkpoint as dcp

    model = tiny_model()
    dcp.save({"model": model.state_dict(), "step": 11}, checkpoint_id=str(folder))
    return str(folder), model.state_dict()


def dcp_crafted(folder, shape, chunks, dtype=None, transforms=None, key="w"):
    """A DCP folder holding tensor `key` of `shape` from chunks [(offsets, sizes, stored
    tensor)], its .metadata pickled from torch's own Metadata classes and each chunk stored as
    torch's writer stores it (torch.save into one data file); a stored tensor of None reuses
    the previous chunk's bytes."""
    import io
    import pickle

    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import (
        ChunkStorageMetadata,
        Metadata,
        MetadataIndex,
        TensorProperties,
        TensorStorageMetadata,
    )

    os.makedirs(folder)
    blob, md_chunks, storage, span = io.BytesIO(), [], {}, None
    for offsets, sizes, stored in chunks:
        if stored is not None:
            start = blob.tell()
            torch.save(stored, blob)
            span = (start, blob.tell() - start)
        md_chunks.append(ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=torch.Size(sizes)))
        storage[MetadataIndex(key, torch.Size(offsets))] = _StorageInfo(
            "d.distcp", *span, transforms
        )
    with open(os.path.join(folder, "d.distcp"), "wb") as f:
        f.write(blob.getvalue())
    metadata = Metadata(
        state_dict_metadata={
            key: TensorStorageMetadata(
                TensorProperties(dtype=dtype or torch.float32), torch.Size(shape), md_chunks
            )
        },
        storage_data=storage,
    )
    with open(os.path.join(folder, ".metadata"), "wb") as f:
        pickle.dump(metadata, f)
    return str(folder)


def cuda_tagged(path, obj, tag="cuda:0"):
    """Save CPU tensors as if they had been on a GPU: storages carry `tag` as location."""

    def tagger(storage):
        return tag

    torch.serialization.register_package(-100, tagger, lambda storage, location: None)
    try:
        torch.save(obj, path)
    finally:
        torch.serialization._package_registry[:] = [
            p for p in torch.serialization._package_registry if p[1] is not tagger
        ]
    return str(path)


# Runs the CLI (`python -c PEAK_OF_CLI ARGS...`) and prints its own memory peak (VmHWM) at
# exit: a child's rusage would count the pages it shared with the test process before exec.
PEAK_OF_CLI = """
import runpy, sys
sys.argv = ["ckpt-viewer"] + sys.argv[1:]
try:
    runpy.run_module("ckpt_viewer", run_name="__main__")
finally:
    peak = [l for l in open("/proc/self/status") if l.startswith("VmHWM")]
    print("peak-kb", peak[0].split()[1] if peak else 0, file=sys.stderr)
"""


def alarm(seconds: int):
    """A TimeoutError in this (main) thread after `seconds`: a hang fails, never blocks."""

    def fail(signum, frame):
        raise TimeoutError(f"took longer than {seconds} s")

    signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)


def training_run(folder, *, steps=6, nan_at=None, frozen=True, drop_every=3, names=None):
    """A run of checkpoints from a real training loop: a small MLP trained for `steps` checkpoints (5 optimizer steps each) with a StepLR drop,
    optionally its first layer frozen and a NaN planted at checkpoint `nan_at`."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    if frozen:
        model[0].weight.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, drop_every, 0.1)
    os.makedirs(folder, exist_ok=True)
    saved = []
    for index in range(steps):
        for _ in range(5):
            loss = model(torch.randn(32, 8)).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
        if index == nan_at:
            with torch.no_grad():
                model[2].bias[1] = float("nan")
        step = (index + 1) * 5
        name = names[index] if names else f"ckpt_{step}.pt"
        state = {k: v.clone() for k, v in model.state_dict().items()}
        torch.save(
            {
                "global_step": step,
                "epoch": index,
                "loss": loss.item(),
                "model_state_dict": state,
                "optimizer_state_dict": optimizer.state_dict(),
            },
            os.path.join(folder, name),
        )
        saved.append((step, state, optimizer.param_groups[0]["lr"]))
    return saved
