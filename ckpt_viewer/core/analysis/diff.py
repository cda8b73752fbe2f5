"""Compare two checkpoints: keys only in one, shape and dtype mismatches, and for common tensors
max |a-b|, mean |a-b|, relative L2 difference and cosine similarity, computed chunk by chunk
(bounded memory). Keys are mapped with the key rules export uses (listing/keys.py: root,
strip / add prefix), chosen by hand or by the alignment search, so a DataParallel checkpoint
compares with a plain one; optimizer state is keyed by parameter name when both files prove
the names. The report also reads as what `load_state_dict(strict=True)` would say when B is
loaded into A's layout, and sets the telling scalars (epoch, step, loss, lr) side by side."""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Generator, Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ckpt_viewer.core.analysis.scan import scan
from ckpt_viewer.core.listing.keys import (
    Alignment,
    Side,
    align,
    candidate_roots,
    map_keys,
    optimizer_renames,
)
from ckpt_viewer.core.listing.model import Checkpoint, TensorInfo
from ckpt_viewer.core.listing.summary import scalar_importance
from ckpt_viewer.core.progress import within
from ckpt_viewer.core.values.compare import same_bits, same_words
from ckpt_viewer.core.values.dcp import dcp_slabs
from ckpt_viewer.core.values.decode import tensor_np_dtype
from ckpt_viewer.core.values.read import blockwise, iter_chunks, read_blocks
from ckpt_viewer.core.values.strided import iter_raw_chunks, unordered_view

if TYPE_CHECKING:
    from ckpt_viewer.core.analysis.porting import PortingMap

CHUNK = 1 << 20
BLOCK = 1 << 17  # elements a read: a's, b's and their difference stay in a core's L2 cache
SEGMENT = 1 << 23  # elements a task compares: the largest tensors spread over the cores


# A pair's status (their JSON and CLI spelling); a dtype difference pairs with the values' verdict.
IDENTICAL, CHANGED, SHAPE, SHARD = "identical", "changed", "shape", "shard"
DTYPE_IDENTICAL, DTYPE_CHANGED = "dtype+identical", "dtype+changed"
ONLY_A, ONLY_B = "only in A", "only in B"
# before the values are compared: the same dtype, or another one
SAME_DTYPE_PENDING, DTYPE_PENDING = "same", "dtype"

STATUS_ORDER = (
    IDENTICAL,
    CHANGED,
    DTYPE_IDENTICAL,
    DTYPE_CHANGED,
    SHAPE,
    SHARD,
    ONLY_A,
    ONLY_B,
)
STATUS_TEXT = {
    IDENTICAL: "identical",
    CHANGED: "values differ",
    DTYPE_IDENTICAL: "other dtype, same values",
    DTYPE_CHANGED: "other dtype, values differ",
    SHAPE: "other shape",
    SHARD: "other DTensor part (values not compared)",
    ONLY_A: "only in A",
    ONLY_B: "only in B",
}
PAIR_SAMPLE = 5_000  # scatter pairs: enough to see the spread, few enough to paint quickly
MAX_SCALARS = 40
LR_NAMES = ("lr", "learning_rate")
AS_THEY_ARE = Side()  # Side lives with the other key rules; callers import it from here


@dataclass
class TensorDiff:
    key: str
    key_a: str
    key_b: str
    status: str  # identical | changed | shape | dtype+changed | dtype+identical
    #                                 | shard (a DTensor of which the files hold different parts)
    shape_a: list
    shape_b: list
    dtype_a: str
    dtype_b: str
    max_abs: float | None = None
    mean_abs: float | None = None
    rel_l2: float | None = None
    cosine: float | None = None  # None once compared: undefined, both sides all zero
    rule: str = ""  # the porting rule that made a Keras / Flax side's tensor (porting.py)


