"""Layer-wise metrics across depth: keys of repeated blocks (`blocks.{i}.…`, `layers.{i}.…`,
`h.{i}.…`, `encoder.layer.{i}.…`, `model.layers.{i}.…`) grouped into stacks, one line per
parameter role (the key with its index replaced, e.g. `attn.qkv.weight`).

Per tensor: L2 norm, std, max |x|, fraction of zeros and NaN count (the statistics engine's
moments, one chunked pass per tensor, tensors spread over a thread pool); with Adam state, the
mean of each parameter's `exp_avg_sq`. With `spectral=True`, weights (>= 2-D, flattened to
[rows, rest]) also get their squared singular values, the eigenvalues of the smaller side's
Gram matrix through torch (on the GPU when there is one), within a budget set by the matrix's
size (spectral_skip): stable rank ||W||_F^2 / sigma_max^2 and the power-law exponent alpha of the
eigenvalues' tail, fitted like weightwatcher (maximum likelihood, the tail's start chosen by the
smallest Kolmogorov-Smirnov distance).

`layer_metrics()` is a generator (progress in [0, 1], returns LayersReport); stopping it stops
the pass at the next chunk.
"""

from __future__ import annotations

import math
import threading
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.analysis.scan import scan
from ckpt_viewer.core.listing import remote
from ckpt_viewer.core.listing.model import FLOAT_DTYPES, Checkpoint, FileSpan, ZipMember
from ckpt_viewer.core.listing.readers.zip_directory import data_offset
from ckpt_viewer.core.listing.text import plural, safe_text
from ckpt_viewer.core.values.decode import apply_view_bits, numpy_readable, tensor_np_dtype, widen
from ckpt_viewer.core.values.read import iter_chunks
from ckpt_viewer.core.values.stats import _Moments

CHUNK = 1 << 20
METRICS = ("l2", "std", "max_abs", "zero_fraction", "nan")
SPECTRAL_METRICS = ("stable_rank", "alpha")
OPTIMIZER_METRIC = "exp_avg_sq_mean"
MAX_GRAM = 4096  # Gram matrices up to 4096^2 (128 MB of float64)
MAX_SPECTRAL_WORK = 1 << 38  # multiply-adds: rows * cols * side (Gram) + side^3 (eigvalsh)
MAX_SPECTRAL_ELEMENTS = 1 << 26  # wide matrices (W W^T) are read whole up to this
BATCH_BYTES = 4 * CHUNK  # tensors smaller than this share a pool task
BATCH_TENSORS = 4096  # and at most this many (progress, cancel)
TINY_BYTES = 1 << 16  # tensors up to this are read and measured together
SKIPPED = "spectral_skipped"  # metrics[key][SKIPPED]: why a weight has no spectrum


@dataclass
class Role:
    role: str  # the key under the block, e.g. attn.qkv.weight
    keys: dict = field(default_factory=dict)  # layer index -> full key
    state_keys: dict = field(default_factory=dict)  # layer index -> exp_avg_sq key


@dataclass
class Stack:
    prefix: str  # e.g. model_state_dict.blocks
    layers: list = field(default_factory=list)  # layer indices, ascending
    roles: list = field(default_factory=list)  # Role, in key order


