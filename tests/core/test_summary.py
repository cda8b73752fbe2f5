"""Totals split into model parameters and buffers, optimizer state and other elements; the
split adds up to total_params, and no report calls optimizer state "parameters"."""

import torch

import builders
from ckpt_viewer.core.listing.model import format_count
from ckpt_viewer.core.listing.open import open_checkpoint
from ckpt_viewer.core.listing.report import text_report
from ckpt_viewer.core.listing.summary import inspect_dict, totals


def numel(obj) -> int:
    """Elements of every tensor in obj, as torch.load returns it."""
    if isinstance(obj, torch.Tensor):
        return obj.numel()
    if isinstance(obj, dict):
        return sum(numel(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(numel(v) for v in obj)
    return 0


def split(path):
    info = inspect_dict(open_checkpoint(path))
    assert sum(info["params"].values()) == info["total_params"]
    return info["params"]


def test_training_checkpoint_split_matches_torch_load(tmp_path):
    path = builders.training_checkpoint(tmp_path / "c.pt")
    loaded = torch.load(path, weights_only=True)
    assert split(path) == {
        "model": numel(loaded["model_state_dict"]),
        "optimizer_state": numel(loaded["optimizer_state_dict"]["state"]),
        "other": 0,
    }


def test_adam_state_is_not_reported_as_parameters(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(100, 200), torch.nn.Linear(200, 50))
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 100)).sum().backward()
    optimizer.step()
    path = builders.save(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict()}, tmp_path / "adam.pt"
    )
    parameters = sum(p.numel() for p in model.parameters())
    checkpoint = open_checkpoint(path)
    total = totals(checkpoint)
    assert total.split == {"model": parameters, "optimizer_state": 2 * parameters + 4, "other": 0}
    report = "\n".join(text_report(checkpoint))
    assert (
        f"parameters: {format_count(parameters)} model, "
        f"{format_count(2 * parameters + 4)} optimizer state, 0 other"
    ) in report
    assert f"parameters: {format_count(total.elements)}" not in report


def test_bare_files(tmp_path):
    model = builders.tiny_model()
    state_dict_path = builders.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    assert split(state_dict_path) == {
        "model": numel(model.state_dict()),
        "optimizer_state": 0,
        "other": 0,
    }
    safetensors_path = builders.safetensors_file(tmp_path / "m.safetensors")
    assert split(safetensors_path)["model"] == 3 * 4 + 3 + 2 * 3
    hf = builders.hf_directory(tmp_path / "hf")
    assert split(hf) == {"model": 2 * (10 * 4 + 4 * 4), "optimizer_state": 0, "other": 0}
    model, optimizer = builders.trained()
    optimizer_path = builders.save(optimizer.state_dict(), tmp_path / "optimizer.pt")
    assert split(optimizer_path) == {
        "model": 0,
        "other": 0,
        "optimizer_state": numel(optimizer.state_dict()["state"]),
    }


def test_ema_copies_and_other_tensors(tmp_path):
    model = builders.tiny_model()
    ema = {k: v.clone() for k, v in model.state_dict().items()}
    obj = {
        "model": model.state_dict(),
        "model_ema": ema,
        "history": [torch.zeros(5), torch.zeros(2)],  # a list: other
        "extra": {"note": "x", "noise": torch.zeros(7)},  # not only tensors: other
        "optimizer": {"state": {}, "param_groups": [{"params": [], "lr": torch.tensor(0.1)}]},
    }
    path = builders.save(obj, tmp_path / "e.pt")
    assert split(path) == {"model": 2 * numel(ema), "optimizer_state": 0, "other": 5 + 2 + 7 + 1}


def test_whole_model_pickle_and_lightning(tmp_path):
    whole = builders.whole_model_file(tmp_path / "w.pt")
    assert split(whole) == {"model": 2 * (3 + 12 + 3 + 6 + 2), "optimizer_state": 0, "other": 0}
    lightning = builders.lightning_file(tmp_path / "l.ckpt")
    assert split(lightning) == {"model": 4 * 2 + 2, "optimizer_state": 4 * 2 + 2, "other": 0}


def test_shared_storage_counted_once_for_the_first_user(tmp_path):
    weights = torch.randn(6)
    path = builders.save({"model": {"w": weights}, "copy": [weights[:3]]}, tmp_path / "s.pt")
    info = inspect_dict(open_checkpoint(path))
    assert info["params"] == {"model": 6, "optimizer_state": 0, "other": 0}
    assert info["total_params"] == 6