@dataclass
class DiffReport:
    path_a: str
    path_b: str
    only_a: list = field(default_factory=list)
    only_b: list = field(default_factory=list)
    tensors: list = field(default_factory=list)  # TensorDiff for every common key
    alignment: Alignment | None = None  # the key rules compared under
    suggestion: Alignment | None = None  # rules that make more keys common, when the
    #                                      alignment is poor and a search finds them
    scalars: list = field(default_factory=list)  # ScalarPair: epoch, step, loss, lr...
    roots: tuple = ([""], [""])  # candidate roots of A and of B, for pickers
    ported: str = ""  # "A" or "B": that side's Keras / Flax variables ported to torch keys
    unmatched: dict = field(default_factory=dict)  # its variables no porting rule takes: why
    compared: tuple = ()  # (A, B) as compared: a ported side is its torch-layout checkpoint

    @property
    def identical(self) -> bool:
        return (
            not self.only_a
            and not self.only_b
            and not self.unmatched
            and all(t.status == IDENTICAL for t in self.tensors)
        )

    def count(self, status: str) -> int:
        return sum(1 for t in self.tensors if t.status == status)

    def status_counts(self) -> dict:
        """Every key in exactly one group, so the counts add up to the keys of both files."""
        counts = dict.fromkeys(STATUS_ORDER, 0)
        for t in self.tensors:
            counts[t.status] += 1
        counts[ONLY_A], counts[ONLY_B] = len(self.only_a), len(self.only_b)
        return counts

    def load_state_dict_view(self) -> dict:
        """B loaded into A's layout with strict=True."""
        return {
            "missing_keys": list(self.only_a),
            "unexpected_keys": list(self.only_b),
            "size_mismatch": [t.key for t in self.tensors if t.status == SHAPE],
        }

    def to_json(self) -> dict:
        """Non-finite floats (an infinite rel_l2) are left for strict_json to write as text."""
        return {
            "a": self.path_a,
            "b": self.path_b,
            "identical": self.identical,
            "only_a": self.only_a,
            "only_b": self.only_b,
            "shape_mismatch": [t.key for t in self.tensors if t.status == SHAPE],
            "dtype_mismatch": [
                t.key for t in self.tensors if t.status in (DTYPE_IDENTICAL, DTYPE_CHANGED)
            ],
            "shard_mismatch": [t.key for t in self.tensors if t.status == SHARD],
            "identical_tensors": sum(
                1 for t in self.tensors if t.status in (IDENTICAL, DTYPE_IDENTICAL)
            ),
            "changed_tensors": sum(1 for t in self.tensors if t.status in (CHANGED, DTYPE_CHANGED)),
            "load_state_dict": self.load_state_dict_view(),
            # vars, not asdict: its deep copy of every field was a visible part of a large diff
            "tensors": [dict(vars(t)) for t in self.tensors],
            "alignment": {
                "applied": _alignment_json(self.alignment),
                "suggested": _alignment_json(self.suggestion),
            },
            "scalars": [{"key": p.key, "a": p.a, "b": p.b, "same": p.same} for p in self.scalars],
            "ported": self.ported,
            "unmatched": self.unmatched,
        }


def _alignment_json(alignment: Alignment | None) -> dict | None:
    if alignment is None:
        return None
    return {
        "a": asdict(alignment.a),
        "b": asdict(alignment.b),
        "common": alignment.common,
        "text": alignment.text,
        "options": alignment.options,
    }


@dataclass(frozen=True)
class ScalarPair:
    key: str
    a: object  # None where the file has no such scalar
    b: object

    @property
    def same(self) -> bool:
        return type(self.a) is type(self.b) and self.a == self.b


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def telling_scalars(checkpoint: Checkpoint) -> dict:
    """Epoch, step, metrics and learning rates (numbers: not a `best_model_path`), by key:
    the optimizers' lr as recognised (a 0-d tensor lr read), then the file's other ones."""
    chosen = {}
    for optimizer in checkpoint.optimizers:
        where = f"{optimizer.key}.param_groups" if optimizer.key else "param_groups"
        for index, group in enumerate(optimizer.param_groups):
            if _number(group.get("lr")):
                chosen[f"{where}.{index}.lr"] = group["lr"]
    for key, value in checkpoint.scalars().items():
        telling = scalar_importance(key) <= 1 or key.rsplit(".", 1)[-1] in LR_NAMES
        if telling and _number(value):
            chosen.setdefault(key, value)
    return chosen


def scalar_pairs(a: Checkpoint, b: Checkpoint) -> list[ScalarPair]:
    """The telling scalars of both files side by side: A's order, then those only in B;
    epoch and step first."""
    values_a, values_b = telling_scalars(a), telling_scalars(b)
    keys = list(dict.fromkeys([*values_a, *values_b]))
    keys.sort(key=scalar_importance)
    return [ScalarPair(k, values_a.get(k), values_b.get(k)) for k in keys[:MAX_SCALARS]]


