"""Statistics against torch's own numbers, for every dtype family; the stats command."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import builders
import ckpt_viewer.core.values.stats as stats_module
from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.listing.open import open_checkpoint
from ckpt_viewer.core.listing.report import stats_lines, stats_rows
from ckpt_viewer.core.progress import run
from ckpt_viewer.core.values.read import read_array
from ckpt_viewer.core.values.stats import QUANTILES, compute
from ckpt_viewer.core.values.torch_bridge import read_tensor


def stats_of(tmp_path, tensor, **kwargs):
    path = builders.save({"t": tensor}, tmp_path / "t.pt")
    return run(compute(open_checkpoint(path).find("t").tensor, **kwargs))


@pytest.mark.parametrize(
    "dtype",
    [
        torch.float32,
        torch.float64,
        torch.float16,
        torch.bfloat16,
        torch.float8_e4m3fn,
        torch.float8_e5m2,
    ],
)
def test_float_stats_match_torch(tmp_path, dtype):
    torch.manual_seed(1)
    values = (torch.randn(5000) * 3).to(dtype)
    stats = stats_of(tmp_path, values, chunk=1000)
    ref = values.double()
    assert stats.numel == 5000 and stats.nan == 0
    assert stats.min == pytest.approx(ref.min().item())
    assert stats.max == pytest.approx(ref.max().item())
    assert stats.mean == pytest.approx(ref.mean().item(), abs=1e-6)
    assert stats.std == pytest.approx(ref.std().item(), rel=1e-5)
    assert stats.l2 == pytest.approx(ref.norm().item(), rel=1e-5)
    assert stats.zeros == int((ref == 0).sum())
    assert sum(stats.counts) == 5000 and len(stats.counts) == 256
    assert stats.quantiles[0.5] == pytest.approx(
        ref.median().item(), abs=(ref.max() - ref.min()).item() / 200
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_std_of_a_small_spread_around_a_large_mean_is_exact(tmp_path, dtype):
    """A LayerNorm-like weight: sum(x^2)/n - mean^2 lost 0.2 % of the float32 std here."""
    torch.manual_seed(2)
    values = (torch.randn(3_000_000) * 0.01 + 3.0).to(dtype)
    values[5] = float("nan")
    ref = values[~values.isnan()].double()
    stats = stats_of(tmp_path, values)
    assert stats.std == pytest.approx(ref.std().item(), rel=1e-5)
    assert stats.mean == pytest.approx(ref.mean().item(), rel=1e-12)


def test_huge_float64_values_give_finite_figures(tmp_path):
    values = torch.randn(10_000, dtype=torch.float64) * 1e150 + 1e151
    stats = stats_of(tmp_path, values, chunk=1000)
    assert stats.std == pytest.approx(values.std().item(), rel=1e-9)
    assert stats.mean == pytest.approx(values.mean().item(), rel=1e-12)


def test_nan_and_inf_never_poison_finite_stats(tmp_path):
    values = torch.tensor([1.0, 2.0, float("nan"), float("inf"), -float("inf"), 0.0, 3.0])
    stats = stats_of(tmp_path, values, chunk=3)
    assert (stats.nan, stats.posinf, stats.neginf, stats.zeros) == (1, 1, 1, 1)
    assert stats.min == 0.0 and stats.max == 3.0 and stats.mean == pytest.approx(1.5)
    assert sum(stats.counts) == stats.numel - stats.nan - stats.inf == 4
    assert stats.to_json()["inf"] == 2


def same_figure(ours, torch_value) -> bool:
    if math.isnan(torch_value):
        return ours is not None and math.isnan(ours)
    return ours == pytest.approx(torch_value, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize(
    "specials",
    [
        (),
        ("inf",),
        ("-inf",),
        ("inf", "-inf"),
        ("nan",),
        ("nan", "inf", "-inf"),
        ("inf", "inf", "nan"),
    ],
)
@pytest.mark.parametrize("finite", [1000, 0])
def test_figures_over_every_value_follow_torch(tmp_path, specials, finite):
    """torch's aminmax propagates NaN and an Inf is a min or max; mean, std and the L2 norm
    follow; the finite figures are kept apart and named so."""
    torch.manual_seed(3)
    values = torch.cat(
        [
            torch.randn(finite, dtype=torch.float64) * 0.1 + 0.65,
            torch.tensor([float(s) for s in specials], dtype=torch.float64),
        ]
    )
    if not values.numel():
        return
    values = values[torch.randperm(values.numel())]
    stats = stats_of(tmp_path, values, chunk=64)
    low, high = torch.aminmax(values)
    expected = {
        "min": low.item(),
        "max": high.item(),
        "mean": values.mean().item(),
        "std": values.std().item() if values.numel() > 1 else math.nan,
        "l2": torch.linalg.norm(values).item(),
    }
    info = stats.to_json()
    for name, value in expected.items():
        assert same_figure(stats.over_all()[name], value), name
        assert same_figure(info[name], value), name
    kept = values[values.isfinite()]
    if kept.numel():
        finite_figures = {
            "min": kept.min().item(),
            "max": kept.max().item(),
            "mean": kept.mean().item(),
            "std": kept.std().item(),
            "l2": torch.linalg.norm(kept).item(),
        }
        for name, value in finite_figures.items():
            assert same_figure(getattr(stats, name), value)
            assert info[f"{name}_finite"] == getattr(stats, name)
    rows = dict(stats_rows(stats))
    assert ("mean (finite)" in rows) == bool(specials)
    tensor = open_checkpoint(str(tmp_path / "t.pt")).find("t").tensor
    lines = "\n".join(stats_lines("t", tensor, stats))
    if "inf" in specials:
        assert f"+Inf {specials.count('inf')}" in lines


def test_one_inf_in_running_var_is_not_hidden(tmp_path):
    """The issue's case: max 0.674517, mean 0.656, L2 7.39 were shown for a tensor with +Inf."""
    values = torch.rand(128) * 0.1 + 0.57
    values[40] = float("inf")
    rows = dict(stats_rows(stats_of(tmp_path, values)))
    assert rows["max"] == rows["mean"] == rows["L2 norm"] == "inf" and rows["std"] == "nan"
    assert rows["max (finite)"] == f"{values[values.isfinite()].max().item():.6g}"