def test_dcp_directory_is_model(tmp_path):
    folder, state_dict = builders.dcp_directory(tmp_path / "dcp")
    assert split(folder) == {"model": numel(state_dict), "optimizer_state": 0, "other": 0}


def test_dcp_optimizer_state(tmp_path):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model, optimizer = builders.trained()
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save(
        {"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(tmp_path / "dcp")
    )
    assert split(str(tmp_path / "dcp")) == {
        "model": numel(model_state),
        "other": 0,
        "optimizer_state": numel(optimizer_state["state"]),
    }


def test_scalars_lead_with_epoch_step_metrics_then_hyperparameters():
    from ckpt_viewer.core.listing.summary import scalars_by_importance

    scalars = {f"loops.fit_loop.epoch_loop.batch_progress.total.c{i}": i for i in range(100)}
    scalars.update(
        {
            "pytorch-lightning_version": "2.4.0",
            "hyper_parameters.lr": 0.1,
            "hyper_parameters.name": "run",
            "callbacks.ckpt.best_model_score": 0.9,
            "val_loss": 0.5,
            "global_step": 120,
            "epoch": 3,
            "optimizer.interval": 1,
        }
    )
    order = [key for key, _ in scalars_by_importance(scalars)]
    assert order[:8] == [
        "global_step",
        "epoch",
        "callbacks.ckpt.best_model_score",
        "val_loss",
        "hyper_parameters.lr",
        "hyper_parameters.name",
        "pytorch-lightning_version",
        "optimizer.interval",
    ]
    assert order[8:] == [f"loops.fit_loop.epoch_loop.batch_progress.total.c{i}" for i in range(100)]


def test_suggested_root_is_the_state_dict_the_keys_lie_in(tmp_path):
    from ckpt_viewer.core.listing.summary import suggested_root

    checkpoint = open_checkpoint(builders.training_checkpoint(tmp_path / "c.pt"))
    model_keys = [k for k, _, _ in checkpoint.tensors() if k.startswith("model_state_dict.0.")]
    assert suggested_root(checkpoint, model_keys) == "model_state_dict"
    every = [k for k, _, _ in checkpoint.tensors()]
    assert suggested_root(checkpoint, every) == ""
    plain = open_checkpoint(builders.save({"w": torch.ones(2)}, tmp_path / "p.pt"))
    assert suggested_root(plain, ["w"]) == ""


class WithMask(torch.nn.Module):
    """BatchNorm statistics and a buffer of its own name: a pickled module proves both."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.bn = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8, 4)
        self.register_buffer("mask", torch.ones(4))


def test_model_parameters_counted_apart_from_buffers(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = WithMask()
    parameters = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() for b in model.buffers())
    state_dict = model.state_dict()
    bn_stats = sum(
        v.numel()
        for k, v in state_dict.items()
        if k.startswith("bn.running") or k.endswith("num_batches_tracked")
    )
    save_file({k: v.contiguous() for k, v in state_dict.items()}, tmp_path / "m.safetensors")
    files = {  # the whole module: roles from _parameters/_buffers; state_dicts: by BN's names
        builders.save(model, tmp_path / "model.pt"): (parameters, buffers),
        builders.save(state_dict, tmp_path / "sd.pt"): (parameters + 4, bn_stats),
        str(tmp_path / "m.safetensors"): (parameters + 4, bn_stats),
    }
    for path, (expected_parameters, expected_buffers) in files.items():
        checkpoint = open_checkpoint(path)
        total = totals(checkpoint)
        assert total.split["model"] == parameters + buffers, path
        assert (total.split["model"] - total.model_buffers, total.model_buffers) == (
            expected_parameters,
            expected_buffers,
        ), path
        assert (
            f"parameters: {format_count(expected_parameters)} model + "
            f"{format_count(expected_buffers)} buffers, 0 optimizer state, 0 other"
        ) in "\n".join(text_report(checkpoint))


def test_counts_round_to_three_significant_digits_in_decimal_units():
    cases = {
        0: "0",
        999: "999",
        1000: "1K",
        5058: "5.06K",
        200_000: "200K",
        999_999: "1M",  # rounds into the next unit, never "1000K"
        38_600_000: "38.6M",
        124_439_808: "124M",
        1_500_000_000: "1.5B",
        2 * 10**15: "2,000T",
        -200_000: "-200K",
    }
    assert {n: format_count(n) for n in cases} == cases
