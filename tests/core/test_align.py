"""diff aligns itself: the root and wrapper prefix on each side that make the most keys common
(DataParallel, torch.compile, Lightning, a training checkpoint against its export, EMA copies),
optimizer state under parameter names, the telling scalars side by side; torch is the oracle."""

import json
import subprocess
import sys

import pytest
import torch

import builders
from ckpt_viewer.core.analysis.diff import Side, diff
from ckpt_viewer.core.listing.keys import align, map_keys
from ckpt_viewer.core.listing.open import open_checkpoint
from ckpt_viewer.core.values.stats import run


def aligned(a, b, **kwargs):
    return run(diff(open_checkpoint(str(a)), open_checkpoint(str(b)), auto_align=True, **kwargs))


def assert_all_common_and_equal(report, reference: dict):
    """Every key of the torch-loaded reference state_dict compared, none left over, and every
    tensor identical: our source keys read back through torch give the same bits."""
    assert not report.only_a and not report.only_b
    assert sorted(t.key for t in report.tensors) == sorted(reference)
    assert all(t.status == "identical" for t in report.tensors)


def test_dataparallel_against_plain(tmp_path):
    model = builders.tiny_model()
    wrapped = torch.nn.DataParallel(model).state_dict()
    a = builders.save(wrapped, tmp_path / "dp.pt")
    b = builders.save(model.state_dict(), tmp_path / "plain.pt")
    report = run(diff(open_checkpoint(a), open_checkpoint(b)))
    assert not report.tensors and report.alignment.poor  # as the issue saw it: 0 in both
    assert report.suggestion.a == Side(strip_prefix="module.") and report.suggestion.b == Side()
    report = aligned(a, b)
    assert report.alignment.text == "strip module. from A"
    assert_all_common_and_equal(report, torch.load(b, weights_only=True))
    loaded = torch.load(a, weights_only=True)
    assert {t.key_a for t in report.tensors} == set(loaded)


def test_training_checkpoint_against_its_export(tmp_path):
    a = builders.training_checkpoint(tmp_path / "train.pt")
    model_state = torch.load(a, weights_only=True)["model_state_dict"]
    b = builders.save(model_state, tmp_path / "export.pt")
    report = aligned(a, b)
    assert report.alignment.a == Side(root="model_state_dict") and report.alignment.b == Side()
    assert report.alignment.text == "A: model_state_dict"
    assert_all_common_and_equal(report, model_state)
    assert report.load_state_dict_view() == {
        "missing_keys": [],
        "unexpected_keys": [],
        "size_mismatch": [],
    }


def test_two_training_checkpoints_align_on_their_models_not_their_larger_optimizer_state(tmp_path):
    """A Trainer-style file {"model_state_dict", "optimizer_state_dict"} beside a loop's own
    {"state_dict", "optimizer_state_dict"}: the optimizer state has more keys in common (three
    per parameter, by id), but what the user compares is the model."""
    model = builders.tiny_model()
    optimizer = torch.optim.Adam(model.parameters())
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    a = builders.save(
        {"model_state_dict": state, "optimizer_state_dict": optimizer.state_dict()},
        tmp_path / "a.pt",
    )
    b = builders.save(
        {"state_dict": state, "optimizer_state_dict": optimizer.state_dict()}, tmp_path / "b.pt"
    )
    report = aligned(a, b)
    assert report.alignment.a == Side(root="model_state_dict")
    assert report.alignment.b == Side(root="state_dict")
    assert_all_common_and_equal(report, state)


def test_lightning_state_dict_against_plain(tmp_path):
    class Lit(torch.nn.Module):  # what a LightningModule holding `self.model` saves
        def __init__(self):
            super().__init__()
            self.model = builders.tiny_model()

    lit = Lit()
    optimizer = torch.optim.SGD(lit.parameters(), lr=0.1, momentum=0.9)
    a = builders.save(
        {
            "epoch": 3,
            "global_step": 120,
            "pytorch-lightning_version": "2.4.0",
            "state_dict": lit.state_dict(),
            "optimizer_states": [optimizer.state_dict()],
            "lr_schedulers": [],
        },
        tmp_path / "last.ckpt",
    )
    b = builders.save(lit.model.state_dict(), tmp_path / "net.pt")
    report = aligned(a, b)
    assert report.alignment.a == Side(root="state_dict", strip_prefix="model.")
    assert_all_common_and_equal(report, torch.load(b, weights_only=True))
    scalars = {p.key: (p.a, p.b) for p in report.scalars}
    assert scalars["epoch"] == (3, None) and scalars["global_step"] == (120, None)


