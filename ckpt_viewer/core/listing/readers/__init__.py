"""One module per container kind; each turns a path into a Checkpoint without torch."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.listing.model import Checkpoint, Node, Storage, TensorInfo
from ckpt_viewer.core.listing.pickle_scan import pickle_end
from ckpt_viewer.core.listing.remote import getsize
from ckpt_viewer.core.listing.safe_pickle import (
    TORCH_ALLOWED,
    PickleReport,
    dtype_of_storage,
    safe_load,
)
from ckpt_viewer.core.listing.tree import build_tree

MAX_PICKLE_BYTES = 512 * 1024 * 1024  # a data.pkl beyond this is refused, not inflated


def pickle_checkpoint(
    path: str,
    fmt: str,
    data: bytes,
    storage_factory: Callable[[Any], object] | None,
    file_bytes: int | None = None,
    report: PickleReport | None = None,
    **extra: Any,
) -> Checkpoint:
    """Unpickle `data` into a checkpoint with its tree, globals, refusals and bounds checked."""
    report = report if report is not None else PickleReport()
    try:
        obj, _ = safe_load(data, storage_factory, report=report)
    except CheckpointError as exc:
        called = [name for name in report.calls if name not in TORCH_ALLOWED]
        if not called:
            raise
        # torch.load(weights_only=False) would have made these calls before failing too
        exc.args = (
            f"{exc}; before that point its pickle calls {', '.join(called[:4])}, "
            "which torch.load(weights_only=False) would run",
        )
        raise
    warnings: list[str] = []
    optimizer_nodes: list[Node] = []
    tensors: list[tuple[str, TensorInfo, Node]] = []
    scalars: dict[str, object] = {}
    checkpoint = Checkpoint(
        path=str(path),
        format=fmt,
        file_bytes=getsize(path) if file_bytes is None else file_bytes,
        root=build_tree(obj, warnings, optimizer_nodes, tensors, scalars),
        warnings=warnings,
        optimizer_nodes=optimizer_nodes,
        unsafe_globals=[g for g in report.unsafe_globals if not g.startswith("__torch__.")],
        refusals=report.refusals,
        **extra,
    )
    checkpoint.globals_named = dict(report.globals)
    checkpoint.global_calls = report.calls
    checkpoint.global_paths, checkpoint.global_code = report.paths, report.code
    checkpoint.root_object = obj  # what sanitize rewrites
    # found while building the tree: Checkpoint.tensors() and .scalars() walk it no more
    checkpoint._tensors, checkpoint._scalars = tensors, scalars
    # bounds were checked as each tensor was built (safe_pickle.set_geometry; records refuse
    # BUILD), and are checked again where bytes are read (values.StorageReader)
    return checkpoint


LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def unread_storage(pid: Any) -> Storage:
    """A storage a pickle refers to whose bytes are not looked at (zip or legacy ids)."""
    length = len(pid) if isinstance(pid, tuple) and len(pid) == 6 else 5
    storage_type, key, location, numel = storage_pid(pid, length)[:4]
    return Storage(str(key), dtype_of_storage(storage_type), numel, location)


def torch_load_pickles(raw: bytes, report: PickleReport) -> Any:
    """Every pickle torch.load(io.BytesIO(raw), weights_only=False) would unpickle, run through
    our unpickler instead (each global it names lands in `report`): a zip's .pkl records, or
    the pickles of a legacy stream, which torch unpickles one after the other (the first
    before it even checks the magic number). Returns the object held, or None. Raises
    CheckpointError where the bytes cannot be decoded (what was named so far is in `report`)."""
    if raw[:2] == b"PK":
        import zipfile  # only here: opening a file does not need it

        try:
            with zipfile.ZipFile(io.BytesIO(raw)) as zf:
                value = None
                for info in zf.infolist():  # same-named records too: each may be the one read
                    if info.filename.endswith(".pkl"):
                        if info.file_size > MAX_PICKLE_BYTES:
                            raise CheckpointError(f"{info.filename} is larger than 512 MB")
                        obj, _ = safe_load(zf.read(info), unread_storage, report=report)
                        if info.filename.endswith("data.pkl") and value is None:
                            value = obj
                return value
        except (
            zipfile.BadZipFile,
            zipfile.LargeZipFile,
            ValueError,
            OSError,
            EOFError,
            NotImplementedError,
        ) as exc:
            raise CheckpointError(f"zip archive cannot be read ({str(exc)[:80]})") from None
    start, value = 0, None
    for index in range(4):  # magic number, protocol version, sys_info, the object
        end = start + pickle_end(raw[start:])
        value, _ = safe_load(raw[start:end], unread_storage if index == 3 else None, report=report)
        if index == 0 and value != LEGACY_MAGIC:
            return value  # a plain pickle: torch raises only after running it
        start = end
    return value


def is_torch_save(raw: bytes) -> bool:
    """Would torch.load take these bytes as a checkpoint? A zip (its local header first, as
    torch's _is_zipfile tests) or a legacy stream (its magic number first); anything else it
    unpickles once, then refuses ("Invalid magic number; corrupt file?")."""
    if raw[:4] == b"PK\x03\x04":
        return True
    first: object
    try:
        first, _ = safe_load(raw[: pickle_end(raw)])
    except CheckpointError:
        return False
    return first == LEGACY_MAGIC


def storage_pid(pid: Any, length: int = 5) -> tuple[Any, ...]:
    """('storage', type, key, location, numel[, view]) from a persistent id, exactly `length`
    items as torch's loader unpacks it; returns the items after 'storage'."""
    if not isinstance(pid, tuple) or len(pid) != length or pid[0] not in ("storage", b"storage"):
        raise CheckpointError(f"unexpected persistent id {pid!r:.80}")
    storage_type, key, location, numel = pid[1:5]
    if isinstance(location, bytes):
        location = location.decode("ascii", "replace")
    if type(key) not in (str, int) or not isinstance(location, str) or type(numel) is not int:
        raise CheckpointError(f"malformed storage reference {pid!r:.80}")
    if numel < 0:
        raise CheckpointError(f"storage {key!r} declares a negative size")
    return (storage_type, key, location, numel) + tuple(pid[5:])