def mapped(checkpoint: Checkpoint, side: Side, renames: dict | None = None) -> dict:
    """{compared key: (source key, TensorInfo)} under the side's key rules."""
    items = map_keys(
        checkpoint,
        side.root,
        side.strip_prefix,
        side.add_prefix,
        renames=renames,
        verb="compared as",
    )
    return {new_key: (key, tensor) for key, new_key, tensor in items}


def state_renames(a: Checkpoint, b: Checkpoint) -> tuple[dict, dict]:
    """Optimizer state by parameter name on both sides, or by id on both: a name on one side
    never meets an id on the other."""
    renames = optimizer_renames(a), optimizer_renames(b)
    return renames if all(renames) else ({}, {})


def _comparable(chunk: np.ndarray) -> np.ndarray:
    """float32 stays float32 (half the memory traffic of float64); others are widened."""
    if np.iscomplexobj(chunk):
        chunk = np.abs(chunk)
    return chunk if chunk.dtype in (np.float32, np.float64) else chunk.astype(np.float64)


_local = threading.local()


def _reused(name: str, size: int, dtype: np.dtype, fill: int | None = None) -> np.ndarray:
    """The calling thread's buffer of that name, kept for its next task: fresh memory costs a
    page fault per 4 KB written."""
    name = f"{name} {np.dtype(dtype).str}"  # pairs of several dtypes in turn keep theirs
    kept = getattr(_local, name, None)
    if kept is None or kept.size < size:
        kept = np.empty(size, dtype) if fill is None else np.full(size, fill, dtype)
        setattr(_local, name, kept)
    return kept[:size]


class _Metrics:
    """Accumulates |a-b| and the dot products over chunk pairs, in float64 across chunks."""

    def __init__(self):
        self.max_abs = self.total_abs = self.diff_sq = self.a_sq = self.b_sq = self.dot = 0.0
        self.count = 0

    def add(self, x: np.ndarray, y: np.ndarray, scratch: bool = False) -> bool:
        """Adds a chunk pair; returns whether its values are equal (NaN equal to NaN). With
        `scratch`, x is the caller's own buffer and may hold the difference afterwards."""
        a_sq, b_sq = float(np.dot(x, x)), float(np.dot(y, y))
        equal = None
        if not (math.isfinite(a_sq) and math.isfinite(b_sq)):
            equal = np.array_equal(x, y, equal_nan=True)
            finite = np.isfinite(x) & np.isfinite(y)  # only then, element by element
            x, y = x[finite], y[finite]  # copies: scratch
            scratch = True
            a_sq, b_sq = float(np.dot(x, x)), float(np.dot(y, y))
        self.dot += float(np.dot(x, y))
        wanted = np.result_type(x, y)
        # the difference over x where it may: one buffer less for the cache to hold
        inplace = scratch and x.dtype == wanted and x.flags.writeable and x.flags.c_contiguous
        d = np.subtract(x, y, out=x if inplace else _reused("difference", x.size, wanted))
        self.diff_sq += float(np.dot(d, d))
        self.a_sq += a_sq
        self.b_sq += b_sq
        largest = 0.0
        if d.size:
            np.abs(d, out=d)
            largest = float(d.max())
            # a product with ones: one BLAS pass, half the time of numpy's summation, and as
            # exact as the squares beside it
            self.total_abs += float(np.dot(d, _reused("ones", d.size, wanted, 1)))
        self.max_abs = max(self.max_abs, largest)
        self.count += d.size
        return largest == 0.0 if equal is None else equal

    def merge(self, other: _Metrics) -> None:
        self.max_abs = max(self.max_abs, other.max_abs)
        self.total_abs += other.total_abs
        self.diff_sq += other.diff_sq
        self.a_sq += other.a_sq
        self.b_sq += other.b_sq
        self.dot += other.dot
        self.count += other.count

    def write_to(self, result: TensorDiff):
        a_sq, b_sq, diff_sq = self.a_sq, self.b_sq, self.diff_sq
        result.max_abs = self.max_abs
        result.mean_abs = self.total_abs / self.count if self.count else 0.0
        result.rel_l2 = (
            math.sqrt(diff_sq) / math.sqrt(a_sq) if a_sq else (0.0 if not diff_sq else math.inf)
        )
        if not (a_sq or b_sq):
            result.cosine = None  # 0/0: undefined, not 1
            return
        cosine = self.dot / math.sqrt(a_sq * b_sq) if a_sq and b_sq else 0.0
        result.cosine = min(1.0, max(-1.0, cosine))  # rounding can overshoot by ~1e-9


