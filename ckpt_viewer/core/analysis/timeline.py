"""A training run as one object: many checkpoints ordered by the step recorded inside them,
per key and step the layer metrics, the update from the previous step and the drift from the
first, learning rates and losses per step, and findings (first NaN/Inf, frozen layers, outsized
updates, keys or shapes that come and go, learning-rate drops).

Every byte of the run is read once: for one key, chunk i of every step's tensor is read side by
side, so the previous and the first step's chunk are at hand without reading them again."""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import math
import os
import re
import statistics
import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ckpt_viewer.core import CheckpointError, describe_error
from ckpt_viewer.core.analysis.check import Finding as HealthFinding
from ckpt_viewer.core.analysis.check import by_tail
from ckpt_viewer.core.analysis.diff import mapped
from ckpt_viewer.core.analysis.scan import scan as scan_all
from ckpt_viewer.core.analysis.scan import worker_count
from ckpt_viewer.core.listing import remote
from ckpt_viewer.core.listing.keys import Side, align, candidate_roots
from ckpt_viewer.core.listing.model import Checkpoint, TensorInfo
from ckpt_viewer.core.listing.open import open_checkpoint
from ckpt_viewer.core.listing.readers.hf_index import read_json
from ckpt_viewer.core.listing.runs import expand_paths, numbers_in
from ckpt_viewer.core.listing.summary import MODEL, tensor_categories
from ckpt_viewer.core.listing.text import plural, safe_text
from ckpt_viewer.core.values.decode import numpy_readable, tensor_np_dtype
from ckpt_viewer.core.values.read import DIRECT_SLACK, iter_chunks, iter_chunks_ahead
from ckpt_viewer.core.values.stats import (
    _chunk_moments,
    _ChunkMoments,
    _Moments,
    chunk_moments_with_squares,
    moments_from_sums,
)

METRICS = (
    "l2",
    "std",
    "max_abs",
    "update",
    "cos_prev",
    "cos_first",
    "nan",
    "inf",
    "exp_avg_sq",
    "alpha",
)
DEFAULT_METRICS = tuple(m for m in METRICS if m != "alpha")  # alpha: an SVD per tensor and step
CHUNK = 1 << 18  # elements per step per read
BLOCK = 8192  # elements per step per reduction: a block of every step stays in the L2 cache
READAHEAD = 16 << 20  # bytes per tensor asked of the OS ahead of the chunk being read
IO_THREADS = 16  # threads that wait on the reads (they hold no GIL while they wait)
OUTSIZED = 10.0  # an update this many times the step's median update is a finding
# what training does not move by gradient steps: counters and running statistics change every
# step by design (a counter's relative update is 1/n), so "frozen" or "outsized" says nothing there
RUNNING_STATISTICS = frozenset({"running_mean", "running_var", "num_batches_tracked"})
STEP_NAMES = ("global_step", "step", "iteration", "iter", "epoch")
LOSS_NAMES = ("loss", "train_loss", "val_loss", "eval_loss", "best_loss")
NO_ARITHMETIC = ("float4_e2m1fn_x2",)  # two 4-bit floats a byte: compared by diff, not measured


@dataclass
class Step:
    """One checkpoint of the run."""

    path: str
    label: str  # the path relative to the run's folder
    step: float | None  # from inside the file, else from the name
    order_source: str  # "global_step" (inside the file), "name" ...
    epoch: float | None = None
    lr: list = field(default_factory=list)  # per optimizer param group
    scalars: dict = field(default_factory=dict)  # loss and friends
    side: Side = Side()

    def to_json(self) -> dict:
        return {
            "path": self.path,
            "label": self.label,
            "step": self.step,
            "order_source": self.order_source,
            "epoch": self.epoch,
            "lr": self.lr,
            "scalars": self.scalars,
            "root": self.side.root,
            "strip_prefix": self.side.strip_prefix,
        }


@dataclass
class Finding(HealthFinding):
    """A health finding at one checkpoint of the run."""

    step: int | None = None  # index into TimelineReport.steps; None for the run as a whole

    def to_json(self) -> dict:
        return {**super().to_json(), "step": self.step}


@dataclass
class KeyTimeline:
    """One key across the run: per metric, one value per step (None where absent/undefined)."""

    key: str
    shapes: list  # per step: shape list or None (absent)
    dtypes: list
    values: dict = field(default_factory=dict)  # metric -> [per step]
    sources: list = field(default_factory=list)  # per step: the key in that file, or None

    def to_json(self) -> dict:
        return {
            "key": self.key,
            "sources": self.sources,
            "shapes": self.shapes,
            "dtypes": self.dtypes,
            **self.values,
        }