def test_integers_and_bools_get_value_counts(tmp_path):
    stats = stats_of(tmp_path, torch.tensor([0, 1, 1, 5, 5, 5], dtype=torch.int64))
    assert stats.value_counts == {0: 1, 1: 2, 5: 3}
    bools = stats_of(tmp_path, torch.tensor([True, False, True]))
    assert bools.value_counts == {0: 1, 1: 2} and bools.zeros == 1


def test_value_counts_are_the_values_whatever_the_bins(tmp_path):
    """Cross-check: 8 auto bins over ids spanning 91 values listed bin middles as values."""
    ids = torch.tensor([-41, -36, -36, 3, 17, 26, 50, 50], dtype=torch.int64)
    values, counts = torch.unique(ids, return_counts=True)
    for bins in (8, 256):
        stats = stats_of(tmp_path, ids, bins=bins)
        assert stats.value_counts == dict(zip(values.tolist(), counts.tolist()))
        assert sum(stats.counts) == ids.numel()


@pytest.mark.parametrize(
    "seed, dtype, n, scale, shift, bins",
    [
        (34, torch.bfloat16, 100, 5.0, 100.0, 10),
        (13, torch.float16, 1000, 0.02, 0.5, 7),
        (10, torch.bfloat16, 5000, 1.0, 0.0, 256),
    ],
)
def test_histogram_is_torch_histogram_over_the_same_edges(
    tmp_path, seed, dtype, n, scale, shift, bins
):
    """Cross-check: values on an edge (common in 16-bit floats) were counted left of it."""
    torch.manual_seed(seed)
    values = (torch.randn(n) * scale + shift).to(dtype)
    for facts in (False, True):  # the two-pass and the fused (range known) paths
        path = builders.save({"t": values}, tmp_path / "t.pt")
        tensor = open_checkpoint(path).find("t").tensor
        known = run(compute(tensor, bins=bins)) if facts else None
        stats = run(
            compute(tensor, bins=bins, value_range=(known.min, known.max) if known else None)
        )
        expected, _ = torch.histogram(
            values.double(), torch.tensor(stats.edges, dtype=torch.float64)
        )
        assert stats.counts == expected.long().tolist()


def test_std_of_one_value_is_undefined(tmp_path):
    """torch's unbiased std of one value is nan (n - 1 = 0): not 0, and no NaN alarm."""
    for value in (torch.tensor(2.5), torch.tensor([-1.5]), torch.tensor([1.0, float("nan")])):
        stats = stats_of(tmp_path, value)
        assert stats.std is None and stats.to_json()["std_finite"] is None
        assert dict(stats_rows(stats))["std" if value.numel() == 1 else "std (finite)"] == "-"