def test_compiled_model_against_plain(tmp_path):
    model = builders.tiny_model()
    compiled = torch.compile(model).state_dict()  # _orig_mod. keys; nothing is compiled
    assert all(k.startswith("_orig_mod.") for k in compiled)
    a = builders.save(model.state_dict(), tmp_path / "plain.pt")
    b = builders.save(compiled, tmp_path / "compiled.pt")
    report = aligned(a, b)
    assert report.alignment.text == "strip _orig_mod. from B"
    assert_all_common_and_equal(report, torch.load(a, weights_only=True))


def test_ema_copy_ties_go_to_the_model(tmp_path):
    model = builders.tiny_model()
    ema = {k: v * 0.5 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    a = builders.save({"model_ema": ema, "model": model.state_dict()}, tmp_path / "ema.pt")
    b = builders.save(model.state_dict(), tmp_path / "plain.pt")
    report = aligned(a, b)
    assert report.alignment.a == Side(root="model")  # as many keys under model_ema: not EMA
    assert_all_common_and_equal(report, torch.load(b, weights_only=True))
    # the EMA copy is still there to pick by hand, and its values differ
    by_hand = run(diff(open_checkpoint(a), open_checkpoint(b), Side(root="model_ema"), Side()))
    changed = {t.key for t in by_hand.tensors if t.status == "changed"}
    halved = {k for k, v in model.state_dict().items() if v.is_floating_point() and v.any()}
    assert changed == halved


def test_same_layout_needs_no_rules(tmp_path):
    a = builders.training_checkpoint(tmp_path / "a.pt")
    report = aligned(a, a)
    assert report.alignment.text == "keys as they are" and report.suggestion is None
    assert not report.only_a and report.identical


def test_optimizer_state_compared_under_parameter_names(tmp_path):
    """Two runs whose optimizers list the parameters in other orders: by id every state would
    meet another parameter's; by name (param_names, torch >= 2.5) each meets its own."""
    model = builders.tiny_model()
    named = list(model.named_parameters())
    start = {k: v.clone() for k, v in model.state_dict().items()}
    paths = []
    for order, name in ((named, "a.pt"), (named[::-1], "b.pt")):
        model.load_state_dict(start)
        optimizer = torch.optim.Adam(order)
        model.zero_grad()
        model(torch.randn(5, 4, generator=torch.Generator().manual_seed(1))).sum().backward()
        optimizer.step()
        state = optimizer.state_dict()
        saved = {"model": model.state_dict(), "optim": state}
        paths.append(builders.save(saved, tmp_path / name))
    report = run(diff(open_checkpoint(paths[0]), open_checkpoint(paths[1])))
    # the oracle: torch's own file, state by id mapped to names through param_names
    states = []
    for path in paths:
        optim = torch.load(path, weights_only=True)["optim"]
        names = [n for g in optim["param_groups"] for n in g["param_names"]]
        ids = [i for g in optim["param_groups"] for i in g["params"]]
        states.append({names[ids.index(i)]: s for i, s in optim["state"].items()})
    optimizer_rows = {t.key: t for t in report.tensors if t.key.startswith("optim.")}
    expected = {
        f"optim.state.{name}.{entry}": torch.equal(value, states[1][name][entry])
        for name, state in states[0].items()
        for entry, value in state.items()
    }
    assert set(optimizer_rows) == set(expected)
    assert {k: t.status == "identical" for k, t in optimizer_rows.items()} == expected
    assert all(expected.values())
    assert {t.key_b for t in optimizer_rows.values()} >= {"optim.state.0.exp_avg"}


def test_optimizer_state_by_id_unless_both_prove_names(tmp_path):
    a = builders.training_checkpoint(tmp_path / "a.pt")  # names from param_names
    b = builders.training_checkpoint(tmp_path / "b.pt", named=False)  # ids, names by the model
    c = builders.save(
        {"optimizer_state_dict": torch.load(b)["optimizer_state_dict"]}, tmp_path / "c.pt"
    )
    report = run(diff(open_checkpoint(a), open_checkpoint(c)))  # c cannot prove its names
    keys = {t.key for t in report.tensors}
    assert "optimizer_state_dict.state.0.exp_avg" in keys
    report = run(diff(open_checkpoint(a), open_checkpoint(b)))  # both prove them
    assert "optimizer_state_dict.state.0.weight.exp_avg" in {t.key for t in report.tensors}


def test_parameter_names_given_twice_leave_ids(tmp_path):
    """A file may name two parameters alike: their states would share a key, so ids stay."""
    model, optimizer = builders.trained()
    state = optimizer.state_dict()
    state["param_groups"][0]["param_names"] = ["w"] * len(state["param_groups"][0]["params"])
    a = builders.save({"model": model.state_dict(), "optim": state}, tmp_path / "a.pt")
    report = run(diff(open_checkpoint(a), open_checkpoint(a)))
    assert report.identical and "optim.state.0.exp_avg" in {t.key for t in report.tensors}


def test_scalars_side_by_side(tmp_path):
    model, optimizer = builders.trained()
    for group in optimizer.param_groups:
        group["lr"] = 0.5
    a = builders.training_checkpoint(tmp_path / "a.pt")
    b = builders.save(
        {
            "epoch": 9,
            "global_step": 300,
            "loss": 0.125,
            "model_state_dict": model.state_dict(),
            "optimizer_state_dict": optimizer.state_dict(),
        },
        tmp_path / "b.pt",
    )
    report = run(diff(open_checkpoint(a), open_checkpoint(b)))
    loaded = [torch.load(p, weights_only=True) for p in (a, b)]
    pairs = {p.key: (p.a, p.b, p.same) for p in report.scalars}
    assert list(pairs)[:2] == ["epoch", "global_step"]  # epoch and step first
    assert pairs["epoch"] == (loaded[0]["epoch"], loaded[1]["epoch"], False)
    assert pairs["global_step"] == (None, 300, False)
    assert pairs["loss"] == (loaded[0]["loss"], loaded[1]["loss"], False)
    lr = [d["optimizer_state_dict"]["param_groups"][0]["lr"] for d in loaded]
    assert pairs["optimizer_state_dict.param_groups.0.lr"] == (*lr, False)


def test_scalars_are_numbers_and_tensor_learning_rates(tmp_path):
    """A tensor lr is read; a path is no scalar to set side by side, even named best_."""
    model, optimizer = builders.trained(lr=torch.tensor(0.01))
    a = builders.save(
        {
            "epoch": 1,
            "best_model_path": "/runs/x\x1b[2J",
            "val_loss": 0.3,
            "hyper_parameters": {"lr": 0.02},
            "opt": optimizer.state_dict(),
        },
        tmp_path / "a.pt",
    )
    report = run(diff(open_checkpoint(a), open_checkpoint(a)))
    loaded = torch.load(a, weights_only=True)
    values = {p.key: p.a for p in report.scalars}
    lr = loaded["opt"]["param_groups"][0]["lr"]  # float32, shown as its shortest decimal
    assert torch.equal(torch.tensor(values.pop("opt.param_groups.0.lr"), dtype=lr.dtype), lr)
    assert values == {"epoch": 1, "val_loss": 0.3, "hyper_parameters.lr": 0.02}
    assert all(p.same for p in report.scalars)


def test_map_keys_is_exports_rule(tmp_path):
    """export and diff share the rules: root, globs, strip and add prefix."""
    from ckpt_viewer.core.writing.export import ExportPlan, plan_items

    checkpoint = open_checkpoint(builders.training_checkpoint(tmp_path / "a.pt"))
    rules = {"root": "model_state_dict", "strip_prefix": "0.", "add_prefix": "net."}
    ours = map_keys(checkpoint, **rules, exclude=["*.bias"])
    items = plan_items(checkpoint, ExportPlan(**rules, exclude=["*.bias"]))
    assert [(k, n) for k, n, _ in ours] == [(i.source_key, i.key) for i in items]
    assert (
        "model_state_dict.0.weight",
        "net.weight",
    ) == ours[0][:2]
    assert align(checkpoint, checkpoint).common == len(checkpoint.tensors())


def cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "ckpt_viewer", "diff", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_suggests_and_applies_the_alignment(tmp_path):
    a = builders.training_checkpoint(tmp_path / "train.pt")
    state = torch.load(a, weights_only=True)["model_state_dict"]
    b = builders.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "dp.pt")
    plain = cli(a, b)
    assert plain.returncode == 1
    hint = next(line for line in plain.stdout.splitlines() if line.startswith("fewer than half"))
    assert "--root-a model_state_dict --strip-prefix-b module." in hint
    assert "epoch: 7 | -  *" in plain.stdout
    applied = cli(a, b, "--auto-align")
    assert applied.returncode == 0, applied.stdout
    assert "aligned: A: model_state_dict, strip module. from B" in applied.stdout
    # the suggested options by hand give the same comparison
    by_hand = cli(a, b, "--root-a", "model_state_dict", "--strip-prefix-b", "module.", "--json")
    info = json.loads(by_hand.stdout)
    assert by_hand.returncode == 0 and info["alignment"]["suggested"] is None
    assert info["alignment"]["applied"]["common"] == len(state)
    assert info["identical_tensors"] == len(state) and not info["only_a"]
    as_json = json.loads(cli(a, b, "--json").stdout)
    assert as_json["alignment"]["suggested"]["options"] == (
        "--root-a model_state_dict --strip-prefix-b module."
    )
    assert {"key": "epoch", "a": 7, "b": None, "same": False} in as_json["scalars"]


