"""Layer-wise view: repeated blocks grouped by role, metrics equal to torch's on the same values."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

import builders
from ckpt_viewer.core.analysis.layers import (
    OPTIMIZER_METRIC,
    group_layers,
    layer_metrics,
    power_law_alpha,
)
from ckpt_viewer.core.listing.open import open_checkpoint
from ckpt_viewer.core.progress import run


def gpt(depth=4, hidden=8, prefix="blocks"):
    torch.manual_seed(0)
    sd = {"embed.weight": torch.randn(20, hidden)}
    for i in range(depth):
        sd[f"{prefix}.{i}.attn.qkv.weight"] = torch.randn(3 * hidden, hidden) * (i + 1)
        sd[f"{prefix}.{i}.attn.qkv.bias"] = torch.zeros(3 * hidden)
        sd[f"{prefix}.{i}.ln.weight"] = torch.ones(hidden)
    sd["head.weight"] = torch.randn(20, hidden)
    return sd


@pytest.mark.parametrize("prefix", ["blocks", "layers", "h", "encoder.layer", "model.layers"])
def test_blocks_grouped_by_role(tmp_path, prefix):
    sd = gpt(prefix=prefix)
    sd[f"{prefix}.2.attn.qkv.weight"][1, 1] = float("nan")
    path = builders.save(sd, tmp_path / "m.pt")
    report = run(layer_metrics(open_checkpoint(path)))
    assert [s.prefix for s in report.stacks] == [prefix]
    stack = report.stacks[0]
    assert stack.layers == [0, 1, 2, 3]
    assert [r.role for r in stack.roles] == ["attn.qkv.weight", "attn.qkv.bias", "ln.weight"]
    role = stack.roles[0]
    assert role.keys[3] == f"{prefix}.3.attn.qkv.weight"
    assert report.series(stack, role, "nan") == [0, 0, 1, 0]
    for index in (0, 1, 3):
        t = sd[f"{prefix}.{index}.attn.qkv.weight"].double()
        values = {m: report.series(stack, role, m)[index] for m in report.available()}
        assert values["l2"] == pytest.approx(torch.linalg.norm(t).item(), rel=1e-6)
        assert values["std"] == pytest.approx(t.std().item(), rel=1e-6)
        assert values["max_abs"] == pytest.approx(t.abs().max().item())
        assert values["zero_fraction"] == 0.0
    assert report.series(stack, stack.roles[1], "zero_fraction") == [1.0] * 4
    assert report.series(stack, stack.roles[2], "std") == [0.0] * 4


def test_std_of_a_small_spread_around_a_large_mean_is_torchs(tmp_path):
    """sum(x^2)/n - mean^2 read this std 11x off; layers now shares stats' Chan-merged std."""
    torch.manual_seed(4)
    sd = {
        f"blocks.{i}.scale": torch.randn(3_000_000, dtype=torch.float64) * 1e-5 + 1e4
        for i in range(2)
    }
    report = run(layer_metrics(open_checkpoint(builders.save(sd, tmp_path / "s.pt"))))
    stack = report.stacks[0]
    stds = report.series(stack, stack.roles[0], "std")
    for i, std in enumerate(stds):
        assert std == pytest.approx(sd[f"blocks.{i}.scale"].std().item(), rel=1e-6)


