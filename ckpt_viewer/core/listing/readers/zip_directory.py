"""A lean reader of a zip archive's central directory, with the semantics of the reader torch
uses (miniz): which end record and directory it takes, zip64 included, the checks it makes.

Where a plain zip reader (Python's zipfile, unzip) could read another directory or another
record than torch, the archive is ambiguous and refused with one line naming why: a zip64
record that disagrees with the end record, a directory that does not end where
the end records begin (zipfile then shifts every offset), names that differ only in case
(torch's lookup ignores ASCII case) and names holding a NUL byte (zipfile cuts them there).

Python's zipfile also builds a ZipInfo object per entry, slow for tens of thousands of tensors;
listing needs only names, sizes, methods, CRCs and header offsets."""

from __future__ import annotations

import struct
import zlib
from typing import Any

from ckpt_viewer.core import Ambiguous, CheckpointError
from ckpt_viewer.core.listing.crc import crc32
from ckpt_viewer.core.listing.model import ZipMember
from ckpt_viewer.core.listing.remote import SizedFile, open_source, remembered

EOCD = struct.Struct("<4s4H2LH")  # end of central directory, 22 bytes
EOCD64_LOCATOR = struct.Struct("<4sLQL")  # 20 bytes
EOCD64 = struct.Struct("<4sQ2H2L4Q")  # 56 bytes
ENTRY = struct.Struct("<4s4B4HL2L5H2L")  # central directory entry, 46 bytes
LOCAL = 30  # local header size
MAX_COMMENT = 65535
U16, U32 = 0xFFFF, 0xFFFFFFFF
END_SIG = b"PK\x05\x06"


class AmbiguousArchive(Ambiguous):
    """torch and a plain zip reader could read different content from this archive."""

    def __init__(self, why: str):
        super().__init__(f"ambiguous zip archive: {why}; refusing to show one reading of it")


def _find_end_record(f: SizedFile, size: int) -> tuple[int, tuple[Any, ...]]:
    """The last end-record signature with room for a record after it, as miniz finds it."""
    tail = min(size, EOCD.size + MAX_COMMENT)
    f.seek(size - tail)
    data = f.read(tail)
    at = data.rfind(END_SIG, 0, len(data) - EOCD.size + 4)
    if at < 0:
        raise CheckpointError("not a readable zip archive (no end-of-directory record; truncated?)")
    return size - tail + at, EOCD.unpack_from(data, at)


def _zip64_end(
    f: SizedFile, size: int, eocd_at: int
) -> tuple[int, tuple[Any, ...]] | tuple[None, None]:
    """The zip64 end record, if a locator sits just before the end record (miniz always looks)."""
    if eocd_at < EOCD64_LOCATOR.size + EOCD64.size:
        return None, None
    f.seek(eocd_at - EOCD64_LOCATOR.size)
    locator = EOCD64_LOCATOR.unpack(f.read(EOCD64_LOCATOR.size))
    if locator[0] != b"PK\x06\x07":
        return None, None
    at = locator[2]
    if at > size - EOCD64.size:
        raise CheckpointError("zip64 end-of-directory locator points beyond the file")
    f.seek(at)
    record = EOCD64.unpack(f.read(EOCD64.size))
    if record[0] != b"PK\x06\x06":
        return None, None
    if record[1] < EOCD64.size - 12:
        raise CheckpointError("zip64 end-of-directory record is malformed")
    if locator[3] != 1:
        raise CheckpointError("multi-disk zip archives are not supported")
    return at, record


def read_directory(path: str) -> list[ZipMember]:
    """Every entry, in directory order, with sizes and offsets checked against the file (read
    once per opening: sniffing a .pt2 and its reader share it)."""
    return remembered(path, "zip directory", lambda: _read_directory(path))


def _read_directory(path: str) -> list[ZipMember]:
    with open_source(path) as f:
        size = f.size
        if size < EOCD.size:
            raise CheckpointError("not a readable zip archive (too small)")
        eocd_at, eocd = _find_end_record(f, size)
        (_, this_disk, cd_disk, on_disk, count, cd_size, cd_offset, _) = eocd
        end_records_at: int | None = eocd_at
        zip64_at, zip64 = _zip64_end(f, size, eocd_at)
        if zip64 is not None:
            saturated = (on_disk, count, cd_size, cd_offset, this_disk, cd_disk)
            wide = (zip64[6], zip64[7], zip64[8], zip64[9], zip64[4], zip64[5])
            if any(
                narrow not in (U16, U32, wide_value) for narrow, wide_value in zip(saturated, wide)
            ):
                raise AmbiguousArchive(
                    "its zip64 end record and its end record describe different directories"
                )
            on_disk, count, cd_size, cd_offset, this_disk, cd_disk = wide
            end_records_at = zip64_at
            if count > U32 or cd_size > U32:
                raise CheckpointError("zip directory is larger than torch's reader accepts")
        if count != on_disk or (this_disk | cd_disk and (this_disk, cd_disk) != (1, 1)):
            raise CheckpointError("multi-disk zip archives are not supported")
        if cd_size < count * ENTRY.size:
            raise CheckpointError("zip directory is shorter than its entry count says")
        if cd_offset + cd_size > size:
            raise CheckpointError("zip directory lies beyond the end of the file (truncated?)")
        if cd_offset + cd_size != end_records_at:
            raise AmbiguousArchive(
                "its central directory does not end where the end record "
                "begins (zip tools would shift every offset)"
            )
        f.seek(cd_offset)
        directory = f.read(cd_size)
    members = _entries(directory, count, path, size, this_disk)
    _refuse_shadowed_names(members)
    return members


