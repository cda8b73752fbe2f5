"""Every kind of checkpoint opens as data, with keys, shapes and dtypes as torch.load sees them."""

import os

import pytest
import torch

import builders
from ckpt_viewer.core.listing.open import open_checkpoint
from ckpt_viewer.core.listing.summary import inspect_dict, totals
from ckpt_viewer.core.listing.tree import MAX_DEPTH


def listing(path):
    return {
        t["key"]: (tuple(t["shape"]), t["dtype"])
        for t in inspect_dict(open_checkpoint(path))["tensors"]
    }


def torch_listing(obj, prefix=""):
    """What torch.load shows, flattened the way inspect names keys."""
    out = {}
    if isinstance(obj, torch.Tensor):
        out[prefix] = (tuple(obj.shape), str(obj.dtype).replace("torch.", ""))
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.update(torch_listing(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(torch_listing(v, f"{prefix}.{i}" if prefix else str(i)))
    return out


@pytest.mark.parametrize("legacy", [False, True])
def test_training_checkpoint_matches_torch_load(tmp_path, legacy):
    path = builders.training_checkpoint(tmp_path / "ckpt.pth", legacy=legacy)
    expected = torch_listing(torch.load(path, weights_only=True))
    assert listing(path) == expected
    info = inspect_dict(open_checkpoint(path))
    assert info["format"] == ("torch-legacy" if legacy else "torch-zip")
    assert info["scalars"]["epoch"] == 7 and info["scalars"]["loss"] == 0.25
    assert info["unsafe_globals"] == []
    assert info["file_bytes"] == os.path.getsize(path)


def test_optimizer_hyperparameters_and_param_names(tmp_path):
    path = builders.training_checkpoint(tmp_path / "c.pt", named=True)
    (opt,) = inspect_dict(open_checkpoint(path))["optimizers"]
    assert opt["key"] == "optimizer_state_dict" and opt["type"] == "Adam"
    group = opt["param_groups"][0]
    assert group["lr"] == 0.001 and group["betas"] == [0.9, 0.999] and group["eps"] == 1e-8
    assert group["params"] == ["0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias"]


def test_param_names_matched_from_state_dict_skipping_buffers(tmp_path):
    path = builders.training_checkpoint(tmp_path / "c.pt", named=False)
    checkpoint = open_checkpoint(path)
    (opt,) = checkpoint.optimizers
    assert opt.param_groups[0]["params"] == [
        "0.weight",
        "0.bias",
        "1.weight",
        "1.bias",
        "3.weight",
        "3.bias",
    ]
    assert "model_state_dict" in opt.names_source
    assert opt.state["1.weight"].note == "state of 1.weight"


def test_sgd_momentum_and_unmatched_ids(tmp_path):
    model, opt = builders.trained(torch.optim.SGD, named=False, lr=0.1, momentum=0.9, nesterov=True)
    path = builders.save({"opt": opt.state_dict()}, tmp_path / "o.pt")
    (info,) = inspect_dict(open_checkpoint(path))["optimizers"]
    assert info["type"] == "SGD"
    assert (
        info["param_groups"][0]["momentum"] == 0.9 and info["param_groups"][0]["nesterov"] is True
    )
    assert info["param_groups"][0]["params"] == [0, 1, 2, 3, 4, 5]  # no model: ids


def test_several_models_optimizers_lists_and_ema(tmp_path):
    gen, gen_opt = builders.trained(named=True)
    disc, disc_opt = builders.trained(torch.optim.SGD, named=True, lr=0.1, momentum=0.5)
    ema = {k: v.clone() for k, v in gen.state_dict().items()}
    obj = {
        "models": [gen.state_dict(), disc.state_dict()],
        "ema": ema,
        "optims": {"g": gen_opt.state_dict(), "d": disc_opt.state_dict()},
        "param": torch.nn.Parameter(torch.ones(2)),
        "history": [[1, 2], {"best": 0.5}],
    }
    path = builders.save(obj, tmp_path / "multi.pt")
    assert listing(path) == torch_listing(torch.load(path, weights_only=True))
    info = inspect_dict(open_checkpoint(path))
    assert sorted((o["key"], o["type"]) for o in info["optimizers"]) == [
        ("optims.d", "SGD"),
        ("optims.g", "Adam"),
    ]
    assert info["scalars"]["history.1.best"] == 0.5
    param = open_checkpoint(path).find("param")
    assert param.tensor.is_parameter and param.type_name == "Parameter"


def test_whole_model_pickle_without_its_source(tmp_path):
    path = builders.whole_model_file(tmp_path / "whole.pt")
    checkpoint = open_checkpoint(path)
    keys = [k for k, _, _ in checkpoint.tensors()]
    # torch's state_dict order: a module's own parameters and buffers, then its children.
    assert keys == [
        "model.encoder.scale",
        "model.encoder.proj.weight",
        "model.encoder.proj.bias",
        "model.head.weight",
        "model.head.bias",
        "ema.encoder.scale",
        "ema.encoder.proj.weight",
        "ema.encoder.proj.bias",
        "ema.head.weight",
        "ema.head.bias",
    ]
    model = checkpoint.find("model")
    assert model.kind == "module" and model.type_name == "__main__.Net"
    assert checkpoint.find("model.encoder").type_name == "__main__.Encoder"
    assert checkpoint.find("model.encoder.scale").role == "buffer"
    assert checkpoint.find("model.head.weight").role == "parameter"
    assert "__main__.Net" in checkpoint.unsafe_globals
    assert "torch.nn.modules.linear.Linear" in checkpoint.unsafe_globals


def test_lightning_checkpoint(tmp_path):
    path = builders.lightning_file(tmp_path / "epoch=3.ckpt")
    info = inspect_dict(open_checkpoint(path))
    assert info["scalars"]["hyper_parameters.lr"] == 0.1
    assert info["scalars"]["hyper_parameters.name"] == "run-1"
    assert info["scalars"]["global_step"] == 120
    assert info["scalars"]["loops.fit_loop.epoch_progress.current.completed"] == 3
    (opt,) = info["optimizers"]
    assert opt["key"] == "optimizer_states.0" and opt["type"] == "SGD"
    assert opt["param_groups"][0]["params"] == ["model.weight", "model.bias"]
    assert info["unsafe_globals"] == ["lightning_fabric.utilities.data.AttributeDict"]
    from ckpt_viewer.core.listing.optim import find_schedulers

    ((sched_key, sched),) = find_schedulers(open_checkpoint(path))
    assert sched_key == "lr_schedulers.0" and sched["step_size"] == 5


def test_namespace_and_dataclass_fields_are_browsable(tmp_path):
    path = builders.misc_objects_file(tmp_path / "m.pt")
    checkpoint = open_checkpoint(path)
    scalars = checkpoint.scalars()
    assert scalars["args.lr"] == 0.01 and scalars["args.arch"] == "resnet18"
    assert scalars["config.hidden"] == 16 and scalars["config.name"] == "tiny"
    assert checkpoint.find("args").type_name == "argparse.Namespace"
    assert set(checkpoint.unsafe_globals) == {"argparse.Namespace", "builders.Config"}


def test_torchscript_read_as_data(tmp_path):
    path = builders.torchscript_file(tmp_path / "script.pt")
    checkpoint = open_checkpoint(path)
    assert checkpoint.format == "torchscript"
    expected = builders.tiny_model().state_dict()
    got = {k: t.shape for k, t, _ in checkpoint.tensors()}
    assert got == {k: tuple(v.shape) for k, v in expected.items()}
    assert checkpoint.unsafe_globals == []


def test_safetensors_with_metadata(tmp_path):
    path = builders.safetensors_file(tmp_path / "w.bin", metadata={"format": "pt", "step": "9"})
    checkpoint = open_checkpoint(path)  # sniffed by content, not by the .bin name
    assert checkpoint.format == "safetensors"
    assert listing(path) == {
        "encoder.weight": ((3, 4), "float32"),
        "encoder.bias": ((3,), "float32"),
        "head.weight": ((2, 3), "bfloat16"),
    }
    assert checkpoint.metadata["metadata.step"] == "9"
    assert checkpoint.find("encoder").kind == "dict"


@pytest.mark.parametrize("shard_format", ["safetensors", "bin"])
def test_hf_sharded_directory_and_index(tmp_path, shard_format):
    folder = builders.hf_directory(tmp_path / "model", shard_format)
    for target in (folder, next(str(p) for p in (tmp_path / "model").glob("*.index.json"))):
        checkpoint = open_checkpoint(target)
        assert checkpoint.format == "hf-sharded"
        assert sorted(k for k, _, _ in checkpoint.tensors()) == [
            "embed.weight",
            "layers.0.weight",
            "layers.1.weight",
            "lm_head.weight",
        ]
        assert (
            checkpoint.metadata["shards"] == 2
            and checkpoint.metadata["config.model_type"] == "tiny"
        )


def test_dcp_directory(tmp_path):
    folder, state = builders.dcp_directory(tmp_path / "dcp")
    checkpoint = open_checkpoint(folder)
    assert checkpoint.format == "dcp"
    assert {k: t.shape for k, t, _ in checkpoint.tensors()} == {
        f"model.{k}": tuple(v.shape) for k, v in state.items()
    }
    assert checkpoint.scalars()["step"] == 11
    from ckpt_viewer.core.listing.globals import triage  # DCP's own dataclasses: reported, as data

    assert checkpoint.unsafe_globals
    assert {u.category for u in triage(checkpoint) if u.name in checkpoint.unsafe_globals} <= {
        "data"
    }


def test_gpu_location_tags_on_a_cpu_machine(tmp_path):
    model = builders.tiny_model()
    path = builders.cuda_tagged(tmp_path / "gpu.pt", model.state_dict(), "cuda:1")
    info = inspect_dict(open_checkpoint(path))
    assert {t["device"] for t in info["tensors"]} == {"cuda:1"}


def test_every_dtype_quantized_sparse_0d_empty(tmp_path):
    path = builders.save(builders.every_dtype(), tmp_path / "dtypes.pt")
    got = listing(path)
    loaded = torch.load(path, weights_only=True)
    for key, tensor in loaded.items():
        assert got[key] == (tuple(tensor.shape), str(tensor.dtype).replace("torch.", "")), key
    checkpoint = open_checkpoint(path)
    assert checkpoint.find("coo").tensor.layout == "sparse_coo"
    assert checkpoint.find("csr").tensor.layout == "sparse_csr"
    assert checkpoint.find("qint8").tensor.quantizer["qscheme"] == "per_tensor_affine"
    assert checkpoint.find("qchannel").tensor.layout == "quantized"
    assert checkpoint.find("scalar0d").tensor.shape == ()


def test_tied_weights_and_views_counted_once(tmp_path):
    base = torch.randn(10, 4)
    obj = {"embed": base, "head": base, "row": base[2], "half": base[:5]}
    checkpoint = open_checkpoint(builders.save(obj, tmp_path / "tied.pt"))
    assert checkpoint.find("head").shared_with == "embed"
    assert checkpoint.find("row").shared_with == "embed"
    total = totals(checkpoint)
    assert total.elements == 40 and total.bytes == 160 and total.tensors == 4


def test_shared_references_do_not_explode(tmp_path):
    inner = [1.0]
    for _ in range(25):
        inner = [inner, inner]  # 2**25 paths if walked naively
    checkpoint = open_checkpoint(builders.save({"bomb": inner}, tmp_path / "bomb.pt"))
    nodes = list(
        __import__("ckpt_viewer.core.listing.model", fromlist=["x"]).iter_nodes(checkpoint.root)
    )
    refs = [n for n in nodes if n.kind == "ref"]  # small levels are repeated by value
    assert 0 < len(refs) <= 25 and len(nodes) < 5000


def test_deep_nesting_does_not_overflow(tmp_path):
    import pickle

    depth = 100_000
    data = b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."  # EMPTY_LIST..., APPEND...
    path = tmp_path / "deep.pkl"
    path.write_bytes(data)
    assert pickle.loads(data) is not None
    checkpoint = open_checkpoint(str(path))
    assert checkpoint.format == "pickle"
    depth_seen, node = 0, checkpoint.root
    while node.children:
        node, depth_seen = node.children[0], depth_seen + 1
    assert depth_seen == MAX_DEPTH and node.kind == "opaque"
    assert any("nested deeper" in w for w in checkpoint.warnings)