def test_adam_state_mean_per_layer(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Module()
    model.blocks = torch.nn.ModuleList(torch.nn.Linear(6, 6) for _ in range(3))
    optimizer = torch.optim.Adam(model.named_parameters(), lr=0.1)
    x = torch.randn(4, 6)
    for block in model.blocks:
        x = block(x)
    x.pow(2).sum().backward()
    optimizer.step()
    path = builders.save(
        {"model": model.state_dict(), "optim": optimizer.state_dict()}, tmp_path / "a.pt"
    )
    report = run(layer_metrics(open_checkpoint(path)))
    assert OPTIMIZER_METRIC in report.available()
    stack = report.stacks[0]
    assert stack.prefix == "model.blocks"
    weight = next(r for r in stack.roles if r.role == "weight")
    expected = [
        optimizer.state[block.weight]["exp_avg_sq"].double().mean().item() for block in model.blocks
    ]
    assert report.series(stack, weight, OPTIMIZER_METRIC) == pytest.approx(expected, rel=1e-6)


def test_no_stacks_and_single_layer_are_not_grouped(tmp_path):
    path = builders.save(
        {"a.weight": torch.randn(3, 3), "blocks.0.w": torch.randn(3)}, tmp_path / "n.pt"
    )
    assert group_layers(open_checkpoint(path)) == []


def test_spectral_stable_rank_and_alpha(tmp_path):
    sd = gpt(depth=2, hidden=16)
    path = builders.save(sd, tmp_path / "s.pt")
    report = run(layer_metrics(open_checkpoint(path), spectral=True))
    stack = report.stacks[0]
    role = stack.roles[0]
    singular = torch.linalg.svdvals(sd["blocks.1.attn.qkv.weight"].double())
    expected = (singular**2).sum() / singular[0] ** 2
    assert report.series(stack, role, "stable_rank")[1] == pytest.approx(expected.item(), rel=1e-4)
    assert all(a is not None and a > 1 for a in report.series(stack, role, "alpha"))
    assert report.series(stack, stack.roles[1], "stable_rank") == [None, None]  # 1-D bias


def test_power_law_alpha_recovers_a_known_exponent():
    rng = np.random.default_rng(0)
    samples = (1 - rng.random(20_000)) ** (-1 / (3.0 - 1))  # Pareto, density ~ x^-3
    assert power_law_alpha(samples) == pytest.approx(3.0, abs=0.15)
    assert power_law_alpha(np.ones(3)) is None


def test_cli_layers_json(tmp_path):
    path = builders.save(gpt(), tmp_path / "m.pt")
    result = subprocess.run(
        [sys.executable, "-m", "ckpt_viewer", "layers", path, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    role = out["stacks"][0]["roles"][0]
    assert role["role"] == "attn.qkv.weight" and len(role["l2"]) == 4
    assert all(math.isfinite(v) for v in role["l2"])
    text = subprocess.run(
        [sys.executable, "-m", "ckpt_viewer", "layers", path],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert text.returncode == 0 and "attn.qkv.weight" in text.stdout


@pytest.mark.parametrize("shape", [(300, 7), (5, 40), (6, 3, 2, 2)])
def test_spectral_gram_over_row_chunks_and_wide_matrices(tmp_path, monkeypatch, shape):
    import threading

    from ckpt_viewer.core.analysis import layers

    monkeypatch.setattr(layers, "CHUNK", 50)  # many row chunks
    monkeypatch.setattr(layers, "MAX_GRAM", 16)  # (5, 40): W W^T instead
    torch.manual_seed(2)
    weight = torch.randn(*shape)
    path = builders.save({"w": weight}, tmp_path / "w.pt")
    tensor = open_checkpoint(path).find("w").tensor
    singular = torch.linalg.svdvals(weight.reshape(shape[0], -1).double())
    metrics = layers.spectral_metrics(tensor)
    expected = ((singular**2).sum() / singular[0] ** 2).item()
    assert metrics["stable_rank"] == pytest.approx(expected, rel=1e-9)
    stopped = threading.Event()
    stopped.set()
    assert layers.spectral_metrics(tensor, stopped) == {}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_spectral_metrics_on_the_gpu_equal_the_cpus(tmp_path, monkeypatch):
    from ckpt_viewer.core.analysis import layers

    torch.manual_seed(3)
    weight = torch.randn(512, 96)
    tensor = open_checkpoint(builders.save({"w": weight}, tmp_path / "w.pt")).find("w").tensor
    calls = []
    real_eigvalsh = torch.linalg.eigvalsh
    monkeypatch.setattr(
        torch.linalg, "eigvalsh", lambda m: calls.append(m.device.type) or real_eigvalsh(m)
    )
    on_gpu = layers.spectral_metrics(tensor)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    on_cpu = layers.spectral_metrics(tensor)
    assert calls == ["cuda", "cpu"]
    assert on_gpu["stable_rank"] == pytest.approx(on_cpu["stable_rank"], rel=1e-9)
    assert on_gpu["alpha"] == pytest.approx(on_cpu["alpha"], rel=1e-6)


def test_spectral_work_is_capped_by_matrix_size_with_a_note(tmp_path, monkeypatch):
    """A tall matrix's Gram accumulation and eigenvalues (minutes, 2.3 GB at [1M, 8192]) are
    skipped, with a note, before anything is read; matrices within the budget still get them."""
    from ckpt_viewer.core.analysis import layers

    monkeypatch.setattr(layers, "MAX_GRAM", 16)
    monkeypatch.setattr(layers, "MAX_SPECTRAL_WORK", 40 * 12 * 12 + 12**3)
    monkeypatch.setattr(layers, "TINY_BYTES", 0)  # every read through iter_chunks
    torch.manual_seed(6)
    sd = {f"blocks.{i}.tall.weight": torch.randn(400, 12) for i in range(2)}  # 400 * 144 work
    sd.update({f"blocks.{i}.fits.weight": torch.randn(40, 12) for i in range(2)})
    sd.update({f"blocks.{i}.wide.weight": torch.randn(20, 30) for i in range(2)})  # side 20
    path = builders.save(sd, tmp_path / "t.pt")
    read = []
    real_iter_chunks = layers.iter_chunks
    monkeypatch.setattr(
        layers, "iter_chunks", lambda t, n: read.append(tuple(t.shape)) or real_iter_chunks(t, n)
    )
    report = run(layer_metrics(open_checkpoint(path), spectral=True, workers=2))
    skipped = report.skipped()
    assert set(skipped) == {f"blocks.{i}.{r}.weight" for i in range(2) for r in ("tall", "wide")}
    assert "[400, 12]" in skipped["blocks.0.tall.weight"]
    assert read.count((400, 12)) == 2  # the moments' pass only, no Gram pass
    fits = report.metrics["blocks.0.fits.weight"]
    singular = torch.linalg.svdvals(sd["blocks.0.fits.weight"].double())
    assert fits["stable_rank"] == pytest.approx(((singular**2).sum() / singular[0] ** 2).item())
    assert report.to_json()["notes"][0]["note"].startswith("spectral metrics skipped")
    assert any(line.startswith("note: blocks.0.tall.weight") for line in layers.text_lines(report))


def test_many_tiny_tensors_share_tasks_and_file_opens(tmp_path, monkeypatch):
    """200,000 tiny tensors took minutes: a pool task, two file opens, a mapping and a dozen
    numpy calls each. Now tasks and opens are counted per batch of tensors."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from ckpt_viewer.core.analysis import layers, scan
    from ckpt_viewer.core.listing import remote

    torch.manual_seed(7)
    sd = {f"blocks.{i}.{role}": torch.randn(3) for i in range(3000) for role in ("b", "g")}
    sd["blocks.5.g"][1] = float("nan")
    checkpoint = open_checkpoint(builders.save(sd, tmp_path / "tiny.pt"))
    tasks, opens = [], []

    class CountingPool(ThreadPoolExecutor):
        def submit(self, *args, **kwargs):
            tasks.append(1)
            return super().submit(*args, **kwargs)

    monkeypatch.setattr(scan, "ThreadPoolExecutor", CountingPool)
    real_open = remote.open_source
    monkeypatch.setattr(remote, "open_source", lambda p: opens.append(p) or real_open(p))
    report = run(layer_metrics(checkpoint))
    assert len(report.metrics) == len(sd)
    assert len(tasks) <= -(-len(sd) // layers.BATCH_TENSORS) and len(opens) <= len(tasks)
    for key in ("blocks.0.b", "blocks.2999.g"):
        t = sd[key].double()
        values = report.metrics[key]
        assert values["std"] == pytest.approx(t.std().item(), rel=1e-12)
        assert values["l2"] == pytest.approx(torch.linalg.norm(t).item(), rel=1e-12)
        assert values["max_abs"] == t.abs().max().item() and values["nan"] == 0
    holed = sd["blocks.5.g"].double()
    kept = holed[holed.isfinite()]
    assert report.metrics["blocks.5.g"]["nan"] == 1
    assert report.metrics["blocks.5.g"]["std"] == pytest.approx(kept.std().item(), rel=1e-12)
    stopped = threading.Event()
    stopped.set()
    assert layers._tiny_metrics([(k, t) for k, t, _ in checkpoint.tensors()], stopped) == []
