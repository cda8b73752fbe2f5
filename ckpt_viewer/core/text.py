"""Small wording helpers for messages the user reads."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


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


def nearest_keys(keys: Iterable[str], wanted: str, limit: int = 3) -> list[str]:
    """Keys the user probably meant: those ending in `.wanted` (a key given without its root,
    such as fc1.weight for model_state_dict.fc1.weight), else the closest spellings."""
    keys = list(keys)
    suffix = "." + wanted
    ending = [k for k in keys if k.endswith(suffix)]
    if ending:
        return sorted(ending, key=len)[:limit]
    return difflib.get_close_matches(wanted, keys, n=limit, cutoff=0.6)
