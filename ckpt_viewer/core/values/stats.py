"""Statistics and histograms of one tensor, in chunks that stay in cache.

`compute()` is a generator: it yields progress (0..1) and returns Stats, so a GUI worker can
cancel it between chunks. A quick min/max pass (skipped when the range is known), then one pass
for moments, counts and a fine histogram (bins x M sub-bins) from which the requested histogram
is exact, then a selection pass over the few fine bins that hold the quantiles; each pass
computes its chunks on WORKERS threads and merges them in chunk order, so the figures do not
depend on the threads: each quantile is an element of the tensor, the k-th smallest finite
value with k = ceil(q * n) (numpy's "inverted_cdf"). float32, bfloat16 and float16 values are
counted by the order of their bits instead (see _KeyBins): the selection is then one pass
whatever the range, where bins over [min, max] that one outlier crowds into a single bin were
split pass after pass, and usually none: the min/max pass samples the values, and the counting
pass keeps those in the buckets the sample says hold the quantiles. Stats' min/max/mean/std/l2
fields are over
finite values; `Stats.over_all()` gives them over every value, by torch's rules.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import numpy as np

from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.listing.model import TensorInfo
from ckpt_viewer.core.progress import run, within
from ckpt_viewer.core.values.decode import apply_view_bits, numpy_readable, tensor_np_dtype, widen
from ckpt_viewer.core.values.read import iter_chunks
from ckpt_viewer.core.values.storage import StorageReader
from ckpt_viewer.core.values.strided import unordered_view

QUANTILES = (0.001, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 0.999)
FINE_BINS = 65536
CHUNK = 1 << 20
MAX_VALUE_COUNTS = 4096  # integer tensors spanning fewer values get exact value counts
PARTS = ("magnitude", "real", "imag")
SELECT_LIMIT = 1 << 21  # values a quantile's bin may hold to be collected and sorted
SELECT_LEVELS = 12  # 65536 ** 12 spans any float64 range down to single values
GIL_SLICE = 1 << 16  # elements per GIL-holding numpy call, so a GUI thread never waits long
FIGURES = ("min", "max", "mean", "std", "l2")
WORKERS = min(2, os.cpu_count() or 1)  # threads a pass computes chunks on
Result = TypeVar("Result")


@dataclass
class Stats:
    numel: int = 0
    nan: int = 0
    posinf: int = 0
    neginf: int = 0
    zeros: int = 0
    min: float | None = None  # these five: over finite values (over_all: over every value)
    max: float | None = None
    mean: float | None = None
    std: float | None = None
    l2: float = 0.0
    quantiles: dict = field(default_factory=dict)
    edges: list = field(default_factory=list)
    counts: list = field(default_factory=list)
    value_counts: dict = field(default_factory=dict)  # ints and bools: value -> count
    below: int = 0  # finite values left of edges[0] (a clipped range)
    above: int = 0
    sampled: bool = False
    part: str = ""  # complex tensors: magnitude | real | imag

    @property
    def inf(self) -> int:
        return self.posinf + self.neginf

    @property
    def finite(self) -> int:
        return self.numel - self.nan - self.inf

    def over_all(self) -> dict:
        """min, max, mean, std and l2 over every value, as torch's amin/amax, mean, std and
        linalg.norm give them: one NaN makes all five NaN (amax propagates NaN); an infinity
        makes min or max, mean and l2 infinite (mean NaN when both signs occur) and std NaN.
        Without NaN or Inf they are the finite figures. The std of a single value is None
        (undefined: torch's unbiased std says nan there, and no value in it is NaN)."""
        finite = {name: getattr(self, name) for name in FIGURES}
        if not self.numel or not (self.nan or self.inf):
            return finite
        if self.nan:
            return dict.fromkeys(FIGURES, math.nan)
        low = -math.inf if self.neginf else (math.inf if self.min is None else self.min)
        high = math.inf if self.posinf else (-math.inf if self.max is None else self.max)
        mean = math.nan if self.posinf and self.neginf else (math.inf if self.posinf else -math.inf)
        return {"min": low, "max": high, "mean": mean, "std": math.nan, "l2": math.inf}

    def to_json(self) -> dict:
        """min/max/mean/std/l2 over every value (torch's figures), `*_finite` over finite values."""
        out = asdict(self)
        out.update({f"{name}_finite": out[name] for name in FIGURES})
        out.update(self.over_all())
        out["inf"] = self.inf
        out["quantiles"] = {f"{q:g}": v for q, v in self.quantiles.items()}
        out["value_counts"] = {str(k): v for k, v in self.value_counts.items()}
        return out


def _real_view(chunk: np.ndarray, part: str) -> np.ndarray:
    if np.iscomplexobj(chunk):
        return {"real": chunk.real, "imag": chunk.imag}.get(part, np.abs(chunk))
    if chunk.dtype == np.bool_:
        return chunk.view(np.uint8)
    return chunk


def _computable(x: np.ndarray) -> np.ndarray:
    """float16 -> float32 and integers -> float64, so arithmetic neither overflows nor rounds."""
    if x.dtype == np.float16:
        return x.astype(np.float32)
    return x if x.dtype.kind == "f" else x.astype(np.float64)


class _Moments:
    def __init__(self):
        self.n = self.nan = self.posinf = self.neginf = self.zeros = 0
        self.total = self.squares = 0.0
        self.spread = 0.0  # sum of squared deviations from the mean (finite values)
        self.finite = 0
        self.lo, self.hi = math.inf, -math.inf
        self.integer = True
        self.exact = (math.inf, -math.inf)  # integer extremes as Python ints

    def repeated(self, times: int):
        """Every value seen `times` times (a zero-stride view), without reading it again."""
        self.n, self.nan, self.posinf = self.n * times, self.nan * times, self.posinf * times
        self.neginf, self.zeros = self.neginf * times, self.zeros * times
        self.total, self.squares = self.total * times, self.squares * times
        self.spread, self.finite = self.spread * times, self.finite * times  # same mean each copy

    @classmethod
    def of_segments(cls, x: np.ndarray, sizes: list) -> list:
        """The moments of consecutive non-empty segments of x (`sizes` values each), in a few
        numpy calls for all: many tiny tensors cost a dozen calls each through add(). The
        spread is the same two-pass one (deviations from each segment's own mean)."""
        x = _computable(x).astype(np.float64, copy=False)
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.intp)
        with np.errstate(all="ignore"):
            finite = np.isfinite(x)
            kept = np.where(finite, x, 0.0)
            count = np.add.reduceat(finite, starts, dtype=np.int64)
            total = np.add.reduceat(kept, starts)
            mean = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
            deviations = np.where(finite, x - np.repeat(mean, sizes), 0.0)
            columns = (
                count,
                total,
                np.add.reduceat(deviations * deviations, starts),
                np.add.reduceat(kept * kept, starts),
                np.minimum.reduceat(np.where(finite, x, np.inf), starts),
                np.maximum.reduceat(np.where(finite, x, -np.inf), starts),
                np.add.reduceat(np.isnan(x), starts, dtype=np.int64),
                np.add.reduceat(x == np.inf, starts, dtype=np.int64),
                np.add.reduceat(x == -np.inf, starts, dtype=np.int64),
                np.add.reduceat(x == 0, starts, dtype=np.int64),
            )
        out = []
        for size, row in zip(sizes, zip(*(column.tolist() for column in columns))):
            moments = cls()
            (
                moments.finite,
                moments.total,
                moments.spread,
                moments.squares,
                moments.lo,
                moments.hi,
                moments.nan,
                moments.posinf,
                moments.neginf,
                moments.zeros,
            ) = row
            moments.n = size
            out.append(moments)
        return out

    def extremes(self) -> tuple:
        """(min, max) of the finite values: Python ints for integer tensors (float64 rounds
        64-bit integers), floats otherwise."""
        return self.exact if self.exact[0] <= self.exact[1] else (self.lo, self.hi)

    def figures(self) -> tuple:
        """(mean, std, l2) of the finite values; std the unbiased one, from the Chan-merged
        spread (every caller's std is this one), 0 for one value."""
        if not self.finite:
            return None, None, 0.0
        std = math.sqrt(self.spread / (self.finite - 1)) if self.finite > 1 else 0.0
        return self.total / self.finite, std, math.sqrt(self.squares)

    def add(self, x: np.ndarray):
        self.merge(_chunk_moments(x))

    def merge(self, part: _ChunkMoments):
        """Add one chunk's moments; merged in chunk order, the figures do not depend on which
        thread computed which chunk."""
        self.n += part.n
        self.zeros += part.zeros
        self.integer = self.integer and part.integer
        if part.exact is not None:
            self.exact = (min(self.exact[0], part.exact[0]), max(self.exact[1], part.exact[1]))
        self.nan += part.nan
        self.posinf += part.posinf
        self.neginf += part.neginf
        if not part.finite:
            return
        # Chan's pairwise update: sum(x^2) - n*mean^2 cancels to noise when the spread is
        # small next to the mean (a LayerNorm weight near 1 read 0.2 % off in float32)
        count, total, spread = part.finite, part.total, part.spread
        self.squares += spread + total * total / count  # sum(x^2), no second product pass
        if self.finite:
            delta = total / count - self.total / self.finite
            spread += delta * delta * (self.finite * count / (self.finite + count))
        self.spread += spread
        self.finite += count
        self.total += total
        self.lo = min(self.lo, part.lo)
        self.hi = max(self.hi, part.hi)


