"""The pre-1.6 torch.save stream: magic, protocol, sys_info, object pickle, storage keys,
then each storage as <int64 numel><raw bytes>. Storages are indexed by offset, never read.

As torch reads it: any pickle protocol (torch.load(weights_only=True) itself refuses all but 2
and 3), text decoded as UTF-8, storage bytes always little-endian (torch ignores sys_info's
byte order), a storage's type and size fixed by its first reference, views sliced from the
root storage's bytes in the view's element size."""

from __future__ import annotations

import struct
from typing import Any, cast

from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.listing.model import DTYPE_SIZES, Checkpoint, FileSpan, Storage
from ckpt_viewer.core.listing.pickle_scan import pickle_end
from ckpt_viewer.core.listing.readers import MAX_PICKLE_BYTES, pickle_checkpoint, storage_pid
from ckpt_viewer.core.listing.remote import open_source
from ckpt_viewer.core.listing.safe_pickle import (
    PickleReport,
    Placeholder,
    dtype_of_storage,
    safe_load,
)

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001


class _Stream:
    """The open file and its size, read pickle by pickle."""

    def __init__(self, path: str) -> None:
        self.file = open_source(path)
        self.size = self.file.size

    def next_pickle(self) -> bytes:
        """The bytes of the pickle at the current position (found by walking its opcodes, in
        growing windows: the storages after the object pickle can be gigabytes)."""
        start = self.file.tell()
        window = 1 << 20
        while True:
            self.file.seek(start)
            data = self.file.read(window)
            try:
                end = pickle_end(data)
                break
            except CheckpointError:
                if len(data) < window or window >= MAX_PICKLE_BYTES:
                    raise
                window *= 16
        self.file.seek(start + end)
        return data[:end]

    def load(self, report: PickleReport | None = None) -> tuple[Any, list[str]]:
        return safe_load(self.next_pickle(), report=report)


def read(path: str) -> Checkpoint:
    stream = _Stream(path)
    try:
        return _read(path, stream)
    finally:
        stream.file.close()


def is_legacy(path: str) -> bool:
    """Whether the file starts with a pickle of torch's legacy magic number (any protocol)."""
    try:
        stream = _Stream(path)
    except OSError:
        return False
    try:
        magic: object = stream.load()[0]
        return magic == MAGIC_NUMBER
    except CheckpointError:
        return False
    finally:
        stream.file.close()


def _read(path: str, stream: _Stream) -> Checkpoint:
    report = PickleReport()
    magic, _ = stream.load(report)
    if magic != MAGIC_NUMBER:
        raise CheckpointError("not a PyTorch legacy file (bad magic number)")
    protocol, _ = stream.load(report)
    if protocol != PROTOCOL_VERSION:
        raise CheckpointError(f"unsupported legacy protocol version {protocol!r:.20}")
    sys_info, _ = stream.load(report)
    roots: dict[Any, Storage] = {}
    views: dict[Any, Storage] = {}
    spans: list[tuple[Storage, object, int]] = []

    def storage_factory(pid: Any) -> object:
        if isinstance(pid, tuple) and pid and pid[0] == "module":
            report.refuse(
                "it records module source code (torch's weights_only unpickler "
                "refuses these persistent ids)"
            )
            return pid[1] if len(pid) > 1 and isinstance(pid[1], type) else Placeholder()
        storage_type, key, location, numel, view = storage_pid(pid, 6)
        dtype = dtype_of_storage(storage_type, untyped_ok=False)
        root = roots.get(key)
        if root is None:
            root = roots[key] = Storage(
                str(key), dtype, numel, location, None, "little", resizable=True
            )
        if view is None:
            return root
        if not (
            isinstance(view, tuple)
            and len(view) == 3
            and type(view[1]) is int
            and type(view[2]) is int
            and view[1] >= 0
            and view[2] >= 0
        ):
            raise CheckpointError(f"malformed storage view of {key!r}")
        view_key, offset, count = view
        if view_key not in views:
            size = DTYPE_SIZES[dtype]
            storage = Storage(
                f"{key}[{offset}:{offset + count}]", dtype, count, location, None, "little"
            )
            spans.append((storage, key, offset * size))
            views[view_key] = storage
        return views[view_key]

    # Storages get their file spans once the storage section has been walked.
    checkpoint = pickle_checkpoint(
        path,
        "torch-legacy",
        stream.next_pickle(),
        storage_factory,
        file_bytes=stream.size,
        report=report,
    )
    keys, _ = stream.load(report)
    if not isinstance(keys, list) or not all(type(k) in (str, int) for k in keys):
        raise CheckpointError("legacy storage key list is malformed")
    _index_storages(stream, keys, roots, path)
    for storage, root_key, start in spans:
        root = roots[root_key]
        if start + storage.nbytes > root.nbytes:
            raise CheckpointError(f"storage view {storage.key!r} lies outside its storage")
        root_span = cast(FileSpan, root.source)  # every root got one in _index_storages
        storage.source = FileSpan(path, root_span.offset + start, storage.nbytes)
    checkpoint.refusals = report.refusals
    if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
        checkpoint.warnings.append(
            "the file's sys_info says it was written big-endian; torch "
            "ignores that and reads the bytes as little-endian, and so "
            "does this view"
        )
    return checkpoint


def _index_storages(stream: _Stream, keys: list[Any], roots: dict[Any, Storage], path: str) -> None:
    """Walk the storage section by offsets; check every declared size against the file."""
    offset = stream.file.tell()
    for key in keys:
        storage = roots.get(key)
        if storage is None:
            raise CheckpointError(f"legacy storage {key!r} is listed but never used")
        stream.file.seek(offset)
        header = stream.file.read(8)
        if len(header) < 8:
            raise CheckpointError(f"file ends before storage {key!r} (truncated?)")
        (numel,) = struct.unpack("<q", header)
        if numel < 0 or numel != storage.numel:
            raise CheckpointError(
                f"storage {key!r} declares {numel} elements but the "
                f"object pickle says {storage.numel}"
            )
        nbytes = numel * DTYPE_SIZES[storage.dtype]
        if offset + 8 + nbytes > stream.size:
            raise CheckpointError(
                f"storage {key!r} needs {nbytes:,} bytes at offset {offset + 8:,} "
                f"but the file is {stream.size:,} bytes (truncated?)"
            )
        storage.source = FileSpan(path, offset + 8, nbytes)
        offset += 8 + nbytes
    missing = [k for k, s in roots.items() if s.source is None]
    if missing:
        raise CheckpointError(f"legacy storage {missing[0]!r} has no data in the file")