def test_cli_auto_align_refuses_hand_rules(tmp_path):
    a = builders.save({"w": torch.zeros(2)}, tmp_path / "a.pt")
    result = cli(a, a, "--auto-align", "--root-a", "w")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: --auto-align") and result.stderr.count("\n") == 1


@pytest.mark.parametrize("wrapper", ["module.", "_orig_mod.module."])
def test_wrapper_runs_strip_whole(tmp_path, wrapper):
    state = builders.tiny_model().state_dict()
    a = builders.save({wrapper + k: v for k, v in state.items()}, tmp_path / "a.pt")
    b = builders.save(state, tmp_path / "b.pt")
    report = aligned(a, b)
    assert report.alignment.a == Side(strip_prefix=wrapper)
    assert_all_common_and_equal(report, state)


def test_a_root_is_named_as_a_root_not_as_a_prefix(tmp_path):
    """{'model': DataParallel state_dict}: root model and strip module., not 'model.module.'
    stripped from the whole file (the same keys, in the words a person would use)."""
    model = builders.tiny_model()
    a = builders.save({"model": torch.nn.DataParallel(model).state_dict()}, tmp_path / "a.pt")
    b = builders.save(model.state_dict(), tmp_path / "b.pt")
    report = aligned(a, b)
    assert report.alignment.a == Side(root="model", strip_prefix="module.")
    assert_all_common_and_equal(report, torch.load(b, weights_only=True))


