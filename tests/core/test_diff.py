"""diff: keys, shapes, dtypes, value metrics, prefixes and roots, across formats; the CLI."""

import json
import math
import subprocess
import sys

import pytest
import torch

import builders
from ckpt_viewer.core.analysis.diff import Side, diff
from ckpt_viewer.core.listing.open import open_checkpoint
from ckpt_viewer.core.progress import run


def compare(a, b, **sides):
    side_a = Side(sides.get("root_a", ""), sides.get("strip_a", ""), sides.get("add_a", ""))
    side_b = Side(sides.get("root_b", ""), sides.get("strip_b", ""), sides.get("add_b", ""))
    return run(diff(open_checkpoint(str(a)), open_checkpoint(str(b)), side_a, side_b))


def test_metrics_match_torch(tmp_path):
    torch.manual_seed(0)
    x, y = torch.randn(3000), torch.randn(3000)
    a = builders.save({"w": x, "same": torch.ones(3), "int": torch.arange(4)}, tmp_path / "a.pt")
    b = builders.save({"w": y, "same": torch.ones(3), "int": torch.arange(4)}, tmp_path / "b.pt")
    report = compare(a, b)
    w = next(t for t in report.tensors if t.key == "w")
    d = (x - y).double()
    assert w.status == "changed"
    assert w.max_abs == pytest.approx(d.abs().max().item())
    assert w.mean_abs == pytest.approx(d.abs().mean().item())
    assert w.rel_l2 == pytest.approx((d.norm() / x.double().norm()).item())
    assert w.cosine == pytest.approx(
        torch.nn.functional.cosine_similarity(x.double(), y.double(), 0).item()
    )
    assert [t.status for t in report.tensors if t.key != "w"] == ["identical", "identical"]
    assert not report.identical


def test_pairs_compared_on_threads_give_the_one_thread_report(tmp_path, monkeypatch):
    from ckpt_viewer.core.analysis import scan

    torch.manual_seed(0)
    shapes = [(3000,), (70, 50), (5,), (1, 2_000_000), (7,)]
    x = {f"t{i}": torch.randn(shape) for i, shape in enumerate(shapes)}
    y = {k: v + (0 if k == "t2" else 1e-3) * torch.randn_like(v) for k, v in x.items()}
    a, b = builders.save(x, tmp_path / "a.pt"), builders.save(y, tmp_path / "b.pt")
    pooled = compare(a, b).to_json()
    monkeypatch.setattr(scan, "worker_count", lambda: 1)
    assert compare(a, b).to_json() == pooled
    assert [t["key"] for t in pooled["tensors"]] == list(x)
    assert [t["status"] for t in pooled["tensors"]] == [
        "identical" if k == "t2" else "changed" for k in x
    ]


def _torch_metrics(x, y):
    """max |a-b|, mean |a-b|, relative L2, cosine in float64 over the elements finite on both
    sides: what diff reports."""
    x, y = x.double().flatten(), y.double().flatten()
    finite = x.isfinite() & y.isfinite()
    x, y = x[finite], y[finite]
    d = (x - y).abs()
    cosine = torch.nn.functional.cosine_similarity(x, y, 0)
    return [d.max().item(), d.mean().item(), (d.norm() / x.norm()).item(), cosine.item()]


def test_segments_and_blocks_match_torch(tmp_path, monkeypatch):
    """Large pairs are split into segments (tasks) read block by block: a pair changed only in
    its last or first segment, non-finite values in one block, another dtype, a view read the
    chunked way beside them; the metrics are torch's, the statuses those of the chunked way."""
    import ckpt_viewer.core.analysis.diff as diff_module

    monkeypatch.setattr(diff_module, "BLOCK", 300)
    monkeypatch.setattr(diff_module, "SEGMENT", 1000)
    torch.manual_seed(0)
    x = torch.randn(3500)
    tail, head, holes_a = x.clone(), x.clone(), x.clone()
    tail[-10:] += 1
    head[5] = 7.0
    holes_a[1500] = math.nan
    holes_b = x + 1e-3 * torch.randn_like(x)
    holes_b[1500], holes_b[2000] = math.nan, math.inf
    a = {
        "changed": x,
        "tail": x,
        "head": x,
        "same": x,
        "holes": holes_a,
        "wider": x,
        "bf16": x.bfloat16(),
        "view": x.view(50, 70),
    }
    b = {
        "changed": x + 1e-3 * torch.randn_like(x),
        "tail": tail,
        "head": head,
        "same": x.clone(),
        "holes": holes_b,
        "wider": x.double(),
        "bf16": (x + 0.1).bfloat16(),
        "view": x.view(70, 50).t().contiguous().t(),
    }
    path_a, path_b = builders.save(a, tmp_path / "a.pt"), builders.save(b, tmp_path / "b.pt")
    report = compare(path_a, path_b)
    got = {t.key: t for t in report.tensors}
    for key in ("changed", "tail", "head", "holes", "bf16"):
        metrics = [got[key].max_abs, got[key].mean_abs, got[key].rel_l2, got[key].cosine]
        assert metrics == pytest.approx(_torch_metrics(a[key], b[key]), rel=1e-6), key
    assert (got["same"].max_abs, got["same"].cosine) == (0.0, 1.0)
    assert got["wider"].status == "dtype+identical" and got["wider"].max_abs == 0.0
    monkeypatch.setattr(diff_module, "blockwise", lambda tensor: False)
    chunked = {t.key: t for t in compare(path_a, path_b).tensors}
    assert {k: t.status for k, t in got.items()} == {k: t.status for k, t in chunked.items()}
    assert got["view"] == chunked["view"]


