"""One module per container kind; each turns a path into a Checkpoint without torch."""

from __future__ import annotations

import os

from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.model import Checkpoint
from ckpt_viewer.core.safe_pickle import safe_load
from ckpt_viewer.core.tree import build_tree

MAX_PICKLE_BYTES = 512 * 1024 * 1024   # a data.pkl beyond this is refused, not inflated


def check_tensor_bounds(checkpoint: Checkpoint):
    """Every tensor must lie inside its storage; torch's meta/skip_data paths do not check."""
    for key, tensor, _ in checkpoint.tensors():
        for part in tensor.parts.values() if tensor.parts else (tensor,):
            storage = part.storage
            if storage is None:
                continue
            if min(part.stride, default=0) < 0:
                raise CheckpointError(f"tensor {key!r} has a negative stride")
            end = part.element_span()[1]
            if end > storage.numel and part.numel:
                raise CheckpointError(f"tensor {key!r} reaches element {end} but its storage "
                                      f"{storage.key!r} holds {storage.numel}")


def pickle_checkpoint(path, fmt, data, storage_factory, file_bytes=None, **extra) -> Checkpoint:
    """Unpickle `data` into a checkpoint with its tree, unsafe globals and bounds checked."""
    obj, unsafe = safe_load(data, storage_factory)
    warnings, optimizer_nodes = [], []
    checkpoint = Checkpoint(path=str(path), format=fmt,
                            file_bytes=os.path.getsize(path) if file_bytes is None else file_bytes,
                            root=build_tree(obj, warnings, optimizer_nodes), warnings=warnings,
                            optimizer_nodes=optimizer_nodes,
                            unsafe_globals=[g for g in unsafe if not g.startswith("__torch__.")],
                            **extra)
    check_tensor_bounds(checkpoint)
    return checkpoint


def storage_pid(pid) -> tuple:
    """Validate ('storage', type, key, location, numel[, ...]) from a persistent id."""
    if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
        raise CheckpointError(f"unexpected persistent id {pid!r:.80}")
    _, storage_type, key, location, numel = pid[:5]
    if not isinstance(key, str) or not isinstance(location, str) or type(numel) is not int:
        raise CheckpointError(f"malformed storage reference {pid!r:.80}")
    if numel < 0:
        raise CheckpointError(f"storage {key!r} declares a negative size")
    return storage_type, key, location, numel