def _stored_bytes(tensor):
    if tensor.chunks:
        return (slab.view(np.uint8) for slab in dcp_slabs(tensor, CHUNK))
    return iter_raw_chunks(tensor, np.dtype("u1"), CHUNK)


def _compare_packed(a, b, result: TensorDiff):
    """float4_e2m1fn_x2 (two 4-bit floats a byte, no arithmetic in torch): equal or not, by
    its stored bytes; no metrics. Against another dtype (of the same shape: another byte
    type) its values are not comparable at all."""
    equal = a.dtype == b.dtype
    if equal:
        for chunk_a, chunk_b in zip(_stored_bytes(a), _stored_bytes(b)):
            equal = np.array_equal(chunk_a, chunk_b)
            yield chunk_a.size
            if not equal:
                break
    result.status = _verdict(equal, a.dtype == b.dtype)


def _add_chunks(
    metrics: _Metrics, chunk_a: np.ndarray, chunk_b: np.ndarray, equal: bool, scratch: bool = False
) -> bool:
    """Adds a chunk pair to the metrics; returns whether the values are still all equal.
    `scratch`: chunk_a is the caller's buffer, free to be overwritten."""
    x, y = _comparable(chunk_a), _comparable(chunk_b)
    if x is chunk_a and y is chunk_b:
        return metrics.add(x, y, scratch) and equal
    # widened values (ints beyond 2**53, complex magnitudes): an exact check, made before x
    # may hold the difference
    equal = equal and bool(np.array_equal(chunk_a, chunk_b, equal_nan=chunk_a.dtype.kind in "fc"))
    metrics.add(x, y, scratch=scratch or x is not chunk_a)
    return equal


@dataclass
class _Segment:
    """Elements [start, start+count) of a pair of blockwise-read tensors, one task's share;
    the task fills in what it found."""

    a: TensorInfo
    b: TensorInfo
    result: TensorDiff
    start: int
    count: int
    same: bool = False  # every element bit-identical (its metrics then computed only if asked)
    nonzero: bool = False  # known when same
    metrics: _Metrics | None = None
    equal: bool = True  # values equal, NaN to NaN (known with the metrics)


def _segments(a: TensorInfo, b: TensorInfo, result: TensorDiff) -> list[_Segment]:
    """The pair's segments when both sides are read blockwise, else []."""
    a, b = _stored_once(a, b)
    if not (blockwise(a) and blockwise(b) and a.numel == b.numel):
        return []
    starts = range(0, a.numel, SEGMENT) if a.numel else [0]
    return [_Segment(a, b, result, start, min(SEGMENT, a.numel - start)) for start in starts]


def _block_pairs(segment: _Segment):
    """The segment's elements of a and b, block by block, in two buffers reused throughout."""
    a, b = segment.a, segment.b
    size_a, size_b = (BLOCK * tensor_np_dtype(t).itemsize for t in (a, b))
    return zip(
        read_blocks(a, segment.start, segment.count, _reused("a", size_a, np.dtype("u1"))),
        read_blocks(b, segment.start, segment.count, _reused("b", size_b, np.dtype("u1"))),
    )


def _segment_metrics(
    segment: _Segment, stop: threading.Event, pairs: Iterator | None = None
) -> None:
    metrics, equal = _Metrics(), True
    with np.errstate(all="ignore"):
        for x, y in _block_pairs(segment) if pairs is None else pairs:
            if stop.is_set():
                return
            equal = _add_chunks(metrics, x, y, equal, scratch=True)  # the thread's buffers
    segment.metrics, segment.equal = metrics, equal


def _compare_segment(segment: _Segment, stop: threading.Event) -> None:
    """Bit-identical segments are settled in one pass (most tensors of a fine-tuning run are
    frozen); otherwise the metrics, from the segment's start again unless its first block
    differs already."""
    pairs = _block_pairs(segment)
    if segment.a.dtype == segment.b.dtype:
        nonzero, done = False, 0
        for x, y in pairs:
            if stop.is_set():
                return
            if not same_words(x, y):
                pairs = itertools.chain([(x, y)], pairs) if not done else _block_pairs(segment)
                break
            nonzero = nonzero or bool(np.any(x))  # -0.0 is zero too
            done += 1
        else:
            segment.same, segment.nonzero = True, nonzero
            return
    _segment_metrics(segment, stop, pairs)


