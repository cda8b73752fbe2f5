"""CRC-32 of data cut in pieces: the CRC of A followed by B from the CRCs of A and B, so that
pieces can be computed on several threads (zlib lets go of the GIL) and joined in order."""

from __future__ import annotations

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