def test_blockwise_figures_are_the_chunked_ones_bit_for_bit(tmp_path, monkeypatch):
    """The blockwise reads compute the difference over A's read buffer: with blocks and chunks
    of one size, every figure equals the one from the read-only chunks exactly, whichever
    block first differs, with non-finite values, widened or other dtypes."""
    import ckpt_viewer.core.analysis.diff as diff_module

    monkeypatch.setattr(diff_module, "BLOCK", 1000)
    monkeypatch.setattr(diff_module, "CHUNK", 1000)
    torch.manual_seed(0)
    x = torch.randn(5500)
    late, holes = x.clone(), x + 1e-3 * torch.randn_like(x)
    late[4200:] += 0.5
    holes[10], holes[2500], holes[5000] = math.nan, math.inf, -math.inf
    counts = torch.arange(5500)
    a = {"first": x, "late": x, "holes": x, "f64": x.double(), "bf16": x.bfloat16(), "wider": x}
    a |= {"ints": counts.double(), "halves": x.half().double()}
    b = {
        "ints": counts,
        "halves": x.half(),
        "first": x + 1e-3 * torch.randn_like(x),
        "late": late,
        "holes": holes,
        "f64": (x + 1).double(),
        "bf16": (x + 0.25).bfloat16(),
        "wider": (x - 2).double(),
    }
    path_a, path_b = builders.save(a, tmp_path / "a.pt"), builders.save(b, tmp_path / "b.pt")
    blocked = compare(path_a, path_b).to_json()["tensors"]
    monkeypatch.setattr(diff_module, "blockwise", lambda tensor: False)
    assert compare(path_a, path_b).to_json()["tensors"] == blocked
    assert {t["key"]: t["status"] for t in blocked} == {
        **dict.fromkeys(a, "changed"),
        "wider": "dtype+changed",
        "ints": "dtype+identical",
        "halves": "dtype+identical",
    }


def test_dataparallel_prefix_and_load_state_dict_view(tmp_path):
    state = builders.tiny_model().state_dict()
    a = builders.save(state, tmp_path / "plain.pt")
    wrapped = {f"module.{k}": v for k, v in state.items()}
    wrapped["module.extra"] = torch.zeros(1)
    del wrapped["module.3.bias"]
    wrapped["module.0.bias"] = torch.zeros(7)
    b = builders.save(wrapped, tmp_path / "dp.pt")
    report = compare(a, b, strip_b="module.")
    view = report.load_state_dict_view()
    assert view == {
        "missing_keys": ["3.bias"],
        "unexpected_keys": ["extra"],
        "size_mismatch": ["0.bias"],
    }
    assert report.count("identical") == 7


def test_across_formats_and_roots(tmp_path):
    src = builders.training_checkpoint(tmp_path / "train.pt")
    state = torch.load(src, weights_only=True)["model_state_dict"]
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "m.safetensors"))
    report = compare(src, tmp_path / "m.safetensors", root_a="model_state_dict")
    assert report.identical and len(report.tensors) == 9
    half = builders.save(
        {k: v.half() if v.is_floating_point() else v for k, v in state.items()},
        tmp_path / "half.pt",
    )
    report = compare(tmp_path / "m.safetensors", half)
    assert {t.status for t in report.tensors} == {"dtype+changed", "identical"}
    assert all(t.rel_l2 < 1e-3 for t in report.tensors if t.status == "dtype+changed")


def test_nan_positions_and_views(tmp_path):
    base = torch.arange(12.0).view(3, 4)
    a = builders.save(
        {"t": base.t().contiguous(), "n": torch.tensor([1.0, float("nan")])}, tmp_path / "a.pt"
    )
    b = builders.save({"t": base.t(), "n": torch.tensor([1.0, float("nan")])}, tmp_path / "b.pt")
    assert compare(a, b).identical  # a transposed view equals its contiguous copy