def _settle(segments: list[_Segment]) -> None:
    """One pair's result from its segments (in order: sums add up the same every run)."""
    result = segments[0].result
    if any(not segment.same and segment.metrics is None for segment in segments):
        return  # stopped (cancelled) before it was compared
    same_dtype = result.status == SAME_DTYPE_PENDING
    if all(segment.same for segment in segments):
        result.status = IDENTICAL if same_dtype else result.status
        result.max_abs = result.mean_abs = result.rel_l2 = 0.0
        result.cosine = 1.0 if any(segment.nonzero for segment in segments) else None
        return
    total = _Metrics()
    for segment in segments:
        assert segment.metrics is not None  # the identical ones' too, by the second pass
        total.merge(segment.metrics)
    total.write_to(result)
    result.status = _verdict(all(segment.equal for segment in segments), same_dtype)


def _verdict(equal: bool, same_dtype: bool) -> str:
    if same_dtype:
        return IDENTICAL if equal else CHANGED
    return DTYPE_IDENTICAL if equal else DTYPE_CHANGED


def _stored_once(a: TensorInfo, b: TensorInfo) -> tuple[TensorInfo, TensorInfo]:
    """The same geometry maps equal positions to equal storage elements, so each stored element
    is compared once: an expand is repeats, which scale every sum alike and change no ratio,
    maximum or mean."""
    if tuple(a.stride) == tuple(b.stride) and tuple(a.shape) == tuple(b.shape):
        (view_a, repeat_a), (view_b, repeat_b) = unordered_view(a), unordered_view(b)
        if repeat_a == repeat_b and view_a.stride == view_b.stride:
            return view_a, view_b
    return a, b


def _compare_values(a, b, result: TensorDiff):
    """Bit-identical tensors are settled in one pass; otherwise chunks of a and b in the same
    (logical) order. The dot products are per chunk in the data's precision (BLAS), and they
    double as the finiteness check: only a chunk holding NaN or Inf is filtered element-wise."""
    if "float4_e2m1fn_x2" in (a.dtype, b.dtype):
        yield from _compare_packed(a, b, result)
        return
    a, b = _stored_once(a, b)
    # most tensors of a fine-tuning run are frozen: most comparisons end with this pass
    same, nonzero = yield from same_bits(a, b, CHUNK)
    if same:
        result.max_abs = result.mean_abs = result.rel_l2 = 0.0
        result.cosine = 1.0 if nonzero else None
        return
    metrics, equal = _Metrics(), True
    with np.errstate(all="ignore"):
        for chunk_a, chunk_b in zip(iter_chunks(a, CHUNK), iter_chunks(b, CHUNK)):
            equal = _add_chunks(metrics, chunk_a, chunk_b, equal)
            yield chunk_a.size
    metrics.write_to(result)
    result.status = _verdict(
        equal, result.status not in (DTYPE_PENDING, DTYPE_IDENTICAL, DTYPE_CHANGED)
    )


def _to_gguf_names(keys: dict, gguf_keys: dict, gguf_checkpoint: Checkpoint) -> tuple:
    """(the other side's keys renamed to the GGUF file's names where the name map knows them,
    the GGUF side's keys, {key: original shapes}). A llama q/k weight is compared in the row
    order llama.cpp's converter wrote: both sides become 4-D views of the same elements (the
    report shows the original shapes)."""
    from ckpt_viewer.core.analysis.gguf_names import (
        as_4d,
        gguf_names,
        in_gguf_row_order,
        rotary_heads,
    )

    names = gguf_names(gguf_checkpoint, keys)
    renamed = {names.get(key, key): value for key, value in keys.items()}
    gguf_keys, shapes = dict(gguf_keys), {}
    for key, (source, tensor) in renamed.items():
        heads = rotary_heads(gguf_checkpoint, key) if key in gguf_keys else 0
        gguf_source, gguf_tensor = gguf_keys.get(key, (None, None))
        if not heads or tuple(tensor.shape) != tuple(gguf_tensor.shape):
            continue
        view = in_gguf_row_order(tensor, heads)
        if view is not None:
            shapes[key] = (list(tensor.shape), list(gguf_tensor.shape))
            renamed[key] = (source, view)
            gguf_keys[key] = (gguf_source, as_4d(gguf_tensor, view.shape))
    return renamed, gguf_keys, shapes