@dataclass
class TimelineReport:
    steps: list
    keys: list  # KeyTimeline, in the first step's key order, then new keys
    metrics: list
    findings: list = field(default_factory=list)
    history: list = field(default_factory=list)  # trainer_state.json log_history entries
    skipped: list = field(default_factory=list)  # (path, why) not a checkpoint
    bytes_scanned: int = 0
    sampled: int = 0  # > 0: estimates from the first `sampled` values of each tensor

    def series(self, metric: str) -> dict:
        return {k.key: k.values.get(metric, []) for k in self.keys}

    def to_json(self) -> dict:
        return {
            "steps": [s.to_json() for s in self.steps],
            "metrics": list(self.metrics),
            "keys": [k.to_json() for k in self.keys],
            "findings": [f.to_json() for f in self.findings],
            "history": self.history,
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "bytes_scanned": self.bytes_scanned,
            "sampled": self.sampled,
        }


# --- the run: which checkpoints, in which order ----------------------------------------------


def _plain_number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _step_of(checkpoint: Checkpoint) -> tuple[float | None, str, float | None]:
    """(step, which field gave it, epoch) from the checkpoint's own scalars near the top."""
    found: dict[str, float] = {}
    for key, value in checkpoint.scalars().items():
        parts = key.split(".")
        name = parts[-1]
        depth = len(parts) - (1 if key.startswith(("trainer_state.json.",)) else 0)
        if name in STEP_NAMES and depth <= 2 and name not in found:
            number = _plain_number(value)
            if number is not None:
                found[name] = number
    for name in STEP_NAMES:
        if name in found:
            return found[name], name, found.get("epoch")
    return None, "", None


GROUP_RATE = re.compile(r"(?:^|\.)param_groups\.(\d+)\.lr$")


def _learning_rates(checkpoint: Checkpoint) -> list[float]:
    rates = []
    for optimizer in checkpoint.optimizers:
        for group in optimizer.param_groups:
            value = _plain_number(group.get("lr")) if isinstance(group, dict) else None
            if value is not None:
                rates.append(value)
    if rates or checkpoint.optimizers:
        return rates
    # a DCP checkpoint keeps its optimizer flattened: `optim.param_groups.0.lr` is a scalar
    by_group: dict[int, float] = {}
    for key, scalar in checkpoint.scalars().items():
        match = GROUP_RATE.search(key)
        rate = _plain_number(scalar) if match else None
        if match and rate is not None:
            by_group.setdefault(int(match.group(1)), rate)
    return [by_group[i] for i in sorted(by_group)]


def _losses(checkpoint: Checkpoint) -> dict:
    found = {}
    for key, value in checkpoint.scalars().items():
        parts = key.split(".")
        if parts[-1] in LOSS_NAMES and len(parts) <= 3:
            number = value if isinstance(value, float) else _plain_number(value)
            if number is not None or (isinstance(value, float) and math.isnan(value)):
                found[key] = number if number is not None else value
    return found


def _model_view(checkpoint: Checkpoint) -> Checkpoint:
    """The checkpoint with only its model's tensors listed (optimizer state and other values
    left out): what a run's timeline follows and lines up."""
    categories = tensor_categories(checkpoint)
    kept = [t for t in checkpoint.tensors() if categories.get(id(t[2])) == MODEL]
    return dataclasses.replace(checkpoint, _tensors=kept or checkpoint.tensors())


def _roots(checkpoint: Checkpoint) -> list[str]:
    """Compare's candidate roots, and a training folder's model file (grafted whole)."""
    files = [
        c.key
        for c in checkpoint.root.children
        if re.fullmatch(r"(model|pytorch_model).*\.(safetensors|bin)", str(c.name))
    ]
    return list(dict.fromkeys(candidate_roots(checkpoint) + files))


def _one_level_down(side: Side, view: Checkpoint) -> Side:
    """Keys under one top-level entry (`model_state_dict`, `model.safetensors`) are named
    from inside it: the keys read as the model's own."""
    if side != Side():
        return side
    keys = [key for key, _, _ in view.tensors()]
    for child in view.root.children:
        under = child.key + "."
        if keys and all(key.startswith(under) for key in keys):
            return Side(root=child.key)
    return side


def aligned_keys(checkpoints: list[Checkpoint]) -> tuple[list[Side], list[dict]]:
    """Each checkpoint's key rules and its model tensors by display name, lined up by Compare's
    alignment search: each checkpoint is aligned with the first, and a tensor takes the name
    its counterpart has in the first checkpoint (under the rules the first and the last agree
    on), so steps saved by different code paths or in other formats line up key by key."""
    views = [_model_view(c) for c in checkpoints]
    whole = align(views[0], views[-1], roots=(_roots(views[0]), _roots(views[-1])))
    first_side = _one_level_down(whole.a if whole else Side(), views[0])
    first = mapped(views[0], first_side)
    name_of = {source: name for name, (source, _) in first.items()}
    sides, keymaps = [first_side], [first]
    for view in views[1:]:
        pair = align(views[0], view, roots=(_roots(views[0]), _roots(view)))
        if pair is None:
            sides.append(Side())
            keymaps.append({})
            continue
        ours, theirs = mapped(views[0], pair.a), mapped(view, pair.b)
        keymap: dict = {}
        for common, found in theirs.items():
            name = name_of.get(ours[common][0], common) if common in ours else common
            keymap.setdefault(name, found)
        sides.append(pair.b)
        keymaps.append(keymap)
    return sides, keymaps


