"""What has been computed about one open checkpoint's tensors, for the views to reuse.

Keyed by the tensor view's identity (storage, offset, shape, stride, dtype), so tensors that
share a view share their entries. Two kinds of entry, each bounded (least recently used goes):
- health facts: the exact extremes and non-finite counts the health pass found (check.py);
- exact Stats of the statistics engine, also keyed by bins, part and value range.
Thread-safe: the health pass and the tensor view's worker fill it from their threads. The file
does not change while it is open, so entries never go stale. No numpy here (listing imports it).
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, TypeVar

MAX_FACTS = 1 << 18  # a few dozen bytes each
MAX_STATS = 256  # each holds its histogram (bins counts and edges)

# Tensors are model.TensorInfo and stats values.stats.Stats: model imports this module, and
# values sits above listing, so neither is named here.
Key = tuple[object, ...]
Entry = TypeVar("Entry")


@dataclass(frozen=True)
class HealthFacts:
    """One tensor's values as the health pass saw them (floats: finite values only)."""

    lo: float
    hi: float
    nan: int
    posinf: int
    neginf: int
    integer: bool  # integer or bool values (the statistics then count values)


def view_key(tensor: Any) -> Key:
    if tensor.storage is None:
        return ("own", id(tensor))
    return (
        id(tensor.storage),
        tensor.offset,
        tuple(tensor.shape),
        tuple(tensor.stride),
        tensor.dtype,
    )


class StatsCache:
    def __init__(self, max_facts: int = MAX_FACTS, max_stats: int = MAX_STATS) -> None:
        self._lock = threading.Lock()
        self._facts: OrderedDict[Key, HealthFacts] = OrderedDict()
        self._stats: OrderedDict[Key, Any] = OrderedDict()
        self.max_facts, self.max_stats = max_facts, max_stats

    def _get(self, table: OrderedDict[Key, Entry], key: Key) -> Entry | None:
        with self._lock:
            value = table.get(key)
            if value is not None:
                table.move_to_end(key)
            return value

    def _put(self, table: OrderedDict[Key, Entry], key: Key, value: Entry, limit: int) -> None:
        with self._lock:
            table[key] = value
            table.move_to_end(key)
            while len(table) > limit:
                table.popitem(last=False)

    def facts(self, tensor: Any) -> HealthFacts | None:
        return self._get(self._facts, view_key(tensor))

    def put_facts(self, tensor: Any, facts: HealthFacts) -> None:
        self._put(self._facts, view_key(tensor), facts, self.max_facts)

    def stats(
        self, tensor: Any, bins: int, part: str, value_range: tuple[float, float] | None
    ) -> Any:
        """The exact Stats computed before with these settings: a shallow copy (a view may
        set its fields; its lists are shared, not to be changed in place)."""
        stats = self._get(self._stats, (view_key(tensor), bins, part, _range_key(value_range)))
        return copy.copy(stats) if stats is not None else None

    def put_stats(
        self,
        tensor: Any,
        bins: int,
        part: str,
        value_range: tuple[float, float] | None,
        stats: Any,
    ) -> None:
        self._put(
            self._stats,
            (view_key(tensor), bins, part, _range_key(value_range)),
            stats,
            self.max_stats,
        )

    def __len__(self) -> int:
        with self._lock:
            return len(self._facts) + len(self._stats)


def _range_key(value_range: tuple[float, float] | None) -> tuple[float, float] | None:
    return None if value_range is None else (float(value_range[0]), float(value_range[1]))