@dataclass
class _ChunkMoments:
    n: int
    zeros: int
    integer: bool
    exact: tuple | None  # integer extremes as Python ints
    nan: int = 0
    posinf: int = 0
    neginf: int = 0
    finite: int = 0
    total: float = 0.0
    spread: float = 0.0  # sum of squared deviations from this chunk's own mean
    lo: float = math.inf
    hi: float = -math.inf


def _chunk_moments(x: np.ndarray, extremes: bool = True, zeros: bool = True) -> _ChunkMoments:
    """One chunk's counts, sum, spread and extremes: no state, so chunks can be computed on
    several threads. Without `extremes` lo and hi stay infinite, without `zeros` zeros is 0:
    for a caller that has them already."""
    with np.errstate(all="ignore"):  # NaN/Inf are counted, not warned about
        part = _ChunkMoments(
            x.size,
            # count_nonzero keeps the GIL, for a few dozen microseconds a chunk: a fifth of
            # what add.reduce's casting to int64 costs
            int(np.count_nonzero(x == 0)) if zeros else 0,
            x.dtype.kind in "iub",
            (int(x.min()), int(x.max())) if x.dtype.kind in "iu" and x.size else None,
        )
        x = _computable(x)
        total = float(np.sum(x, dtype=np.float64))
        if not math.isfinite(total):  # only then look for NaN/Inf element by element
            part.nan = int(np.count_nonzero(np.isnan(x)))
            part.posinf = int(np.count_nonzero(x == np.inf))
            part.neginf = int(np.count_nonzero(x == -np.inf))
            x = x[np.isfinite(x)]
            total = float(np.sum(x, dtype=np.float64))
        if x.size == 0:
            return part
        count = x.size
        deviations = x - x.dtype.type(total / count)
        residue = float(np.sum(deviations, dtype=np.float64))  # the mean's rounding, removed
        # einsum, not BLAS: BLAS's spinning threads starve the GUI thread
        part.spread = max(
            float(np.einsum("i,i->", deviations, deviations)) - residue * residue / count, 0.0
        )
        part.finite, part.total = count, total
        if extremes:
            part.lo, part.hi = float(x.min()), float(x.max())
    return part


def chunk_moments_with_squares(x: np.ndarray, native: np.ndarray, squares: float) -> _ChunkMoments:
    """_chunk_moments of float64 chunk x for a caller that already holds sum(x*x) (`squares`)
    and x's float chunk before widening (`native`, the same values): the spread is then
    squares - total^2/n, exact to a few units in the last place while the mean's square is at
    most half the mean square (it cancels no more than one bit), which saves the deviation
    passes; otherwise, and for non-finite values, the two-pass _chunk_moments."""
    if native.dtype.kind != "f" or not x.size or not math.isfinite(squares):
        return _chunk_moments(x)
    total = float(np.sum(x, dtype=np.float64))
    moments = moments_from_sums(native, total, squares) if math.isfinite(total) else None
    if moments is None:
        return _chunk_moments(x)
    with np.errstate(all="ignore"):
        moments.zeros = int(np.add.reduce(native == 0, dtype=np.int64))
    return moments


def moments_from_sums(native: np.ndarray, total: float, squares: float) -> _ChunkMoments | None:
    """The moments of a non-empty chunk of finite floats from its sum and sum of squares (zeros
    not counted): the spread is squares - total^2/n, exact to a few units in the last place
    while the mean's square is at most half the mean square (it cancels no more than one bit).
    None otherwise: the caller takes the two-pass _chunk_moments."""
    count = native.size
    if total * total / count > 0.5 * squares:
        return None
    return _ChunkMoments(
        count,
        0,
        False,
        None,
        finite=count,
        total=total,
        spread=max(squares - total * total / count, 0.0),
        lo=float(native.min()),
        hi=float(native.max()),
    )


