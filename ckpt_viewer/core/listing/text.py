"""Text for the user: wording helpers, and text a file controls made safe to show (one line,
no terminal controls, strict JSON).

Keys, class names, metadata and messages come from the file. Printed raw, `\\r\\x1b[2K` erases
a warning line on a terminal, a newline forges report lines, and bidi overrides reorder what
the reader sees; so every such character is shown as an escape instead."""

from __future__ import annotations

import bisect
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

T = TypeVar("T")

# C0 controls, DEL, C1 controls, line/paragraph separators (str.splitlines breaks on them),
# bidi marks, embeddings, overrides and isolates
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe_text(text: object) -> str:
    """`text` on one line with every control, separator and bidi character escaped
    (`\\x1b`, `\\r`, `\\n`, `\\t`, `\\u202e`...); anything else is kept as it is."""
    text = text if isinstance(text, str) else str(text)
    return _UNSAFE.sub(_escape, text) if _UNSAFE.search(text) else text


def clipped(text: str, limit: int) -> str:
    """At most `limit` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit:,} more characters)"


MAX_JSON_INT_BITS = 1 << 19  # ~158,000 digits: int -> decimal is quadratic in CPython 3.11


def json_safe(value: object) -> object:
    """A copy JSON can hold strictly: non-finite floats as "nan"/"inf"/"-inf"; integers stay
    numbers (beyond MAX_JSON_INT_BITS, text saying their size)."""
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        if value.bit_length() > MAX_JSON_INT_BITS:
            return f"<integer of {value.bit_length():,} bits>"
        return value
    if isinstance(value, dict):
        return {
            k if isinstance(k, str) else short_repr(k, 10_000): json_safe(v)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return str(value)


def strict_json(value: object) -> str:
    """RFC 8259 JSON (never a bare NaN or Infinity), integers as numbers whatever their size."""
    import sys

    try:  # the common case, nothing to convert (ints past 4,300 digits raise here, cheaply)
        return json.dumps(value, allow_nan=False)
    except ValueError:
        pass
    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)  # json_safe has capped them
    try:
        return json.dumps(json_safe(value), allow_nan=False)
    finally:
        sys.set_int_max_str_digits(limit)


MAX_INT_DIGITS_SHOWN = 60


def int_text(value: int) -> str:
    """An integer as text; past MAX_INT_DIGITS_SHOWN digits, its magnitude and size (exact
    decimal conversion is quadratic in the digits)."""
    if value.bit_length() <= MAX_INT_DIGITS_SHOWN * 3.32:
        return str(value)
    exponent = math.log10(abs(value))
    digits = int(exponent) + 1
    sign = "-" if value < 0 else ""
    return (
        f"{sign}{10 ** (exponent - int(exponent)):.6f}e+{int(exponent)} (an integer of "
        f"{digits:,} digits)"
    )


def short_repr(value: object, limit: int = 120) -> str:
    """repr() of a value from a file, at most about `limit` characters; an integer past
    Python's int-to-text limit is written as int_text writes it, inside containers too."""
    if isinstance(value, int) and not isinstance(value, bool):
        text = int_text(value)
    elif isinstance(value, (tuple, list)):
        inner = ", ".join(short_repr(v, limit) for v in value[:8])
        more = (
            ", ..."
            if len(value) > 8
            else ("," if len(value) == 1 and isinstance(value, tuple) else "")
        )
        text = ("({})" if isinstance(value, tuple) else "[{}]").format(inner + more)
    else:
        try:
            text = repr(value)
        except ValueError:  # an object holding such an integer (Fraction, complex...)
            text = f"<{type(value).__name__}>"
    return text[:limit]


SHARED = "... (shared, shown once)"
LARGE_TEXT = 256
LARGE_CONTAINER = 16


class WrittenOnce:
    """Large objects already written in one report. A pickle can reference one object from
    thousands of places for a few bytes each; written out each time, a 1 MB file becomes
    gigabytes of report."""

    def __init__(self) -> None:
        self.ids: set[int] = set()

    def again(self, value: object) -> bool:
        """True when `value` is large and this report has already written it."""
        if not _large(value):
            return False
        if id(value) in self.ids:
            return True
        self.ids.add(id(value))
        return False


def _large(value: object) -> bool:
    if isinstance(value, str):
        return len(value) > LARGE_TEXT
    if isinstance(value, int) and not isinstance(value, bool):
        return value.bit_length() > 4000
    if isinstance(value, (list, tuple, dict)):
        if len(value) > LARGE_CONTAINER:
            return True
        items = value.values() if isinstance(value, dict) else value
        return any(isinstance(v, (list, tuple, dict)) or _large(v) for v in items)
    return False