def test_diff_cli_exit_codes_and_json(tmp_path):
    a = builders.save({"w": torch.ones(4)}, tmp_path / "a.pt")
    b = builders.save({"w": torch.ones(4) * 2, "x": torch.zeros(1)}, tmp_path / "b.pt")

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "ckpt_viewer", "diff", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert cli(a, a).returncode == 0
    result = cli(a, b, "--json")
    assert result.returncode == 1
    info = json.loads(result.stdout)
    assert info["only_b"] == ["x"] and info["changed_tensors"] == 1
    assert info["tensors"][0]["max_abs"] == 1.0 and math.isclose(info["tensors"][0]["cosine"], 1.0)
    bad = cli(a, str(tmp_path / "missing.pt"))
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "missing.pt" in bad.stderr


def test_equality_edge_cases(tmp_path, monkeypatch):
    """Equality comes from the metric pass for floats: signed zeros, NaN placement, a change in
    the last of several chunks, and integers that float64 cannot tell apart."""
    import ckpt_viewer.core.analysis.diff as diff_module

    monkeypatch.setattr(diff_module, "CHUNK", 1000)
    monkeypatch.setattr(diff_module, "BLOCK", 1000)
    monkeypatch.setattr(diff_module, "SEGMENT", 2000)
    big = 2**53
    late = torch.zeros(3500)
    late_changed = late.clone()
    late_changed[-1] = 1e-30
    a = builders.save(
        {
            "zeros": torch.tensor([0.0, 1.0]),
            "nan": torch.tensor([math.nan, 1.0]),
            "late": late,
            "ints": torch.tensor([big, 1]),
            "half": torch.tensor([1.0, 2.0], dtype=torch.float16),
        },
        tmp_path / "a.pt",
    )
    b = builders.save(
        {
            "zeros": torch.tensor([-0.0, 1.0]),
            "nan": torch.tensor([1.0, math.nan]),
            "late": late_changed,
            "ints": torch.tensor([big + 1, 1]),
            "half": torch.tensor([1.0, 2.0], dtype=torch.float16),
        },
        tmp_path / "b.pt",
    )
    status = {t.key: t.status for t in compare(a, b).tensors}
    assert status == {
        "zeros": "identical",
        "nan": "changed",
        "late": "changed",
        "ints": "changed",
        "half": "identical",
    }
    nan_a = builders.save({"n": torch.tensor([math.nan, 0.0])}, tmp_path / "c.pt")
    nan_b = builders.save({"n": torch.tensor([math.nan, -0.0])}, tmp_path / "d.pt")
    assert compare(nan_a, nan_b).identical  # bits differ; values (NaN where NaN) do not


def test_status_counts_add_up_and_cosine_stays_in_range(tmp_path):
    torch.manual_seed(1)
    x = torch.randn(1000)
    a = builders.save(
        {"same": x, "changed": x, "dtype": x, "shape": x, "only_a": x}, tmp_path / "a.pt"
    )
    b = builders.save(
        {"same": x, "changed": x * (1 + 1e-7), "dtype": x.double(), "shape": x[:10], "only_b": x},
        tmp_path / "b.pt",
    )
    report = compare(a, b)
    counts = report.status_counts()
    assert counts == {
        "identical": 1,
        "changed": 1,
        "dtype+identical": 1,
        "dtype+changed": 0,
        "shape": 1,
        "shard": 0,
        "only in A": 1,
        "only in B": 1,
    }
    assert sum(counts.values()) == len(report.tensors) + len(report.only_a) + len(report.only_b)
    assert all(-1.0 <= t.cosine <= 1.0 for t in report.tensors if t.cosine is not None)


