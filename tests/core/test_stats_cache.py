"""The per-checkpoint statistics cache: the health pass's facts, the tensor view's exact Stats,
and statistics computed with them bit for bit equal to those computed without."""

import dataclasses
import math

import pytest
import torch

import builders
import ckpt_viewer.core.values.stats as stats_module
from ckpt_viewer.core.analysis.check import check
from ckpt_viewer.core.listing.open import open_checkpoint
from ckpt_viewer.core.listing.stats_cache import HealthFacts, StatsCache
from ckpt_viewer.core.progress import run
from ckpt_viewer.core.values.stats import compute, stats_job


def tensors():
    torch.manual_seed(3)
    with_specials = torch.randn(3000)
    with_specials[[5, 70, 900]] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    with_specials[100:400] = 0.0
    with_specials[10] = -0.0
    wide = torch.randn(40, 1)
    relu = torch.randn(2000).clamp(min=0)
    relu[::7] = -0.0  # min is a zero of either sign
    return {
        "f32": torch.randn(2500) * 4,
        "specials": with_specials,
        "f16": (torch.randn(3000) * 100).half(),
        "bf16": torch.randn(3000).bfloat16(),
        "f64": torch.randn(1000, dtype=torch.float64) * 1e150,
        "ints": torch.randint(-50, 50, (3001,)),
        "wide_ints": torch.randint(-(2**40), 2**40, (2000,)),
        "bytes": torch.randint(0, 255, (2048,), dtype=torch.uint8),
        "bools": torch.rand(1000) > 0.3,
        "complex": torch.randn(1500, dtype=torch.complex64),
        "expanded": wide.expand(40, 75),  # stride 0: each value 75 times
        "transposed": torch.randn(30, 70).t(),
        "constant": torch.full((500,), 2.5),
        "all_nan": torch.full((100,), float("nan")),
        "zeros": torch.zeros(64, 8),
        "relu": relu,
        "f8": torch.randn(1000).to(torch.float8_e4m3fn),
    }


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    path = builders.save(tensors(), tmp_path_factory.mktemp("cache") / "t.pt")
    checkpoint = open_checkpoint(path)
    run(check(checkpoint))
    return checkpoint


def same_bits(a, b) -> bool:
    """repr tells -0.0 from 0.0 and compares NaN by text: bit-identical where == is not."""
    return repr(dataclasses.asdict(a)) == repr(dataclasses.asdict(b))


@pytest.mark.parametrize("key", list(tensors()))
@pytest.mark.parametrize("bins", [7, 256])
def test_stats_with_the_health_facts_are_bit_identical(checked, key, bins, monkeypatch):
    tensor = checked.find(key).tensor
    facts = checked.stats_cache.facts(tensor)
    assert (facts is None) == (key == "complex")
    with_facts = run(compute(tensor, bins=bins, chunk=512, facts=facts))
    monkeypatch.setattr(stats_module, "_known_range", lambda *args: None)  # the two passes
    without = run(compute(tensor, bins=bins, chunk=512))
    assert same_bits(with_facts, without)


@pytest.mark.parametrize("key", ["f32", "specials", "f16", "ints", "complex", "expanded"])
def test_a_value_range_fuses_the_passes_bit_identically(checked, key, monkeypatch):
    tensor = checked.find(key).tensor
    fused = run(compute(tensor, bins=33, chunk=500, value_range=(-1.5, 2.0), part="real"))
    monkeypatch.setattr(stats_module, "_known_range", lambda *args: None)
    two_passes = run(compute(tensor, bins=33, chunk=500, value_range=(-1.5, 2.0), part="real"))
    assert same_bits(fused, two_passes)


def test_check_fills_each_views_exact_facts(checked):
    values = tensors()
    for key in ("f32", "specials", "bf16", "ints", "bools", "expanded", "transposed"):
        facts = checked.stats_cache.facts(checked.find(key).tensor)
        expected = values[key].double()
        finite = expected[torch.isfinite(expected)]
        assert (facts.lo, facts.hi) == (finite.min().item(), finite.max().item())
        assert facts.nan == int(torch.isnan(expected).sum())
        assert (facts.posinf, facts.neginf) == (
            int((expected == math.inf).sum()),
            int((expected == -math.inf).sum()),
        )
        assert facts.integer == (key in ("ints", "bools"))
    assert checked.stats_cache.facts(checked.find("complex").tensor) is None  # |z| not seen


def test_tied_tensors_share_their_entries(tmp_path):
    weight = torch.randn(16, 4)
    checkpoint = open_checkpoint(builders.save({"a": weight, "b": weight}, tmp_path / "t.pt"))
    run(check(checkpoint))
    a, b = checkpoint.find("a").tensor, checkpoint.find("b").tensor
    assert checkpoint.stats_cache.facts(a) is checkpoint.stats_cache.facts(b) is not None
    first = run(stats_job(a, 64, "magnitude", None, cache=checkpoint.stats_cache))
    again = stats_job(b, 64, "magnitude", None, cache=checkpoint.stats_cache)
    with pytest.raises(StopIteration) as stop:
        next(again)  # b's stats are a's: no pass at all
    assert same_bits(stop.value.value, first)


def test_a_cached_stats_returns_at_once(checked):
    tensor = checked.find("f32").tensor
    cache = checked.stats_cache
    first = run(stats_job(tensor, 100, "magnitude", None, cache=cache))
    job = stats_job(tensor, 100, "magnitude", None, cache=cache)
    with pytest.raises(StopIteration) as stop:
        next(job)  # no progress, no preview: the result
    assert same_bits(stop.value.value, first)
    stop.value.value.quantiles = {}  # a view setting a field changes no entry
    assert same_bits(run(stats_job(tensor, 100, "magnitude", None, cache=cache)), first)
    other_bins = run(stats_job(tensor, 50, "magnitude", None, cache=cache))
    assert other_bins is not first and len(other_bins.counts) == 50
    clipped = run(stats_job(tensor, 100, "magnitude", (-1.0, 1.0), cache=cache))
    assert clipped is not first and clipped.edges[0] == -1.0


def test_facts_that_do_not_match_the_values_are_not_trusted(checked):
    tensor = checked.find("f32").tensor
    wrong = HealthFacts(lo=-1.0, hi=1.0, nan=0, posinf=0, neginf=0, integer=False)
    assert same_bits(run(compute(tensor, bins=20, facts=wrong)), run(compute(tensor, bins=20)))


def test_the_cache_is_bounded(tmp_path):
    checkpoint = open_checkpoint(
        builders.save({f"t{i}": torch.randn(8) for i in range(6)}, tmp_path / "t.pt")
    )
    cache = StatsCache(max_facts=3, max_stats=2)
    items = [checkpoint.find(f"t{i}").tensor for i in range(6)]
    facts = HealthFacts(0.0, 1.0, 0, 0, 0, False)
    for tensor in items:
        cache.put_facts(tensor, facts)
        cache.put_stats(tensor, 10, "magnitude", None, object())
    assert [cache.facts(t) is not None for t in items] == [False] * 3 + [True] * 3
    assert [cache.stats(t, 10, "magnitude", None) is not None for t in items] == [False] * 4 + [
        True
    ] * 2
    assert len(cache) == 5
