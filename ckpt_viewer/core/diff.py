"""Compare two checkpoints: keys only in one, shape and dtype mismatches, and for common tensors
max |a-b|, mean |a-b|, relative L2 difference and cosine similarity, computed chunk by chunk
(bounded memory). Keys are mapped with export's root / strip / add-prefix rules, so a
DataParallel checkpoint compares with a plain one; the report also reads as what
`load_state_dict(strict=True)` would say when B is loaded into A's layout."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from ckpt_viewer.core.export import ExportPlan, plan_items
from ckpt_viewer.core.model import Checkpoint
from ckpt_viewer.core.values import iter_chunks

CHUNK = 1 << 20


@dataclass
class Side:
    root: str = ""
    strip_prefix: str = ""
    add_prefix: str = ""


@dataclass
class TensorDiff:
    key: str
    key_a: str
    key_b: str
    status: str                     # identical | changed | shape | dtype+changed | dtype+identical
    shape_a: list
    shape_b: list
    dtype_a: str
    dtype_b: str
    max_abs: float | None = None
    mean_abs: float | None = None
    rel_l2: float | None = None
    cosine: float | None = None


@dataclass
class DiffReport:
    path_a: str
    path_b: str
    only_a: list = field(default_factory=list)
    only_b: list = field(default_factory=list)
    tensors: list = field(default_factory=list)    # TensorDiff for every common key

    @property
    def identical(self) -> bool:
        return not self.only_a and not self.only_b and all(
            t.status == "identical" for t in self.tensors)

    def count(self, status: str) -> int:
        return sum(1 for t in self.tensors if t.status == status)

    def load_state_dict_view(self) -> dict:
        """B loaded into A's layout with strict=True."""
        return {"missing_keys": list(self.only_a), "unexpected_keys": list(self.only_b),
                "size_mismatch": [t.key for t in self.tensors if t.status == "shape"]}

    def to_json(self) -> dict:
        def clean(value):
            return None if isinstance(value, float) and not math.isfinite(value) else value
        return {"a": self.path_a, "b": self.path_b, "identical": self.identical,
                "only_a": self.only_a, "only_b": self.only_b,
                "shape_mismatch": [t.key for t in self.tensors if t.status == "shape"],
                "dtype_mismatch": [t.key for t in self.tensors if t.status.startswith("dtype")],
                "identical_tensors": sum(1 for t in self.tensors if t.status.endswith("identical")),
                "changed_tensors": sum(1 for t in self.tensors if t.status.endswith("changed")),
                "load_state_dict": self.load_state_dict_view(),
                "tensors": [{k: clean(v) for k, v in asdict(t).items()} for t in self.tensors]}


def mapped(checkpoint: Checkpoint, side: Side) -> dict:
    """{compared key: (source key, TensorInfo)} under export's key rules."""
    items = plan_items(checkpoint, ExportPlan(root=side.root, strip_prefix=side.strip_prefix,
                                              add_prefix=side.add_prefix))
    return {i.key: (i.source_key, i.tensor) for i in items}


def _same_bits(a, b):
    """Generator: yields element counts; returns True when every chunk is bit-identical (one
    cheap pass: most tensors of a fine-tuning run are frozen, so most comparisons end here)."""
    if a.dtype != b.dtype:
        return False
    for chunk_a, chunk_b in zip(iter_chunks(a, CHUNK), iter_chunks(b, CHUNK)):
        if not np.array_equal(chunk_a.view(np.uint8), chunk_b.view(np.uint8)):
            return False
        yield chunk_a.size
    return True


def _comparable(chunk: np.ndarray) -> np.ndarray:
    """float32 stays float32 (half the memory traffic of float64); others are widened."""
    if np.iscomplexobj(chunk):
        chunk = np.abs(chunk)
    return chunk if chunk.dtype in (np.float32, np.float64) else chunk.astype(np.float64)


def _compare_values(a, b, result: TensorDiff):
    """Bit-identical tensors are settled in one pass; otherwise chunks of a and b in the same
    (logical) order with float64 accumulators."""
    if (yield from _same_bits(a, b)):
        result.max_abs = result.mean_abs = result.rel_l2 = 0.0
        result.cosine = 1.0
        return
    max_abs = total_abs = diff_sq = a_sq = b_sq = dot = 0.0
    equal, count = True, 0
    for chunk_a, chunk_b in zip(iter_chunks(a, CHUNK), iter_chunks(b, CHUNK)):
        if equal and not np.array_equal(chunk_a, chunk_b, equal_nan=chunk_a.dtype.kind in "fc"):
            equal = False
        x, y = _comparable(chunk_a), _comparable(chunk_b)
        if not (math.isfinite(float(np.sum(x, dtype=np.float64)))
                and math.isfinite(float(np.sum(y, dtype=np.float64)))):
            finite = np.isfinite(x) & np.isfinite(y)      # only then, element by element
            x, y = x[finite], y[finite]
        d = x - y
        if d.size:
            absolute = np.abs(d)
            max_abs = max(max_abs, float(absolute.max()))
            total_abs += float(np.sum(absolute, dtype=np.float64))
        # per-chunk dot products (float32 when the data is); summed across chunks in float64
        diff_sq += float(np.dot(d, d))
        a_sq += float(np.dot(x, x))
        b_sq += float(np.dot(y, y))
        dot += float(np.dot(x, y))
        count += d.size
        yield chunk_a.size
    result.max_abs = max_abs
    result.mean_abs = total_abs / count if count else 0.0
    result.rel_l2 = math.sqrt(diff_sq) / math.sqrt(a_sq) if a_sq else (0.0 if not diff_sq else math.inf)
    result.cosine = dot / math.sqrt(a_sq * b_sq) if a_sq and b_sq else (1.0 if a_sq == b_sq else 0.0)
    same_dtype = not result.status.startswith("dtype")
    status = "identical" if equal else "changed"
    result.status = status if same_dtype else f"dtype+{status}"


def diff(a: Checkpoint, b: Checkpoint, side_a: Side = Side(), side_b: Side = Side()):
    """Generator: yields progress in [0, 1]; returns DiffReport."""
    keys_a, keys_b = mapped(a, side_a), mapped(b, side_b)
    report = DiffReport(a.path, b.path, only_a=[k for k in keys_a if k not in keys_b],
                        only_b=[k for k in keys_b if k not in keys_a])
    common = [k for k in keys_a if k in keys_b]
    pairs = []
    for key in common:
        (source_a, ta), (source_b, tb) = keys_a[key], keys_b[key]
        status = "shape" if tuple(ta.shape) != tuple(tb.shape) else \
            ("dtype" if ta.dtype != tb.dtype else "same")
        result = TensorDiff(key, source_a, source_b, status, list(ta.shape), list(tb.shape),
                            ta.dtype, tb.dtype)
        report.tensors.append(result)
        if status != "shape":
            pairs.append((ta, tb, result))
    total = sum(ta.numel for ta, _, _ in pairs) or 1
    done = 0
    for ta, tb, result in pairs:
        if result.status == "same":
            result.status = "identical"       # replaced by the comparison below
        for elements in _compare_values(ta, tb, result):
            done += elements
            yield min(done / total, 1.0)
    return report