def test_complex_parts(tmp_path):
    values = torch.tensor([3 + 4j, -1 + 0j], dtype=torch.complex64)
    assert stats_of(tmp_path, values, part="magnitude").max == pytest.approx(5.0)
    assert stats_of(tmp_path, values, part="real").min == pytest.approx(-1.0)
    assert stats_of(tmp_path, values, part="imag").max == pytest.approx(4.0)


def test_quantized_sparse_and_views(tmp_path):
    q = torch.quantize_per_tensor(torch.tensor([0.5, -1.0, 2.0]), 0.5, 2, torch.qint8)
    assert stats_of(tmp_path, q).max == pytest.approx(2.0)
    qc = torch.quantize_per_channel(
        torch.tensor([[1.0, 2.0], [3.0, 4.0]]),
        torch.tensor([0.5, 1.0]),
        torch.tensor([0, 0]),
        0,
        torch.qint8,
    )
    assert stats_of(tmp_path, qc).max == pytest.approx(4.0)
    sparse = torch.tensor([[0.0, 2.0], [3.0, 0.0]]).to_sparse()
    assert stats_of(tmp_path, sparse).max == pytest.approx(3.0)
    base = torch.arange(12.0).view(3, 4)
    path = builders.save({"col": base[:, 1], "t": base.t(), "row": base[2]}, tmp_path / "v.pt")
    checkpoint = open_checkpoint(path)
    assert read_array(checkpoint.find("col").tensor).tolist() == [1.0, 5.0, 9.0]
    assert read_array(checkpoint.find("row").tensor).tolist() == [8.0, 9.0, 10.0, 11.0]
    assert torch.equal(read_tensor(checkpoint.find("t").tensor), base.t())
    assert run(compute(checkpoint.find("col").tensor)).mean == pytest.approx(5.0)


def test_values_exact_from_every_reader(tmp_path):
    state = builders.tiny_model().state_dict()
    for legacy in (False, True):
        path = builders.save(
            state, tmp_path / f"s{legacy}.pt", _use_new_zipfile_serialization=not legacy
        )
        checkpoint = open_checkpoint(path)
        for key, value in state.items():
            assert torch.equal(read_tensor(checkpoint.find(key).tensor), value), key
    st = builders.safetensors_file(tmp_path / "w.safetensors")
    from safetensors.torch import load_file

    for key, value in load_file(st).items():
        assert torch.equal(read_tensor(open_checkpoint(st).find(key).tensor), value)
    folder, dcp_state = builders.dcp_directory(tmp_path / "dcp")
    checkpoint = open_checkpoint(folder)
    for key, value in dcp_state.items():
        assert torch.equal(read_tensor(checkpoint.find(f"model.{key}").tensor), value)


def test_streamed_chunks_are_mapped_exactly_at_any_offset(tmp_path):
    """iter_chunks maps file pages (legacy storages sit at unaligned offsets)."""
    from ckpt_viewer.core.values.read import iter_chunks

    state = {
        "a": torch.randn(7),
        "b": torch.randn(5000).to(torch.bfloat16),
        "c": torch.arange(3001),
    }
    for legacy in (False, True):
        path = builders.save(
            state, tmp_path / f"s{legacy}.pt", _use_new_zipfile_serialization=not legacy
        )
        checkpoint = open_checkpoint(path)
        for key, value in state.items():
            chunks = list(iter_chunks(checkpoint.find(key).tensor, 1000))
            assert key == "b" or not any(chunk.flags.writeable for chunk in chunks)  # b: widened
            assert np.array_equal(
                np.concatenate(chunks), value.float().numpy() if key == "b" else value.numpy()
            ), key


def test_compressed_record_is_inflated_not_mapped(tmp_path):
    import zipfile

    path = builders.save({"w": torch.arange(100.0)}, tmp_path / "w.pt")
    out = tmp_path / "deflated.pt"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            method = zipfile.ZIP_DEFLATED if "/data/" in info.filename else zipfile.ZIP_STORED
            dst.writestr(info.filename, src.read(info), compress_type=method)
    checkpoint = open_checkpoint(str(out))
    assert any("compressed" in w for w in checkpoint.warnings)
    assert read_array(checkpoint.find("w").tensor).tolist() == list(np.arange(100.0))