def bounded_json(value: object, written: WrittenOnce, text_limit: int = 10_000) -> object:
    """Report data for JSON: large objects seen before become SHARED, long text is clipped."""
    if written.again(value):
        return SHARED
    if isinstance(value, str):
        return clipped(value, text_limit)
    if isinstance(value, dict):
        return {
            k if isinstance(k, str) else short_repr(k, text_limit): bounded_json(
                v, written, text_limit
            )
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [bounded_json(v, written, text_limit) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return json_safe(value)
    return clipped(str(value), text_limit)


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """'1 record', '2 records', '1 entry', '3 entries', '1,024 bytes'."""
    if count == 1:
        return f"1 {noun}"
    if nouns is None:
        if noun.endswith("y") and noun[-2:-1] not in ("a", "e", "o", "u"):
            nouns = noun[:-1] + "ies"
        elif noun.endswith(("s", "x", "ch", "sh")):
            nouns = noun + "es"
        else:
            nouns = noun + "s"
    return f"{count:,} {nouns}"


_DIGITS = re.compile(r"(\d+)")


def natural_key(text: str) -> tuple[object, ...]:
    """Sort key for numeric-aware ("natural") order: h.2 before h.10, layer9 before layer10.
    Text parts sit at even places and digit runs at odd ones, as (length, digits): compared by
    value without int() (a hostile key may hold 100,000 digits). () ends the parts, below any
    digit run (n before n1), and the text itself breaks ties (h.01 and h.1)."""
    if not _DIGITS.search(text):
        return (text, (), text)
    split = _DIGITS.split(text)
    parts: list[object] = list(split)
    for i in range(1, len(split), 2):
        digits = split[i].lstrip("0")
        parts[i] = (len(digits), digits)
    parts += [(), text]
    return tuple(parts)


def listing_order(items: Sequence[T], name: Callable[[T], str] = str) -> list[T]:
    """items in the order to list them: an order that is only the alphabet's (safetensors
    stores keys sorted as text: h.0, h.1, h.10, h.2) becomes natural order; any other order
    is the file's own (a state_dict's module order: embed, blocks.2, blocks.10, head) and is
    kept."""
    names = [name(item) for item in items]
    if any(a > b for a, b in zip(names, names[1:])):
        return list(items)
    return sorted(items, key=lambda item: natural_key(name(item)))


class FuzzyKeys:
    """Quick open (Ctrl+P, as in editors): keys holding a query's characters in order
    ("h3fc" finds h.3.mlp.c_fc.weight). The keys are searched as one text by the regex engine,
    not one Python call per key, so 50,000 keys answer within a keystroke."""

    def __init__(self, keys: list[str]):
        self.keys = keys
        self.text = "\n".join(key.lower().replace("\n", " ") for key in keys)
        self.starts = [0]  # where each key starts in text
        for key in keys:
            self.starts.append(self.starts[-1] + len(key) + 1)

    def find(self, query: str, limit: int = 200) -> list[str]:
        """Matching keys, the tightest match first, then the shorter key, then key order."""
        chars = [c for c in query.lower() if not c.isspace()][:MAX_FUZZY_QUERY]
        if not chars:
            return []
        # each character at its first place after the previous one (the leftmost assignment
        # finds any subsequence): a lookahead group makes the skip atomic, so a key that does
        # not match costs one pass, never backtracking
        steps = [
            f"(?=(?P<s{i}>[^\\n{re.escape(c)}]*))(?P=s{i}){re.escape(c)}"
            for i, c in enumerate(chars)
        ]
        pattern = re.compile(f"^{steps[0]}(?P<hit>{''.join(steps[1:])})", re.MULTILINE)
        found: dict[int, int] = {}  # key -> length of its match, from its first character
        for match in pattern.finditer(self.text):
            line = bisect.bisect_right(self.starts, match.start()) - 1
            found[line] = match.end() - match.start("hit") + 1
        best = sorted(found, key=lambda i: (found[i], len(self.keys[i]), i))[:limit]
        return [self.keys[i] for i in best]


MAX_FUZZY_QUERY = 80


def nearest_keys(keys: Iterable[str], wanted: str, limit: int = 3) -> list[str]:
    """Keys the user probably meant: those ending in `.wanted` (a key given without its root,
    such as fc1.weight for model_state_dict.fc1.weight), else the closest spellings."""
    keys = list(keys)
    suffix = "." + wanted
    ending = [k for k in keys if k.endswith(suffix)]
    if ending:
        return sorted(ending, key=len)[:limit]
    import difflib  # only for a key that is not there

    return difflib.get_close_matches(wanted, keys, n=limit, cutoff=0.6)
