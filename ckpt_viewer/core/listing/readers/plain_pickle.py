"""A bare pickle stream (pickle.dump of a dict, numpy scalars...), read as data."""

from __future__ import annotations

from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.listing.model import Checkpoint
from ckpt_viewer.core.listing.readers import MAX_PICKLE_BYTES, pickle_checkpoint
from ckpt_viewer.core.listing.remote import getsize, open_source


def read(path: str) -> Checkpoint:
    if getsize(path) > MAX_PICKLE_BYTES:
        raise CheckpointError("bare pickle is larger than 512 MB; refusing to parse it")
    with open_source(path) as f:
        return pickle_checkpoint(path, "pickle", f.read(), storage_factory=None)
