"""The human-readable `inspect` report."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ckpt_viewer.core.listing.globals import CODE_RUNNERS, meaning, triage
from ckpt_viewer.core.listing.model import (
    Checkpoint,
    Node,
    TensorInfo,
    format_bytes,
    format_count,
)
from ckpt_viewer.core.listing.summary import Totals, scalars_by_importance, totals
from ckpt_viewer.core.listing.text import (
    SHARED,
    WrittenOnce,
    int_text,
    listing_order,
    plural,
    safe_text,
)

MAX_LIST_PREVIEW = 6
MAX_VALUE_TEXT = 80
# Stats (values.stats) and DiffReport, TensorDiff (analysis.diff) are typed Any here: those
# layers sit above listing, which may not import them.


def describe_value(
    value: object, limit: int = MAX_VALUE_TEXT, written: WrittenOnce | None = None
) -> str:
    """A value from the file on one short line, control characters escaped; with `written`, a
    large object this report has already written is only named as shared."""
    if written is not None and written.again(value):
        return SHARED
    if isinstance(value, (list, tuple)):
        head = ", ".join(describe_value(v, limit // 3) for v in value[:MAX_LIST_PREVIEW])
        more = f", ... ({len(value)} items)" if len(value) > MAX_LIST_PREVIEW else ""
        if isinstance(value, tuple):
            return f"({head}{more}{',' if len(value) == 1 else ''})"
        return f"[{head}{more}]"
    if isinstance(value, int) and not isinstance(value, bool):
        text = int_text(value)
    elif isinstance(value, str):
        text = repr(value[: limit + 1])
    else:
        text = str(value)
    return safe_text(text if len(text) <= limit else text[: limit - 3] + "...")


def split_text(totals: Totals) -> str:
    """'217.30M model, 433.51M optimizer state, 0 other': parameters are the model's only;
    '885.67K model + 1.68K buffers, ...' where some of the model's tensors are buffers."""
    split = totals.split
    buffers = totals.model_buffers
    model = f"{format_count(split['model'] - buffers)} model" + (
        f" + {format_count(buffers)} buffers" if buffers else ""
    )
    return (
        f"{model}, "
        f"{format_count(split['optimizer_state'])} optimizer state, "
        f"{format_count(split['other'])} other"
    )


def node_line(node: Node, written: WrittenOnce | None = None) -> str:
    """One row of the tree: name, then what it is."""
    t = node.tensor
    if t is not None:
        parts = [
            f"{list(t.shape)}",
            t.dtype,
            format_count(t.numel),
            format_bytes(t.nbytes),
            t.device,
        ]
        if t.layout != "strided":
            parts.append(t.layout)
        if node.role:
            parts.append(node.role)
        if node.shared_with:
            parts.append(f"shares storage with {node.shared_with}")
        if node.note:
            parts.append(node.note)
        return f"{node.name}  " + "  ".join(parts)
    if node.kind == "scalar":
        return f"{node.name} = {describe_value(node.value, written=written)}"
    if node.kind == "ref":
        return f"{node.name} -> same object as {node.value}"
    if node.kind == "opaque":
        return f"{node.name}  ({node.type_name}) {describe_value(node.value, written=written)}"
    label = node.type_name or node.kind
    extra = f"  {node.note}" if node.note else ""
    return f"{node.name}  <{label}, {plural(len(node.children), 'entry')}>{extra}"


def tree_lines(root: Node, max_depth: int | None = None, file_order: bool = False) -> Iterator[str]:
    """The tree's lines, each level in listing order (text.listing_order) or the file's."""

    def listed(children: list[Node]) -> list[Node]:
        return children if file_order else listing_order(children, lambda n: n.name)

    stack = [(child, 0) for child in reversed(listed(root.children))]
    written = WrittenOnce()
    while stack:
        node, depth = stack.pop()
        yield "  " * (depth + 1) + node_line(node, written)
        if max_depth is None or depth + 1 < max_depth:
            stack.extend((child, depth + 1) for child in reversed(listed(node.children)))


