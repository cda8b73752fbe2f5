"""Write zip archives byte by byte, including what zipfile refuses to write (NUL or non-UTF-8
names, duplicate names, a second central directory, a zip64 record pointing elsewhere), so
the tests can give torch's reader and ours the same crafted archive."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass


@dataclass
class Entry:
    name: bytes
    data: bytes
    deflate: bool = False
    flags: int = 0  # 0x800: the name is UTF-8
    local_name: bytes | None = None


def entries_of(archive: bytes) -> list[Entry]:
    """The records of an archive written by torch.save, in directory order."""
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(archive)) as z:
        return [Entry(i.filename.encode(), z.read(i)) for i in z.infolist()]


def central_directory(entries: list[Entry], offsets: list[int], payloads: list[bytes]) -> bytes:
    out = bytearray()
    for entry, offset, payload in zip(entries, offsets, payloads):
        out += struct.pack(
            "<4s6H3L5H2L",
            b"PK\x01\x02",
            20,
            20,
            entry.flags,
            8 if entry.deflate else 0,
            0,
            0,
            zlib.crc32(entry.data),
            len(payload),
            len(entry.data),
            len(entry.name),
            0,
            0,
            0,
            0,
            0,
            offset,
        )
        out += entry.name
    return bytes(out)


def end_record(count: int, cd_size: int, cd_offset: int, comment: bytes = b"") -> bytes:
    return (
        struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, cd_size, cd_offset, len(comment))
        + comment
    )


def zip64_records(count: int, cd_size: int, cd_offset: int, at: int) -> bytes:
    """A zip64 end record at offset `at`, then its locator."""
    record = struct.pack(
        "<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, cd_size, cd_offset
    )
    return record + struct.pack("<4sLQL", b"PK\x06\x07", 0, at, 1)


def make_zip(entries: list[Entry], comment: bytes = b"") -> bytes:
    out, offsets, payloads = bytearray(), [], []
    for entry in entries:
        payload = entry.data
        if entry.deflate:
            squeeze = zlib.compressobj(6, zlib.DEFLATED, -15)
            payload = squeeze.compress(entry.data) + squeeze.flush()
        name = entry.name if entry.local_name is None else entry.local_name
        offsets.append(len(out))
        payloads.append(payload)
        out += struct.pack(
            "<4s5H3L2H",
            b"PK\x03\x04",
            20,
            entry.flags,
            8 if entry.deflate else 0,
            0,
            0,
            zlib.crc32(entry.data),
            len(payload),
            len(entry.data),
            len(name),
            0,
        )
        out += name + payload
    directory = central_directory(entries, offsets, payloads)
    cd_offset = len(out)
    out += directory
    out += end_record(len(entries), len(directory), cd_offset, comment)
    return bytes(out)
