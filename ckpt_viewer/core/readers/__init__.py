"""One module per container kind; each turns a path into a Checkpoint without torch."""

from __future__ import annotations

from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.model import Checkpoint
from ckpt_viewer.core.remote import getsize
from ckpt_viewer.core.safe_pickle import PickleReport, safe_load
from ckpt_viewer.core.tree import build_tree

MAX_PICKLE_BYTES = 512 * 1024 * 1024   # a data.pkl beyond this is refused, not inflated


def pickle_checkpoint(path, fmt, data, storage_factory, file_bytes=None, report=None,
                      **extra) -> Checkpoint:
    """Unpickle `data` into a checkpoint with its tree, globals, refusals and bounds checked."""
    report = report if report is not None else PickleReport()
    obj, _ = safe_load(data, storage_factory, report=report)
    warnings, optimizer_nodes, tensors, scalars = [], [], [], {}
    checkpoint = Checkpoint(path=str(path), format=fmt,
                            file_bytes=getsize(path) if file_bytes is None else file_bytes,
                            root=build_tree(obj, warnings, optimizer_nodes, tensors, scalars),
                            warnings=warnings,
                            optimizer_nodes=optimizer_nodes,
                            unsafe_globals=[g for g in report.unsafe_globals
                                            if not g.startswith("__torch__.")],
                            refusals=report.refusals, **extra)
    checkpoint.globals_named = dict(report.globals)
    checkpoint.global_calls = report.calls
    checkpoint.root_object = obj      # what sanitize rewrites
    # found while building the tree: Checkpoint.tensors() and .scalars() walk it no more
    checkpoint._tensors, checkpoint._scalars = tensors, scalars
    # bounds were checked as each tensor was built (safe_pickle.set_geometry; records refuse
    # BUILD), and are checked again where bytes are read (values.StorageReader)
    return checkpoint


def storage_pid(pid, length: int = 5) -> tuple:
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

