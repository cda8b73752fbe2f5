"""The comparison table's rows and counts, made without Qt (in the compare job's worker: 50,000
rows held the GUI thread a quarter second). Only modules the window has already imported are
imported here, so the worker never makes a Qt type."""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import TypeVar

from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.analysis.diff import IDENTICAL, STATUS_ORDER, STATUS_TEXT, DiffReport
from ckpt_viewer.core.listing.keys import Alignment, map_keys
from ckpt_viewer.core.listing.model import Checkpoint
from ckpt_viewer.core.listing.optim import state_parameters
from ckpt_viewer.core.listing.report import cosine_text
from ckpt_viewer.core.listing.text import plural
from ckpt_viewer.qt.plain import shown

T = TypeVar("T")
STEP_SECONDS = 0.02  # throttled passes on one step per this time

STATUS_SYMBOL = {
    "identical": "=",
    "changed": "\u2260",
    "dtype+identical": "\u25c6",
    "dtype+changed": "\u25c6",
    "shape": "\u25b2",
    "shard": "\u25b3",
    "only in A": "\u25c0",
    "only in B": "\u25b6",
}


def status_label(status: str) -> str:
    return f"{STATUS_SYMBOL[status]} {STATUS_TEXT[status]}"


def _number(value) -> str:
    return "" if value is None else f"{value:.4g}"


def counts_text(counts: dict) -> str:
    """'5 keys in both files: 2 identical, 1 values differ, ...; 1 only in A': sums add up."""
    common = sum(n for status, n in counts.items() if not status.startswith("only"))
    parts = [
        f"{n} {STATUS_TEXT[status]}"
        for status, n in counts.items()
        if n and not status.startswith("only")
    ]
    text = f"{plural(common, 'key')} in both files" + (f": {', '.join(parts)}" if parts else "")
    return text + f"; {counts['only in A']} only in A, {counts['only in B']} only in B."


def table_rows(report: DiffReport, labels: dict[str, str]) -> list[tuple]:
    """The report as CompareModel's rows: (cells as text, sort values, status, its TensorDiff
    or None). No Qt: a worker makes them (50,000 rows held the GUI thread a quarter second).
    `labels`: {key: the parameter an optimizer state row belongs to}, shown beside it."""
    rows = []
    ported = bool(report.ported)

    def add(key, status, a_text, b_text, metric_texts, metric_values, rule="", match=None):
        name = labels.get(key)
        shown_key = f"{shown(key)} \u2014 {shown(name)}" if name else shown(key)  # state.49 — h.3.w
        texts = (shown_key, status_label(status), shown(a_text), shown(b_text), *metric_texts)
        sort_values = (key, STATUS_ORDER.index(status), a_text, b_text, *metric_values)
        if ported:
            texts, sort_values = (*texts, rule), (*sort_values, rule)
        rows.append((texts, sort_values, status, match))

    for t in report.tensors:
        metrics = (t.max_abs, t.mean_abs, t.rel_l2)
        add(
            t.key,
            t.status,
            f"{t.dtype_a} {t.shape_a}",
            f"{t.dtype_b} {t.shape_b}",
            [_number(v) for v in metrics] + [cosine_text(t)],
            [-1.0 if v is None else v for v in metrics] + [-2.0 if t.cosine is None else t.cosine],
            t.rule,
            t,
        )
    for key in report.only_a:
        add(key, "only in A", "present", "", [""] * 4, [-1.0, -1.0, -1.0, -2.0])
    for key in report.only_b:
        add(key, "only in B", "", "present", [""] * 4, [-1.0, -1.0, -1.0, -2.0])
    return rows


def state_labels(a: Checkpoint, b: Checkpoint, alignment: Alignment | None) -> dict[str, str]:
    """{key as compared: its parameter's name} for the optimizer state tensors whose
    parameter either file proves (keys that name it already need none)."""
    labels: dict[str, str] = {}
    if alignment is None:
        return labels
    for checkpoint, side in ((b, alignment.b), (a, alignment.a)):
        names = state_parameters(checkpoint)
        if not names:
            continue
        try:
            mapped = map_keys(checkpoint, side.root, side.strip_prefix, side.add_prefix, keys=names)
        except CheckpointError:  # a root this file lacks: none of its keys are compared
            continue
        labels.update({new_key: names[key] for key, new_key, _ in mapped})
    return labels


def view_rows(report: DiffReport, a: Checkpoint, b: Checkpoint) -> list[tuple]:
    """In a worker, after a diff: the rows of its table."""
    return table_rows(report, state_labels(a, b, report.alignment))


def throttled(
    steps: Generator[float, None, T], every: float = STEP_SECONDS
) -> Generator[float, None, T]:
    """A job's steps, passed on at most once per `every` seconds: a 50,000-key diff's 5,000
    progress steps, each a queued call into the window, arrived in batches of a frame."""
    due = time.monotonic() + every
    while True:
        try:
            progress = next(steps)
        except StopIteration as stop:
            return stop.value
        if time.monotonic() >= due:
            yield progress
            due = time.monotonic() + every


def is_identical(report: DiffReport, counts: dict) -> bool:
    """report.identical from its status_counts (a walk of the tensors the counts already made)."""
    return not report.unmatched and not any(n for s, n in counts.items() if s != IDENTICAL)