@dataclass
class LayersReport:
    path: str
    stacks: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)  # key -> {metric: value}
    spectral: bool = False
    sampled: bool = False  # estimates from a sample of each tensor (a quick first look)

    def series(self, stack: Stack, role: Role, metric: str) -> list:
        """One value per layer of the stack (None where the role is missing)."""
        keys = role.state_keys if metric == OPTIMIZER_METRIC else role.keys
        values = []
        for index in stack.layers:
            key = keys.get(index)
            name = "mean" if metric == OPTIMIZER_METRIC else metric
            values.append(self.metrics.get(key, {}).get(name) if key else None)
        return values

    def available(self) -> list:
        names = list(METRICS) + (list(SPECTRAL_METRICS) if self.spectral else [])
        if any(r.state_keys for s in self.stacks for r in s.roles):
            names.append(OPTIMIZER_METRIC)
        return names

    def skipped(self) -> dict:
        """{key: why its spectral metrics were not computed}."""
        return {key: values[SKIPPED] for key, values in self.metrics.items() if SKIPPED in values}

    def to_json(self) -> dict:
        def clean(value):
            if isinstance(value, float) and not math.isfinite(value):
                return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
            return value

        stacks = []
        for stack in self.stacks:
            roles = []
            for role in stack.roles:
                entry = {"role": role.role, "keys": [role.keys.get(i) for i in stack.layers]}
                for metric in self.available():
                    entry[metric] = [clean(v) for v in self.series(stack, role, metric)]
                roles.append(entry)
            stacks.append({"prefix": stack.prefix, "layers": stack.layers, "roles": roles})
        out = {"path": self.path, "metrics": self.available(), "stacks": stacks}
        if self.spectral:
            out["notes"] = [{"key": key, "note": note} for key, note in self.skipped().items()]
        return out


# --- grouping -------------------------------------------------------------------------------


def _split(key: str):
    """(stack prefix, layer index, role) at the first all-digit segment after the first one,
    or None."""
    parts = key.split(".")
    for position in range(1, len(parts) - 1):
        if parts[position].isdigit():
            return ".".join(parts[:position]), int(parts[position]), ".".join(parts[position + 1 :])
    return None


def _optimizer_prefixes(checkpoint: Checkpoint) -> list[str]:
    return [o.key + "." if o.key else "" for o in checkpoint.optimizers]


def group_layers(checkpoint: Checkpoint) -> list[Stack]:
    """Stacks with at least two layers, model tensors only (optimizer state is attached to
    its parameter's role, see attach_optimizer_state)."""
    skip = _optimizer_prefixes(checkpoint)
    stacks: dict[str, Stack] = {}
    roles: dict[tuple, Role] = {}
    seen: dict[str, set] = {}
    for key, tensor, _node in checkpoint.tensors():
        if any(key.startswith(p) for p in skip) or (
            tensor.dtype not in FLOAT_DTYPES and tensor.layout != "ggml"
        ):
            continue
        split = _split(key)
        if split is None:
            continue
        prefix, index, role_name = split
        stack = stacks.setdefault(prefix, Stack(prefix))
        if index not in seen.setdefault(prefix, set()):  # a list's `in`: quadratic
            seen[prefix].add(index)
            stack.layers.append(index)
        role = roles.get((prefix, role_name))
        if role is None:
            role = roles[(prefix, role_name)] = Role(role_name)
            stack.roles.append(role)
        role.keys[index] = key
    found = []
    for stack in stacks.values():
        if len(stack.layers) < 2:
            continue
        stack.layers.sort()
        stack.roles = [r for r in stack.roles if len(r.keys) >= 2] or stack.roles
        found.append(stack)
    return found


def attach_optimizer_state(checkpoint: Checkpoint, stacks: list[Stack]):
    """exp_avg_sq keys, by the parameter they belong to (only where names are known)."""
    by_key = {
        key: (stack, role, index)
        for stack in stacks
        for role in stack.roles
        for index, key in role.keys.items()
    }
    from ckpt_viewer.core.analysis.check import by_tail

    tails = by_tail(
        by_key, [name for o in checkpoint.optimizers if o.names_source for name in o.state]
    )
    for optimizer in checkpoint.optimizers:
        if not optimizer.names_source:
            continue
        for name, state in optimizer.state.items():
            if not isinstance(name, str):
                continue
            variance = next(
                (c for c in state.children if c.name == "exp_avg_sq" and c.kind == "tensor"), None
            )
            if variance is None:
                continue
            if name in tails:
                _, role, index = by_key[tails[name]]
                role.state_keys[index] = variance.key


# --- metrics --------------------------------------------------------------------------------