def text_report(
    checkpoint: Checkpoint, max_depth: int | None = None, file_order: bool = False
) -> Iterator[str]:
    total = totals(checkpoint)
    yield f"path:    {checkpoint.path}"
    yield f"format:  {checkpoint.format}   file: {format_bytes(checkpoint.file_bytes)}"
    yield (
        f"tensors: {total.tensors:,}   parameters: {split_text(total)}   "
        f"elements: {total.elements:,}   tensor bytes: {format_bytes(total.bytes)}"
    )
    for dtype, (count, elements, nbytes) in total.by_dtype.items():
        noun = "tensor " if count == 1 else "tensors"
        yield f"  {dtype:<14} {count:>7} {noun}  {format_count(elements):>9}  {format_bytes(nbytes):>10}"
    for key, value in checkpoint.metadata.items():
        yield f"{key}: {describe_value(value)}"
    uses = [u for u in triage(checkpoint) if u.category != "torch"]
    for use in uses:
        if use.category == "code":
            call = f"{use.name}({use.calls[0]})" if use.calls else use.name
            where = f" at {use.keys[0]}" if use.keys else ""
            runner = CODE_RUNNERS.get(checkpoint.format, "torch.load(weights_only=False)")
            yield f"WARNING: code: {call}{where} ({runner} would run it)"
    for kind in ("class", "data"):
        groups: dict[str, list[str]] = {}
        for use in uses:
            if use.category == kind:
                groups.setdefault(meaning(use.name, kind, checkpoint.format), []).append(use.name)
        for text, names in groups.items():
            yield f"{kind} globals ({text}): {', '.join(names)}"
    for why in checkpoint.refusals:
        yield f"note: torch.load(weights_only=True) would refuse this file: {why}"
    for warning in checkpoint.warnings:
        yield f"warning: {warning}"
    scalars = checkpoint.scalars()
    written = WrittenOnce()
    if scalars:
        yield "scalars:"
        for key, value in scalars_by_importance(scalars):
            yield f"  {key} = {describe_value(value, written=written)}"
    for opt in checkpoint.optimizers:
        yield f"optimizer {opt.key}: {opt.type or 'unknown type'}, {plural(len(opt.param_groups), 'group')}"
        for index, group in enumerate(opt.param_groups):
            if written.again(group):
                yield f"  group {index}: {SHARED}"
                continue
            hyper = ", ".join(
                f"{k}={describe_value(v, written=written)}"
                for k, v in group.items()
                if k not in ("params", "param_names")
            )
            yield f"  group {index}: {hyper}"
            yield f"    params: {describe_value(group.get('params', []), written=written)}"
        yield f"  parameter names: {opt.names_source or 'not provable from this file; ids shown'}"
    yield "tree:"
    yield from tree_lines(checkpoint.root, max_depth, file_order)