def test_clipped_range_is_rebinned_exactly(tmp_path):
    values = torch.cat([torch.linspace(0, 1, 1000), torch.tensor([1000.0])])
    stats = stats_of(tmp_path, values, bins=10, value_range=(0.0, 1.0))
    assert stats.edges[0] == 0.0 and stats.edges[-1] == 1.0
    assert sum(stats.counts) == 1000 and stats.above == 1 and stats.below == 0


def test_empty_and_cancel(tmp_path):
    assert stats_of(tmp_path, torch.zeros(0)).numel == 0
    path = builders.save({"t": torch.randn(10_000)}, tmp_path / "c.pt")
    generator = compute(open_checkpoint(path).find("t").tensor, chunk=100)
    next(generator)
    generator.close()  # cancelling between chunks is just closing the generator


def test_stats_cli_json(tmp_path):
    path = builders.save(
        {"model": {"w": torch.tensor([1.0, -1.0, float("nan"), 0.0])}}, tmp_path / "s.pt"
    )
    result = subprocess.run(
        [sys.executable, "-m", "ckpt_viewer", "stats", path, "model.w", "--bins", "4", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    for field in (
        "min",
        "max",
        "mean",
        "std",
        "l2",
        "nan",
        "inf",
        "zeros",
        "numel",
        "quantiles",
        "edges",
        "counts",
    ):
        assert field in info
    assert info["numel"] == 4 and info["nan"] == 1 and info["zeros"] == 1
    assert sum(info["counts"]) == info["numel"] - info["nan"] - info["inf"]
    assert len(info["edges"]) == len(info["counts"]) + 1 == 5
    assert info["l2"] == info["mean"] == info["min"] == "nan"  # torch's, over every value
    assert math.isclose(info["l2_finite"], math.sqrt(2)) and info["min_finite"] == -1.0
    missing = subprocess.run(
        [sys.executable, "-m", "ckpt_viewer", "stats", path, "nope"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2 and missing.stderr.startswith("error: ")


def test_truncated_after_open_is_a_clear_error(tmp_path):
    path = builders.save(
        {"t": torch.randn(1000)}, tmp_path / "t.pt", _use_new_zipfile_serialization=False
    )
    tensor = open_checkpoint(path).find("t").tensor
    with open(path, "r+b") as f:
        f.truncate(400)
    with pytest.raises(CheckpointError, match="changed since it was opened; reopen it"):
        run(compute(tensor))


def test_quantiles_stay_sharp_with_outliers(tmp_path):
    torch.manual_seed(0)
    values = torch.cat([torch.randn(100_000), torch.tensor([1e7, -1e7])])
    stats = stats_of(tmp_path, values)
    ref = torch.quantile(
        values[:100_000].double(), torch.tensor([0.01, 0.5, 0.99], dtype=torch.float64)
    )
    assert stats.quantiles[0.5] == pytest.approx(ref[1].item(), abs=0.01)
    assert stats.quantiles[0.99] == pytest.approx(ref[2].item(), abs=0.01)
    assert stats.quantiles[0.01] == pytest.approx(ref[0].item(), abs=0.01)


def test_extreme_values_are_binned_correctly(tmp_path):
    values = torch.tensor([-3e38, 3e38, 0.0, 1.0], dtype=torch.float32)
    stats = stats_of(tmp_path, values, bins=4)
    assert stats.counts == [1, 0, 2, 1]  # edges -3e38, -1.5e38, 0, 1.5e38, 3e38


def test_sparse_uses_stored_values_and_vanished_file_is_clear(tmp_path):
    sparse = torch.tensor([[0.0, 2.0], [3.0, 0.0]]).to_sparse()
    stats = stats_of(tmp_path, sparse)
    assert stats.numel == 2 and stats.min == 2.0 and stats.zeros == 0
    path = builders.save({"t": torch.randn(100)}, tmp_path / "gone.pt")
    tensor = open_checkpoint(path).find("t").tensor
    import os

    os.remove(path)
    with pytest.raises(CheckpointError, match="disappeared"):
        run(compute(tensor))


@pytest.mark.parametrize("limit", [stats_module.SELECT_LIMIT, 7])
def test_quantiles_are_exact_order_statistics(tmp_path, monkeypatch, limit):
    """Each quantile is the ceil(q * n)-th smallest finite value (numpy's inverted_cdf), an
    element of the tensor: {0, 1} has median 0 (not 1.5e-05), a float8 quantile is a float8
    value; a bin too full to sort (limit 7) is split again until it is exact."""
    monkeypatch.setattr(stats_module, "SELECT_LIMIT", limit)
    cases = {
        "two_values": torch.tensor([0.0, 1.0] * 5000),
        "float8": torch.randn(20_000).to(torch.float8_e5m2),
        "outliers": torch.cat([torch.randn(50_000), torch.tensor([1e30, -1e30, float("nan")])]),
        "ints": torch.randint(-3, 5, (1000,)),
        "expanded": torch.randn(300, 3)[:, :1].expand(300, 40),
        "half": torch.randn(200_000).half(),
        "one": torch.tensor([3.0]),
        "pruned": torch.randn(20_000) * (torch.arange(20_000) % 2),  # half zeros
        "zeros": torch.zeros(100),
    }
    path = tmp_path / "q.pt"
    torch.save(cases, path)
    checkpoint = open_checkpoint(str(path))
    for key, value in cases.items():
        stats = run(compute(checkpoint.find(key).tensor))
        flat = value.double().flatten().numpy()
        flat = flat[np.isfinite(flat)]
        for q in QUANTILES:
            assert stats.quantiles[q] == float(np.quantile(flat, q, method="inverted_cdf")), (
                key,
                q,
            )
    assert run(compute(checkpoint.find("two_values").tensor)).quantiles[0.5] == 0.0


def test_auto_bins_grow_with_the_element_count():
    from ckpt_viewer.core.values.stats import auto_bins

    assert auto_bins(0) == auto_bins(5) == 8
    assert auto_bins(10_000) == 44
    assert auto_bins(10**9) == 256


def test_a_sample_is_asked_of_the_os_before_it_is_read(tmp_path, monkeypatch):
    """Layers asks for every tensor's sample runs at once (one deep queue on a cold disk);
    the preview then reads exactly those runs."""
    from ckpt_viewer.core.values.stats import prefetch_sample, sample_preview

    values = torch.arange(1_000_000, dtype=torch.float32)
    tensor = open_checkpoint(builders.save({"t": values}, tmp_path / "t.pt")).find("t").tensor
    asked = []
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, offset, size, advice: asked.append(size))
    prefetch_sample(tensor, 20_000)
    assert asked == [1000 * 4] * 20
    stats = sample_preview(tensor, elements=20_000)
    assert stats.sampled and stats.min == 0 and stats.max == 999_999
    assert len(asked) == 40  # the preview asked for the same runs again


def test_a_file_larger_than_memory_is_streamed_without_filling_the_page_cache(
    tmp_path, monkeypatch
):
    """Each chunk is asked for ahead of use and, two chunks later, given back: reading a file
    larger than memory otherwise evicted the window's own code pages (stalls)."""
    real_sysconf = os.sysconf

    def small_memory(name):  # a machine with less memory than twice the file
        return 1 if name == "SC_PHYS_PAGES" else real_sysconf(name)

    values = torch.arange(10_000, dtype=torch.float32)
    tensor = open_checkpoint(builders.save({"t": values}, tmp_path / "t.pt")).find("t").tensor
    advice = []
    monkeypatch.setattr(
        os, "posix_fadvise", lambda fd, offset, size, how: advice.append((how, size))
    )
    monkeypatch.setattr(os, "sysconf", small_memory)
    stats = run(compute(tensor, chunk=1000))
    assert stats.max == 9999 and stats.numel == 10_000
    dropped = [size for how, size in advice if how == os.POSIX_FADV_DONTNEED]
    ahead = [size for how, size in advice if how == os.POSIX_FADV_WILLNEED]
    assert dropped and all(size == 4000 for size in dropped + ahead)
    monkeypatch.setattr(os, "sysconf", real_sysconf)  # this machine: far more than the file
    advice.clear()
    run(compute(tensor, chunk=1000))
    assert advice and all(how == os.POSIX_FADV_WILLNEED for how, _ in advice)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("legacy", [False, True])
def test_sampled_preview_reads_what_torch_loads(tmp_path, dtype, legacy):
    """The preview's runs, read straight from the file, hold torch.load's values exactly."""
    from ckpt_viewer.core.values.stats import _sample_runs, sample_preview

    torch.manual_seed(5)
    values = (torch.randn(1_000_000) * 4).to(dtype)
    path = builders.save(
        {"t": values}, tmp_path / "t.pt", _use_new_zipfile_serialization=not legacy
    )
    tensor = open_checkpoint(path).find("t").tensor
    stats = sample_preview(tensor, elements=20_000)
    loaded = torch.load(path, weights_only=True)["t"]
    picked = torch.cat(
        [loaded[first : first + count] for first, count in _sample_runs(tensor, 20_000)]
    ).double()
    assert stats.sampled and stats.min == picked.min().item() and stats.max == picked.max().item()
    assert stats.mean == pytest.approx(picked.mean().item(), rel=1e-12)
    assert stats.std == pytest.approx(picked.std().item(), rel=1e-6)  # n - 1, as exact


def test_stats_finds_a_key_that_is_also_a_prefix(tmp_path):
    """bitsandbytes 4-bit weights: `w` is a tensor and the prefix of `w.absmax` and
    `w.quant_state.*`; the exact key is the tensor, whichever order the file lists them in."""
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    state = {
        "fc.weight.absmax": torch.rand(4),
        "fc.weight.quant_map": torch.randn(16),
        "fc.weight.quant_state.bitsandbytes__nf4": torch.arange(30, dtype=torch.uint8),
        "fc.weight": torch.randint(0, 256, (32, 1), dtype=torch.uint8),
        "fc.bias": torch.randn(8),
    }
    path = tmp_path / "bnb.safetensors"
    save_file(state, path)
    expected = load_file(path)["fc.weight"]
    result = subprocess.run(
        [sys.executable, "-m", "ckpt_viewer", "stats", str(path), "fc.weight", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures["numel"] == expected.numel() == 32
    assert (figures["min"], figures["max"]) == (expected.min().item(), expected.max().item())
    assert open_checkpoint(str(path)).find("fc.weight.quant_state").kind == "dict"


def test_find_indexes_the_keys_once(tmp_path, monkeypatch):
    """`find` answers from a key index built at its first call (a selection in the GUI asks
    once per open file): the same node a walk of the tree finds, the tensor first where a
    group shares its key."""
    from safetensors.torch import save_file

    from ckpt_viewer.core.listing import model

    state = {
        "fc.weight.absmax": torch.rand(4),
        "fc.weight.quant_state.bitsandbytes__nf4": torch.arange(30, dtype=torch.uint8),
        "fc.weight": torch.randint(0, 256, (32, 1), dtype=torch.uint8),
        "fc.bias": torch.randn(8),
    }
    path = tmp_path / "bnb.safetensors"
    save_file(state, path)
    checkpoint = open_checkpoint(str(path))
    nodes = list(model.iter_nodes(checkpoint.root))
    assert checkpoint.find("fc.bias").tensor.shape == (8,)
    monkeypatch.setattr(model, "iter_nodes", None)  # a second walk would fail here
    for node in nodes:
        same = [n for n in nodes if n.key == node.key]
        tensors = [n for n in same if n.kind == "tensor"]
        assert checkpoint.find(node.key) is (tensors or same)[0]
    assert checkpoint.find("fc.weight").kind == "tensor"
    assert checkpoint.find("no.such.key") is None


def test_threads_change_no_figure(tmp_path, monkeypatch):
    """Chunks are computed on several threads and merged in chunk order: with one, two or
    three threads every figure is the same to the last bit, and the quantiles are torch's."""
    torch.manual_seed(0)
    x = torch.randn(60_000)
    x[::997] = float("nan")
    x[5::1999] = float("inf")
    state = {
        "mixed": x,
        "half": torch.randn(50_000).half(),
        "ints": torch.randint(-40, 40, (50_000,)),
        "near_one": 1 + 1e-4 * torch.randn(50_000),
    }
    path = builders.save(state, tmp_path / "t.pt")
    checkpoint = open_checkpoint(path)
    results = {}
    for workers in (1, 2, 3):
        monkeypatch.setattr(stats_module, "WORKERS", workers)
        results[workers] = {
            key: run(compute(checkpoint.find(key).tensor, chunk=4096)).to_json() for key in state
        }
    assert json.dumps(results[1]) == json.dumps(results[2]) == json.dumps(results[3])
    for key, value in state.items():
        finite = value[torch.isfinite(value)].double()
        for q, got in results[2][key]["quantiles"].items():
            rank = max(math.ceil(float(q) * finite.numel()), 1) - 1
            assert got == finite.sort().values[rank].item(), (key, q)


def test_float32_bits_path_gives_the_figures_of_the_general_path(tmp_path, monkeypatch):
    """float32, bfloat16 and float16 tensors take the path over the order of the values' bits
    (bucket counts, then the quantiles' buckets' low bits, edges as keys): every figure, the
    histogram and the quantiles equal the general path's, and numpy's order statistics."""
    torch.manual_seed(3)
    mixed = torch.randn(30_000) * 4
    mixed[::101] = float("nan")
    mixed[7::211] = float("inf")
    mixed[9::307] = float("-inf")
    mixed[11::5] = 0.0
    mixed[13::7] = -0.0
    cases = {
        "normal": torch.randn(50_000),
        "mixed": mixed,
        "positive": torch.rand(40_000) + 1e-3,
        "negative": -torch.rand(40_000) * 1e4,
        "zero_ends": torch.cat([torch.zeros(10), -torch.rand(3000), torch.full((5,), -0.0)]),
        "on_edges": torch.arange(-512, 513, dtype=torch.float32) / 4,
        "huge": torch.tensor([-3e38, 3e38, 0.0, 1.0, -1.0] * 100),
        "denormal": torch.tensor([1e-45, -1e-45, 0.0, 3e-39, -2e-39] * 50),
        "near_one": 1 + 1e-3 * torch.randn(20_000),
        "narrow": 1 + 1e-6 * torch.randn(20_000),  # edges closer than float32: general path
        "bf16": (torch.randn(30_000) * 100).bfloat16(),
        "half": torch.randn(30_000).half(),
        "expanded": torch.randn(300, 1).expand(300, 50),
    }
    path = builders.save(cases, tmp_path / "k.pt")
    checkpoint = open_checkpoint(path)
    monkeypatch.setattr(stats_module, "KEY_BLOCK", 1000)  # blocks and slices cut unevenly
    monkeypatch.setattr(stats_module, "KEY_SLICE", 3000)
    used = []
    real_pass = stats_module._key_pass
    monkeypatch.setattr(
        stats_module, "_key_pass", lambda *a: used.append(1) or (yield from real_pass(*a))
    )
    for key, value in cases.items():
        tensor = checkpoint.find(key).tensor
        for bins in (7, 256):
            used.clear()
            by_bits = run(compute(tensor, bins=bins, chunk=4096)).to_json()
            assert used == ([] if key == "narrow" and bins == 256 else [1]), key
            with monkeypatch.context() as general:
                general.setattr(stats_module, "KEY_DTYPES", ())
                expected = run(compute(tensor, bins=bins, chunk=4096)).to_json()
            # a zero quantile is 0.0 here, either zero there (np.sort puts -0.0 anywhere)
            assert by_bits.pop("quantiles") == expected.pop("quantiles"), (key, bins)
            assert json.dumps(by_bits) == json.dumps(expected), (key, bins)
        flat = value.double().flatten().numpy()
        flat = flat[np.isfinite(flat)]
        quantiles = run(compute(tensor)).quantiles
        for q in QUANTILES:
            assert quantiles[q] == np.quantile(flat, q, method="inverted_cdf"), (key, q)


@pytest.mark.parametrize("miss", ["sample", "room", "share"])
def test_a_misleading_sample_costs_a_pass_not_a_figure(tmp_path, monkeypatch, miss):
    """The counting pass keeps the values of the buckets a strided sample says hold the
    quantiles; where the sample lies (every sampled value in [5, 6)), more values turn up than
    may be kept, or the sample says so beforehand, a selection pass reads the tensor again and
    every figure is the same."""
    torch.manual_seed(1)
    values = torch.randn(60_000)
    monkeypatch.setattr(stats_module, "SAMPLE_VALUES", 6000)  # a stride of 10
    if miss == "sample":
        values[::10] = 5 + torch.rand(6000)  # the top tenth: the top quantiles' buckets kept
    else:
        monkeypatch.setattr(stats_module, "KEEP_MIN", 10)
        monkeypatch.setattr(stats_module, "KEEP_SHARE", 10**9)
    if miss == "room":  # the sample not asked: keeping starts, and stops at the limit
        candidates = stats_module._KeyBins.candidates
        monkeypatch.setattr(
            stats_module._KeyBins, "candidates", lambda bins, *a: candidates(bins, *a[:2])
        )
    path = builders.save({"t": values}, tmp_path / "s.pt")
    tensor = open_checkpoint(path).find("t").tensor
    passes = []
    real = stats_module.iter_chunks
    monkeypatch.setattr(
        stats_module, "iter_chunks", lambda *a, **k: passes.append(1) or real(*a, **k)
    )
    fused = run(compute(tensor, chunk=4000)).to_json()
    assert len(passes) == 3
    with monkeypatch.context() as general:
        general.setattr(stats_module, "KEY_DTYPES", ())
        assert json.dumps(fused) == json.dumps(run(compute(tensor, chunk=4000)).to_json())
    flat = values.double().numpy()
    for q in QUANTILES:
        assert fused["quantiles"][f"{q:g}"] == np.quantile(flat, q, method="inverted_cdf")


def test_an_outlier_costs_no_extra_pass(tmp_path, monkeypatch):
    """Bits order the values whatever their range: with one 1e30 among normal values the
    float32 path still reads the tensor twice (range and a sample, then counts and the values
    in the quantiles' likely buckets), where bins over [min, max] hold every other value in
    one bin and were split pass after pass; the quantiles are numpy's."""
    torch.manual_seed(0)
    values = torch.randn(200_000)
    values[123] = 1e30
    path = builders.save({"t": values}, tmp_path / "o.pt")
    tensor = open_checkpoint(path).find("t").tensor
    monkeypatch.setattr(stats_module, "SELECT_LIMIT", 1000)  # as 100M values hold 2M in a bin
    passes = []
    real = stats_module.iter_chunks
    monkeypatch.setattr(
        stats_module, "iter_chunks", lambda *a, **k: passes.append(1) or real(*a, **k)
    )
    stats = run(compute(tensor, chunk=1 << 14))
    assert len(passes) == 2
    flat = values.double().numpy()
    for q in QUANTILES:
        assert stats.quantiles[q] == np.quantile(flat, q, method="inverted_cdf")


def test_quantile_rank_is_exact_for_the_decimal_quantile():
    from fractions import Fraction

    for q in (*QUANTILES, 0.0, 1.0, 1e-05, 0.3, 2.5e-07, 0.123456789, 1e-20, 1 / 3):
        numerator, denominator = Fraction(str(q)).as_integer_ratio()
        for n in (1, 2, 3, 7, 999, 1000, 1001, 10**8 + 1, 3**40):
            expected = max(-(-numerator * n // denominator), 1) - 1
            assert stats_module.quantile_rank(q, n) == expected, (q, n)


@pytest.mark.parametrize("room", ["enough", "runs_out"])
def test_zeros_counted_among_the_kept_values_are_torchs(tmp_path, monkeypatch, room):
    """Where the buckets of -0.0 and +0.0 are among those the counting pass keeps, it counts
    the zeros among the kept values instead of over every value (and over every value again
    once the room to keep runs out mid-pass): the count is torch's, and so is every figure
    the general path gives."""
    torch.manual_seed(5)
    values = torch.randn(60_000)
    values[::97] = 0.0
    values[5::89] = -0.0
    monkeypatch.setattr(stats_module, "SAMPLE_VALUES", 6000)
    if room == "runs_out":
        monkeypatch.setattr(stats_module, "KEEP_MIN", 3000)
        monkeypatch.setattr(stats_module, "KEEP_SHARE", 10**9)
        candidates = stats_module._KeyBins.candidates
        monkeypatch.setattr(
            stats_module._KeyBins, "candidates", lambda bins, *a: candidates(bins, *a[:2])
        )
    path = builders.save({"t": values}, tmp_path / "z.pt")
    tensor = open_checkpoint(path).find("t").tensor
    found, passes = [], []
    zero_offset, real = stats_module._KeyBins.zero_offset, stats_module.iter_chunks
    monkeypatch.setattr(
        stats_module._KeyBins, "zero_offset", lambda *a: found.append(zero_offset(*a)) or found[-1]
    )
    monkeypatch.setattr(
        stats_module, "iter_chunks", lambda *a, **k: passes.append(1) or real(*a, **k)
    )
    stats = run(compute(tensor, chunk=4000))
    assert found and found[0] is not None  # the zeros were counted among the kept values
    assert len(passes) == (3 if room == "runs_out" else 2)
    assert stats.zeros == int((values == 0).sum())
    with monkeypatch.context() as general:
        general.setattr(stats_module, "KEY_DTYPES", ())
        assert json.dumps(stats.to_json()) == json.dumps(run(compute(tensor, chunk=4000)).to_json())