def _tensor_metrics(tensor, stop: threading.Event) -> dict:
    moments = _Moments()
    for chunk in iter_chunks(tensor, CHUNK):
        if stop.is_set():
            return {}
        moments.add(np.abs(chunk) if np.iscomplexobj(chunk) else chunk)
    return _metrics_of(moments)


def _metrics_of(moments: _Moments) -> dict:
    out = {"nan": moments.nan, "zero_fraction": moments.zeros / moments.n if moments.n else 0.0}
    if moments.finite:
        mean, std, l2 = moments.figures()
        out.update(l2=l2, mean=mean, std=std, max_abs=max(abs(moments.lo), abs(moments.hi)))
    return out


def power_law_alpha(eigenvalues: np.ndarray) -> float | None:
    """Maximum-likelihood exponent of a power law fitted to the tail of the eigenvalues, the
    tail's start (xmin) chosen to minimise the Kolmogorov-Smirnov distance (as weightwatcher
    and the `powerlaw` package do)."""
    values = np.sort(eigenvalues[eigenvalues > 0])
    if values.size < 10:
        return None
    best_alpha, best_distance = None, math.inf
    logs = np.log(values)
    suffix_sums = np.cumsum(logs[::-1])[::-1]  # sum of log x over the tail from i
    for i in range(0, values.size - 5):  # at least 5 points in the tail
        n = values.size - i
        denominator = suffix_sums[i] - n * logs[i]
        if denominator <= 0:
            continue
        alpha = 1.0 + n / denominator
        tail = values[i:]
        empirical = np.arange(n) / n
        theoretical = 1.0 - (tail / values[i]) ** (1.0 - alpha)
        distance = float(np.max(np.abs(empirical - theoretical)))
        if distance < best_distance:
            best_alpha, best_distance = alpha, distance
    return best_alpha


def spectral_skip(rows: int, cols: int) -> str:
    """Why the spectrum of a [rows, cols] weight is beyond the budget, or '' when it is not:
    the smaller side's Gram matrix, its accumulation and its eigenvalues are all bounded (a
    tall matrix would otherwise cost its whole Gram matrix in time and memory)."""
    side = min(rows, cols)
    work = rows * cols * side + side**3
    if (
        side <= MAX_GRAM
        and work <= MAX_SPECTRAL_WORK
        and (cols <= rows or rows * cols <= MAX_SPECTRAL_ELEMENTS)
    ):
        return ""
    return (
        f"spectral metrics skipped: [{rows:,}, {cols:,}] needs a {side:,}-square Gram "
        f"matrix and {work:.2g} multiply-adds (limits {MAX_GRAM:,} and "
        f"{MAX_SPECTRAL_WORK:.2g})"
    )


