"""Integrity: read every byte. Zip archives are checked record by record against their CRC-32
(plain torch.load never checks it, so a flipped bit in tensor data goes unnoticed); formats
without checksums (safetensors, legacy, DCP bytes) get their sizes, offsets and readability
checked. A generator of progress, like stats and export."""

from __future__ import annotations

import mmap
import os
import zlib
from collections.abc import Generator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.listing import remote
from ckpt_viewer.core.listing.crc import CRC_WORKERS, crc32, crc_joined, crc_pieces
from ckpt_viewer.core.listing.model import (
    Checkpoint,
    DecodedBytes,
    FileSpan,
    TensorInfo,
    ZipMember,
)
from ckpt_viewer.core.listing.readers.zip_directory import data_offset, read_directory
from ckpt_viewer.core.listing.text import plural, safe_text

BLOCK = 8 << 20
WINDOW = 64 << 20  # bytes of a stored record mapped at a time


@dataclass
class VerifyReport:
    path: str
    ok: bool
    problem: str = ""  # the first bad record, when not ok
    tensor: str = ""  # the first tensor key stored in that record, when known
    bad_record: str = ""  # the bad record's name, when the reader gave it
    records: int = 0
    bytes: int = 0
    notes: list = field(default_factory=list)
    # loadability, a separate matter: None where the format is not read with torch.load
    loads_with_weights_only: bool | None = None
    refusals: list = field(default_factory=list)
    loader_note: str = ""  # "torch.load(weights_only=True) refuses it: ..." or ""

    def to_json(self) -> dict:
        damage = (
            [] if self.ok else [{"record": self.record, "key": self.tensor, "what": self.problem}]
        )
        return {
            "path": self.path,
            "intact": self.ok,
            "loads_with_weights_only": self.loads_with_weights_only,
            "refusals": list(self.refusals),
            "damage": damage,
        }

    @property
    def record(self) -> str:
        """The bad record's name: as the reader gave it, else the problem's first words."""
        head, sep, _ = self.problem.partition(": ")
        return self.bad_record or (head if sep and " " not in head else "")


class Damaged(Exception):
    """The first bad record; verify() turns it into a failed report."""

    def __init__(self, message: str, tensor: str = "", record: str = ""):
        super().__init__(message)
        self.tensor, self.record = tensor, record


def _zip_members(path: str) -> list[ZipMember]:
    try:
        return read_directory(path)
    except CheckpointError as exc:
        raise Damaged(str(exc)) from None


def _stored_crc(member: ZipMember, f) -> Generator[int, None, int]:
    """CRC-32 of a stored record of a local file, through read-only mappings of it (no copy),
    each window's pieces on the CRC threads and joined in order."""
    start, size = data_offset(member), member.compressed_size
    if f.size < start + size:
        raise Damaged(f"{member.name}: the file ends inside this record (truncated)")
    crc = 0
    with ThreadPoolExecutor(CRC_WORKERS) as pool:
        for at in range(0, size, WINDOW):
            length = min(WINDOW, size - at)
            position = start + at
            aligned = position - position % mmap.ALLOCATIONGRANULARITY
            pages = mmap.mmap(
                f.fileno(), position + length - aligned, offset=aligned, access=mmap.ACCESS_READ
            )
            crc = crc_joined(crc, crc_pieces(pool, memoryview(pages)[position - aligned :]))
            yield length
    return crc