def _trainer_history(path: str) -> list:
    """log_history of a Trainer folder's trainer_state.json (the last one holds the whole run)."""
    state_file = remote.join(path, "trainer_state.json")
    if not remote.isfile(state_file):
        return []
    try:
        state = read_json(state_file, "trainer state")
    except CheckpointError:
        return []  # the history is a bonus: a damaged one leaves the timeline as it is
    history = state.get("log_history")
    if not isinstance(history, list):
        return []
    kept = []
    for entry in history:
        if isinstance(entry, dict):
            # a NaN/Inf loss is what the user looks for: numbers are kept whatever their value
            numbers = {
                k: v
                for k, v in entry.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            }
            if _plain_number(numbers.get("step")) is not None:
                kept.append(numbers)
    return kept


def open_run(paths: Iterable[str], opener: Callable[[str], Checkpoint] = open_checkpoint) -> Run:
    """The run's checkpoints, opened and ordered by their recorded step (else by the numbers in
    their names); what is not a checkpoint is skipped, with why."""
    opened, skipped = [], []
    for path, label in expand_paths(paths):
        try:
            checkpoint = opener(path)
        except CheckpointError as e:
            skipped.append((path, describe_error(e)))
            continue
        opened.append((path, label, checkpoint))
    if not opened:
        reasons = "; ".join(f"{safe_text(p)}: {r}" for p, r in skipped[:3])
        raise CheckpointError(
            "no checkpoint to build a timeline from" + (f" ({reasons})" if reasons else "")
        )
    inside = [_step_of(c) for _, _, c in opened]
    use_inside = all(s is not None for s, _, _ in inside) and len({s for s, _, _ in inside}) == len(
        inside
    )
    steps = []
    for (path, label, checkpoint), (step, source, epoch) in zip(opened, inside):
        if not use_inside:
            numbers = numbers_in(label)
            step, source = (float(numbers[-1]), "name") if numbers else (None, "")
        steps.append(
            Step(
                path=path,
                label=label,
                step=step,
                order_source=source or "listed order",
                epoch=epoch,
                lr=_learning_rates(checkpoint),
                scalars=_losses(checkpoint),
            )
        )
    order = sorted(
        range(len(steps)),
        key=lambda i: (steps[i].step is None, steps[i].step or 0.0, i),
    )
    steps, checkpoints = [steps[i] for i in order], [opened[i][2] for i in order]
    sides, keymaps = aligned_keys(checkpoints)
    for entry, side in zip(steps, sides):
        entry.side = side
    return Run(steps, checkpoints, skipped, keymaps)


# --- the scan: one key across every step, chunk by chunk --------------------------------------


class _Pair:
    """Dot products of one step's values with another step's (the previous or the first)."""

    def __init__(self) -> None:
        self.dot = self.diff_sq = self.a_sq = self.b_sq = 0.0
        self.count = 0

    def add(
        self, x: np.ndarray, y: np.ndarray, xx: float, yy: float, scratch: np.ndarray | None
    ) -> None:
        """x, y: float64 chunks; xx, yy: their sums of squares (NaN/Inf: only the elements
        finite in both count); with `scratch` (float64, at least x's size), the difference too."""
        if not (math.isfinite(xx) and math.isfinite(yy)):
            finite = np.isfinite(x) & np.isfinite(y)
            x, y = x[finite], y[finite]
            xx, yy = _dot(x, x), _dot(y, y)
        diff_sq = 0.0
        if scratch is not None:
            d = np.subtract(x, y, out=scratch[: x.size])
            diff_sq = _dot(d, d)
        self.add_sums(_dot(x, y), xx, yy, diff_sq, x.size)

    def add_sums(self, dot: float, xx: float, yy: float, diff_sq: float, count: int) -> None:
        self.dot += dot
        self.a_sq += xx
        self.b_sq += yy
        self.diff_sq += diff_sq
        self.count += count

    def cosine(self) -> float | None:
        if not (self.count and self.a_sq and self.b_sq):
            return None
        return min(1.0, max(-1.0, self.dot / math.sqrt(self.a_sq * self.b_sq)))

    def update(self) -> float | None:
        """||W_t - W_{t-1}|| / ||W_{t-1}|| (b is the previous step), over the elements finite
        in both; undefined where none is."""
        if not self.count:
            return None
        if not self.b_sq:
            return None if self.diff_sq else 0.0
        return math.sqrt(self.diff_sq) / math.sqrt(self.b_sq)


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    # einsum, not BLAS: BLAS's spinning threads starve the GUI thread
    return float(np.einsum("i,i->", a, b))


