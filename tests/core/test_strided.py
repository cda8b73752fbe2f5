"""Strided views (transposes, slices, expand, as_strided overlaps, flips) read in logical order
and bounded memory: values, windows, statistics, export and diff against torch's own view."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import builders
from ckpt_viewer.core.analysis.diff import diff
from ckpt_viewer.core.listing.open import open_checkpoint
from ckpt_viewer.core.progress import run
from ckpt_viewer.core.values import strided
from ckpt_viewer.core.values.read import iter_chunks, read_array, read_window
from ckpt_viewer.core.values.stats import compute
from ckpt_viewer.core.writing.export import ExportPlan, export

BASE = torch.arange(2 * 3 * 40, dtype=torch.float32).reshape(2, 3, 40) * 0.5 - 7

VIEWS = {
    "transpose": lambda: BASE.transpose(0, 2),
    "slice": lambda: BASE[:, 1:, ::3],
    "expand": lambda: torch.arange(6.0).reshape(1, 6, 1).expand(4, 6, 5),
    "expand_scalar": lambda: torch.tensor([2.5]).expand(1000),
    "overlapping": lambda: torch.as_strided(torch.arange(50.0), (20, 7), (2, 1)),
    "offset_column": lambda: BASE[1, :, 5],
    "int_expand": lambda: torch.arange(5).unsqueeze(0).expand(3, 5),
}


def _saved(tmp_path, view):
    path = builders.save({"v": view}, tmp_path / "v.pt")
    return torch.load(path, weights_only=True)["v"], open_checkpoint(path).find("v").tensor


@pytest.fixture(params=[False, True], ids=["whole", "tiny_blocks"])
def tiny_blocks(request, monkeypatch):
    if request.param:  # force the block splitter through every branch
        monkeypatch.setattr(strided, "SPAN_LIMIT", 5)
    return request.param


@pytest.mark.parametrize("name", sorted(VIEWS))
def test_chunks_are_the_view_in_logical_order(tmp_path, name, tiny_blocks):
    reference, info = _saved(tmp_path, VIEWS[name]())
    for chunk in (7, 1 << 20):
        pieces = list(iter_chunks(info, chunk))
        assert all(p.size == chunk for p in pieces[:-1])
        got = np.concatenate(pieces)
        assert np.array_equal(got, reference.flatten().numpy())
    assert np.array_equal(read_array(info), reference.numpy())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int64])
def test_chunks_read_into_one_reused_buffer_equal_torch(tmp_path, dtype):
    reference, info = _saved(tmp_path, (torch.arange(1000) - 500).to(dtype))
    buffer = np.empty(7 * 8, np.uint8)
    got = [chunk.copy() for chunk in iter_chunks(info, 7, into=buffer)]
    assert np.array_equal(np.concatenate(got), reference.float().numpy())
    raw = next(iter_chunks(info, 7, into=buffer))
    if dtype != torch.bfloat16:  # read in place (bfloat16 is widened into a new array)
        assert np.shares_memory(raw, buffer)


@pytest.mark.parametrize("name", ["transpose", "slice", "expand", "overlapping"])
def test_windows_match_torch(tmp_path, name, tiny_blocks):
    reference, info = _saved(tmp_path, VIEWS[name]())
    ref = reference.reshape(-1, *reference.shape[-2:]) if reference.dim() > 2 else reference
    leading = (1,) if reference.dim() == 3 else ()
    page = ref[1] if reference.dim() == 3 else ref
    window = read_window(info, leading, range(0, page.shape[0], 2), range(1, page.shape[1], 3))
    assert np.array_equal(window, page[::2, 1::3].numpy())


@pytest.mark.parametrize("name", sorted(VIEWS))
def test_stats_match_torch(tmp_path, name):
    reference, info = _saved(tmp_path, VIEWS[name]())
    stats = run(compute(info, chunk=16))
    ref = reference.double()
    assert stats.numel == reference.numel()
    assert stats.min == ref.min().item() and stats.max == ref.max().item()
    assert stats.mean == pytest.approx(ref.mean().item())
    if ref.numel() > 1:
        assert stats.std == pytest.approx(ref.std().item(), abs=1e-9)
    else:  # torch: nan; undefined
        assert stats.std is None
    assert stats.zeros == int((ref == 0).sum())
    assert sum(stats.counts) == reference.numel()


@pytest.mark.parametrize("name", ["transpose", "expand", "overlapping"])
def test_export_and_diff_of_views(tmp_path, name):
    view = VIEWS[name]()
    reference, info = _saved(tmp_path, view)
    out = tmp_path / "out.pt"
    run(export(open_checkpoint(str(tmp_path / "v.pt")), ExportPlan(format="pth"), str(out)))
    written = torch.load(out, weights_only=True)["v"]
    assert torch.equal(written, reference) and written.is_contiguous()
    report = run(diff(open_checkpoint(str(tmp_path / "v.pt")), open_checkpoint(str(out))))
    assert report.identical


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc (Linux)")
def test_expanded_600m_elements_stats_in_little_memory(tmp_path):
    """A 1.5 KB file holding torch.ones(1).expand(600_000_000): nothing is materialised."""
    path = builders.save(torch.ones(1).expand(600_000_000), tmp_path / "expand.pt")
    result = subprocess.run(
        [sys.executable, "-c", builders.PEAK_OF_CLI, "stats", path, "", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert '"numel": 600000000' in result.stdout and '"mean": 1.0' in result.stdout
    peak_mb = int(result.stderr.split("peak-kb")[-1].split()[0]) / 1024
    assert 0 < peak_mb < 1024


def test_diff_of_two_expanded_views_matches_dense_values(tmp_path):
    """Same geometry: each stored element is compared once, and the metrics are those of the
    dense tensors."""
    a = torch.tensor([1.0, -2.0, 3.0]).unsqueeze(1).expand(3, 1000)
    b = torch.tensor([1.5, -2.0, 0.0]).unsqueeze(1).expand(3, 1000)
    path_a = builders.save({"t": a}, tmp_path / "a.pt")
    path_b = builders.save({"t": b}, tmp_path / "b.pt")
    report = run(diff(open_checkpoint(path_a), open_checkpoint(path_b)))
    result = report.tensors[0]
    x, y = a.double().flatten(), b.double().flatten()
    assert result.status == "changed"
    assert result.max_abs == pytest.approx((x - y).abs().max().item())
    assert result.mean_abs == pytest.approx((x - y).abs().mean().item())
    assert result.rel_l2 == pytest.approx(((x - y).norm() / x.norm()).item())
    assert result.cosine == pytest.approx(torch.nn.functional.cosine_similarity(x, y, dim=0).item())


def test_views_read_through_torch_stay_views(tmp_path):
    """complex32 has no numpy type: such a view is converted block by block, in order."""
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4).to(torch.complex32)
    view = base.t().unsqueeze(1).expand(4, 5, 3)
    reference, info = _saved(tmp_path, view)
    got = np.concatenate(list(iter_chunks(info, 7)))
    assert np.array_equal(got, reference.to(torch.complex64).flatten().numpy())
    stats = run(compute(info, part="real", chunk=4))
    assert stats.numel == 60 and stats.max == 11.0
    assert stats.mean == pytest.approx(reference.real.float().mean().item())


@pytest.mark.parametrize("shape", [(), (5,), (2, 3, 4), (3, 0, 2), (0,), (1, 7, 1)])
def test_contiguous_strides_are_torchs(shape):
    from ckpt_viewer.core.listing.model import contiguous_strides

    assert contiguous_strides(shape) == torch.empty(shape).stride()