def _check_member(member: ZipMember, f):
    """Stream one record through CRC-32 (inflating it if it is compressed)."""
    if member.compress_type == 0 and member.compressed_size and not remote.is_remote(member.path):
        crc = yield from _stored_crc(member, f)
        _check_crc(member, crc)
        return
    f.seek(data_offset(member))
    remaining, crc, produced = member.compressed_size, 0, 0
    inflater = zlib.decompressobj(-15) if member.compress_type == 8 else None
    if member.compress_type not in (0, 8):
        raise Damaged(f"{member.name}: unsupported compression method {member.compress_type}")
    while remaining:
        block = f.read(min(BLOCK, remaining))
        if not block:
            raise Damaged(f"{member.name}: the file ends inside this record (truncated)")
        remaining -= len(block)
        if inflater is not None:
            try:
                block = inflater.decompress(block)
            except zlib.error as exc:
                raise Damaged(f"{member.name}: compressed data is corrupt ({exc})") from None
        crc = crc32(block, crc)
        produced += len(block)
        yield len(block)
    if produced != member.file_size:
        raise Damaged(
            f"{member.name}: holds {produced:,} bytes, its directory entry says "
            f"{member.file_size:,}"
        )
    _check_crc(member, crc)


def _check_crc(member: ZipMember, crc: int) -> None:
    if crc != member.crc:
        raise Damaged(
            f"{member.name}: CRC-32 mismatch (stored {member.crc:08x}, "
            f"computed {crc:08x}): the data is corrupt"
        )


def _verify_zip(path: str, report: VerifyReport, owners: dict | None = None):
    """Every record through its CRC-32; damage is named by record and by the tensor it holds."""
    members = _zip_members(path)
    owners = owners or {}
    with remote.open_source(path) as f:
        for member in members:
            try:
                yield from _check_member(member, f)
            except Damaged as exc:
                owner = owners.get(member.name)
                if owner is None:
                    raise
                raise Damaged(f"{exc} (it holds tensor {owner!r})", owner) from None
            report.records += 1


def _record_owners(checkpoint: Checkpoint) -> dict[str | tuple[str, int], str]:
    """{zip record name or (path, offset): the first tensor key stored there}."""
    owners: dict[str | tuple[str, int], str] = {}
    for key, tensor, _ in checkpoint.tensors():
        for part in list(tensor.parts.values()) or [tensor]:
            source = part.storage.source if part.storage is not None else None
            if isinstance(source, ZipMember):
                owners.setdefault(source.name, key)
            elif isinstance(source, FileSpan):
                owners.setdefault((source.path, source.offset), key)
    return owners


def _read_spans(spans, report: VerifyReport, owners: dict | None = None):
    """Formats without checksums: every byte must at least be there and readable."""
    owners = owners or {}
    for span in spans:
        owner = owners.get((span.path, span.offset))
        holds = f" (tensor {owner!r})" if owner is not None else ""
        with remote.open_source(span.path) as f:
            f.seek(span.offset)
            remaining = span.nbytes
            while remaining:
                block = f.read(min(BLOCK, remaining))
                if not block:
                    raise Damaged(
                        f"{remote.basename(span.path)}: ends inside the data at "
                        f"offset {span.offset:,}{holds} (truncated)",
                        owner or "",
                    )
                remaining -= len(block)
                yield len(block)
        report.records += 1


def _verify_bundle(index: str, report: VerifyReport, owners: dict) -> Generator[int, None, None]:
    """Every TensorFlow checkpoint entry through its masked CRC32C (the writer stores one per
    tensor; TensorFlow checks it when it restores)."""
    from ckpt_viewer.core.listing.readers.tensor_bundle import checksummed, masked, read_entries

    try:
        import google_crc32c
    except ImportError:
        google_crc32c = None  # type: ignore[assignment]
        report.notes.append("CRC32C not checked (pip install google-crc32c): every byte was read")
    unchecked = 0
    for entry in read_entries(index)[1]:
        if entry.slices:
            continue  # a partitioned variable: each slice is an entry with its own checksum
        owner = owners.get((entry.shard, entry.offset), entry.key)
        crc = 0
        with remote.open_source(entry.shard) as f:
            try:
                for data, nbytes in checksummed(entry, f):
                    if google_crc32c is not None:
                        crc = google_crc32c.extend(crc, data)
                    yield nbytes
            except CheckpointError as exc:
                raise Damaged(str(exc), owner) from None
        report.records += 1
        if entry.dtype == 21:  # a variant's checksum covers its encoding, not its bytes
            unchecked += 1
        elif google_crc32c is not None and masked(crc) != entry.crc32c:
            raise Damaged(
                f"{remote.basename(entry.shard)}: CRC32C mismatch in {safe_text(entry.key)!r} "
                f"(stored {entry.crc32c:08x}, computed {masked(crc):08x}): the data is corrupt",
                owner,
            )
    if unchecked:
        report.notes.append(f"{plural(unchecked, 'variant tensor')} read but not checksummed")