def _eigenvalues(tensor, stop: threading.Event):
    """Eigenvalues of the Gram matrix of the weight flattened to [rows, cols] (its squared
    singular values), on the smaller side: W^T W accumulated over row chunks (bounded memory,
    a chance to stop between chunks), or for a wide matrix W W^T, read whole. Only within
    spectral_skip's budget. torch, GPU when present."""
    import torch

    rows = tensor.shape[0]
    cols = tensor.numel // rows
    if spectral_skip(rows, cols):
        return None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if cols <= rows:
        gram = torch.zeros(cols, cols, dtype=torch.float64, device=device)
        rows_per_chunk = max(1, CHUNK // cols)
        for chunk in iter_chunks(tensor, rows_per_chunk * cols):
            if stop.is_set():
                return None
            block = torch.from_numpy(chunk.astype(np.float64).reshape(-1, cols)).to(device)
            gram += block.T @ block
    elif not stop.is_set():
        whole = np.concatenate([c.astype(np.float64) for c in iter_chunks(tensor, CHUNK)])
        matrix = torch.from_numpy(whole.reshape(rows, cols)).to(device)
        gram = matrix @ matrix.T
    else:
        return None
    if not torch.isfinite(gram).all():
        return None
    return torch.linalg.eigvalsh(gram).clamp_(min=0).cpu().numpy()


def spectral_metrics(tensor, stop: threading.Event | None = None) -> dict:
    """Stable rank (||W||_F^2 / sigma_max^2) and power-law alpha of a >= 2-D weight; beyond
    the budget, {SKIPPED: why} (nothing read)."""
    if len(tensor.shape) < 2 or min(tensor.shape) < 2 or tensor.dtype not in FLOAT_DTYPES:
        return {}
    skip = spectral_skip(tensor.shape[0], tensor.numel // tensor.shape[0])
    if skip:
        return {SKIPPED: skip}
    eigenvalues = _eigenvalues(tensor, stop or threading.Event())
    if eigenvalues is None or eigenvalues.size == 0 or eigenvalues.max() == 0:
        return {}
    out = {"stable_rank": float(eigenvalues.sum() / eigenvalues.max())}
    alpha = power_law_alpha(eigenvalues)
    if alpha is not None:
        out["alpha"] = alpha
    return out


def _sampled_metrics(tensor, elements: int) -> dict:
    """Estimates from evenly spaced runs of the tensor (stats' sampled preview)."""
    from ckpt_viewer.core.values.stats import sample_preview

    stats = sample_preview(tensor, bins=8, elements=elements)
    if stats.mean is None or stats.std is None or stats.min is None or stats.max is None:
        return {}
    mean, std = stats.mean, stats.std
    return {
        "mean": mean,
        "std": std,
        "max_abs": max(abs(stats.min), abs(stats.max)),
        "l2": math.sqrt(max(std**2 + mean**2, 0.0) * tensor.numel),
    }


def _measure(key, tensor, spectral, stop, sample=0):
    if sample:
        return key, _sampled_metrics(tensor, sample)
    out = _tensor_metrics(tensor, stop)
    if spectral and not stop.is_set():
        out.update(spectral_metrics(tensor, stop))
    return key, out


def _is_tiny(tensor) -> bool:
    """Small, contiguous and stored plainly in a local file (read by _read_tiny)."""
    source = getattr(tensor.storage, "source", None)
    plain = isinstance(source, FileSpan) or (
        isinstance(source, ZipMember) and source.compress_type == 0
    )
    return (
        plain
        and isinstance(source, (FileSpan, ZipMember))
        and 0 < tensor.nbytes <= TINY_BYTES
        and tensor.is_contiguous
        and numpy_readable(tensor)
        and not remote.is_remote(source.path)
    )


def _read_one(f, tensor) -> np.ndarray:
    source = tensor.storage.source
    base = data_offset(source, f) if isinstance(source, ZipMember) else source.offset
    dtype = tensor_np_dtype(tensor)
    start, nbytes = tensor.offset * dtype.itemsize, tensor.numel * dtype.itemsize
    if start + nbytes > tensor.storage.nbytes:
        raise CheckpointError(f"read past the end of storage {tensor.storage.key!r}")
    f.seek(base + start)
    data = f.read(nbytes)
    if len(data) != nbytes:
        raise CheckpointError(f"file ended while reading storage {tensor.storage.key!r}")
    values = widen(
        apply_view_bits(np.frombuffer(data, dtype), tensor), tensor.dtype, tensor.quantizer
    )
    return np.abs(values) if np.iscomplexobj(values) else values


def _tiny_metrics(items, stop) -> list:
    """[(key, metrics)] of tiny tensors: each file opened once, all values measured in a few
    numpy calls (per tensor, two opens, a mapping and a dozen calls cost far more than its
    values). An unreadable tensor is left out (a gap in its line)."""
    by_path = defaultdict(list)
    for key, tensor in items:
        by_path[tensor.storage.source.path].append((key, tensor))
    keys, pieces = [], []
    for path, group in by_path.items():
        try:
            with remote.open_source(path) as f:
                for key, tensor in group:
                    if stop.is_set():
                        return []
                    try:
                        pieces.append(_read_one(f, tensor))
                    except (CheckpointError, ValueError, OSError):
                        continue
                    keys.append(key)
        except OSError:
            continue
    if not pieces:
        return []
    moments = _Moments.of_segments(
        np.concatenate([p.astype(np.float64) for p in pieces]), [p.size for p in pieces]
    )
    return [(key, _metrics_of(m)) for key, m in zip(keys, moments)]


def _measure_batch(batch, stop, sample):
    """[(key, metrics)] of a batch of (key, tensor, spectral); an unreadable tensor is left out
    (a gap in its line). Tiny tensors are measured exactly, together, even for a sample."""
    tiny = {key: tensor for key, tensor, _ in batch if _is_tiny(tensor)}
    out = _tiny_metrics(list(tiny.items()), stop)
    spectral = {key for key, _, wants in batch if wants}
    for key, values in out:
        if key in spectral and not stop.is_set():
            values.update(spectral_metrics(tiny[key], stop))
    done = set(tiny)
    for key, tensor, wants in batch:
        if stop.is_set():
            break
        if key in done:
            continue
        try:
            out.append(_measure(key, tensor, wants, stop, sample))
        except Exception:  # noqa: BLE001 - an unreadable tensor is a gap in the line
            continue
    return out


def _batches(wanted):
    """Consecutive tensors in tasks of about BATCH_BYTES: a pool task per tiny tensor costs more
    than reading it."""
    batch, size = [], 0
    for item in wanted:
        batch.append(item)
        size += item[1].nbytes
        if size >= BATCH_BYTES or len(batch) >= BATCH_TENSORS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def layer_metrics(
    checkpoint: Checkpoint, spectral: bool = False, workers: int | None = None, sample: int = 0
):
    """Generator: yields progress in [0, 1]; returns LayersReport. With `sample`, metrics are
    estimated from about that many elements of each tensor (no spectral metrics)."""
    stacks = group_layers(checkpoint)
    attach_optimizer_state(checkpoint, stacks)
    tensors = {key: tensor for key, tensor, _ in checkpoint.tensors()}
    wanted = [
        (key, tensors[key], spectral and not sample)
        for stack in stacks
        for role in stack.roles
        for key in role.keys.values()
    ]
    wanted += [
        (key, tensors[key], False)
        for stack in stacks
        for role in stack.roles
        for key in role.state_keys.values()
    ]
    report = LayersReport(
        checkpoint.path, stacks, spectral=spectral and not sample, sampled=bool(sample)
    )
    if sample:
        from ckpt_viewer.core.values.stats import prefetch_sample

        for _, tensor, _ in wanted:
            prefetch_sample(tensor, sample)
    measured = yield from scan(
        list(_batches(wanted)),
        lambda batch, stop: _measure_batch(batch, stop, sample),
        lambda batch: sum(tensor.nbytes for _, tensor, _ in batch),
        workers=workers or 0,
        name="layers",
    )
    for batch_metrics in measured:
        report.metrics.update(batch_metrics)
    return report


def text_lines(report: LayersReport):
    if not report.stacks:
        yield f"{safe_text(report.path)}: no repeated blocks (keys like blocks.0.…, layers.1.…)"
        return
    metrics = report.available()
    for stack in report.stacks:
        yield (
            f"{safe_text(stack.prefix)}: {plural(len(stack.layers), 'layer')}, "
            f"{plural(len(stack.roles), 'role')}"
        )
        for role in stack.roles:
            yield f"  {safe_text(role.role)}"
            yield "    layer " + " ".join(f"{m:>15}" for m in metrics)
            columns = [report.series(stack, role, m) for m in metrics]
            for row, index in enumerate(stack.layers):
                cells = []
                for column in columns:
                    value = column[row]
                    cells.append(f"{'-':>15}" if value is None else f"{value:>15.6g}")
                yield f"    {index:>5} " + " ".join(cells)
    for key, note in report.skipped().items():
        yield f"note: {safe_text(key)}: {note}"
