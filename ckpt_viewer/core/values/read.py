"""Read tensor values on demand: the entry points (chunks in logical order, the whole array,
a 2-D window), each choosing how the tensor is read.

Common dtypes are read with numpy in chunks straight from the file (no torch import, which
alone costs more time and memory than most reads); bfloat16 and float8 are widened by bit manipulation. Anything
else (quantized per-channel, complex32, DCP chunks, float4) is materialised through torch.
A compressed zip record is inflated, never memory-mapped (mmap would yield its raw bytes).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator

import numpy as np

from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.listing import remote
from ckpt_viewer.core.listing.model import FileSpan, TensorInfo, ZipMember
from ckpt_viewer.core.values.dcp import dcp_slabs
from ckpt_viewer.core.values.decode import (
    NUMPY_DTYPES,
    apply_view_bits,
    numpy_readable,
    tensor_np_dtype,
    widen,
)
from ckpt_viewer.core.values.ggml import ggml_elements, ggml_window
from ckpt_viewer.core.values.storage import DIRECT_ALIGN, StorageReader
from ckpt_viewer.core.values.strided import gather, iter_raw_chunks, rechunked, strided_array
from ckpt_viewer.core.values.torch_bridge import read_tensor, to_numpy, torch_chunks


def iter_chunks(
    tensor: TensorInfo,
    chunk_elements: int = 1 << 20,
    readahead: int = 0,
    mapped: bool = True,
    into: np.ndarray | None = None,
):
    """The tensor's elements as widened numpy chunks of chunk_elements each (the last may be
    shorter), in logical (C) order, read-only; memory stays bounded whatever the strides.
    A sparse tensor yields its stored values only. `readahead`, `mapped`, `into` (a reused
    buffer: a chunk is valid only until the next is asked for): see iter_raw_chunks."""
    if "values" in tensor.parts:
        yield from iter_chunks(tensor.parts["values"], chunk_elements, readahead, mapped, into)
        return
    if tensor.layout == "ggml":
        for start in range(0, tensor.numel, chunk_elements):
            yield ggml_elements(
                tensor, tensor.offset + start, min(chunk_elements, tensor.numel - start)
            )
        return
    if tensor.chunks and tensor.dtype in NUMPY_DTYPES:  # DCP: row slabs, never whole
        numbers = np.dtype("<" + NUMPY_DTYPES[tensor.dtype])
        slabs = (
            widen(slab.view(numbers), tensor.dtype)
            for slab in dcp_slabs(tensor, chunk_elements * numbers.itemsize)
        )
        yield from rechunked(slabs, chunk_elements)
        return
    if not numpy_readable(tensor):
        yield from torch_chunks(read_tensor(tensor), chunk_elements)
        return
    dtype = tensor_np_dtype(tensor)
    for raw in iter_raw_chunks(tensor, dtype, chunk_elements, readahead, mapped, into):
        yield widen(apply_view_bits(raw, tensor), tensor.dtype, tensor.quantizer)


def blockwise(tensor: TensorInfo) -> bool:
    """Whether read_blocks reads this tensor well, a part as cheaply as the whole: contiguous
    values numpy reads, stored as they are in a local file (a compressed record would be
    inflated whole for every part read, a URL asked once per block)."""
    if not (tensor.is_contiguous and numpy_readable(tensor)):
        return False
    assert tensor.storage is not None  # numpy_readable
    source = tensor.storage.source
    if isinstance(source, ZipMember) and source.compress_type == zipfile.ZIP_STORED:
        return not remote.is_remote(source.path)
    return isinstance(source, FileSpan) and not remote.is_remote(source.path)


def read_blocks(
    tensor: TensorInfo, first: int, count: int, into: np.ndarray
) -> Iterator[np.ndarray]:
    """Elements [first, first+count) of a `blockwise` tensor, widened, in blocks of as many
    as `into` (uint8) holds, read into it with pread: each block is valid only until the next
    is asked for (StorageReader.blocks)."""
    dtype = tensor_np_dtype(tensor)
    reader = StorageReader(tensor.storage)
    for raw in reader.blocks(tensor.offset + first, count, into, dtype):
        yield widen(apply_view_bits(raw, tensor), tensor.dtype, tensor.quantizer)


PREFETCH_PIECE = 4 << 20  # bytes per read-ahead request: Linux reads at most about this much of
# one POSIX_FADV_WILLNEED (its read-ahead window or the disk's largest request) and drops the rest
DIRECT_SLACK = 3 * DIRECT_ALIGN  # beyond a chunk: the blocks around it, and the buffer aligned


def iter_chunks_ahead(
    tensor: TensorInfo,
    chunk_elements: int,
    ahead: int,
    buffers: np.ndarray,
    direct: bool = False,
) -> Iterator[np.ndarray]:
    """iter_chunks for a streaming pass that overlaps reading and computing: chunk k of a
    contiguous tensor is read into buffers[k % len(buffers)] (uint8 rows, each at least a
    chunk's bytes, + DIRECT_SLACK with `direct`), so it stays valid while the next
    len(buffers) - 1 are read. With pread the OS is asked for the `ahead` bytes after it in
    pieces it does not cut short. `direct` (a pass larger than memory): O_DIRECT reads where
    the file system has them, straight from the disk into the buffer, without the page cache's
    copy and page bookkeeping, which cost a cold pass more CPU than its arithmetic. Other
    layouts yield fresh arrays (iter_chunks without a buffer)."""
    if not (tensor.is_contiguous and numpy_readable(tensor)):
        yield from iter_chunks(tensor, chunk_elements, mapped=False)
        return
    reader = StorageReader(tensor.storage)
    dtype = tensor_np_dtype(tensor)
    piece = max(1, PREFETCH_PIECE // dtype.itemsize)
    window = max(piece, ahead // dtype.itemsize)
    fetched = 0  # elements asked of the OS, from the tensor's start
    fd = reader.direct_descriptor() if direct and tensor.numel else None
    try:
        for k, start in enumerate(range(0, tensor.numel, chunk_elements)):
            count = min(chunk_elements, tensor.numel - start)
            buffer = buffers[k % len(buffers)]
            raw = reader.read_direct(fd, tensor.offset + start, count, dtype, buffer)
            if raw is None:
                if fd is not None:  # the file system refused: buffered from here on
                    os.close(fd)
                    fd = None
                goal = min(tensor.numel, start + count + window)
                if goal - fetched >= window // 2 or (goal == tensor.numel and goal > fetched):
                    reader.prefetch(
                        [
                            (tensor.offset + a, min(piece, goal - a))
                            for a in range(fetched, goal, piece)
                        ],
                        dtype,
                    )
                    fetched = goal
                raw = reader.read(tensor.offset + start, count, dtype, buffer)
            yield widen(apply_view_bits(raw, tensor), tensor.dtype, tensor.quantizer)
    finally:
        if fd is not None:
            os.close(fd)


def read_array(tensor: TensorInfo, max_elements: int | None = None) -> np.ndarray:
    """The whole tensor as a widened numpy array in its shape (for heatmaps, value pages)."""
    if max_elements is not None and tensor.numel > max_elements:
        raise CheckpointError(
            f"tensor has {tensor.numel:,} elements; refusing to read more "
            f"than {max_elements:,} at once"
        )
    if tensor.layout == "ggml":
        return ggml_elements(tensor, tensor.offset, tensor.numel).reshape(tensor.shape)
    if not numpy_readable(tensor):
        return to_numpy(read_tensor(tensor))
    reader = StorageReader(tensor.storage)
    dtype = tensor_np_dtype(tensor)
    if tensor.is_contiguous:
        raw = reader.read(tensor.offset, tensor.numel, dtype).reshape(tensor.shape)
    else:
        raw = strided_array(tensor, dtype)
    return widen(apply_view_bits(raw, tensor), tensor.dtype, tensor.quantizer)


def read_window(
    tensor: TensorInfo, leading: tuple = (), rows: range = range(1), cols: range = range(1)
) -> np.ndarray:
    """A 2-D window of the tensor: fixed indices for the leading dimensions, then the given
    row and column ranges of the last two (a 1-D tensor is one column). Reads only those rows
    (each as one span), so paging through a 16 GB tensor never materialises it."""
    shape, stride = list(tensor.shape), list(tensor.stride)
    if len(shape) == 0:
        return read_array(tensor).reshape(1, 1)
    if len(shape) == 1:
        shape, stride = [shape[0], 1], [stride[0], 1]
        cols = range(0, 1)
    if len(leading) != len(shape) - 2 or any(not 0 <= i < n for i, n in zip(leading, shape)):
        raise CheckpointError("slice indices are out of range")
    if tensor.layout == "ggml":  # dequantized row by row (rows are whole blocks)
        return ggml_window(tensor, leading, shape, stride, rows, cols)
    if not numpy_readable(tensor):  # quantized per channel, DCP...: through torch
        full = read_array(tensor).reshape(shape)
        return full[tuple(leading)][
            rows.start : rows.stop : rows.step, cols.start : cols.stop : cols.step
        ]
    reader = StorageReader(tensor.storage)
    dtype = tensor_np_dtype(tensor)
    base = tensor.offset + sum(i * s for i, s in zip(leading, stride[:-2]))
    row_stride, col_stride = stride[-2], stride[-1]
    out = []
    for r in rows:
        # each row through a mapping of its span: a zero stride repeats, a huge one samples
        out.append(
            gather(
                reader,
                dtype,
                base + r * row_stride + cols.start * col_stride,
                (len(cols),),
                (cols.step * col_stride,),
            )
        )
    window = np.stack(out) if out else np.zeros((0, len(cols)), dtype)
    return widen(apply_view_bits(window, tensor), tensor.dtype, tensor.quantizer)