def _decoded(checkpoint: Checkpoint, report: VerifyReport) -> Generator[int, None, None]:
    """Data only the format's library decodes (chunked or compressed HDF5): decoded in full,
    so a broken chunk or filter checksum is found."""
    for key, tensor, _ in checkpoint.tensors():
        source = tensor.storage.source if tensor.storage is not None else None
        if isinstance(source, DecodedBytes):
            try:
                source.decode()
            except CheckpointError as exc:
                raise Damaged(str(exc), key) from None
            report.records += 1
            yield source.nbytes


def _dcp_chunks(checkpoint):
    """Each DCP chunk must store the tensor its metadata describes (the bytes are read next)."""
    from ckpt_viewer.core.listing.readers.dcp import stored_chunk

    for key, tensor, _ in checkpoint.tensors():
        for offsets, sizes, span in tensor.chunks:
            try:
                stored_chunk(tensor, offsets, sizes, span, key)
            except CheckpointError as exc:
                raise Damaged(str(exc), key, getattr(exc, "record", "")) from None
    yield 0


def _storage_spans(checkpoint) -> list[FileSpan]:
    seen, spans = set(), []
    for _, tensor, _ in checkpoint.tensors():
        for part in list(tensor.parts.values()) or [tensor]:
            source = part.storage.source if part.storage is not None else None
            if isinstance(source, FileSpan) and id(source) not in seen:
                seen.add(id(source))
                spans.append(source)
        for _, _, span in tensor.chunks:
            if id(span) not in seen:
                seen.add(id(span))
                spans.append(span)
    return spans


def loadability(checkpoint) -> tuple[bool | None, list, str]:
    """(loads with weights_only, why not, the clause verify adds to its line): whether the
    file's reference loader takes it as it is, which says nothing about damage."""
    from ckpt_viewer.core.listing.globals import (
        FOLDER_FORMATS,
        TORCH_LOAD_FORMATS,
        loads_with_weights_only,
        triage,
    )

    uses = [u for u in triage(checkpoint) if u.category != "torch"]
    code = [u.name for u in uses if u.category == "code"]
    see = " \N{EM DASH} see `ckpt-viewer globals`"
    if code:
        clause = f"it names code its loader would run: {', '.join(code[:3])}{see}"
    else:
        clause = ""
    if checkpoint.format not in TORCH_LOAD_FORMATS and (
        checkpoint.format not in FOLDER_FORMATS or not checkpoint.globals_named
    ):
        return None, [], clause
    loads = loads_with_weights_only(checkpoint)
    refusals = list(checkpoint.refusals)
    if not loads and not clause:
        names = [u.name for u in uses]
        what = (
            ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")
            if names
            else (refusals[0] if refusals else "")
        )
        clause = f"torch.load(weights_only=True) refuses it: {what}{see}"
    return loads, refusals, clause


