"""Health check: one pass over every tensor's bytes, findings with a severity and a key.

The pass is split into segments of at most SEGMENT elements, run by a small thread pool (numpy's
reductions release the GIL, so both cores work) over read-only mappings of the file: memory stays
bounded by the segments in flight. Each chunk costs two reductions that stay in cache: min and
max (per output row for weights, which also finds dead rows). Only a chunk whose min/max is not
finite is looked at element by element. Tensors of one dtype and shape whose extremes agree are
the only duplicate candidates: they are hashed (BLAKE2 of their bytes, in order: a permutation
of a tensor shares its extremes, word sum and xor) and equal hashes confirmed byte for byte,
once per tensor.

`check()` is a generator (progress in [0, 1], returns HealthReport): a GUI worker that stops
resuming it stops the scan after the segments already running.
"""

from __future__ import annotations

import hashlib
import math
import mmap
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ckpt_viewer.core import CheckpointError, describe_error
from ckpt_viewer.core.analysis.scan import scan
from ckpt_viewer.core.listing.model import FLOAT_DTYPES, Checkpoint, FileSpan, TensorInfo, ZipMember
from ckpt_viewer.core.listing.stats_cache import HealthFacts
from ckpt_viewer.core.listing.text import listing_order, plural, safe_text
from ckpt_viewer.core.progress import within
from ckpt_viewer.core.values.compare import as_words, same_bits
from ckpt_viewer.core.values.decode import (
    apply_view_bits,
    numpy_readable,
    tensor_np_dtype,
    widen,
)
from ckpt_viewer.core.values.read import iter_chunks
from ckpt_viewer.core.values.storage import StorageReader

CHUNK = 1 << 20  # elements per reduction (stays in cache)
SEGMENT = 16 * CHUNK  # elements per task handed to a thread
FP16_MAX = 65504.0
BF16_SMALLEST_NORMAL = 2.0**-126
MAX_TRACKED_ROWS = 1 << 24  # dead-row bookkeeping costs one byte per row
MIN_DUPLICATE_BYTES = 64  # smaller equal tensors are equal by chance, not by copying
SEVERITIES = ("error", "warning", "info")
UNSCANNED_DTYPES = {
    "float4_e2m1fn_x2",
    "quint4x2",
    "quint2x4",
    "bits8",
    "bits16",
    "bits1x8",
    "bits2x4",
    "bits4x2",
    "complex32",
}  # packed or opaque: no numbers to check
VARIANCE_NAMES = ("running_var", "exp_avg_sq", "max_exp_avg_sq")


@dataclass
class Finding:
    key: str
    severity: str  # error | warning | info
    kind: str
    message: str

    def to_json(self) -> dict:
        return {
            "key": self.key,
            "severity": self.severity,
            "kind": self.kind,
            "message": self.message,
        }


@dataclass
class HealthReport:
    path: str
    findings: list = field(default_factory=list)
    tensors_scanned: int = 0
    bytes_scanned: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    def count(self, severity: str) -> int:
        return sum(1 for f in self.findings if f.severity == severity)

    def to_json(self) -> dict:
        return {
            "path": self.path,
            "findings": [f.to_json() for f in self.findings],
            "tensors_scanned": self.tensors_scanned,
            "bytes_scanned": self.bytes_scanned,
            "seconds": round(self.seconds, 3),
        }


# --- one tensor, scanned in segments ------------------------------------------------------


@dataclass(eq=False)
class _Job:
    """One distinct tensor view (tensors sharing it are listed in `keys`) and what was found."""

    keys: list
    tensor: TensorInfo
    order: int = 0  # position in the tree (duplicates name the first)
    reader: StorageReader | None = None
    row_len: int = 0  # > 0: track which output rows hold a non-zero
    lo: float = math.inf  # over finite values
    hi: float = -math.inf
    nan: int = 0
    posinf: int = 0
    neginf: int = 0
    subnormal: int = 0
    kind: str = ""  # numpy kind of the values scanned ("f", "i", "u")
    rows_nonzero: np.ndarray | None = None
    error: str = ""
    scanned: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def key(self) -> str:
        return self.keys[0]

    @property
    def finite_seen(self) -> bool:
        return self.lo <= self.hi


