"""CRC-32 of data cut in pieces: the CRC of A followed by B from the CRCs of A and B, so that
pieces can be computed on several threads (the CRC lets go of the GIL) and joined in order.

`crc32` is ISA-L's (python-isal, carry-less multiplication: several times zlib's speed, the
same values) where it is installed, else zlib's."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # not imported when listing: concurrent.futures brings logging along
    from concurrent.futures import Future, ThreadPoolExecutor

crc32: Callable[..., int]
try:
    from isal.isal_zlib import crc32
except ImportError:  # a platform without isal's wheels
    crc32 = zlib.crc32

CRC_WORKERS = 2  # threads a large CRC-32 is computed on
CRC_SPLIT = 4 << 20  # bytes below which a CRC-32 is computed in one piece
CrcPiece = tuple["Future[int] | None", int, int]  # (CRC-32 to come, or None: the CRC-32), length

CRC_POLY = 0xEDB88320


def _multiply_mod_p(a: int, b: int) -> int:
    """a * b modulo the CRC-32 polynomial (bit-reflected), as zlib's multmodp."""
    m, product = 1 << 31, 0
    while True:
        if a & m:
            product ^= b
            if not a & (m - 1):
                return product
        m >>= 1
        b = (b >> 1) ^ CRC_POLY if b & 1 else b >> 1


def _x_to_2n_table() -> list[int]:
    table, p = [1 << 30], 1 << 30  # x^1
    for _ in range(31):
        p = _multiply_mod_p(p, p)
        table.append(p)
    return table


_X2N = _x_to_2n_table()


def crc32_combine(first: int, second: int, second_length: int) -> int:
    """The CRC-32 of A followed by B from crc32(A), crc32(B) and len(B) (zlib's
    crc32_combine, which Python's zlib does not offer)."""
    p, k, n = 1 << 31, 3, second_length  # x^(8 * n)
    while n:
        if n & 1:
            p = _multiply_mod_p(_X2N[k & 31], p)
        n >>= 1
        k += 1
    return _multiply_mod_p(p, first) ^ second


def crc_pieces(pool: ThreadPoolExecutor | None, data: memoryview) -> list[CrcPiece]:
    """[(future CRC-32, CRC-32, length)] of data cut in CRC_WORKERS pieces on the pool."""
    size = len(data)
    if pool is None or size < CRC_SPLIT:
        return [(None, crc32(data), size)]
    step = -(-size // CRC_WORKERS)
    return [
        (pool.submit(crc32, data[at : at + step]), 0, min(step, size - at))
        for at in range(0, size, step)
    ]


def crc_joined(value: int, pieces: list[CrcPiece]) -> int:
    """The CRC-32 of what `value` covers followed by the pieces, in order."""
    for future, crc, size in pieces:
        value = crc32_combine(value, crc if future is None else future.result(), size)
    return value
