"""Strided views read in logical order with bounded memory: sub-blocks gathered from mapped
spans, re-cut into fixed-size chunks."""

from __future__ import annotations

import copy
import math
import os

import numpy as np

from ckpt_viewer.core.listing.model import TensorInfo
from ckpt_viewer.core.values.decode import numpy_readable
from ckpt_viewer.core.values.storage import StorageReader, larger_than_memory


def iter_raw_chunks(
    tensor: TensorInfo,
    dtype: np.dtype,
    chunk_elements: int = 1 << 20,
    readahead: int = 0,
    mapped: bool = True,
    into: np.ndarray | None = None,
):
    """Stored elements (as `dtype` units) in logical order, chunk_elements at a time. Strided
    views (transposes, slices, expand's zero strides, as_strided overlaps) are gathered block by
    block from mapped spans, so neither the view nor its storage span is ever held whole.
    `readahead` (elements, larger than a chunk) asks the OS for that much ahead in large
    requests: readers that walk several files side by side otherwise send the disk one small
    read per file in turn, and a cold disk serves those far below its streaming rate.
    `mapped=False` reads contiguous chunks with pread (a copy) instead of mapping them: a few
    small reads from a cold file then wait on the disk without holding the GIL, so threads
    reading other tensors wait side by side (a page fault inside numpy may hold it). `into`
    (uint8, at least a chunk's bytes): contiguous chunks are read with pread into that one
    buffer, each valid only until the next is asked for: a streaming pass then neither faults
    in mapped pages nor allocates memory per chunk."""
    reader = StorageReader(tensor.storage)
    if tensor.is_contiguous:
        streaming = larger_than_memory(reader)
        fetched = 0  # elements already asked for, from the tensor's start
        for start in range(0, tensor.numel, chunk_elements):
            if readahead > chunk_elements:
                goal = min(tensor.numel, start + readahead)
                if goal > fetched and (goal - fetched >= readahead // 2 or goal == tensor.numel):
                    reader.prefetch([(tensor.offset + fetched, goal - fetched)], dtype)
                    fetched = goal
            if streaming and start >= 2 * chunk_elements:
                # the chunk before the last one is no longer mapped: drop it from the page
                # cache, or reading a file larger than memory evicts the window's own code
                # pages (the GUI then stalls hundreds of ms faulting them back in)
                reader.prefetch(
                    [(tensor.offset + start - 2 * chunk_elements, chunk_elements)],
                    dtype,
                    os.POSIX_FADV_DONTNEED,
                )
            ahead = start + chunk_elements
            if ahead < tensor.numel and readahead <= chunk_elements:
                # the next chunk is read by the OS while this one is computed: a cold page
                # faulted in by a numpy call that holds the GIL froze the window for the read
                reader.prefetch(
                    [(tensor.offset + ahead, min(chunk_elements, tensor.numel - ahead))], dtype
                )
            first, count = tensor.offset + start, min(chunk_elements, tensor.numel - start)
            if into is not None:
                yield reader.read(first, count, dtype, into)
            else:
                yield (reader.mapped if mapped else reader.read)(first, count, dtype)
        return
    shape, stride = _merged_dims(tensor.shape, tensor.stride)
    blocks = (
        gather(reader, dtype, offset, block_shape, block_stride).reshape(-1)
        for offset, block_shape, block_stride in _blocks(
            tensor.offset, shape, stride, chunk_elements
        )
    )
    yield from rechunked(blocks, chunk_elements)


SPAN_LIMIT = 1 << 24  # storage elements one gathered block may span (a mapping, not memory)


def _merged_dims(shape, stride) -> tuple:
    """The same logical order with size-1 dims dropped and row-major neighbours merged."""
    dims = [(n, s) for n, s in zip(shape, stride) if n != 1]
    merged: list[tuple[int, int]] = []
    for n, s in dims:
        if merged and merged[-1][1] == s * n:
            merged[-1] = (merged[-1][0] * n, s)
        else:
            merged.append((n, s))
    return tuple(n for n, _ in merged), tuple(s for _, s in merged)


def _span(shape, stride) -> int:
    """Storage elements between the first and last element touched, inclusive."""
    if 0 in shape:
        return 0
    return 1 + sum((n - 1) * abs(s) for n, s in zip(shape, stride))


def _blocks(offset: int, shape: tuple, stride: tuple, limit: int):
    """(offset, shape, stride) sub-views in logical order, each of at most `limit` elements
    spanning at most SPAN_LIMIT storage elements."""
    if math.prod(shape) <= limit and _span(shape, stride) <= SPAN_LIMIT:
        yield offset, shape, stride
        return
    rows, step = shape[0], stride[0]
    inner_shape, inner_stride = shape[1:], stride[1:]
    inner_numel, inner_span = math.prod(inner_shape), _span(inner_shape, inner_stride)
    if inner_numel <= limit and inner_span <= SPAN_LIMIT:
        per_block = limit // max(inner_numel, 1)
        if step:
            per_block = min(per_block, (SPAN_LIMIT - inner_span) // abs(step) + 1)
        per_block = max(1, per_block)
        for row in range(0, rows, per_block):
            yield offset + row * step, (min(per_block, rows - row),) + inner_shape, stride
        return
    for row in range(rows):
        yield from _blocks(offset + row * step, inner_shape, inner_stride, limit)


def gather(
    reader: StorageReader, dtype: np.dtype, offset: int, shape: tuple, stride: tuple
) -> np.ndarray:
    """A contiguous copy of one strided view, read through a mapping of the span it touches."""
    if 0 in shape:
        return np.zeros(shape, dtype)
    first = offset + sum((n - 1) * s for n, s in zip(shape, stride) if s < 0)
    base = reader.mapped(first, _span(shape, stride), dtype)
    view = np.lib.stride_tricks.as_strided(
        base[offset - first :], shape, [s * dtype.itemsize for s in stride], writeable=False
    )
    return np.ascontiguousarray(view)


def rechunked(blocks, size: int):
    """Blocks re-cut into pieces of exactly `size` elements (the last may be shorter)."""
    pending, held = [], 0
    for block in blocks:
        if not held and block.size == size:
            yield block
            continue
        pending.append(block)
        held += block.size
        while held >= size:
            joined = np.concatenate(pending)
            yield joined[:size]
            rest = joined[size:]
            pending, held = ([rest] if rest.size else []), rest.size
    if held:
        yield np.concatenate(pending)


def unordered_view(tensor: TensorInfo) -> tuple[TensorInfo, int]:
    """(a view holding each distinct element position once, repetitions of each) - for
    order-free statistics: zero-stride dims (expand) repeat the same values, so they are
    dropped and counted; negative strides are flipped and dims sorted by stride, which turns
    transposes back into contiguous reads."""
    reorderable = numpy_readable(tensor) or (
        tensor.storage is not None
        and not tensor.parts
        and not tensor.chunks
        and (tensor.layout == "strided" or "scale" in tensor.quantizer)
    )
    if not reorderable or tensor.is_contiguous or tensor.numel == 0:
        return tensor, 1
    repeat, offset, dims = 1, tensor.offset, []
    for n, s in zip(tensor.shape, tensor.stride):
        if s == 0:
            repeat *= n
        elif s < 0:
            offset += (n - 1) * s
            dims.append((n, -s))
        elif n != 1:
            dims.append((n, s))
    dims.sort(key=lambda d: -d[1])
    view = copy.copy(tensor)
    view.shape, view.stride, view.offset = (
        tuple(n for n, _ in dims),
        tuple(s for _, s in dims),
        offset,
    )
    return view, repeat


def strided_array(tensor: TensorInfo, dtype: np.dtype) -> np.ndarray:
    """A non-contiguous view as a contiguous copy (the view's own size; its span is never
    read whole)."""
    out = np.empty(tensor.numel, dtype)
    filled = 0
    for piece in iter_raw_chunks(tensor, dtype):
        out[filled : filled + piece.size] = piece
        filled += piece.size
    return out.reshape(tensor.shape)