def _ported(a: Checkpoint, b: Checkpoint) -> tuple[Checkpoint, Checkpoint, PortingMap | None, str]:
    """(a, b, the porting map, "A" or "B") with the one Keras / Flax side ported."""
    if a.format == b.format:  # both or neither portable: not worth the porting import
        return a, b, None, ""
    from ckpt_viewer.core.analysis.porting import portable, ported_if_portable

    if portable(a) == portable(b):
        return a, b, None, ""
    if portable(a):
        ported_a, mapping = ported_if_portable(a)
        return ported_a, b, mapping, "A" if mapping else ""
    ported_b, mapping = ported_if_portable(b)
    return a, ported_b, mapping, "B" if mapping else ""


def diff(
    a: Checkpoint,
    b: Checkpoint,
    side_a: Side = AS_THEY_ARE,
    side_b: Side = AS_THEY_ARE,
    map_gguf: bool = True,
    auto_align: bool = False,
    to_torch: bool = True,
) -> Generator[float, None, DiffReport]:
    """Generator: yields progress in [0, 1]; returns DiffReport. With map_gguf, when one side
    is a GGUF file the other side's names are mapped to GGUF names (llama.cpp's map), and no
    alignment is searched. With to_torch, when one side holds Keras or Flax weights and the
    other does not, that side is ported to PyTorch keys and layouts first (porting.py), and
    each pair names its rule. With auto_align the searched alignment replaces the sides; without,
    it is searched (as a suggestion) when fewer than half the keys are common."""
    a, b, mapping, ported = _ported(a, b) if to_torch else (a, b, None, "")
    renames = state_renames(a, b)
    to_gguf = map_gguf and (a.format == "gguf") != (b.format == "gguf")
    roots = candidate_roots(a), candidate_roots(b)
    best = align(a, b, renames, roots) if auto_align and not to_gguf else None
    if best is not None:
        side_a, side_b = best.a, best.b
    keys_a, keys_b = mapped(a, side_a, renames[0]), mapped(b, side_b, renames[1])
    shapes = {}
    if to_gguf:
        if a.format == "gguf":
            keys_b, keys_a, shapes = _to_gguf_names(keys_b, keys_a, a)
            shapes = {key: pair[::-1] for key, pair in shapes.items()}
        else:
            keys_a, keys_b, shapes = _to_gguf_names(keys_a, keys_b, b)
    report = DiffReport(
        a.path,
        b.path,
        only_a=[k for k in keys_a if k not in keys_b],
        only_b=[k for k in keys_b if k not in keys_a],
    )
    common = [k for k in keys_a if k in keys_b]
    report.alignment = Alignment(side_a, side_b, len(common), len(keys_a), len(keys_b))
    if best is None and not to_gguf and report.alignment.poor:
        best = align(a, b, renames, roots)  # searched only when it may help
    if best is not None and best.common > len(common):
        report.suggestion = best
    report.scalars = scalar_pairs(a, b)
    report.roots = roots
    rules = mapping.rules if mapping is not None else {}
    if mapping is not None:
        report.ported, report.unmatched = ported, dict(mapping.unmatched)
    report.compared = (a, b)
    pairs = []
    for key in common:
        (source_a, ta), (source_b, tb) = keys_a[key], keys_b[key]
        status = (
            SHAPE
            if tuple(ta.shape) != tuple(tb.shape)
            else (DTYPE_PENDING if ta.dtype != tb.dtype else SAME_DTYPE_PENDING)
        )
        shape_a, shape_b = shapes.get(key, (list(ta.shape), list(tb.shape)))
        result = TensorDiff(key, source_a, source_b, status, shape_a, shape_b, ta.dtype, tb.dtype)
        result.rule = rules.get(source_a if ported == "A" else source_b, "")
        report.tensors.append(result)
        if status != SHAPE and "dtensor" in (ta.layout, tb.layout):
            # a per-rank file holds a part: comparable only with the same part of the same rank
            if ta.layout == tb.layout and ta.attrs.get("held") == tb.attrs.get("held"):
                pairs.append((ta.parts["local"], tb.parts["local"], result))
            else:
                result.status = SHARD
        elif status != SHAPE:
            pairs.append((ta, tb, result))
    # pairs (large ones in segments) on the scan's threads: numpy computes without the GIL,
    # so both cores work
    items: list = []
    split: list[list[_Segment]] = []
    for ta, tb, result in pairs:
        segments = _segments(ta, tb, result)
        if segments:
            split.append(segments)
        items.extend(segments or [(ta, tb, result)])
    yield from scan(items, _compare_item, weight=_weight, name="diff")
    # a pair partly bit-identical: the metrics of its identical segments too (rare)
    rest = [s for segments in split if not all(s.same for s in segments) for s in segments]
    rest = [segment for segment in rest if segment.same]
    if rest:
        # reported as done: the progress bar does not run backwards
        yield from within(scan(rest, _segment_metrics, weight=_weight, name="diff"), (1.0, 1.0))
    for segments in split:
        _settle(segments)
    return report


