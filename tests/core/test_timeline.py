"""`timeline`: a run of checkpoints written by a real training loop, measured against torch."""

from __future__ import annotations

import json
import math

import pytest
import torch

import builders
from ckpt_viewer.cli import main
from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.analysis import timeline as timeline_module
from ckpt_viewer.core.analysis.timeline import open_run, timeline
from ckpt_viewer.core.progress import run


def _report(paths, **kwargs):
    return run(timeline([str(p) for p in paths], **kwargs))


def _close(ours, theirs):
    assert ours == pytest.approx(theirs, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("chunk", [None, 5])
def test_metrics_equal_torch_on_every_key_and_step(tmp_path, monkeypatch, chunk):
    if chunk:  # several chunks per tensor, read past the page cache as a run larger than memory
        monkeypatch.setattr(timeline_module, "CHUNK", chunk)
        monkeypatch.setattr(timeline_module, "_larger_than_memory", lambda nbytes: True)
    saved = builders.training_run(tmp_path / "run", frozen=False)
    report = _report([tmp_path / "run"])
    assert [s.step for s in report.steps] == [step for step, _, _ in saved]
    assert {s.order_source for s in report.steps} == {"global_step"}
    assert [s.lr for s in report.steps] == [[lr] for _, _, lr in saved]
    by_key = {k.key: k for k in report.keys}
    assert list(by_key) == list(saved[0][1])
    for key, series in by_key.items():
        for i, (_, state, _) in enumerate(saved):
            w = state[key].double()
            _close(series.values["l2"][i], torch.linalg.norm(w).item())
            _close(series.values["std"][i], w.std().item())
            _close(series.values["max_abs"][i], w.abs().max().item())
            assert series.values["nan"][i] == 0 and series.values["inf"][i] == 0
            if i == 0:
                assert series.values["update"][i] is None
                continue
            prev, first = saved[i - 1][1][key].double(), saved[0][1][key].double()
            _close(
                series.values["update"][i],
                (torch.linalg.norm(w - prev) / torch.linalg.norm(prev)).item(),
            )
            cos = torch.nn.functional.cosine_similarity
            _close(series.values["cos_prev"][i], cos(w.flatten(), prev.flatten(), dim=0).item())
            _close(series.values["cos_first"][i], cos(w.flatten(), first.flatten(), dim=0).item())


def test_planted_nan_frozen_layer_and_lr_drop_are_found_at_their_steps(tmp_path):
    builders.training_run(tmp_path / "run", nan_at=4)
    report = _report([tmp_path / "run"])
    found = {(f.kind, f.key): f for f in report.findings}
    nan = found[("nan", "2.bias")]
    assert report.steps[nan.step].step == 25 and nan.severity == "error"
    frozen = found[("frozen", "0.weight")]
    assert frozen.severity == "warning"
    drops = [f for f in report.findings if f.kind == "lr_drop"]
    assert [report.steps[f.step].step for f in drops] == [15, 30]
    assert not any(f.kind == "frozen" and f.key != "0.weight" for f in report.findings)


def test_order_comes_from_inside_the_files_not_their_names(tmp_path):
    builders.training_run(tmp_path / "run", steps=3, names=["c.pt", "a.pt", "b.pt"])
    report = _report([tmp_path / "run"])
    assert [s.label for s in report.steps] == ["c.pt", "a.pt", "b.pt"]
    assert [s.step for s in report.steps] == [5, 10, 15]


def test_names_order_a_run_whose_files_record_no_step(tmp_path):
    torch.manual_seed(0)
    for epoch in (10, 2, 1):
        torch.save({"w": torch.randn(3, 3) * epoch}, tmp_path / f"model_ep{epoch}.pth")
    report = _report([tmp_path])
    assert [s.label for s in report.steps] == ["model_ep1.pth", "model_ep2.pth", "model_ep10.pth"]
    assert {s.order_source for s in report.steps} == {"name"}


def test_wrapped_and_plain_state_dicts_line_up(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    torch.save({"step": 1, "state_dict": model.state_dict()}, tmp_path / "a.pt")
    with torch.no_grad():
        model.weight += 1
    wrapped = torch.nn.DataParallel(model)
    torch.save({"step": 2, "model": wrapped.state_dict()}, tmp_path / "b.pt")
    report = _report([tmp_path / "a.pt", tmp_path / "b.pt"])
    assert [k.key for k in report.keys] == ["weight", "bias"]
    assert report.steps[1].side.strip_prefix == "module."
    assert report.keys[0].values["update"][1] > 0
    assert report.keys[1].values["update"][1] == 0
    assert not any(f.kind == "partial" for f in report.findings)


def test_keys_that_come_go_or_change_shape(tmp_path):
    torch.save({"step": 1, "a": torch.ones(2), "b": torch.ones(3)}, tmp_path / "1.pt")
    torch.save({"step": 2, "a": torch.ones(4), "b": torch.ones(3)}, tmp_path / "2.pt")
    torch.save({"step": 3, "a": torch.ones(4)}, tmp_path / "3.pt")
    report = _report([tmp_path])
    kinds = {(f.kind, f.key, f.step) for f in report.findings}
    assert ("shape_change", "a", 1) in kinds
    assert ("partial", "b", 2) in kinds
    a = next(k for k in report.keys if k.key == "a")
    assert a.values["update"] == [None, None, 0.0]  # no update across a shape change


@pytest.mark.parametrize("chunk", [None, 5])
def test_adam_second_moment_under_parameter_names(tmp_path, monkeypatch, chunk):
    if chunk:  # several chunks per tensor, read ahead into both of each step's buffers
        monkeypatch.setattr(timeline_module, "CHUNK", chunk)
        monkeypatch.setattr(timeline_module, "_larger_than_memory", lambda nbytes: True)
    saved = []
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in (1, 2):
        model(torch.randn(8, 4)).sum().backward()
        optimizer.step()
        torch.save(
            {"step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict()},
            tmp_path / f"{step}.pt",
        )
        saved.append({i: s["exp_avg_sq"].clone() for i, s in optimizer.state.items()})
    report = _report([tmp_path])
    series = {k.key: k.values["exp_avg_sq"] for k in report.keys}
    for i, state in enumerate(saved):
        _close(series["weight"][i], state[model.weight].double().mean().item())
        _close(series["bias"][i], state[model.bias].double().mean().item())


def test_trainer_folders_and_their_log_history(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    weights = {"h.0.weight": torch.randn(4, 4), "h.1.weight": torch.randn(4, 4)}
    history = []
    for step in (500, 1000, 1500):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        weights = {k: v + 0.01 for k, v in weights.items()}
        save_file(weights, folder / "model.safetensors")
        for logged in (step - 250, step):  # the Trainer logs more often than it saves
            loss = float("nan") if logged >= 750 else 1.0 / logged
            history.append({"step": logged, "loss": loss, "learning_rate": 1e-3})
        state = {"global_step": step, "epoch": step / 500, "log_history": history}
        # Python's json writes a NaN loss as NaN, as the Trainer does
        (folder / "trainer_state.json").write_text(json.dumps(state))
    report = _report([tmp_path])
    assert [s.step for s in report.steps] == [500, 1000, 1500]
    assert [k.key for k in report.keys] == ["h.0.weight", "h.1.weight"]
    assert [e["step"] for e in report.history] == [250, 500, 750, 1000, 1250, 1500]
    assert math.isnan(report.history[2]["loss"])  # kept, not dropped as "not a number"
    assert report.keys[0].values["update"][1] > 0
    lost = [f for f in report.findings if f.kind == "loss_not_finite"]
    assert [(f.message, f.step) for f in lost] == [("log_history loss: first nan at step 750", 1)]


def test_cli_table_json_and_exit_codes(tmp_path, capsys):
    builders.training_run(tmp_path / "run", steps=3, frozen=False)
    assert main(["timeline", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "3 checkpoints, 4 keys" in out and "update per key and checkpoint" in out
    assert main(["timeline", str(tmp_path / "run"), "--json", "--keys", "2.*"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) >= {"steps", "metrics", "keys", "findings", "history", "bytes_scanned"}
    assert [k["key"] for k in data["keys"]] == ["2.weight", "2.bias"]
    builders.training_run(tmp_path / "bad", steps=3, nan_at=1)
    assert main(["timeline", str(tmp_path / "bad")]) == 1
    capsys.readouterr()
    assert main(["timeline", str(tmp_path / "run"), "--metrics", "l2,bogus"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown metric 'bogus'") and err.count("\n") == 1


def test_nothing_to_read_is_one_line(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    assert main(["timeline", str(tmp_path / "notes.txt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no checkpoint to build a timeline from") and err.count("\n") == 1
    with pytest.raises(CheckpointError):
        open_run([str(tmp_path / "missing-*.pt")])


def test_cluster_results_equal_the_local_run(tmp_path):
    distributed = pytest.importorskip("distributed")
    builders.training_run(tmp_path / "run", steps=4, nan_at=2)
    local = _report([tmp_path / "run"]).to_json()
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        remote = _report([tmp_path / "run"], cluster=cluster.scheduler_address).to_json()
    # NaN losses and metrics compare equal only as text
    assert json.dumps(remote) == json.dumps(local)
    assert any(f["kind"] == "nan" for f in local["findings"])


def test_a_run_mixing_formats(tmp_path):
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import save_file

    torch.manual_seed(0)
    weights = {"a.weight": torch.randn(3, 4), "a.bias": torch.randn(3)}
    torch.save({"step": 100, "model": weights}, tmp_path / "step_100.pt")
    weights = {k: v + 1 for k, v in weights.items()}
    save_file(weights, tmp_path / "step_200.safetensors")
    weights = {k: v * 2 for k, v in weights.items()}
    dcp.save({"model": weights}, checkpoint_id=str(tmp_path / "step_300"))
    report = _report([tmp_path])
    assert [s.label for s in report.steps] == ["step_100.pt", "step_200.safetensors", "step_300"]
    assert [k.key for k in report.keys] == ["a.weight", "a.bias"]
    second, third = weights["a.weight"] / 2, weights["a.weight"]
    expected = (
        torch.linalg.norm(third.double() - second.double()) / torch.linalg.norm(second.double())
    ).item()
    assert report.keys[0].values["update"][2] == pytest.approx(expected, rel=1e-9)


def test_running_statistics_and_counters_are_not_judged_as_weights(tmp_path):
    """BatchNorm's counter moves by 1/n every step and its running statistics follow the data,
    not the optimizer: neither is an outsized update, and an unchanged integer is not "frozen"."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16))
    model.register_buffer("position_ids", torch.arange(4))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    (tmp_path / "run").mkdir()
    for step in range(1, 6):
        loss = model(torch.randn(32, 8) * step).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        torch.save(
            {"global_step": step, "state_dict": model.state_dict()},
            tmp_path / "run" / f"s{step}.pt",
        )
    report = _report([tmp_path / "run"])
    judged = {f.key for f in report.findings if f.kind in ("frozen", "outsized_update", "stopped")}
    assert not judged & {"1.running_mean", "1.running_var", "1.num_batches_tracked", "position_ids"}
    counter = next(k for k in report.keys if k.key == "1.num_batches_tracked")
    assert counter.values["update"][1] > 0  # still measured and shown, only not judged


def test_a_dcp_run_gives_its_learning_rate_from_the_flattened_param_groups(tmp_path):
    import torch.distributed.checkpoint as dcp

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 2, 0.5)
    rates = []
    for step in range(1, 5):
        model(torch.randn(3, 4)).sum().backward()
        optimizer.step()
        scheduler.step()
        state = {"model": model.state_dict(), "optim": optimizer.state_dict(), "step": step}
        dcp.save(state, checkpoint_id=str(tmp_path / "run" / f"step_{step}"))
        rates.append(optimizer.param_groups[0]["lr"])
    report = _report([tmp_path / "run"])
    assert [s.lr for s in report.steps] == [[r] for r in rates]
    drops = [f for f in report.findings if f.kind == "lr_drop"]
    assert [report.steps[f.step].step for f in drops] == [2, 4]


def test_cosine_of_a_small_update_is_right_to_float64_across_chunks(tmp_path):
    # more elements than one read chunk, a 1e-4 update: 1 - cos is ~5e-9, which float32
    # products would get wrong in the first digit
    torch.manual_seed(0)
    base = torch.randn(300_007, dtype=torch.float64)
    states = [base, base + 1e-4 * torch.randn_like(base), base + 2e-4 * torch.randn_like(base)]
    for step, weights in enumerate(states):
        tensors = {"w": weights.float(), "h": weights.half(), "b": weights.bfloat16()}
        torch.save({"step": step, "model": tensors}, tmp_path / f"step_{step}.pt")
    report = _report([tmp_path])
    cos = torch.nn.functional.cosine_similarity
    for series in report.keys:
        saved = [torch.load(tmp_path / f"step_{i}.pt")["model"][series.key] for i in range(3)]
        w = [t.double() for t in saved]
        for i in (1, 2):
            assert series.values["cos_prev"][i] == pytest.approx(
                cos(w[i], w[i - 1], dim=0).item(), abs=1e-13
            )
            assert series.values["update"][i] == pytest.approx(
                (torch.linalg.norm(w[i] - w[i - 1]) / torch.linalg.norm(w[i - 1])).item(), rel=1e-9
            )
        assert series.values["cos_first"][2] == pytest.approx(
            cos(w[2], w[0], dim=0).item(), abs=1e-13
        )
        assert series.values["std"][2] == pytest.approx(w[2].std().item(), rel=1e-12)


def test_a_cancelled_key_leaves_no_read_behind(tmp_path, monkeypatch):
    import threading

    monkeypatch.setattr(timeline_module, "CHUNK", 5)
    saved = builders.training_run(tmp_path / "run", steps=3)
    tasks = timeline_module.plan_tasks(open_run([str(tmp_path / "run")]), (), ["l2"])
    task = max(tasks, key=lambda t: t.nbytes)
    stop = threading.Event()
    stop.set()
    with pytest.raises(CheckpointError, match="cancelled"):
        timeline_module.scan_key(task.key, task.tensors, ["l2"], stop)
    # the same thread's buffers serve the next key: nothing still reads into them
    again = timeline_module.scan_key(task.key, task.tensors, ["l2"])
    for (_, state, _), l2 in zip(saved, again.values["l2"]):
        _close(l2, torch.linalg.norm(state[task.key].double()).item())


def test_readers_of_different_lengths_are_read_side_by_side_to_the_longest():
    readers = [iter([1, 2, 3]), iter([]), iter([4])]
    assert list(timeline_module._read_ahead(readers)) == [
        (1, None, 4),
        (2, None, None),
        (3, None, None),
    ]