def _entries(directory: bytes, count: int, path: str, size: int, this_disk: int) -> list[ZipMember]:
    members: list[ZipMember] = []
    pos = 0
    unpack = ENTRY.unpack_from
    for _ in range(count):
        if pos + ENTRY.size > len(directory):
            raise CheckpointError("zip directory is shorter than its entry count says")
        (
            sig,
            _,
            _,
            _,
            _,
            flags,
            method,
            _,
            _,
            crc,
            csize,
            usize,
            name_len,
            extra_len,
            comment_len,
            disk,
            _,
            _,
            offset,
        ) = unpack(directory, pos)
        if sig != b"PK\x01\x02":
            raise CheckpointError("zip directory entry is corrupt")
        start = pos + ENTRY.size
        end = start + name_len + extra_len + comment_len
        if end > len(directory):
            raise CheckpointError("zip directory entry runs past the directory")
        raw_name = directory[start : start + name_len]
        name = raw_name.decode("utf-8", "backslashreplace")
        if (
            csize != U32
            and usize != U32
            and (method == 0 and csize != usize or usize and not csize)
        ):
            raise CheckpointError(f"zip entry {name!r} has inconsistent sizes")
        if U32 in (usize, csize, offset):
            usize, csize, offset = _zip64_extra(
                directory[start + name_len : start + name_len + extra_len], usize, csize, offset
            )
        if disk == U16 or disk not in (this_disk, 1):
            raise CheckpointError("multi-disk zip archives are not supported")
        if flags & 0x2000:
            raise CheckpointError(f"zip entry {name!r} has an encrypted directory")
        if offset + LOCAL + csize > size:
            raise CheckpointError(
                f"zip entry {name!r} lies beyond the end of the file (truncated?)"
            )
        members.append(ZipMember(path, name, offset, method, csize, usize, crc, raw_name, flags))
        pos = end
    return members


def _refuse_shadowed_names(members: list[ZipMember]) -> None:
    names = [m.raw_name for m in members]
    if b"\0" in b"".join(names):
        member = next(m for m in members if b"\0" in m.raw_name)
        raise AmbiguousArchive(
            f"entry name {member.name!r} holds a NUL byte (zip tools "
            "cut the name there, torch does not)"
        )
    # one lower() for all the names: none holds a NUL (checked above)
    folded = b"\0".join(names).lower().split(b"\0") if names else []
    if len(set(folded)) != len(folded):
        seen: set[bytes] = set()
        for member, name in zip(members, folded):  # noqa: B007 - the first repeated one
            if name in seen:
                break
            seen.add(name)
        raise AmbiguousArchive(
            f"two entries are named {member.name!r} (up to letter case); "
            "which one torch reads depends on its sort order"
        )


def _zip64_extra(extra: bytes, usize: int, csize: int, offset: int) -> tuple[int, int, int]:
    pos = 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, pos)
        if tag == 1:
            values = list(struct.unpack_from(f"<{length // 8}Q", extra, pos + 4))
            try:
                if usize == U32:
                    usize = values.pop(0)
                if csize == U32:
                    csize = values.pop(0)
                if offset == U32:
                    offset = values.pop(0)
            except IndexError:
                break
            return usize, csize, offset
        pos += 4 + length
    raise CheckpointError("zip64 entry has no zip64 size information")


def data_offset(member: ZipMember, f: SizedFile | None = None) -> int:
    """Where a record's bytes begin: after its local header, name and extra field (read
    through `f`, the archive already open, when given)."""
    if f is None:
        try:
            with open_source(member.path) as own:
                return data_offset(member, own)
        except FileNotFoundError:
            raise CheckpointError(f"{member.path} has disappeared since it was opened") from None
    f.seek(member.header_offset)
    header = f.read(LOCAL)
    if len(header) < LOCAL or header[:4] != b"PK\x03\x04":
        raise CheckpointError(f"zip record {member.name} has no valid local header")
    name_length: int
    extra_length: int
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    return member.header_offset + LOCAL + name_length + extra_length


def read_member(member: ZipMember, limit: int, check_crc: bool = True) -> bytes:
    """A whole (small) record, inflated if needed. torch never checks CRC-32 on read: with
    check_crc=False a mismatch is left to the caller (`crc_ok`)."""
    if member.file_size > limit:
        raise CheckpointError(
            f"{member.name} would inflate to {member.file_size:,} bytes; "
            f"refusing more than {limit:,}"
        )
    if member.flags & 0x1:
        raise CheckpointError(f"{member.name} is encrypted")
    start = data_offset(member)
    with open_source(member.path) as f:
        f.seek(start)
        raw = f.read(member.compressed_size)
    if len(raw) < member.compressed_size:
        raise CheckpointError(f"{member.name} is cut short (truncated file?)")
    if member.compress_type == 0:
        data = raw
    elif member.compress_type == 8:
        inflater = zlib.decompressobj(-15)
        try:
            data = inflater.decompress(raw, member.file_size + 1)
        except zlib.error as exc:
            raise CheckpointError(f"{member.name} cannot be inflated ({exc})") from None
        if not inflater.eof and len(data) == member.file_size:
            raise CheckpointError(f"{member.name} inflates to more than its directory entry says")
    else:
        raise CheckpointError(
            f"{member.name} uses unsupported compression method {member.compress_type}"
        )
    if len(data) != member.file_size:
        raise CheckpointError(
            f"{member.name} holds {len(data):,} bytes, not the "
            f"{member.file_size:,} its directory entry says"
        )
    if check_crc and not crc_ok(member, data):
        raise CheckpointError(f"{member.name} fails its CRC-32 check (corrupt file?)")
    return data


def crc_ok(member: ZipMember, data: bytes) -> bool:
    return crc32(data) == member.crc