def test_pair_detail_histogram_and_sample_match_numpy(tmp_path):
    import numpy as np

    from ckpt_viewer.core.analysis.diff import PAIR_SAMPLE, histogram_pair, pair_detail

    torch.manual_seed(2)
    x = torch.randn(50_001)
    y = x + torch.randn(50_001) * 1e-3
    y[7] = float("nan")
    a = open_checkpoint(builders.save({"w": x}, tmp_path / "a.pt")).find("w").tensor
    b = open_checkpoint(builders.save({"w": y}, tmp_path / "b.pt")).find("w").tensor
    d = (x.double() - y.double()).numpy()
    reach = float(np.nanmax(np.abs(d)))
    detail = run(pair_detail(a, b, max_abs=reach, bins=64))
    expected, edges = np.histogram(d[np.isfinite(d)], bins=64, range=(-reach, reach))
    assert detail.counts == expected.tolist() and detail.nonfinite == 1
    assert detail.edges == pytest.approx(edges.tolist())
    step = -(-50_001 // PAIR_SAMPLE)
    assert detail.a.tolist() == x.double().numpy()[::step].tolist()
    assert np.array_equal(detail.b, y.double().numpy()[::step], equal_nan=True)
    assert detail.elements == 50_001 and len(detail.a) <= PAIR_SAMPLE
    stats_a, stats_b = histogram_pair(a, b, bins=32)
    assert stats_a.edges == stats_b.edges and sum(stats_a.counts) == 50_001


def test_pair_detail_walks_chunks_in_order(tmp_path, monkeypatch):
    import ckpt_viewer.core.analysis.diff as diff_module

    monkeypatch.setattr(diff_module, "CHUNK", 1000)
    x = torch.arange(10_000, dtype=torch.float32)
    a = open_checkpoint(builders.save({"w": x}, tmp_path / "a.pt")).find("w").tensor
    b = open_checkpoint(builders.save({"w": x.flip(0)}, tmp_path / "b.pt")).find("w").tensor
    detail = run(diff_module.pair_detail(a, b, sample=300))
    step = -(-10_000 // 300)
    assert detail.a.tolist() == list(range(0, 10_000, step))
    assert detail.b.tolist() == [9999 - i for i in range(0, 10_000, step)]


def test_cosine_of_all_zero_tensors_is_undefined(tmp_path):
    """0/0 is no similarity: compare showed 1.000000 for two all-zero tensors."""
    from ckpt_viewer.core.listing.report import cosine_text, diff_lines

    nan = float("nan")
    a = builders.save(
        {
            "zero": torch.zeros(5),
            "signed": torch.zeros(5),
            "one": torch.zeros(5),
            "holes": torch.tensor([0.0, nan]),
        },
        tmp_path / "a.pt",
    )
    b = builders.save(
        {
            "zero": torch.zeros(5),
            "signed": -torch.zeros(5),
            "one": torch.ones(5),
            "holes": torch.tensor([nan, 0.0]),
        },
        tmp_path / "b.pt",
    )
    report = compare(a, b)
    by_key = {t.key: t for t in report.tensors}
    assert by_key["zero"].status == "identical" and by_key["zero"].cosine is None
    assert by_key["signed"].status == "identical" and by_key["signed"].cosine is None
    assert by_key["holes"].status == "changed" and by_key["holes"].cosine is None
    # one side all zero: torch's cosine_similarity (its eps keeps 0/0 away) says 0
    expected = torch.nn.functional.cosine_similarity(torch.zeros(5), torch.ones(5), 0).item()
    assert by_key["one"].cosine == expected == 0.0
    assert cosine_text(by_key["zero"]) == "n/a (both zero)"
    assert any("n/a (both zero)" in line and "holes" in line for line in diff_lines(report))
    result = subprocess.run(
        [sys.executable, "-m", "ckpt_viewer", "diff", a, b, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    tensors = {t["key"]: t for t in json.loads(result.stdout)["tensors"]}
    assert tensors["zero"]["cosine"] is None and tensors["holes"]["cosine"] is None


def test_file_truncated_after_opening_is_one_error(tmp_path):
    """The blockwise reads check the file against what was opened: a file cut short since is
    an error naming it, not garbage figures or a crash."""
    import os

    from ckpt_viewer.core import CheckpointError

    torch.manual_seed(0)
    a = builders.save({"w": torch.randn(300_000)}, tmp_path / "a.pt")
    b = builders.save({"w": torch.randn(300_000)}, tmp_path / "b.pt")
    opened = open_checkpoint(str(a)), open_checkpoint(str(b))
    os.truncate(b, os.path.getsize(b) // 2)
    with pytest.raises(CheckpointError, match="b.pt"):
        run(diff(*opened))


def test_a_cancelled_comparison_leaves_its_pairs_unsettled(tmp_path, monkeypatch):
    """Segments stopped by the caller's cancel have no figures: a driver that still runs the
    generator to its end gets the pairs as not compared, not a crash or made-up figures."""
    import threading

    import ckpt_viewer.core.analysis.diff as diff_module
    from ckpt_viewer.core.progress import cancelled_by

    monkeypatch.setattr(diff_module, "SEGMENT", 1000)
    a = builders.save({"w": torch.zeros(3500)}, tmp_path / "a.pt")
    b = builders.save({"w": torch.ones(3500)}, tmp_path / "b.pt")
    work = diff(open_checkpoint(str(a)), open_checkpoint(str(b)))
    cancel = threading.Event()
    cancel.set()
    with cancelled_by(cancel):
        with pytest.raises(StopIteration) as end:
            while True:
                next(work)
    (pair,) = end.value.value.tensors
    assert pair.status == diff_module.SAME_DTYPE_PENDING and pair.max_abs is None
