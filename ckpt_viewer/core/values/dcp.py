"""A DCP tensor's elements assembled from the chunks that overlap each slab of rows."""

from __future__ import annotations

import copy
import math

import numpy as np

from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.listing.model import DTYPE_SIZES, TensorInfo
from ckpt_viewer.core.values.decode import apply_view_bits, stored_order
from ckpt_viewer.core.values.strided import iter_raw_chunks


def dcp_slabs(tensor: TensorInfo, max_bytes: int = 16 << 20):
    """A DCP tensor's elements in C order as little-endian raw units (u1/u2/u4/u8 or void),
    a slab of whole dim-0 rows at a time: each slab is filled from the chunks that overlap it,
    read straight from their records in the data files. Memory: one slab (at least one row),
    whatever the tensor's size or how it is sharded."""
    from ckpt_viewer.core.listing.readers.dcp import stored_chunk

    itemsize = DTYPE_SIZES[tensor.dtype]
    unit = np.dtype(f"<u{itemsize}") if itemsize in (1, 2, 4, 8) else np.dtype(f"V{itemsize}")
    pieces = []
    for offsets, sizes, span in tensor.chunks:
        if len(offsets) != len(tensor.shape) or any(
            o < 0 or o + n > d for o, n, d in zip(offsets, sizes, tensor.shape)
        ):
            raise CheckpointError("DCP chunk reaches past its tensor")
        pieces.append((offsets, stored_chunk(tensor, offsets, sizes, span)))
    if not tensor.numel:
        return
    if not tensor.shape:  # 0-dim: one element, one chunk
        yield _chunk_block(pieces[0][1], unit)
        return
    rows, row_shape = tensor.shape[0], tuple(tensor.shape[1:])
    per_slab = max(1, max_bytes // max(1, math.prod(row_shape) * itemsize))
    for first in range(0, rows, per_slab):
        end = min(rows, first + per_slab)
        slab = np.zeros((end - first,) + row_shape, unit)
        for offsets, chunk in pieces:
            lo, hi = max(first, offsets[0]), min(end, offsets[0] + chunk.shape[0])
            if lo >= hi:
                continue
            view = copy.copy(chunk)
            view.offset = chunk.offset + (lo - offsets[0]) * chunk.stride[0]
            view.shape = (hi - lo,) + tuple(chunk.shape[1:])
            where = (slice(lo - first, hi - first),) + tuple(
                slice(o, o + n) for o, n in zip(offsets[1:], chunk.shape[1:])
            )
            slab[where] = _chunk_block(view, unit).reshape(view.shape)
        yield slab.reshape(-1)


def _chunk_block(view: TensorInfo, unit: np.dtype) -> np.ndarray:
    assert view.storage is not None  # a chunk's view of its stored bytes
    stored = unit.newbyteorder(stored_order(view.storage)) if unit.kind == "u" else unit
    raw = (
        np.concatenate(list(iter_raw_chunks(view, stored, max(1, view.numel))))
        if view.numel
        else np.zeros(0, stored)
    )
    return apply_view_bits(raw, view).astype(unit, copy=False)