class _EdgeCheck:
    """The histogram's bins are torch.histogram's over the reported edges: [e_i, e_i+1), the
    last one closed. The fine index's arithmetic can put a value lying on an edge, or within
    rounding of it, into the neighbouring bin: 9 bfloat16 values of 100 sat on one edge and
    were counted left of it. Values in the fine bins beside an edge are placed by comparison
    with the edges; what moves is kept per bin."""

    def __init__(self, lo, hi, bins):
        self.edges = np.linspace(lo, hi, bins + 1)
        self.per_bin = max(1, FINE_BINS // bins)
        self.fine_bins = bins * self.per_bin
        self.moved = np.zeros(bins, dtype=np.int64)
        # a lookup table: cheaper than idx % per_bin on every value
        self.beside = np.zeros(self.fine_bins, dtype=bool)
        self.beside[:: self.per_bin] = self.beside[self.per_bin - 1 :: self.per_bin] = True

    def add(self, x: np.ndarray, idx: np.ndarray, moved: np.ndarray | None = None):
        """Correct the values of x (fine bins idx) in `moved` (self.moved unless given)."""
        moved_counts = self.moved if moved is None else moved
        if self.per_bin > 2:
            near = np.flatnonzero(np.take(self.beside, idx))
            x, idx = x[near], idx[near]
        if not x.size:
            return
        guessed = idx // self.per_bin
        exact = np.searchsorted(self.edges, x, side="right") - 1
        np.clip(exact, 0, self.moved.size - 1, out=exact)
        moved = guessed != exact
        if moved.any():
            np.subtract.at(moved_counts, guessed[moved], 1)
            np.add.at(moved_counts, exact[moved], 1)

    def counts(self, fine: np.ndarray, repeat: int) -> list:
        return (fine.reshape(self.moved.size, -1).sum(axis=1) + self.moved * repeat).tolist()


def _fine_histogram(chunks, lo, hi, fine_bins, check):
    """Counts of finite values in fine_bins equal bins over [lo, hi]; plus below/above."""
    counts = np.zeros(fine_bins, dtype=np.int64)
    below = above = 0
    scale = fine_bins / (hi - lo) if hi > lo else 0.0
    for x in chunks:
        with np.errstate(all="ignore"):
            counts, below, above = _bin_chunk(
                x, lo, hi, scale, fine_bins, counts, below, above, check
            )
        yield
    return counts, below, above


def _bin_index(x, lo, hi, scale, fine_bins) -> np.ndarray:
    """The fine bin of each value of x (all within [lo, hi]); the selection pass must use the
    very same arithmetic, so that a bin holds exactly the values it counted."""
    # float32 arithmetic overflows when the range itself is near float32's limits
    kind = x.dtype.type if hi - lo < 1e30 else np.float64
    with np.errstate(all="ignore"):  # a bin split below float spacing: huge scales
        position = x.astype(kind, copy=False) - kind(lo)
        position *= kind(scale)
        idx = position.astype(np.intp)
    return np.clip(idx, 0, fine_bins - 1, out=idx)


def _bin_chunk(x, lo, hi, scale, fine_bins, counts, below, above, check):
    """Add one chunk's finite values to the fine histogram (and the edge check); (counts,
    below, above)."""
    part = _chunk_bins(x, lo, hi, scale, fine_bins, check)
    check.moved += part[3]
    return counts + part[0], below + part[1], above + part[2]


def _chunk_bins(
    x: np.ndarray,
    lo: float,
    hi: float,
    scale: float,
    fine_bins: int,
    check: _EdgeCheck,
    seen: _ChunkMoments | None = None,
) -> tuple:
    """One chunk's (fine counts, below, above, edge-check moves) of its finite values: no
    shared state, so chunks can be binned on several threads (the sums are integers).
    `seen`: the chunk's _ChunkMoments, which say whether it holds NaN/Inf or values outside
    [lo, hi] without looking again."""
    counts = np.zeros(fine_bins, dtype=np.int64)
    moved = np.zeros_like(check.moved)
    below = above = 0
    with np.errstate(all="ignore"):
        x = _computable(x)
        if (
            not np.isfinite(np.sum(x, dtype=np.float64))
            if seen is None
            else seen.nan or seen.posinf or seen.neginf
        ):
            x = x[np.isfinite(x)]
        if seen is None or seen.lo < lo or seen.hi > hi:
            outside_low, outside_high = x < lo, x > hi
            below = int(np.count_nonzero(outside_low))
            above = int(np.count_nonzero(outside_high))
            if below or above:
                x = x[~(outside_low | outside_high)]
        idx = _bin_index(x, lo, hi, scale, fine_bins)
    for start in range(0, idx.size, GIL_SLICE):  # bincount holds the GIL while it runs
        piece = idx[start : start + GIL_SLICE]
        counts += np.bincount(piece, minlength=fine_bins)
        check.add(x[start : start + GIL_SLICE], piece, moved)
    return counts, below, above, moved


def _in_parallel(chunks: Iterable, work: Callable[[np.ndarray], Result]) -> Iterator[Result]:
    """work(chunk) for every chunk on WORKERS threads (numpy lets go of the GIL inside its
    loops), the results in chunk order; a few chunks in flight at most, so memory stays
    bounded. Closing the generator cancels what has not started."""
    if WORKERS < 2:
        yield from map(work, chunks)
        return
    with ThreadPoolExecutor(WORKERS) as pool:
        pending: deque = deque()
        try:
            for chunk in chunks:
                pending.append(pool.submit(work, chunk))
                if len(pending) >= 2 * WORKERS:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def auto_bins(numel: int) -> int:
    """Histogram bins for n values (Rice's rule, 8..256): a tiny tensor in 256 bins looked
    like a barcode."""
    return min(256, max(8, math.ceil(2 * max(numel, 1) ** (1 / 3))))


def quantile_rank(q: float, n: int) -> int:
    """0-based rank of the q-quantile of n sorted values: the ceil(q * n)-th smallest."""
    # q as its decimal text says, exactly (Fraction(str(q)), without importing fractions)
    mantissa, _, exponent = repr(q).partition("e")
    whole, _, decimals = mantissa.partition(".")
    numerator, power = int(whole + decimals), int(exponent or 0) - len(decimals)
    numerator, denominator = (numerator * 10**power, 1) if power >= 0 else (numerator, 10**-power)
    return max(-(-numerator * n // denominator), 1) - 1


class _Target:
    """Where one order statistic lies: nested (lo, hi, bins, index) bins and its rank there."""

    def __init__(self, levels, rank):
        self.levels, self.rank = levels, rank
        self.size = 0  # values in the innermost bin
        self.value = None

    def members(self, x, first=0):
        """The values of x in this target's bin (levels before `first` already applied)."""
        for lo, hi, bins, index in self.levels[first:]:
            if x.size == 0:
                break
            scale = bins / (hi - lo) if hi > lo else 0.0
            x = x[_bin_index(x, lo, hi, scale, bins) == index]
        return x


def _locate(counts: np.ndarray, rank: int) -> tuple[int, int]:
    """(bin holding the value of this rank, the rank within that bin)."""
    cumulative = np.cumsum(counts)
    index = int(np.searchsorted(cumulative, rank, side="right"))
    return index, rank - (int(cumulative[index - 1]) if index else 0)


def _settle_zeros(groups: dict, split: set, zeros: int, zero_bin: int):
    """A first-level bin holding 0 and exactly as many values as there are zeros holds
    nothing else: its quantiles are 0 without a pass (pruned weights put half the
    quantiles there, in a bin too full to sort)."""
    for key in list(groups):
        if key[0][3] == zero_bin and groups[key][0].size == zeros:
            for target in groups.pop(key):
                target.value = 0.0
            split.discard(key)


def _select(tensor, part, chunk, lo, hi, fine, ranks: dict, zeros: int = 0):
    """Generator: {q: the value of rank ranks[q]} among the finite values, found by passes that
    look only at the values in the fine bins holding them (a bin too full to sort is split
    into FINE_BINS sub-bins again, until it is small or holds one distinct value). Quantiles
    that fall in the same bin share its work; `zeros` (how many values are 0) settles the
    bin of 0 when it holds only zeros."""
    targets = {}
    for q, rank in ranks.items():
        index, within = _locate(fine, rank)
        targets[q] = _Target([(lo, hi, fine.size, index)], within)
        targets[q].size = int(fine[index])
    scale = fine.size / (hi - lo) if hi > lo else 0.0
    for level in range(SELECT_LEVELS):  # each level narrows a bin 65536-fold
        groups: dict = {}  # one bin -> the quantiles that lie in it
        for target in targets.values():
            if target.value is None:
                groups.setdefault(tuple(target.levels), []).append(target)
        if not groups:
            break
        last = level == SELECT_LEVELS - 1  # then sort whatever the bin holds
        split = {
            key for key, members in groups.items() if members[0].size > SELECT_LIMIT and not last
        }
        found: dict[Any, list[np.ndarray]] = {key: [] for key in groups}  # values of a small bin
        counts = {key: np.zeros(FINE_BINS, np.int64) for key in split}  # a big bin's split
        extremes = {key: [math.inf, -math.inf] for key in split}
        zeros_in = dict.fromkeys(split, 0)  # a big bin is often one value: 0
        chunks = (_computable(_real_view(raw, part)) for raw in iter_chunks(tensor, chunk))
        first = next(chunks, None)
        if first is None:
            break
        kind = first.dtype
        if level == 0 and zeros:
            _settle_zeros(
                groups, split, zeros, _bin_index(np.zeros(1, kind), lo, hi, scale, fine.size)[0]
            )
            if not groups:
                break
        work = functools.partial(_select_chunk, groups, split, (lo, hi, scale, fine.size))
        for found_in in _in_parallel(itertools.chain((first,), chunks), work):
            for key, inside in found_in.items():
                if key not in split:
                    found[key].append(inside)
                    continue
                sub_counts, low, high, zeros_here = inside
                counts[key] += sub_counts
                extremes[key] = [min(extremes[key][0], low), max(extremes[key][1], high)]
                zeros_in[key] += zeros_here
            yield
        for key, members in groups.items():
            if key not in split:
                values = np.sort(np.concatenate(found[key]))
                for target in members:
                    target.value = float(values[target.rank])
            elif extremes[key][0] == extremes[key][1]:  # one distinct value
                for target in members:
                    target.value = extremes[key][0]
            else:
                a, b = _sub_range(key[-1])
                zero_sub = (
                    _bin_index(
                        np.zeros(1, kind), a, b, FINE_BINS / (b - a) if b > a else 0.0, FINE_BINS
                    )[0]
                    if a <= 0 <= b
                    else -1
                )
                for target in members:
                    sub, target.rank = _locate(counts[key], target.rank)
                    target.levels.append((a, b, FINE_BINS, sub))
                    target.size = int(counts[key][sub])
                    if sub == zero_sub and target.size == zeros_in[key]:  # only zeros
                        target.value = 0.0
    return {q: t.value for q, t in targets.items() if t.value is not None}


def _select_chunk(groups: dict, split: set, first_level: tuple, x: np.ndarray) -> dict:
    """One chunk's part of a selection pass: {bin key: its values} for a small bin, {bin key:
    (sub-bin counts, min, max, zeros)} for a bin being split; no shared state."""
    lo, hi, scale, fine_bins = first_level
    with np.errstate(all="ignore"):
        if not np.isfinite(np.sum(x, dtype=np.float64)):
            x = x[np.isfinite(x)]
    bin_of = _bin_index(x, lo, hi, scale, fine_bins)
    wanted = np.zeros(fine_bins, dtype=bool)
    wanted[[key[0][3] for key in groups]] = True
    near = np.flatnonzero(np.take(wanted, bin_of))  # the few values in any wanted bin
    x, bin_of = x[near], bin_of[near]
    out = {}
    for key, members in groups.items():
        inside = members[0].members(x[bin_of == key[0][3]], first=1)
        if not inside.size:
            continue
        if key in split:
            a, b = _sub_range(key[-1])
            sub_counts = np.bincount(
                _bin_index(inside, a, b, FINE_BINS / (b - a) if b > a else 0.0, FINE_BINS),
                minlength=FINE_BINS,
            )
            zeros_here = int(np.add.reduce(inside == 0, dtype=np.int64))
            out[key] = (sub_counts, float(inside.min()), float(inside.max()), zeros_here)
        else:
            out[key] = inside
    return out


def _sub_range(level) -> tuple[float, float]:
    """The value range of one bin of a (lo, hi, bins, index) level."""
    low, high, bins, index = level
    width = (high - low) / bins
    return low + width * index, low + width * (index + 1)


def _histogram_pass(tensor, part, chunk, lo, hi, fine_bins, check, progress, repeat=1):
    """One pass: (fine counts, below, above), each value counted `repeat` times; yields
    progress mapped into `progress` (a, b)."""
    chunks = (_real_view(raw, part) for raw in iter_chunks(tensor, chunk))
    histogram = _fine_histogram(chunks, lo, hi, fine_bins, check)
    total_chunks = max(1, math.ceil(tensor.numel / chunk))
    counts, below, above = yield from within(histogram, progress, total_chunks)
    return counts * repeat, below * repeat, above * repeat


def _histogram_range(lo, hi, integer: bool, value_range, bins: int) -> tuple:
    """(lo, hi, bins, as_values) of the histogram over values spanning [lo, hi]."""
    if value_range:
        lo, hi = value_range
    as_values = integer and not value_range and hi - lo < MAX_VALUE_COUNTS
    if as_values:
        bins = min(bins, int(hi - lo) + 1)
        lo, hi = lo - 0.5, hi + 0.5  # one bin per integer value
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return lo, hi, bins, as_values


def _known_range(facts, value_range, bins: int, is_complex: bool):
    """The histogram's range before reading anything, when a value range is asked for or the
    health pass's facts give the extremes (not for complex tensors: it saw parts, not |z|)."""
    if value_range:
        return _histogram_range(None, None, False, value_range, bins)
    if facts is not None and not is_complex and facts.lo <= facts.hi:
        return _histogram_range(facts.lo, facts.hi, facts.integer, None, bins)
    return None


def _fused_pass(tensor, part, chunk, known, moments, check, repeat, progress):
    """Moments and fine histogram in one pass over the tensor (the range known beforehand):
    chunk by chunk the very same arithmetic as the moments pass and then the histogram pass,
    so the results are bit-identical to theirs."""
    lo, hi, _, _ = known
    fine_bins = check.fine_bins
    counts = np.zeros(fine_bins, dtype=np.int64)
    below = above = 0
    scale = fine_bins / (hi - lo) if hi > lo else 0.0
    total_chunks = max(1, math.ceil(tensor.numel / chunk))

    def work(raw):
        x = _real_view(raw, part)
        seen = _chunk_moments(x)
        return seen, _chunk_bins(x, lo, hi, scale, fine_bins, check, seen)

    for i, (chunk_moments, bins) in enumerate(_in_parallel(iter_chunks(tensor, chunk), work)):
        moments.merge(chunk_moments)
        counts += bins[0]
        below, above = below + bins[1], above + bins[2]
        check.moved += bins[3]
        yield progress[0] + (progress[1] - progress[0]) * (i + 1) / total_chunks
    return counts * repeat, below * repeat, above * repeat


def _chunk_extremes(x: np.ndarray) -> tuple:
    """(min, max, integer) of a chunk's finite values, as _Moments.extremes gives them."""
    if x.dtype.kind in "iub":
        x = x.view(np.uint8) if x.dtype == np.bool_ else x
        return (int(x.min()), int(x.max()), True) if x.size else (math.inf, -math.inf, True)
    x = _computable(x)
    with np.errstate(all="ignore"):
        lo, hi = float(x.min()), float(x.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            x = x[np.isfinite(x)]
            lo, hi = (float(x.min()), float(x.max())) if x.size else (math.inf, -math.inf)
    return lo, hi, False


def _extremes_pass(
    tensor: TensorInfo, part: str, chunk: int, progress: float
) -> Generator[float, None, _Range | None]:
    """Generator: a quick first pass for the range only (min and max cost a fraction of the
    moments), so that the moments and the histogram then take one pass together; returns
    facts as stats_cache.HealthFacts gives them, or None without finite values."""
    lo, hi, integer = math.inf, -math.inf, True
    total_chunks = max(1, math.ceil(tensor.numel / chunk))
    chunks = (_real_view(raw, part) for raw in iter_chunks(tensor, chunk))
    # a sample for _key_candidates, taken while each chunk is in cache anyway
    stride = max(1, tensor.numel // SAMPLE_VALUES) if total_chunks >= 4 else 0
    sampled = tensor.dtype in KEY_DTYPES and stride

    def work(x: np.ndarray) -> tuple:
        return _chunk_extremes(x), x[::stride].copy() if sampled else None

    samples = []
    for i, ((a, b, whole), sample) in enumerate(_in_parallel(chunks, work)):
        lo, hi, integer = min(lo, a), max(hi, b), integer and whole
        if sample is not None:
            samples.append(sample)
        yield progress * (i + 1) / total_chunks
    if lo > hi:
        return None
    return _Range(lo, hi, integer, np.concatenate(samples) if samples else None)


# --- float32 values: exact histogram and quantiles from the order of their bits -------------
# A float32's bits read as an unsigned integer, with the sign bit flipped (every bit for a
# negative value), order exactly as the values do: these keys, counted per bucket of high bits,
# place each quantile in its bucket exactly, and a second pass counts only that bucket's low
# bits (an O(n) selection, no sort). Each histogram edge becomes the smallest key at or above
# it, so a value's bin is an integer comparison, the same as searchsorted over the edges.

KEY_DTYPES = ("float32", "bfloat16", "float16")  # their chunks widen to float32 exactly
KEY_BUCKETS = 16  # log2 of the buckets the key range is cut in; up to KEY_BUCKETS_MAX
KEY_BUCKETS_MAX = 18  # when that is what it takes to keep two edges out of one bucket
KEY_SLICE = 1 << 18  # elements per GIL-holding bincount
KEY_BLOCK = 1 << 15  # elements per step of the key arithmetic, whose buffers stay in cache
SAMPLE_VALUES = 1 << 20  # the extremes pass's sample, for the quantiles' likely buckets
CANDIDATE_SPREAD = 5  # standard deviations of a sampled rank a candidate range spans
CANDIDATE_SHARE = 0.02  # of the sample, the most a quantile's buckets may hold beyond its ranks
KEEP_SHARE = 16  # the counting pass keeps at most 1/16 of the values for the selection,
KEEP_MIN = 1 << 20  # or this many of a small tensor's
KEEP_MAX = 1 << 23  # and never more (32 MB): a larger tensor's selection is a pass of its own


def _keys(x: np.ndarray) -> np.ndarray:
    """The order-preserving uint32 image of float32 values (a new array): -0.0 just below
    +0.0, NaNs beyond the infinities."""
    signs = x.view(np.int32) >> 31
    signs |= np.int32(-(1 << 31))
    return np.bitwise_xor(x.view(np.uint32), signs.view(np.uint32))


def _key_value(key: int) -> float:
    bits = key ^ 0x80000000 if key >> 31 else key ^ 0xFFFFFFFF
    return float(np.array([bits], np.uint32).view(np.float32)[0])


class _KeyBins:
    """The key range [key(lo), key(hi)] cut in buckets of 2**shift keys, each holding at most
    one of the histogram's inner edges; keys are counted as offsets from key(lo), in halves of
    a bucket (below its edge or not). Key offsets of non-finite values lie outside the range
    and are counted apart, in bucket `buckets`."""

    def __init__(self, lo_key: int, shift: int, span: int, edges: np.ndarray, at: np.ndarray):
        self.lo_key, self.shift, self.edges = lo_key, shift, edges
        self.buckets = (span >> shift) + 1
        holds = np.zeros(self.buckets, dtype=np.int64)
        holds[at >> shift] = 1
        self.bins_before = np.cumsum(holds) - holds  # inner edges in the buckets below
        self.holds = holds.astype(bool)
        self.edge_at = np.full(self.buckets + 1, 0xFFFFFFFF, dtype=np.uint32)  # none: above all
        self.edge_at[at >> shift] = at

    @classmethod
    def build(cls, lo: float, hi: float, bins: int) -> _KeyBins | None:
        """None when lo or hi is no float32 value or some bucket would hold two edges."""
        if not (np.float32(lo) == lo and np.float32(hi) == hi and lo < hi):
            return None
        ends = _keys(np.array([lo, hi], np.float32)).tolist()
        lo_key = 0x7FFFFFFF if lo == 0 else ends[0]  # the range holds -0.0 and +0.0 alike
        span = (0x80000000 if hi == 0 else ends[1]) - lo_key
        edges = np.linspace(lo, hi, bins + 1)  # _EdgeCheck's edges: torch.histogram's bins
        inner = edges[1:-1]
        up = inner.astype(np.float32)  # the smallest float32 at or above each inner edge
        short = up.astype(np.float64) < inner
        up[short] = np.nextafter(up[short], np.float32(np.inf))
        up[up == 0] = np.float32(-0.0)  # 0 <= -0.0
        at = _keys(up).astype(np.int64) - lo_key
        for shift in range(
            max(span.bit_length() - KEY_BUCKETS, 0),
            max(span.bit_length() - KEY_BUCKETS_MAX, 0) - 1,
            -1,
        ):
            if np.all(np.diff(at >> shift) > 0):
                return cls(lo_key, shift, span, edges, at)
        return None

    def _block(self, x: np.ndarray, at: int, n: int, buckets: np.ndarray) -> np.ndarray:
        """Key offsets of x[at : at + n] (float32, contiguous) into the scratch, their buckets
        into `buckets`; values below lo wrap beyond the range, as non-finite ones lie."""
        scratch = _key_scratch()
        signs, offsets = scratch.signs[:n], scratch.offsets[:n]
        np.right_shift(x.view(np.int32)[at : at + n], 31, out=signs)
        np.bitwise_or(signs, np.int32(-(1 << 31)), out=signs)
        np.bitwise_xor(x.view(np.uint32)[at : at + n], signs.view(np.uint32), out=offsets)
        np.subtract(offsets, np.uint32(self.lo_key), out=offsets)
        np.right_shift(offsets, np.uint32(self.shift), out=buckets, casting="unsafe")
        return offsets

    def candidates(
        self, sample: np.ndarray | None, fractions: Iterable[float], share: float = 1.0
    ) -> np.ndarray:
        """A table over the buckets (the last, beyond the range, False) of those likely to hold
        the quantiles at `fractions` of the finite values, judged from a sample: a bucket only
        true to the sample misses, and the selection pass then reads the tensor again. None
        is when they would hold more than `share` of the sample."""
        table = np.zeros(self.buckets + 1, dtype=bool)
        if sample is None:
            return table
        offsets = _keys(np.ascontiguousarray(_computable(sample), dtype=np.float32))
        offsets -= np.uint32(self.lo_key)
        buckets = np.minimum(offsets >> np.uint32(self.shift), self.buckets)  # the last: beyond
        cumulative = np.cumsum(np.bincount(buckets, minlength=self.buckets + 1)[:-1])
        size = int(cumulative[-1])  # finite values
        for q in fractions if size else ():
            rank = quantile_rank(q, size)
            margin = math.ceil(CANDIDATE_SPREAD * math.sqrt(size * q * (1 - q))) + 2
            low, high = max(rank - margin, 0), min(rank + margin, size - 1)
            first, last = np.searchsorted(cumulative, (low, high), side="right").tolist()
            inside = int(cumulative[last]) - (int(cumulative[first - 1]) if first else 0)
            # a bucket holding much of the sample (pruned zeros) is left to the selection pass
            if inside - (high - low) <= CANDIDATE_SHARE * size:
                table[first : last + 1] = True
        if np.count_nonzero(table[buckets]) > share * buckets.size:
            table[:] = False
        return table

    def halves(
        self, x: np.ndarray, outside: bool, wanted: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Counts of a chunk's values per half bucket (2 b: below bucket b's edge, 2 b + 1: at
        or above it; non-finite values in the last two), and the key offsets of its values in
        the `wanted` buckets (a table, as candidates() gives; None: none kept). `outside`:
        whether the chunk holds values outside [lo, hi] (only then are buckets clamped)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        scratch = _key_scratch()
        counts = np.zeros(2 * (self.buckets + 1), dtype=np.int64)
        kept: list[np.ndarray] = []
        for start in range(0, x.size, KEY_SLICE):
            size = min(KEY_SLICE, x.size - start)
            for at in range(0, size, KEY_BLOCK):
                n = min(KEY_BLOCK, size - at)
                buckets, edge, flag = (
                    scratch.buckets[at : at + n],
                    scratch.edge[:n],
                    scratch.flag[:n],
                )
                offsets = self._block(x, start + at, n, buckets)
                if outside:
                    np.minimum(buckets, self.buckets, out=buckets)
                if wanted is not None:
                    # clip: beyond the table is its last entry, False; mode="raise" copies `out`
                    np.take(wanted, buckets, out=flag, mode="clip")
                    kept.append(offsets[flag])
                np.take(self.edge_at, buckets, out=edge, mode="clip")  # clip: no checks
                np.greater_equal(offsets, edge, out=flag)
                np.left_shift(buckets, 1, out=buckets)
                np.add(buckets, flag.view(np.uint8), out=buckets, casting="unsafe")
            # bincount holds the GIL: a slice at a time
            counts += np.bincount(scratch.buckets[:size], minlength=counts.size)
        if wanted is None:
            return counts, None
        return counts, np.concatenate(kept) if kept else np.empty(0, np.uint32)

    def zero_offset(self, wanted: np.ndarray | None) -> int | None:
        """The key offset of -0.0 (+0.0's is the next) where both lie in `wanted` buckets, so
        that the zeros are among the offsets halves() keeps; else None."""
        at = 0x7FFFFFFF - self.lo_key
        if wanted is None or at < 0 or (at + 1) >> self.shift >= self.buckets:
            return None
        return at if wanted[at >> self.shift] and wanted[(at + 1) >> self.shift] else None

    def histogram(self, halves: np.ndarray) -> np.ndarray:
        """The histogram's counts from the half-bucket counts of the finite values."""
        below, above = halves[0:-2:2], halves[1:-2:2]
        counts = np.zeros(self.edges.size - 1, dtype=np.int64)
        np.add.at(counts, self.bins_before, below)
        np.add.at(counts, self.bins_before[self.holds] + 1, above[self.holds])
        return counts

    def low_counts(self, x: np.ndarray, wanted: list[int]) -> dict[int, np.ndarray]:
        """{bucket: counts of its low key bits} of a chunk's values in the wanted buckets."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        scratch = _key_scratch()
        table = np.zeros(self.buckets + 1, dtype=bool)
        table[wanted] = True
        found_offsets, found_buckets = [], []
        for at in range(0, x.size, KEY_BLOCK):
            n = min(KEY_BLOCK, x.size - at)
            buckets, flag = scratch.buckets[:n], scratch.flag[:n]
            offsets = self._block(x, at, n, buckets)
            np.take(table, buckets, out=flag, mode="clip")  # beyond the range: the last, False
            near = np.flatnonzero(flag)
            if near.size:
                found_offsets.append(offsets[near])
                found_buckets.append(buckets[near])
        if not found_offsets:
            return {}
        offsets, buckets = np.concatenate(found_offsets), np.concatenate(found_buckets)
        out = {}
        for bucket in wanted:
            low = offsets[buckets == bucket] & np.uint32((1 << self.shift) - 1)
            if low.size:
                out[bucket] = np.bincount(low, minlength=1 << self.shift)
        return out


class _KeyScratch:
    """One thread's buffers for the key arithmetic: reused, since fresh arrays cost a page
    fault per page."""

    def __init__(self) -> None:
        self.signs = np.empty(KEY_BLOCK, dtype=np.int32)
        self.offsets = np.empty(KEY_BLOCK, dtype=np.uint32)
        self.edge = np.empty(KEY_BLOCK, dtype=np.uint32)
        self.flag = np.empty(KEY_BLOCK, dtype=bool)
        self.buckets = np.empty(KEY_SLICE, dtype=np.intp)


_key_local = threading.local()


def _key_scratch() -> _KeyScratch:
    scratch = getattr(_key_local, "scratch", None)
    if scratch is None or scratch.signs.size < KEY_BLOCK or scratch.buckets.size < KEY_SLICE:
        scratch = _key_local.scratch = _KeyScratch()
    return scratch


def _keep_room(numel: int) -> int:
    """How many values the counting pass may keep for the selection."""
    return min(max(KEEP_MIN, numel // KEEP_SHARE), KEEP_MAX)


def _key_pass(tensor, part, chunk, key_bins, moments, progress, candidates=None, extremes=None):
    """Generator: moments and half-bucket counts in one pass (moments chunk by chunk as
    _fused_pass computes them, so the figures are bit-identical); returns the counts and the
    key offsets of the values in the `candidates` buckets (None when there were too many).
    `extremes`: the finite (min, max), read from these very values by _extremes_pass: then
    no chunk looks for its own, and where the zeros' buckets are kept, the zeros are counted
    among the kept offsets instead of over the chunk."""
    total_chunks = max(1, math.ceil(tensor.numel / chunk))
    halves = np.zeros(2 * (key_bins.buckets + 1), dtype=np.int64)
    lo, hi = key_bins.edges[0], key_bins.edges[-1]
    wanted = candidates if candidates is not None and candidates.any() else None
    kept: list[np.ndarray] | None = [] if wanted is not None else None
    room = _keep_room(tensor.numel)
    zero_at = key_bins.zero_offset(wanted) if extremes is not None else None

    def work(raw):
        x = _real_view(raw, part)
        keep = wanted  # None once the room ran out
        zeros_kept = zero_at is not None and keep is not None
        seen = _chunk_moments(x, extremes=extremes is None, zeros=not zeros_kept)
        outside = seen.nan or seen.posinf or seen.neginf or seen.lo < lo or seen.hi > hi
        counts, offsets = key_bins.halves(_computable(x), bool(outside), keep)
        if zeros_kept and offsets is not None:
            seen.zeros = int(np.count_nonzero(offsets - np.uint32(zero_at) <= 1))
        return seen, (counts, offsets)

    chunks = _in_parallel(iter_chunks(tensor, chunk), work)
    for i, (seen, (counts, offsets)) in enumerate(chunks):
        moments.merge(seen)
        halves += counts
        if kept is not None and offsets is not None:
            room -= offsets.size
            if room < 0:  # the sample misled: the selection pass reads the tensor instead
                kept = wanted = None
            else:
                kept.append(offsets)
        yield progress[0] + (progress[1] - progress[0]) * (i + 1) / total_chunks
    if extremes is not None and moments.finite:
        moments.lo, moments.hi = extremes
    if kept is None:
        return halves, None
    return halves, np.concatenate(kept) if kept else np.empty(0, np.uint32)


def _key_select(
    tensor,
    part,
    chunk,
    key_bins,
    buckets: np.ndarray,
    ranks: dict,
    candidates: np.ndarray | None = None,
    kept: np.ndarray | None = None,
):
    """Generator: {q: the finite value of rank ranks[q]}, from the bucket counts and the low
    bits of the values in the quantiles' buckets: counted from `kept` (the key offsets of
    every value in the `candidates` buckets) where they cover a bucket, else by one pass."""
    where = {q: _locate(buckets, rank) for q, rank in ranks.items()}
    wanted = sorted({bucket for bucket, _ in where.values()})
    low = {bucket: np.zeros(1 << key_bins.shift, dtype=np.int64) for bucket in wanted}
    if kept is not None and candidates is not None:
        covered = [bucket for bucket in wanted if candidates[bucket]]
        slot = np.full(key_bins.buckets + 1, len(covered), dtype=np.intp)  # others: past the end
        slot[covered] = np.arange(len(covered))
        # one count over every covered bucket: slot * 2**shift + the low bits
        index = slot[kept >> np.uint32(key_bins.shift)] << key_bins.shift
        index += kept & np.uint32((1 << key_bins.shift) - 1)
        counts = np.bincount(index, minlength=(len(covered) + 1) << key_bins.shift)
        for i, bucket in enumerate(covered):
            low[bucket] += counts[i << key_bins.shift : (i + 1) << key_bins.shift]
            wanted.remove(bucket)

    def work(raw: np.ndarray) -> dict[int, np.ndarray]:
        return key_bins.low_counts(_computable(_real_view(raw, part)), wanted)

    for found in _in_parallel(iter_chunks(tensor, chunk) if wanted else (), work):
        for bucket, counts in found.items():
            low[bucket] += counts
        yield
    out = {}
    for q, (bucket, rank) in where.items():
        bits, _ = _locate(low[bucket], rank)
        value = _key_value(key_bins.lo_key + (bucket << key_bins.shift) + bits)
        out[q] = value if value else 0.0  # -0.0 is 0, as the zeros' bin gives it
    return out


@dataclass
class _Range:
    lo: float
    hi: float
    integer: bool
    sample: np.ndarray | None = None  # evenly strided values, to guess the quantiles' buckets


def compute(
    tensor: TensorInfo,
    bins: int = 256,
    part: str = "magnitude",
    value_range: tuple | None = None,
    chunk: int = CHUNK,
    facts=None,
    quick_range_failed: bool = False,
) -> Generator[float, None, Stats]:
    """Generator: yields progress in [0, 1]; returns Stats. `facts` (stats_cache.HealthFacts,
    the health pass's extremes) or a value_range let the first two passes be one."""
    if bins < 1 or bins > FINE_BINS:
        raise CheckpointError(f"bins must be between 1 and {FINE_BINS}")
    if tensor.numel == 0:
        return Stats(numel=0)
    dtype = tensor.dtype
    original = tensor
    tensor, repeat = unordered_view(tensor)  # an expanded view: its distinct values, weighted
    total_chunks = max(1, math.ceil(tensor.numel / chunk))
    moments = _Moments()
    is_complex = dtype.startswith("complex")
    start = 0.0
    read_extremes = False  # facts read from these values here, not given
    if facts is None and not value_range and not is_complex and not quick_range_failed:
        facts = yield from _extremes_pass(tensor, part, chunk, 0.1)
        start = 0.1
        read_extremes = facts is not None
    known = _known_range(facts, value_range, bins, is_complex)
    key_bins = None
    if known is not None and not value_range and dtype in KEY_DTYPES and not known[3]:
        key_bins = _KeyBins.build(*known[:3])
    if known is None:
        for i, raw in enumerate(iter_chunks(tensor, chunk)):
            moments.add(_real_view(raw, part))
            yield 0.4 * (i + 1) / total_chunks
    elif key_bins is not None:
        candidates = key_bins.candidates(
            getattr(facts, "sample", None), QUANTILES, _keep_room(tensor.numel) / tensor.numel
        )
        halves, kept = yield from _key_pass(
            tensor,
            part,
            chunk,
            key_bins,
            moments,
            (start, 0.8),
            candidates,
            (facts.lo, facts.hi) if read_extremes else None,
        )
    else:
        check = _EdgeCheck(*known[:3])
        histogram = yield from _fused_pass(
            tensor, part, chunk, known, moments, check, repeat, (start, 0.8)
        )
    moments.repeated(repeat)
    stats = Stats(
        numel=moments.n,
        nan=moments.nan,
        posinf=moments.posinf,
        neginf=moments.neginf,
        zeros=moments.zeros,
        part=part if dtype.startswith("complex") else "",
    )
    finite = stats.finite
    if not finite:
        return stats
    stats.min, stats.max = moments.extremes()
    stats.mean, stats.std, stats.l2 = moments.figures()
    if finite < 2:
        stats.std = None  # n - 1 = 0: undefined, not 0 (a 0-d step, one bias)
    lo, hi, bins, as_values = _histogram_range(
        stats.min, stats.max, moments.integer, value_range, bins
    )
    if known is None:
        check = _EdgeCheck(lo, hi, bins)
        fine, stats.below, stats.above = yield from _histogram_pass(
            tensor, part, chunk, lo, hi, check.fine_bins, check, (0.4, 0.8), repeat
        )
    elif known != (lo, hi, bins, as_values):  # facts that do not match the values read
        return (yield from compute(original, bins, part, value_range, chunk, None, True))
    elif key_bins is not None:
        stats.counts = (key_bins.histogram(halves) * repeat).tolist()
        stats.edges = key_bins.edges.tolist()
        ranks = {q: quantile_rank(q, finite) // repeat for q in QUANTILES}  # min < max here
        buckets = halves[0:-2:2] + halves[1:-2:2]
        stats.quantiles = yield from within(
            _key_select(tensor, part, chunk, key_bins, buckets, ranks, candidates, kept),
            (0.8, 1.0),
            max(1, math.ceil(tensor.numel / chunk)),
        )
        return stats
    else:
        fine, stats.below, stats.above = histogram
    stats.counts = check.counts(fine, repeat)
    stats.edges = check.edges.tolist()
    if value_range:
        return stats
    if stats.min == stats.max:  # one value: no selection pass
        stats.quantiles = dict.fromkeys(QUANTILES, stats.min)
    else:
        # an expanded view repeats each distinct value `repeat` times: rank k is k // repeat
        ranks = {q: quantile_rank(q, finite) // repeat for q in QUANTILES}
        stats.quantiles = yield from within(
            _select(tensor, part, chunk, lo, hi, fine // repeat, ranks, stats.zeros // repeat),
            (0.8, 1.0),
            max(1, math.ceil(tensor.numel / chunk)),
        )
    if as_values:
        # from the fine bins, each narrower than 1/8 (a range under 4096 values): each holds
        # one integer; the requested bins can be wider than one value (auto bins: 8 for 7 ids)
        width = (hi - lo) / fine.size
        stats.value_counts = {
            int(round(lo + (i + 0.5) * width)): int(fine[i]) for i in np.flatnonzero(fine)
        }
    return stats


SAMPLE_RUNS = 20


def _sample_runs(distinct: TensorInfo, elements: int) -> list[tuple[int, int]]:
    """The (first, count) storage runs a sample of `elements` reads: evenly spaced, or the
    whole view when it is small."""
    if distinct.numel <= elements:
        return [(distinct.offset, distinct.numel)]
    per_run = elements // SAMPLE_RUNS
    return [
        (distinct.offset + (distinct.numel - per_run) * r // (SAMPLE_RUNS - 1), per_run)
        for r in range(SAMPLE_RUNS)
    ]


def prefetch_sample(tensor: TensorInfo, elements: int):
    """Ask the OS to start reading what sample_preview(tensor, elements=...) will read: asked
    for many tensors at once, a cold disk serves them in one deep queue, not 20 reads at a time."""
    distinct, _ = unordered_view(tensor)
    stored = getattr(distinct.storage, "source", None)
    if getattr(stored, "compress_type", 0) != 0:
        return  # inflated when read: nothing to ask the OS for
    if distinct.is_contiguous and _plainly_stored(distinct) and distinct.storage is not None:
        StorageReader(distinct.storage).prefetch(
            _sample_runs(distinct, elements), tensor_np_dtype(distinct)
        )


def _plainly_stored(tensor: TensorInfo) -> bool:
    """Elements numpy reads straight from the tensor's storage (no DCP slabs, GGML blocks,
    sparse parts or torch-only dtype)."""
    return (
        tensor.storage is not None
        and not tensor.parts
        and not tensor.chunks
        and tensor.layout != "ggml"
        and numpy_readable(tensor)
    )


def _run_of(tensor: TensorInfo, first: int, count: int) -> TensorInfo:
    import copy

    run_view = copy.copy(tensor)
    run_view.shape, run_view.stride, run_view.offset = (count,), (1,), first
    return run_view


def sample_preview(tensor: TensorInfo, bins: int = 64, elements: int = 200_000) -> Stats:
    """A quick look: a few evenly spaced contiguous runs of the tensor (marked `sampled`)."""
    numel = tensor.numel
    distinct, _ = unordered_view(tensor)  # every distinct value repeats equally often
    if distinct.numel <= elements:
        return run(compute(tensor, bins))
    tensor = distinct
    if not tensor.is_contiguous:
        return Stats(numel=numel, sampled=True)
    runs = _sample_runs(tensor, elements)
    if _plainly_stored(tensor) and tensor.storage is not None:
        # read (the GIL is let go during the read), not mapped: a cold page faulted in inside
        # np.concatenate holds the GIL, and the window stalls on a cold file
        reader, np_dtype = StorageReader(tensor.storage), tensor_np_dtype(tensor)
        reader.prefetch(runs, np_dtype)
        pieces = [
            widen(
                apply_view_bits(reader.read(first, count, np_dtype), tensor),
                tensor.dtype,
                tensor.quantizer,
            )
            for first, count in runs
        ]
    else:  # DCP slabs, GGML blocks, quantized...
        pieces = [
            np.concatenate(list(iter_chunks(_run_of(tensor, first, count), count)))
            for first, count in runs
        ]
    values = _real_view(np.concatenate(pieces), "magnitude")
    moments = _Moments()
    moments.add(values)
    stats = Stats(numel=numel, sampled=True)
    finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
    if finite.size:
        stats.min, stats.max = moments.extremes()
        stats.mean, stats.std, _ = moments.figures()  # the exact pass's std (n - 1)
        counts, edges = np.histogram(finite, bins=bins)
        stats.counts, stats.edges = counts.tolist(), edges.tolist()
    return stats


# --- the Tensor pane's job: a quick sampled preview, then the exact pass ------------------

PREVIEW_DRAW_WAIT = 0.3  # seconds the exact pass gives the GUI to draw the preview, at most


def _wait(event, timeout: float):
    """Yields (so a cancel is still seen) until event is set or timeout seconds pass."""
    deadline = time.monotonic() + timeout
    while event is not None and not event.wait(0.02) and time.monotonic() < deadline:
        yield 0.0


def stats_job(
    tensor, bins, part, value_range, plotting_settled=None, preview_drawn=None, cache=None
):
    """Worker generator: ("preview", Stats), then progress floats; returns exact Stats.

    The exact pass starts only once the GUI has drawn the preview, and (first selection of a
    session) once pyqtgraph has arrived and the plots are built: GUI-thread plotting and a pass
    over a large tensor, sharing the GIL, stalled the window. With a `cache`
    (stats_cache.StatsCache), Stats computed before return at once, and the health pass's
    facts save a pass."""
    if cache is not None:
        known = cache.stats(tensor, bins, part, value_range)
        if known is not None:
            return known
    if not value_range and tensor.numel > 1_000_000:
        yield "preview", sample_preview(tensor)
        yield from _wait(preview_drawn, PREVIEW_DRAW_WAIT)
    yield from _wait(plotting_settled, math.inf)
    result = yield from compute(
        tensor,
        bins=bins,
        part=part,
        value_range=value_range,
        facts=cache.facts(tensor) if cache is not None else None,
    )
    if cache is not None:
        cache.put_stats(tensor, bins, part, value_range, result)
    return result
