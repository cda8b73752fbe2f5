"""Exact comparison of tensor values: their bits, chunk by chunk in logical order."""

from __future__ import annotations

from collections.abc import Generator

import numpy as np

from ckpt_viewer.core.listing.model import TensorInfo
from ckpt_viewer.core.values.read import iter_chunks

CHUNK = 1 << 20
PROBE = 512


def as_words(chunk: np.ndarray) -> np.ndarray:
    """A chunk's bytes as the widest unsigned integers that tile them: fewer, faster compares
    and hashes of the exact bits (shared by diff and check)."""
    raw = np.ascontiguousarray(chunk).view(np.uint8)
    for word in (np.uint64, np.uint32, np.uint16):
        if raw.size % np.dtype(word).itemsize == 0:
            return raw.view(word)
    return raw


def same_words(chunk_a: np.ndarray, chunk_b: np.ndarray) -> bool:
    """Whether two chunks hold the same bits; a short probe first, so a changed chunk costs
    almost nothing."""
    words_a, words_b = as_words(chunk_a), as_words(chunk_b)
    return bool(
        np.array_equal(words_a[:PROBE], words_b[:PROBE]) and np.array_equal(words_a, words_b)
    )


def same_bits(
    a: TensorInfo, b: TensorInfo, chunk: int = CHUNK
) -> Generator[int, None, tuple[bool, bool]]:
    """Generator: yields element counts; returns (every chunk bit-identical, a value is
    non-zero). One cheap pass, a short probe of each chunk first, so a changed tensor costs
    almost nothing. Tensors of different dtypes are not the same."""
    if a.dtype != b.dtype:
        return False, True
    nonzero = False
    for chunk_a, chunk_b in zip(iter_chunks(a, chunk), iter_chunks(b, chunk)):
        if not same_words(chunk_a, chunk_b):
            return False, True
        nonzero = nonzero or bool(np.any(chunk_a))  # -0.0 is zero too
        yield chunk_a.size
    return True, nonzero