def _weight(item) -> float:
    return (item.count if isinstance(item, _Segment) else item[0].numel) or 1


def _compare_item(item, stop: threading.Event) -> None:
    if isinstance(item, _Segment):
        _compare_segment(item, stop)
    else:
        _compare_pair(item, stop)


def _compare_pair(pair: tuple, stop: threading.Event) -> None:
    """Fills in one pair's result (its own TensorDiff: no other thread touches it)."""
    ta, tb, result = pair
    if result.status == SAME_DTYPE_PENDING:
        result.status = IDENTICAL  # replaced by the comparison below
    for _ in _compare_values(ta, tb, result):
        if stop.is_set():
            return


@dataclass
class PairDetail:
    """One common tensor seen closely: the histogram of a - b over every element (non-finite
    differences counted apart) and an evenly spaced sample of (a, b) pairs for a scatter plot."""

    edges: list
    counts: list
    nonfinite: int
    a: np.ndarray
    b: np.ndarray
    elements: int


def difference_range(max_abs: float | None) -> tuple[float, float]:
    """Symmetric around 0, so 'no change' sits in the middle of the plot."""
    reach = max_abs if max_abs and math.isfinite(max_abs) else 1.0
    return -reach, reach


def pair_detail(
    a, b, max_abs: float | None = None, bins: int = 128, sample: int = PAIR_SAMPLE
) -> Generator[float, None, PairDetail]:
    """Generator: yields progress in [0, 1]; returns PairDetail. One pass over both tensors in
    logical order; max_abs (the diff report's) fixes the histogram range up front."""
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError("the tensors have different shapes")
    low, high = difference_range(max_abs)
    counts = np.zeros(bins, dtype=np.int64)
    total = a.numel
    step = max(1, -(-total // sample))  # every step-th element: <= sample pairs
    picked_a, picked_b, nonfinite, done = [], [], 0, 0
    with np.errstate(all="ignore"):
        for chunk_a, chunk_b in zip(iter_chunks(a, CHUNK), iter_chunks(b, CHUNK)):
            x = _comparable(chunk_a).astype(np.float64, copy=False)
            y = _comparable(chunk_b).astype(np.float64, copy=False)
            d = x - y
            finite = np.isfinite(d)
            nonfinite += int(d.size - np.count_nonzero(finite))
            counts += np.histogram(np.clip(d[finite], low, high), bins=bins, range=(low, high))[0]
            first = (-done) % step  # the first sampled index in this chunk
            picked_a.append(x[first::step])
            picked_b.append(y[first::step])
            done += d.size
            yield min(done / (total or 1), 1.0)
    edges = np.linspace(low, high, bins + 1).tolist()
    return PairDetail(
        edges,
        counts.tolist(),
        nonfinite,
        np.concatenate(picked_a) if picked_a else np.empty(0),
        np.concatenate(picked_b) if picked_b else np.empty(0),
        done,
    )


def histogram_pair(a, b, bins: int = 128):
    """Both tensors' histograms over one common range (for the overlay): (stats a, stats b), or
    (None, None) when neither has a finite value."""
    from ckpt_viewer.core.progress import run
    from ckpt_viewer.core.values.stats import compute

    first_a, first_b = run(compute(a, bins=8)), run(compute(b, bins=8))
    lows = [s.min for s in (first_a, first_b) if s.min is not None]
    highs = [s.max for s in (first_a, first_b) if s.max is not None]
    if not lows:
        return None, None
    value_range = (min(lows), max(highs) if max(highs) > min(lows) else min(lows) + 1.0)
    return (
        run(compute(a, bins=bins, value_range=value_range)),
        run(compute(b, bins=bins, value_range=value_range)),
    )