def verify(path: str) -> Generator[float, None, VerifyReport]:
    """Generator: yields progress in [0, 1]; returns VerifyReport. A missing or unrecognised
    path raises CheckpointError (the command line exits 2); a damaged one gives ok=False."""
    from ckpt_viewer.core.listing.open import (
        open_checkpoint,
        resolve_directory,
        resolve_prefix,
        sniff,
    )

    path = os.fspath(path)
    target = resolve_prefix(path)
    if not remote.is_remote(target) and not os.path.exists(target):
        raise CheckpointError("no such file or directory")
    target = resolve_directory(target) if remote.isdir(target) else target
    kind = sniff(target)
    report = VerifyReport(path=path, ok=True)
    try:
        try:
            checkpoint = open_checkpoint(target)  # structure, sizes and bounds
        except CheckpointError as exc:
            raise Damaged(str(exc), getattr(exc, "key", ""), getattr(exc, "record", "")) from None
        owners = _record_owners(checkpoint)
        if kind in ("torch_zip", "pt2", "npz"):
            files, runs = [target], [lambda report: _verify_zip(target, report, owners)]
        elif kind == "training_dir":
            files = _training_files(target, checkpoint)
            runs = [_shard_run(f, owners) for f in files]
            report.notes.append(plural(len(files), "file"))
        elif kind == "tensor_bundle":
            files = [target] + sorted({s.path for s in _storage_spans(checkpoint)})
            runs = [lambda report: _verify_bundle(target, report, owners)]
        elif kind == "hf_index":
            shards = sorted(
                {
                    s.source.path
                    for _, t, _ in checkpoint.tensors()
                    for s in [t.storage]
                    if s is not None and isinstance(s.source, (ZipMember, FileSpan))
                }
            )
            files = shards
            runs = [_shard_run(shard, owners) for shard in shards]
            report.notes.append(plural(len(shards), "shard"))
        else:
            spans = _storage_spans(checkpoint)
            files = sorted({s.path for s in spans})
            runs = [
                lambda report: _read_spans(spans, report, owners),
                lambda report: _decoded(checkpoint, report),
            ]
            if kind in ("dcp", "dcp_hf"):
                runs.insert(0, lambda report: _dcp_chunks(checkpoint))
            report.notes.append(
                "this format stores no checksums: sizes and offsets were "
                "checked and every byte was read"
            )
        total = sum(remote.getsize(f) for f in files) or 1
        done = 0
        for run in runs:
            for nbytes in run(report):
                done += nbytes
                yield min(done / total, 1.0)
        report.bytes = done
        report.loads_with_weights_only, report.refusals, report.loader_note = loadability(
            checkpoint
        )
    except (Damaged, CheckpointError) as exc:
        report.ok, report.problem = False, str(exc)
        report.tensor = getattr(exc, "tensor", "") or getattr(exc, "key", "")
        report.bad_record = getattr(exc, "record", "")
    except OSError as exc:
        report.ok, report.problem = False, f"read error ({exc.strerror or exc})"
    return report


def _training_files(folder: str, checkpoint) -> list[str]:
    """Every file of a training folder that holds data: its parts (JSON aside) and the shards
    an index part names."""
    from ckpt_viewer.core.listing.readers.training_dir import part_names

    files = {remote.join(folder, n) for n in part_names(folder) if not n.endswith(".json")}
    files |= {
        s.source.path
        for _, t, _ in checkpoint.tensors()
        for s in [t.storage]
        if s is not None and s.source is not None
    }
    return sorted(files)


def _shard_run(shard: str, owners: dict):
    def run(report):
        from ckpt_viewer.core.listing.open import open_file, sniff

        name = remote.basename(shard)
        try:
            checkpoint = open_file(shard)
            if sniff(shard) in ("torch_zip", "pt2"):
                yield from _verify_zip(shard, report, _record_owners(checkpoint))
            else:
                yield from _read_spans(_storage_spans(checkpoint), report, owners)
        except (Damaged, CheckpointError) as exc:
            raise Damaged(f"{name}: {exc}") from None

    return run


def check_tensor_records(tensor: TensorInfo) -> Generator[int, None, str]:
    """Generator: yields bytes checked; returns the problem of the first zip record holding
    this tensor's data that fails its CRC-32, or "" (other formats store no checksums)."""
    members = {}
    for part in list(tensor.parts.values()) or [tensor]:
        source = part.storage.source if part.storage is not None else None
        if isinstance(source, ZipMember):
            members[id(source)] = source
    for member in members.values():
        with remote.open_source(member.path) as f:
            try:
                yield from _check_member(member, f)
            except Damaged as exc:
                return str(exc)
    return ""