@dataclass
class _Part:
    """What one segment found; merged into its job on the generator's thread."""

    lo: float = math.inf
    hi: float = -math.inf
    nan: int = 0
    posinf: int = 0
    neginf: int = 0
    subnormal: int = 0
    kind: str = ""
    first_row: int = 0
    rows_nonzero: list = field(default_factory=list)


def _as_real(values: np.ndarray) -> np.ndarray:
    if values.dtype == np.bool_:
        return values.view(np.uint8)
    if np.iscomplexobj(values):
        return values.view(values.real.dtype)  # real and imaginary parts interleaved
    return values


def _add_chunk(
    part: _Part, raw: np.ndarray, values: np.ndarray, dtype: str, first_element: int, row_len: int
):
    values = _as_real(values)
    if values.size == 0:
        return
    part.kind = values.dtype.kind
    if row_len:
        offset = (-first_element) % row_len  # where the first whole row starts
        starts = np.arange(offset, values.size, row_len)
        if offset:
            starts = np.concatenate(([0], starts))
        row_lo, row_hi = np.minimum.reduceat(values, starts), np.maximum.reduceat(values, starts)
        part.rows_nonzero.append((first_element // row_len, (row_lo != 0) | (row_hi != 0)))
        lo, hi = np.minimum.reduce(row_lo), np.maximum.reduce(row_hi)
    else:
        lo, hi = np.minimum.reduce(values), np.maximum.reduce(values)
    if values.dtype.kind == "f" and not (math.isfinite(lo) and math.isfinite(hi)):
        part.nan += int(np.count_nonzero(np.isnan(values)))
        part.posinf += int(np.count_nonzero(values == np.inf))
        part.neginf += int(np.count_nonzero(values == -np.inf))
        values = values[np.isfinite(values)]
        if values.size == 0:
            return
        lo, hi = values.min(), values.max()
    part.lo, part.hi = min(part.lo, float(lo)), max(part.hi, float(hi))
    if dtype == "bfloat16":
        exponent_zero = (raw & 0x7F80) == 0
        part.subnormal += int(np.count_nonzero(exponent_zero & ((raw & 0x7F) != 0)))


def _scan_segment(job: _Job, start: int, count: int, stop: threading.Event) -> _Part:
    """Elements [start, start+count) of a contiguous numpy-readable tensor, from one mapping
    of the whole segment (opening and mapping the file for each chunk cost more than a
    fifth of the scan); each chunk's pages are let go once scanned."""
    part = _Part()
    tensor, reader = job.tensor, job.reader
    assert reader is not None  # made by _run before the first segment
    segment = reader.mapped(tensor.offset + start, count, tensor_np_dtype(tensor))
    let_go = _letting_go(segment)
    with np.errstate(all="ignore"):
        for first in range(0, count, CHUNK):
            if stop.is_set():
                break
            raw = segment[first : first + CHUNK]
            values = widen(apply_view_bits(raw, tensor), tensor.dtype, tensor.quantizer)
            _add_chunk(part, raw, values, tensor.dtype, start + first, job.row_len)
            let_go(first + raw.size)
    return part


def _letting_go(values: np.ndarray) -> Callable[[int], None]:
    """For an array over mapped pages, a function that tells the OS the pages of its first n
    elements are no longer needed: they leave this process (its memory stays a chunk per
    worker), not the page cache. For any other array, one that does nothing."""
    pages = values.base.obj if isinstance(values.base, memoryview) else values.base
    if not isinstance(pages, mmap.mmap) or not hasattr(mmap, "MADV_DONTNEED"):
        return lambda n: None
    skip = values.ctypes.data - np.frombuffer(pages, np.uint8, count=1).ctypes.data
    done = 0

    def let_go(n: int) -> None:
        nonlocal done
        end = (skip + n * values.itemsize) // mmap.PAGESIZE * mmap.PAGESIZE
        if end > done:
            pages.madvise(mmap.MADV_DONTNEED, done, end - done)
            done = end

    return let_go


def _scan_whole(job: _Job, stop: threading.Event) -> _Part:
    """Anything else (strided views, quantized per channel, sparse, DCP): through iter_chunks,
    which materialises such tensors once."""
    part = _Part()
    position = 0
    with np.errstate(all="ignore"):
        for values in iter_chunks(job.tensor, CHUNK):
            if stop.is_set():
                break
            _add_chunk(part, values, values, "", position, job.row_len)
            position += values.size
    return part


def _merge(job: _Job, part: _Part):
    job.scanned = True
    job.lo, job.hi = min(job.lo, part.lo), max(job.hi, part.hi)
    job.nan += part.nan
    job.posinf += part.posinf
    job.neginf += part.neginf
    job.subnormal += part.subnormal
    job.kind = job.kind or part.kind
    for first_row, nonzero in part.rows_nonzero:
        assert job.rows_nonzero is not None  # a part tracks rows only for a job that does
        rows = job.rows_nonzero[first_row : first_row + nonzero.size]
        np.logical_or(rows, nonzero[: rows.size], out=rows)


def _location(tensor: TensorInfo):
    """Where the tensor's bytes lie, to read the file front to back."""
    source = tensor.storage.source if tensor.storage is not None else None
    if isinstance(source, ZipMember):
        return source.path, source.header_offset, tensor.offset
    if isinstance(source, FileSpan):
        return source.path, source.offset, tensor.offset
    return "", 0, 0


def _is_weight(key: str) -> bool:
    return key.rsplit(".", 1)[-1].endswith("weight")


def _jobs(checkpoint: Checkpoint) -> list[_Job]:
    """One job per distinct view; a tied tensor saved once is scanned once."""
    by_view: dict = {}
    for order, (key, tensor, _node) in enumerate(checkpoint.tensors()):
        if tensor.layout == "dtensor":  # a per-rank file: the shard it holds is checked
            tensor = tensor.parts["local"]
        view: tuple[Any, ...]
        if tensor.storage is not None:
            view = (
                id(tensor.storage),
                tensor.offset,
                tuple(tensor.shape),
                tuple(tensor.stride),
                tensor.dtype,
            )
        else:
            view = ("own", id(tensor))
        if view in by_view:
            by_view[view].keys.append(key)
        else:
            by_view[view] = _Job([key], tensor, order)
    jobs = list(by_view.values())
    for job in jobs:
        tensor = job.tensor
        if (
            tensor.dtype in FLOAT_DTYPES
            and len(tensor.shape) >= 2
            and tensor.shape[0] > 1
            and tensor.numel
            and tensor.shape[0] <= MAX_TRACKED_ROWS
            and not tensor.parts
            and any(_is_weight(k) for k in job.keys)
        ):
            job.row_len = tensor.numel // tensor.shape[0]
            job.rows_nonzero = np.zeros(tensor.shape[0], dtype=bool)
    jobs.sort(key=lambda j: _location(j.tensor))
    return jobs


def _tasks(jobs: list[_Job]):
    """(job, start, count) in file order; count None: the whole tensor at once."""
    for job in jobs:
        tensor = job.tensor
        if (
            tensor.numel == 0
            or tensor.dtype in UNSCANNED_DTYPES
            or (tensor.storage is None and not tensor.parts and not tensor.chunks)
        ):
            continue
        if numpy_readable(tensor) and tensor.is_contiguous:
            for start in range(0, tensor.numel, SEGMENT):
                yield job, start, min(SEGMENT, tensor.numel - start)
        else:
            yield job, 0, None


def _run(task: tuple[_Job, int, int | None], stop: threading.Event) -> _Part | str:
    job, start, count = task
    try:
        if count is None:
            return _scan_whole(job, stop)
        with job.lock:  # a zip record's header is read once, not by every segment
            if job.reader is None:
                assert job.tensor.storage is not None  # segments are of stored tensors (_tasks)
                job.reader = StorageReader(job.tensor.storage)
        return _scan_segment(job, start, count, stop)
    except Exception as exc:  # noqa: BLE001 - a bad record is a finding, not the end
        return describe_error(exc)


def _task_bytes(task: tuple) -> float:
    job, _, count = task
    tensor = job.tensor
    return tensor.nbytes if count is None else count * tensor.nbytes / max(tensor.numel, 1)


def _scan(jobs: list[_Job], stop: threading.Event) -> Generator[float, None, None]:
    """Generator: every task on the pool, yielding progress in [0, 1]; what each segment found
    is merged into its job."""
    tasks = list(_tasks(jobs))
    parts = yield from scan(tasks, _run, _task_bytes, stop=stop, name="check")
    for (job, _, _), part in zip(tasks, parts):
        if isinstance(part, str):
            job.error = job.error or part
        else:
            _merge(job, part)


def _remember_facts(checkpoint: Checkpoint, jobs: list[_Job]):
    """Each fully scanned tensor's extremes and counts, for the tensor view's statistics."""
    cache = checkpoint.stats_cache
    for job in jobs:
        if (
            job.scanned
            and job.kind
            and not job.error
            and not job.tensor.dtype.startswith("complex")
        ):  # the views show |z|
            cache.put_facts(
                job.tensor,
                HealthFacts(job.lo, job.hi, job.nan, job.posinf, job.neginf, job.kind in "iub"),
            )


# --- findings -------------------------------------------------------------------------------


def _fmt(value: float) -> str:
    return f"{value:.6g}"


def _tensor_findings(job: _Job) -> list[Finding]:
    tensor, out = job.tensor, []

    def add(severity, kind, message):
        out.extend(Finding(key, severity, kind, message) for key in job.keys)

    if job.error:
        add("error", "unreadable", job.error)
        return out
    numel = tensor.numel
    if job.nan:
        add("error", "nan", f"{plural(job.nan, 'NaN value')} of {numel:,}")
    if job.posinf or job.neginf:
        add("error", "inf", f"{job.posinf:,} +inf and {job.neginf:,} -inf values of {numel:,}")
    floating = tensor.dtype in FLOAT_DTYPES
    if not floating or not job.finite_seen:
        return out
    clean = not (job.nan or job.posinf or job.neginf)
    if clean and numel > 1 and job.lo == job.hi == 0:
        add(
            "warning" if len(tensor.shape) >= 2 else "info",
            "all_zero",
            f"all {numel:,} values are zero",
        )
    elif clean and numel > 1 and job.lo == job.hi:
        add(
            "warning" if len(tensor.shape) >= 2 else "info",
            "constant",
            f"all {numel:,} values equal {_fmt(job.lo)}",
        )
    elif job.rows_nonzero is not None:
        dead = np.flatnonzero(~job.rows_nonzero)
        if dead.size:
            add(
                "warning",
                "dead_rows",
                f"{dead.size:,} of {tensor.shape[0]:,} output rows are all zero "
                f"(first: row {int(dead[0])})",
            )
    if tensor.dtype in ("float32", "float64", "bfloat16"):
        largest = max(abs(job.lo), abs(job.hi))
        if largest > FP16_MAX:
            add(
                "warning",
                "fp16_overflow",
                f"|x| reaches {_fmt(largest)}, beyond float16's 65504: a cast to float16 "
                "turns it into inf",
            )
    last = job.key.rsplit(".", 1)[-1]
    if any(last == name or last.endswith("." + name) for name in VARIANCE_NAMES) and job.lo < 0:
        add(
            "error",
            "negative_variance",
            f"{last} should never be negative, but its minimum is {_fmt(job.lo)}",
        )
    if job.subnormal:
        add(
            "info",
            "bf16_subnormal",
            f"{job.subnormal:,} subnormal bfloat16 values (below {BF16_SMALLEST_NORMAL:.3g}): "
            "hardware without denormals flushes them to zero",
        )
    return out


def _fingerprint(tensor: TensorInfo) -> bytes:
    """A hash of the tensor's bytes in order (equal content, equal print; a permutation of
    the values, unlike under a sum or xor, another print)."""
    digest = hashlib.blake2b(digest_size=16)
    for chunk in iter_chunks(tensor, CHUNK):
        digest.update(np.ascontiguousarray(as_words(chunk)).data)  # lets go of the GIL
    return digest.digest()


def _duplicates(jobs: list[_Job], stop: threading.Event):
    """Generator: findings for equal content under keys that do not share storage.

    The scan's min, max and non-finite counts sort tensors into candidate groups (two
    different trained tensors almost never share both extremes); only candidates are hashed,
    and equal hashes are confirmed byte for byte: each tensor is compared with the few
    distinct contents its hash bucket holds (one, barring a collision), so the work is one
    read to hash plus one to confirm per tensor, never one per pair."""
    groups = defaultdict(list)
    for job in jobs:
        tensor = job.tensor
        if (
            job.error
            or not job.scanned
            or tensor.nbytes < MIN_DUPLICATE_BYTES
            or not job.finite_seen
            or job.lo == job.hi
            or tensor.parts
            or tensor.chunks
        ):
            continue  # constant tensors (zero biases, unit norms) are equal by design
        groups[
            (tensor.dtype, tuple(tensor.shape), job.lo, job.hi, job.nan, job.posinf, job.neginf)
        ].append(job)
    findings: list[Finding] = []
    for group in groups.values():
        storages = {id(job.tensor.storage) for job in group}
        if len(group) < 2 or len(storages) < 2:
            continue
        by_print = defaultdict(list)
        for job in sorted(group, key=lambda j: j.order):
            if stop.is_set():
                return findings
            yield
            by_print[_fingerprint(job.tensor)].append(job)
        for same_print in by_print.values():
            originals: list[_Job] = []
            for job in same_print:
                yield
                for original in originals:
                    if original.tensor.storage is job.tensor.storage:
                        break
                    same, _ = yield from same_bits(original.tensor, job.tensor, CHUNK)
                    if same:
                        findings.extend(
                            Finding(
                                key,
                                "warning",
                                "duplicate",
                                f"same values as {original.key} (a copy, not shared storage)",
                            )
                            for key in job.keys
                        )
                        break
                else:
                    originals.append(job)
    return findings


def _plain_number(node):
    """A 0-d tensor's or a scalar node's value (optimizer step counts)."""
    from ckpt_viewer.core.values.read import read_array

    if node.kind == "scalar" and isinstance(node.value, (int, float)):
        return float(node.value)
    if node.kind == "tensor" and node.tensor.numel == 1:
        try:
            return float(read_array(node.tensor).reshape(-1)[0])
        except (CheckpointError, ValueError, TypeError):
            return None
    return None


def _optimizer_findings(checkpoint: Checkpoint) -> list[Finding]:
    """State shapes against their parameters, missing state, step counts; only where the
    optimizer's parameter names are known."""
    out = []
    optimizer_keys = [o.key for o in checkpoint.optimizers]
    params: dict[str, TensorInfo] = {}
    for key, tensor, _node in checkpoint.tensors():
        if any(key.startswith(o + ".") for o in optimizer_keys if o) or (
            optimizer_keys and "" in optimizer_keys
        ):
            continue
        params.setdefault(key, tensor)
    tails = by_tail(
        params,
        [
            p
            for o in checkpoint.optimizers
            if o.names_source
            for g in o.param_groups
            for p in g.get("params", [])
        ],
    )
    for optimizer in checkpoint.optimizers:
        if not optimizer.names_source:
            continue
        names = [
            p for g in optimizer.param_groups for p in g.get("params", []) if isinstance(p, str)
        ]
        with_state = [n for n in names if n in optimizer.state and optimizer.state[n].children]
        steps = {}
        for name in names:
            param: TensorInfo | None
            if name in params:
                param_key, param = name, params[name]
            else:
                param_key = tails.get(name, "")
                param = params[param_key] if param_key else None
            state = optimizer.state.get(name)
            if state is None or not state.children:
                if with_state and param_key:
                    out.append(
                        Finding(
                            param_key,
                            "warning",
                            "optimizer_mismatch",
                            f"no optimizer state for {name} (in {optimizer.key or 'the file'}), "
                            f"while {len(with_state):,} other parameters have some",
                        )
                    )
                continue
            for child in state.children:
                if child.name == "step":
                    value = _plain_number(child)
                    if value is not None:
                        steps[child.key] = value
                if param is None or child.kind != "tensor" or not child.tensor.shape:
                    continue
                if tuple(child.tensor.shape) != tuple(param.shape):
                    out.append(
                        Finding(
                            child.key,
                            "error",
                            "optimizer_mismatch",
                            f"{child.name} has shape {list(child.tensor.shape)} but "
                            f"parameter {param_key} has {list(param.shape)}",
                        )
                    )
        if len(set(steps.values())) > 1:
            common = max(set(steps.values()), key=list(steps.values()).count)
            for key, value in steps.items():
                if value != common:
                    out.append(
                        Finding(
                            key,
                            "warning",
                            "step_mismatch",
                            f"step {_fmt(value)} while most parameters are at step {_fmt(common)}",
                        )
                    )
    return out


def by_tail(keys, names) -> dict:
    """Each dotted tail of each key that is as long (in segments) as one of `names` -> the
    shortest key ending so: an optimizer's parameter name (a state_dict nested under
    `model_state_dict`...) is found in one lookup. Only those lengths are built: every tail of
    a 100,000-segment key would be quadratic in its length, and a scan of every key per name
    quadratic in the tensor count."""
    depths = {name.count(".") + 1 for name in names if isinstance(name, str)}
    tails: dict = {}
    for key in sorted(keys, key=len):
        parts = key.rsplit(".", max(depths, default=1))
        for depth in depths:
            if depth <= len(parts):
                tails.setdefault(".".join(parts[-depth:]), key)
    return tails


def check(checkpoint: Checkpoint):
    """Generator: yields progress in [0, 1]; returns HealthReport."""
    started = time.perf_counter()
    stop = threading.Event()
    try:
        jobs = _jobs(checkpoint)
        yield from within(_scan(jobs, stop), (0.0, 0.95))
        _remember_facts(checkpoint, jobs)
        findings = []
        for job in jobs:
            findings.extend(_tensor_findings(job))
        findings.extend((yield from within(_duplicates(jobs, stop), (0.95, 0.95), steps=1)))
        findings.extend(_optimizer_findings(checkpoint))
    except BaseException:
        stop.set()
        raise
    listed = listing_order(checkpoint.tensors(), lambda t: t[0])  # h.2 before h.10
    order = {key: i for i, (key, _, _) in enumerate(listed)}
    findings.sort(key=lambda f: (SEVERITIES.index(f.severity), order.get(f.key, 0), f.kind))
    yield 1.0
    return HealthReport(
        checkpoint.path,
        findings,
        tensors_scanned=len(checkpoint.tensors()),
        bytes_scanned=sum(job.tensor.nbytes for job in jobs if job.scanned),
        seconds=time.perf_counter() - started,
    )


SEVERITY_NOUNS = {"error": "error", "warning": "warning", "info": "note"}  # JSON keeps "info"


def severity_counts(report: HealthReport) -> str:
    """'1 error, 2 warnings, 98 notes': the words of the CLI and the window alike."""
    return ", ".join(plural(report.count(s), SEVERITY_NOUNS[s]) for s in SEVERITIES)


def text_lines(report: HealthReport):
    if not report.findings:
        yield f"healthy: {safe_text(report.path)}: no findings"
    for finding in report.findings:
        yield (
            f"{SEVERITY_NOUNS[finding.severity]:<7} {finding.kind:<18} {safe_text(finding.key)}: "
            f"{safe_text(finding.message)}"
        )
    yield (
        f"{plural(report.tensors_scanned, 'tensor')}, {report.bytes_scanned:,} bytes scanned in "
        f"{report.seconds:.2f} s; {severity_counts(report)}"
    )