def _as_float(chunk: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """float64: a float32 dot product of a million values keeps ~5 digits, and the cosine of
    two checkpoints a small update apart differs from 1 in the seventh. `out` (float64, at
    least the chunk's size) is reused: a fresh array per chunk costs the kernel zeroing its
    pages, more than the conversion itself."""
    if np.iscomplexobj(chunk):
        chunk = np.abs(chunk)
    if out is None:
        return chunk.astype(np.float64)
    view = out[: chunk.size]
    np.copyto(view, chunk, casting="unsafe")
    return view


def _row_dots(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The dot product of each row of a with the same row of b (or with b, one row), in
    float64 through BLAS's dot: rows are at most BLOCK long, under the 10,000 elements from
    which OpenBLAS spreads a dot over threads that then spin (and starve the GUI thread)."""
    rows = a.shape[0]
    return np.matmul(a[:, None, :], (b if b.ndim == 2 else b[None, :])[:, :, None]).reshape(rows)


def _block_sums(chunks: tuple | np.ndarray, work: np.ndarray) -> np.ndarray | None:
    """Sums over one chunk of every step of a run (`chunks`: float values, all of one size;
    one 2-D array, a row per step, when they lie side by side in memory), taken block by
    block so each block of every step is converted once into `work` (float64, at least 2 x
    steps rows of BLOCK) and then re-read from the CPU cache, not from memory, by every
    reduction: rows (sum of squares, sum, dot with the previous step, squared difference from
    the previous step, dot with the first step), one column per step. None as soon as a value
    is not finite: the element-wise path then counts and leaves out NaN/Inf."""
    steps = len(chunks)
    sums = np.zeros((5, steps))
    size = chunks[0].size
    for start in range(0, size, BLOCK):
        n = min(BLOCK, size - start)
        x, d = work[:steps, :n], work[steps : 2 * steps - 1, :n]
        if isinstance(chunks, np.ndarray):  # one call for every step: fewer, larger numpy calls
            np.copyto(x, chunks[:, start : start + n], casting="unsafe")
        else:
            for row, chunk in zip(x, chunks):
                np.copyto(row, chunk[start : start + n], casting="unsafe")
        squares = _row_dots(x, x)
        if not np.isfinite(squares).all():
            return None
        sums[0] += squares
        sums[1] += np.add.reduce(x, axis=1)
        if steps > 1:
            sums[2, 1:] += _row_dots(x[1:], x[:-1])
            np.subtract(x[1:], x[:-1], out=d)
            sums[3, 1:] += _row_dots(d, d)
        if steps > 2:
            sums[4, 2:] += _row_dots(x[2:], x[0])
    return sums


def _float_moments(native: np.ndarray, squares: float, total: float) -> _ChunkMoments:
    """A chunk of finite floats' moments from its sums where that is exact, else two passes.
    Zeros are not counted: no timeline metric uses them."""
    moments = moments_from_sums(native, total, squares)
    return moments if moments is not None else _chunk_moments(native.astype(np.float64))


def _segments(shapes: list) -> list[list[int]]:
    """Runs of consecutive present steps with the same shape (values compare within a run)."""
    runs: list[list[int]] = []
    for i, shape in enumerate(shapes):
        if shape is None:
            continue
        if runs and runs[-1][-1] == i - 1 and shapes[runs[-1][-1]] == shape:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


_held = threading.local()


def _reused(name: str, shape: tuple, dtype: type = np.uint8) -> np.ndarray:
    """Memory kept per thread and reused task after task: fresh memory costs the kernel a
    page fault and a zeroed page per 4 KB, on every chunk read into it."""
    count = math.prod(shape)
    held = getattr(_held, name, None)
    if held is None or held.size < count or held.dtype != dtype:
        held = np.empty(count, dtype)
        setattr(_held, name, held)
    return held[:count].reshape(shape)


def _width(tensor: TensorInfo | None) -> int:
    """Bytes per element read into a buffer (0: not read into one)."""
    return tensor_np_dtype(tensor).itemsize if tensor and numpy_readable(tensor) else 0


def _side_by_side(chunks: tuple, rows: np.ndarray) -> tuple | np.ndarray:
    """The chunks as one 2-D array (a view of `rows`) when each was read in place into its
    row and all have one dtype and size; else as they are."""
    first = chunks[0]
    if all(
        c.dtype == first.dtype and c.size == first.size and c.ctypes.data == row.ctypes.data
        for c, row in zip(chunks, rows)
    ):
        return rows[:, : first.size * first.itemsize].view(first.dtype)
    return chunks


_io_pool: ThreadPoolExecutor | None = None
_io_lock = threading.Lock()


def _io() -> ThreadPoolExecutor:
    global _io_pool
    with _io_lock:
        if _io_pool is None:
            _io_pool = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="timeline-io")
        return _io_pool


def _read_ahead(readers: list[Iterator[np.ndarray]]) -> Iterator[tuple]:
    """Chunk k of every reader (None once one is exhausted), while chunk k + 1 of each is
    already being read on the I/O threads, all at once: the disk gets a queue of requests
    instead of one per step in turn, and the caller computes on chunk k meanwhile. A reader's
    chunk must stay valid while its next one is read (iter_chunks_ahead with two buffers)."""
    pending = [_io().submit(next, reader, None) for reader in readers]
    try:
        while True:
            chunks = tuple(future.result() for future in pending)
            if all(c is None for c in chunks):
                return
            pending = [_io().submit(next, reader, None) for reader in readers]
            yield chunks
    finally:  # nothing is left reading into buffers the thread's next task reuses
        for future in pending:
            if not future.cancel():
                future.exception()


def _exp_avg_sq_means(
    tensors: list, stop: threading.Event, direct: bool = False
) -> list[float | None]:
    """The mean of each step's exp_avg_sq (None where absent), the steps read side by side."""
    kept = [t if t is not None and t.dtype not in NO_ARITHMETIC else None for t in tensors]
    width = max((_width(t) for t in kept), default=0)
    rows = _reused("variance", (2, len(kept), CHUNK * width + DIRECT_SLACK))
    readers = [
        iter_chunks_ahead(t, CHUNK, READAHEAD, rows[:, i], direct) if t is not None else iter(())
        for i, t in enumerate(kept)
    ]
    totals, counts = [0.0] * len(kept), [0] * len(kept)
    for chunks in _read_ahead(readers):
        if stop.is_set():
            raise CheckpointError("cancelled")
        for i, chunk in enumerate(chunks):
            if chunk is None:
                continue
            if np.iscomplexobj(chunk):
                chunk = np.abs(chunk)
            part = float(np.sum(chunk, dtype=np.float64))
            if not math.isfinite(part):  # the mean of the finite values, as for every metric
                chunk = chunk[np.isfinite(chunk)]
                part = float(np.sum(chunk, dtype=np.float64))
            totals[i], counts[i] = totals[i] + part, counts[i] + chunk.size
    return [
        total / count if t is not None and count else None
        for t, total, count in zip(kept, totals, counts)
    ]


def scan_key(
    key: str,
    tensors: list,
    metrics: Iterable[str],
    stop: threading.Event | None = None,
    variances: list | None = None,
    sample: int = 0,
    direct: bool = False,
) -> KeyTimeline:
    """Metrics of one key across the steps (`tensors`: TensorInfo or None per step), every
    step's bytes read once, side by side with the previous and the first step of its run.
    With `sample`, estimates from the first `sample` values of each tensor only; `direct`:
    read past the page cache (see iter_chunks_ahead)."""
    stop = stop or threading.Event()
    metrics = tuple(metrics)
    count = len(tensors)
    shapes = [list(t.shape) if t is not None else None for t in tensors]
    result = KeyTimeline(key, shapes, [t.dtype if t is not None else None for t in tensors])
    values: dict[str, list] = {m: [None] * count for m in metrics}
    for run in _segments(shapes):
        if any(tensors[i].dtype in NO_ARITHMETIC for i in run):
            continue
        moments = {i: _Moments() for i in run}
        previous = {i: _Pair() for i in run[1:]}
        first = {i: _Pair() for i in run[2:]}
        chunk = min(CHUNK, sample) if sample else CHUNK
        seen = 0
        work = _reused("work", (2 * len(run), BLOCK), np.float64)
        width = max(_width(tensors[i]) for i in run)
        # two buffers per step: chunk k is computed on while chunk k + 1 is read into the other
        rows = _reused("rows", (2, len(run), chunk * width + DIRECT_SLACK))
        buffers: list = []  # whole float64 chunks: only for the element-wise path
        # pread into a buffer per step: a mapped chunk's first touch faults its pages in
        # (and a fault on a cold page reads the disk around it: data the scan never uses)
        groups: Iterable[tuple]
        if sample:  # the first chunk only: nothing read ahead that the pass would not use
            groups = zip(
                *(
                    iter_chunks(tensors[i], chunk, 0, mapped=False, into=row if width else None)
                    for i, row in zip(run, rows[0])
                )
            )
        else:
            groups = _read_ahead(
                [
                    iter_chunks_ahead(tensors[i], chunk, READAHEAD, rows[:, p], direct)
                    for p, i in enumerate(run)
                ]
            )
        for k, chunks in enumerate(groups):
            if stop.is_set():
                raise CheckpointError("cancelled")
            if sample and seen >= sample:
                break
            seen += chunks[0].size
            sums = None
            if all(c.dtype.kind == "f" and c.size == chunks[0].size for c in chunks):
                with np.errstate(all="ignore"):
                    sums = _block_sums(_side_by_side(chunks, rows[k % 2]), work)
            if sums is not None:
                for position, i in enumerate(run):
                    squares, total, dot, diff_sq, dot_first = sums[:, position].tolist()
                    moments[i].merge(_float_moments(chunks[position], squares, total))
                    if position:
                        previous_squares = float(sums[0, position - 1])
                        previous[i].add_sums(
                            dot, squares, previous_squares, diff_sq, chunks[0].size
                        )
                    if position > 1:
                        first[i].add_sums(
                            dot_first, squares, float(sums[0, 0]), 0.0, chunks[0].size
                        )
                continue
            buffers = buffers or [np.empty(chunk, np.float64) for _ in range(len(run) + 1)]
            floats = [_as_float(c, out) for c, out in zip(chunks, buffers)]
            with np.errstate(all="ignore"):
                squares = [_dot(f, f) for f in floats]
                for position, i in enumerate(run):
                    x, xx = floats[position], squares[position]
                    moments[i].merge(chunk_moments_with_squares(x, chunks[position], xx))
                    if position:
                        y, yy = floats[position - 1], squares[position - 1]
                        previous[i].add(x, y, xx, yy, buffers[-1])
                    if position > 1:
                        first[i].add(x, floats[0], xx, squares[0], None)
        for position, i in enumerate(run):
            m = moments[i]
            _, std, l2 = m.figures()
            figures = {
                "l2": l2,
                "std": std,
                "max_abs": max(abs(m.lo), abs(m.hi)) if m.finite else None,
                "nan": m.nan,
                "inf": m.posinf + m.neginf,
                "update": previous[i].update() if position else None,
                "cos_prev": previous[i].cosine() if position else None,
                "cos_first": (
                    first[i].cosine() if position > 1 else previous[i].cosine() if position else 1.0
                ),
            }
            if position == 0 and not m.squares:
                figures["cos_first"] = None
            for name in metrics:
                if name in figures:
                    values[name][i] = figures[name]
    if "exp_avg_sq" in metrics and variances and not sample:
        values["exp_avg_sq"] = _exp_avg_sq_means(variances, stop, direct)
    if "alpha" in metrics and not sample:
        from ckpt_viewer.core.analysis.layers import spectral_metrics

        for i, tensor in enumerate(tensors):
            if tensor is not None and len(tensor.shape) == 2 and numpy_readable(tensor):
                values["alpha"][i] = spectral_metrics(tensor, stop).get("alpha")
    result.values = values
    return result


def _variance_by_source(checkpoint: Checkpoint) -> dict:
    """{parameter tensor key: its exp_avg_sq TensorInfo} where the optimizer names its
    parameters provably (optim.py)."""
    named = {}
    for optimizer in checkpoint.optimizers:
        if not optimizer.names_source:
            continue
        for name, state in optimizer.state.items():
            variance = next(
                (c for c in state.children if c.name == "exp_avg_sq" and c.kind == "tensor"),
                None,
            )
            if isinstance(name, str) and variance is not None:
                named[name] = variance.tensor
    if not named:
        return {}
    tails = by_tail([key for key, _, _ in checkpoint.tensors()], named)
    return {tails[name]: tensor for name, tensor in named.items() if name in tails}


@dataclass
class Task:
    """One key's work: what scan_key needs (a cluster worker gets the paths too)."""

    key: str
    tensors: list
    variances: list | None
    nbytes: int
    sources: list  # per step: the key in that file, or None


def plan_tasks(run: Run, keys: Iterable[str] = (), metrics=()) -> list[Task]:
    order: dict[str, None] = {}
    for keymap in run.keymaps:
        for key in keymap:
            order.setdefault(key, None)
    globs = list(keys)
    names = [k for k in order if not globs or any(fnmatch.fnmatchcase(k, g) for g in globs)]
    variances = (
        [_variance_by_source(c) for c in run.checkpoints] if "exp_avg_sq" in metrics else None
    )
    tasks = []
    for key in names:
        found = [keymap.get(key) for keymap in run.keymaps]
        tensors = [f[1] if f else None for f in found]
        sources = [f[0] if f else None for f in found]
        var = [v.get(s) for v, s in zip(variances, sources)] if variances is not None else None
        var = var if var and any(var) else None
        # what the scan reads: the key's tensor in every step, and Adam's exp_avg_sq beside it
        nbytes = sum(t.nbytes for t in tensors + (var or []) if t is not None)
        tasks.append(Task(key, tensors, var, nbytes, sources))
    return tasks


@functools.lru_cache(maxsize=64)
def _opened(path: str):
    return open_checkpoint(path)


@functools.lru_cache(maxsize=64)
def _variances_of(path: str) -> dict:
    return _variance_by_source(_opened(path))


def scan_remote(paths: tuple, sources: tuple, key: str, metrics: tuple, variance: bool):
    """Runs on a cluster worker: the key's tensors in every step (by their key in each file),
    the checkpoints opened there (and kept open for its next tasks), then `scan_key` as in a
    local run."""
    tensors, variances = [], []
    for path, source in zip(paths, sources):
        node = _opened(path).find(source) if source is not None else None
        tensors.append(node.tensor if node is not None else None)
        if variance:
            variances.append(_variances_of(path).get(source))
    return scan_key(key, tensors, metrics, None, variances if any(variances) else None)


def _larger_than_memory(nbytes: int) -> bool:
    """A pass over this much would evict itself (and the rest of the page cache) before any
    of it is read again: it reads past the cache."""
    try:
        return nbytes > os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (OSError, ValueError):
        return False


@dataclass
class Run:
    """The run's checkpoints, opened (metadata only) and in step order."""

    steps: list
    checkpoints: list
    skipped: list
    keymaps: list  # per step: {display name: (source key, TensorInfo)}


def scan(
    run: Run,
    metrics: Iterable[str] = DEFAULT_METRICS,
    keys: Iterable[str] = (),
    workers: int | None = None,
    cluster: str | None = None,
    sample: int = 0,
) -> Generator[float, None, TimelineReport]:
    """Generator: yields progress in [0, 1]; returns the TimelineReport of an opened run."""
    metrics = tuple(metrics)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise CheckpointError(
            f"unknown metric {safe_text(unknown[0])!r} (known: {', '.join(METRICS)})"
        )
    tasks = plan_tasks(run, keys, metrics)
    report = TimelineReport(run.steps, [], list(metrics), skipped=run.skipped, sampled=sample)
    total = sum(t.nbytes for t in tasks) or 1
    direct = not sample and _larger_than_memory(total)
    done = 0
    yield 0.0
    results: Iterator[KeyTimeline]
    if cluster:
        from ckpt_viewer.core.analysis.timeline_cluster import cluster_scan

        results = cluster_scan(cluster, run.steps, tasks, metrics, scan_remote)
    else:
        measured = yield from scan_all(
            tasks,
            lambda task, stop: scan_key(
                task.key, task.tensors, metrics, stop, task.variances, sample, direct
            ),
            weight=lambda task: task.nbytes or 1,
            workers=workers or worker_count(),
            name="timeline",
        )
        results = iter(measured)
    for task, result in zip(tasks, results):
        result.sources = task.sources
        report.keys.append(result)
        done += task.nbytes
        yield min(done / total, 1.0)
    report.bytes_scanned = sum(t.nbytes for t in tasks)
    report.history = _trainer_history(run.steps[-1].path) if run.steps else []
    report.findings = findings(report)
    return report


def timeline(
    paths: Iterable[str],
    metrics: Iterable[str] = DEFAULT_METRICS,
    keys: Iterable[str] = (),
    workers: int | None = None,
    cluster: str | None = None,
) -> Generator[float, None, TimelineReport]:
    """Generator: opens the run, yields progress in [0, 1]; returns the TimelineReport."""
    return (yield from scan(open_run(paths), metrics, keys, workers, cluster))


# --- findings --------------------------------------------------------------------------------


def _step_name(report: TimelineReport, index: int) -> str:
    step = report.steps[index]
    if step.step is None:
        return safe_text(step.label)
    number = int(step.step) if float(step.step).is_integer() else step.step
    return f"step {number}"


def findings(report: TimelineReport) -> list[Finding]:
    found: list[Finding] = []
    count = len(report.steps)
    for series in report.keys:
        key = series.key
        nan = series.values.get("nan") or [None] * count
        inf = series.values.get("inf") or [None] * count
        for name, counts in (("nan", nan), ("inf", inf)):
            first = next((i for i, c in enumerate(counts) if c), None)
            if first is not None:
                label = "NaN" if name == "nan" else "Inf"
                found.append(
                    Finding(
                        key,
                        "error",
                        name,
                        f"{safe_text(key)}: first {label} at {_step_name(report, first)} "
                        f"({plural(counts[first], 'value')})",
                        step=first,
                    )
                )
        present = [i for i, s in enumerate(series.shapes) if s is not None]
        if 0 < len(present) < count:
            missing = [i for i in range(count) if series.shapes[i] is None]
            found.append(
                Finding(
                    key,
                    "warning",
                    "partial",
                    f"{safe_text(key)}: present in {len(present)} of {count} checkpoints "
                    f"(missing from {_step_name(report, missing[0])})",
                    step=missing[0],
                )
            )
        for i in range(1, count):
            a, b = series.shapes[i - 1], series.shapes[i]
            if a is not None and b is not None and a != b:
                found.append(
                    Finding(
                        key,
                        "warning",
                        "shape_change",
                        f"{safe_text(key)}: shape {a} -> {b} at {_step_name(report, i)}",
                        step=i,
                    )
                )
            da, db = series.dtypes[i - 1], series.dtypes[i]
            if da is not None and db is not None and da != db:
                found.append(
                    Finding(
                        key,
                        "warning",
                        "dtype_change",
                        f"{safe_text(key)}: dtype {da} -> {db} at {_step_name(report, i)}",
                        step=i,
                    )
                )
        updates = series.values.get("update") if _trained_like(series) else None
        if updates:
            measured = [i for i in range(1, count) if updates[i] is not None]
            if len(measured) >= 1 and all(updates[i] == 0.0 for i in measured):
                found.append(
                    Finding(
                        key,
                        "warning",
                        "frozen",
                        f"{safe_text(key)}: frozen (identical in all {len(measured) + 1} checkpoints)",
                        step=measured[0],
                    )
                )
            elif len(measured) >= 2 and updates[measured[-1]] == 0.0:
                start = measured[-1]
                while start - 1 in measured and updates[start - 1] == 0.0:
                    start -= 1
                found.append(
                    Finding(
                        key,
                        "info",
                        "stopped",
                        f"{safe_text(key)}: unchanged from {_step_name(report, start - 1)} on",
                        step=start,
                    )
                )
    found += _outsized(report)
    found += _rate_changes(report)
    found += _loss_findings(report)
    order = {"error": 0, "warning": 1, "info": 2}
    found.sort(key=lambda f: (f.step if f.step is not None else -1, order[f.severity]))
    return found


def _trained_like(series: KeyTimeline) -> bool:
    """Not an integer/bool tensor nor a known running statistic: what an optimizer moves."""
    counting = any(d is not None and d.startswith(("int", "uint", "bool")) for d in series.dtypes)
    return not counting and series.key.rsplit(".", 1)[-1] not in RUNNING_STATISTICS


def _outsized(report: TimelineReport) -> list[Finding]:
    found = []
    trained = [s for s in report.keys if "update" in s.values and _trained_like(s)]
    for i in range(1, len(report.steps)):
        updates = {
            s.key: s.values["update"][i] for s in trained if s.values["update"][i] is not None
        }
        positive = [u for u in updates.values() if u > 0 and math.isfinite(u)]
        if len(positive) < 3:
            continue
        median = statistics.median(positive)
        for key, update in updates.items():
            if median > 0 and update > OUTSIZED * median:
                found.append(
                    Finding(
                        key,
                        "warning",
                        "outsized_update",
                        f"{safe_text(key)}: update {update:.3g} at {_step_name(report, i)}, "
                        f"{update / median:.0f}x the median ({median:.3g})",
                        step=i,
                    )
                )
    return found


def _rate_changes(report: TimelineReport) -> list[Finding]:
    found = []
    for i in range(1, len(report.steps)):
        before, after = report.steps[i - 1].lr, report.steps[i].lr
        for group, (a, b) in enumerate(zip(before, after)):
            if a > 0 and b > 0 and (b <= a / 2 or b >= a * 2):
                kind = "lr_drop" if b < a else "lr_rise"
                found.append(
                    Finding(
                        "",
                        "info",
                        kind,
                        f"learning rate of group {group}: {a:.3g} -> {b:.3g} "
                        f"at {_step_name(report, i)} ({b / a:.3g}x)",
                        step=i,
                    )
                )
    return found


def _loss_findings(report: TimelineReport) -> list[Finding]:
    found = _history_findings(report)
    for i, step in enumerate(report.steps):
        for key, value in step.scalars.items():
            if isinstance(value, float) and not math.isfinite(value):
                found.append(
                    Finding(
                        "",
                        "error",
                        "loss_not_finite",
                        f"{safe_text(key)} is {value} at {_step_name(report, i)}",
                        step=i,
                    )
                )
    return found


def _history_findings(report: TimelineReport) -> list[Finding]:
    """The first non-finite value of each logged series (loss, grad_norm...) in log_history,
    placed at the first checkpoint saved at or after it."""
    found: list[Finding] = []
    seen: set = set()
    for entry in report.history:
        for name, value in entry.items():
            if name in seen or math.isfinite(value):
                continue
            seen.add(name)
            index = next(
                (
                    i
                    for i, s in enumerate(report.steps)
                    if s.step is not None and s.step >= entry["step"]
                ),
                None,
            )
            found.append(
                Finding(
                    "",
                    "error",
                    "loss_not_finite",
                    f"log_history {safe_text(name)}: first {value} at step {entry['step']:g}",
                    step=index,
                )
            )
    return found


# --- text ------------------------------------------------------------------------------------


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.3g}"


def text_lines(report: TimelineReport, metric: str) -> list[str]:
    lines = [
        f"{len(report.steps)} checkpoints, {len(report.keys)} keys, ordered by "
        + ", ".join(sorted({s.order_source for s in report.steps}))
    ]
    for index, step in enumerate(report.steps):
        extras = []
        if step.lr:
            extras.append("lr " + ", ".join(f"{lr:.3g}" for lr in step.lr))
        extras += [f"{safe_text(k)} {_cell(v)}" for k, v in step.scalars.items()]
        where = f"  root {safe_text(step.side.root)}" if step.side.root else ""
        lines.append(
            f"  [{index}] {_step_name(report, index)}  {safe_text(step.label)}{where}"
            + (f"  ({'; '.join(extras)})" if extras else "")
        )
    for path, why in report.skipped:
        lines.append(f"  skipped {safe_text(path)}: {why}")
    lines.append("")
    lines.append(f"{metric} per key and checkpoint:")
    header = ["key"] + [f"[{i}]" for i in range(len(report.steps))]
    rows = [header] + [
        [safe_text(k.key)] + [_cell(v) for v in k.values.get(metric, [])] for k in report.keys
    ]
    widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
    for row in rows:
        lines.append(
            "  "
            + "  ".join(
                cell.ljust(widths[c]) if c == 0 else cell.rjust(widths[c])
                for c, cell in enumerate(row)
            )
        )
    lines.append("")
    if report.findings:
        lines.append(plural(len(report.findings), "finding") + ":")
        for f in report.findings:
            lines.append(f"  {f.severity:<7} {f.kind:<16} {f.message}")
    else:
        lines.append("no findings")
    return lines