def test_hostile_keys_align_without_surprises(tmp_path):
    """A shared first name with control characters is never offered as a prefix to strip;
    a strip that would name two keys alike is no candidate; the output stays escaped."""
    t = torch.ones(2)
    a = builders.save({"x\x1b]0;pwn\x07.w": t, "x\x1b]0;pwn\x07.b": t}, tmp_path / "a.pt")
    b = builders.save({"w": t, "b": t}, tmp_path / "b.pt")
    report = aligned(a, b)
    assert report.alignment.text == "keys as they are" and not report.tensors
    result = cli(a, b)
    assert result.returncode == 1 and "\x1b" not in result.stdout and "\x07" not in result.stdout
    both = builders.save({"module.w": t, "w": t * 2}, tmp_path / "both.pt")
    report = aligned(both, b)
    assert report.alignment.a == Side() and [t.key for t in report.tensors] == ["w"]


def test_a_base_model_beside_its_head(tmp_path):
    """A Hugging Face style task model (`transformer.*` and `lm_head.*`) against its base."""

    class WithHead(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.transformer = builders.tiny_model()
            self.lm_head = torch.nn.Linear(2, 5)

    model = WithHead()
    a = builders.save(model.state_dict(), tmp_path / "lm.pt")
    b = builders.save(model.transformer.state_dict(), tmp_path / "base.pt")
    report = aligned(a, b)
    assert report.alignment.text == "strip transformer. from A"
    assert report.only_a == ["lm_head.weight", "lm_head.bias"] and not report.only_b
    base = torch.load(b, weights_only=True)
    assert sorted(t.key for t in report.tensors) == sorted(base)
    assert all(t.status == "identical" for t in report.tensors)