def number(value: float | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 2**53:  # an integer tensor's min, max, quantiles:
            return f"{int(value):,}"  # exact, not 4.9936e+06
        if 1e4 <= abs(value) < 1e15:  # beside those, in their notation: not 2.49907e+06
            return f"{value:,.2f}"
        return f"{value:.6g}"
    return f"{value:,}"


FIGURE_LABELS = {"min": "min", "max": "max", "mean": "mean", "std": "std", "l2": "L2 norm"}


def nonfinite_counts(stats: Any) -> list[tuple[str, int]]:
    """(label, count) of the NaN, +Inf and -Inf values there are (none in the histogram)."""
    counts = (("NaN", stats.nan), ("+Inf", stats.posinf), ("-Inf", stats.neginf))
    return [(label, count) for label, count in counts if count]


def stats_rows(stats: Any) -> list[tuple[str, str]]:
    """(label, value) rows shared by `stats` and the GUI's statistics table: the figures over
    every value as torch gives them, and with NaN or Inf present the same over finite values
    ("mean (finite)"...)."""
    figures = stats.over_all()
    rows = [("elements", number(stats.numel))]
    rows += [(label, number(figures[name])) for name, label in FIGURE_LABELS.items()]
    if stats.nan or stats.inf:
        rows += [
            (f"{label} (finite)", number(getattr(stats, name)))
            for name, label in FIGURE_LABELS.items()
        ]
    rows += [
        ("NaN", number(stats.nan)),
        ("+Inf", number(stats.posinf)),
        ("-Inf", number(stats.neginf)),
        ("zeros", f"{number(stats.zeros)} ({100 * stats.zeros / max(stats.numel, 1):.2f} %)"),
    ]
    rows += [(f"{100 * q:g} %", number(v)) for q, v in stats.quantiles.items()]
    if stats.part:
        rows.append(("complex part", stats.part))
    return rows


def stats_lines(key: str, tensor: TensorInfo, stats: Any) -> Iterator[str]:
    yield f"{key}  {list(tensor.shape)}  {tensor.dtype}  {tensor.device}"
    for label, value in stats_rows(stats):
        yield f"  {label:<16} {value}"
    if stats.value_counts:
        top = sorted(stats.value_counts.items(), key=lambda kv: -kv[1])[:10]
        yield f"  {'values':<16} " + ", ".join(f"{v}: {c:,}" for v, c in top)
    peak = max(stats.counts, default=0)
    outside = ", ".join(f"{label} {count:,}" for label, count in nonfinite_counts(stats))
    yield f"  histogram ({plural(len(stats.counts), 'bin')})" + (
        f" of finite values; not in it: {outside}" if outside else ""
    )
    step = max(1, len(stats.counts) // 32)
    for i in range(0, len(stats.counts), step):
        count = sum(stats.counts[i : i + step])
        bar = "#" * round(40 * count / (peak * step)) if peak else ""
        yield f"  {stats.edges[i]:>12.5g} {count:>12,} {bar}"


def cosine_text(t: Any) -> str:
    """A TensorDiff's cosine in six decimals (0.999998 reads as 'almost'); n/a where both
    sides are all zero (0/0, not 1); empty where the values were not compared."""
    if t.cosine is not None:
        return f"{t.cosine:.6f}"
    return "n/a (both zero)" if t.max_abs is not None else ""


def diff_lines(report: Any, limit: int = 50) -> Iterator[str]:
    """The human-readable `diff` report."""
    yield f"A: {report.path_a}"
    yield f"B: {report.path_b}"
    if report.alignment is not None and report.alignment.text != "keys as they are":
        yield f"aligned: {report.alignment.text}"
    suggestion = report.suggestion
    if suggestion is not None and report.alignment is not None and report.alignment.poor:
        yield (
            f"fewer than half the keys are common; try {suggestion.options} or --auto-align "
            f"({suggestion.text}; {plural(suggestion.common, 'key')} in both)"
        )
    changed = [t for t in report.tensors if t.status.endswith("changed")]
    shards = f", {report.count('shard')} other DTensor parts" if report.count("shard") else ""
    yield (
        f"{plural(len(report.tensors), 'common tensor')}: "
        f"{sum(1 for t in report.tensors if t.status.endswith('identical'))} identical, "
        f"{len(changed)} changed, {report.count('shape')} with other shapes, "
        f"{sum(1 for t in report.tensors if t.status.startswith('dtype'))} with other dtypes"
        f"{shards}; "
        f"{len(report.only_a)} only in A, {len(report.only_b)} only in B"
    )
    if report.ported:
        yield f"{report.ported} ported to PyTorch keys and layouts (the rule of each pair):"
        for t in report.tensors[:limit]:
            yield f"  {t.key}: {t.rule}"
        if len(report.tensors) > limit:
            yield f"  ... {len(report.tensors) - limit} more"
        for name, why in list(report.unmatched.items())[:limit]:
            yield f"  unmatched  {safe_text(name)}: {why}"
        if len(report.unmatched) > limit:
            yield f"  ... {len(report.unmatched) - limit} more unmatched"
    view = report.load_state_dict_view()
    if any(view.values()):
        yield "load_state_dict(strict=True) of B into A would report:"
        for name, keys in view.items():
            if keys:
                yield (
                    f"  {name} ({len(keys)}): "
                    + ", ".join(keys[:8])
                    + (" ..." if len(keys) > 8 else "")
                )
    for t in report.tensors:
        if t.status == "shape":
            yield f"  shape  {t.key}: {t.shape_a} vs {t.shape_b}"
        elif t.status.startswith("dtype"):
            yield f"  dtype  {t.key}: {t.dtype_a} vs {t.dtype_b}"
        elif t.status == "shard":
            yield f"  shard  {t.key}: the files hold different parts of this DTensor"
    if changed:
        yield f"changed tensors (largest relative L2 difference first, up to {limit}):"
        yield f"  {'key':<48} {'max|a-b|':>11} {'mean|a-b|':>11} {'rel L2':>10} {'cosine':>9}"
        for t in sorted(changed, key=lambda t: -(t.rel_l2 or 0))[:limit]:
            yield (
                f"  {t.key[:48]:<48} {t.max_abs:>11.4g} {t.mean_abs:>11.4g} "
                f"{t.rel_l2:>10.4g} {cosine_text(t):>9}"
            )
    if report.scalars:
        yield "scalars (A | B):"
        for pair in report.scalars:
            a, b = ("-" if v is None else repr(v) for v in (pair.a, pair.b))
            yield f"  {pair.key}: {a} | {b}" + ("" if pair.same else "  *")
    yield "identical" if report.identical else "different"
