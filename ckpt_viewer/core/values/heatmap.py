"""Heatmap-sized views of a tensor's last two dimensions: max-magnitude pooling in bounded
strips, and conv kernels as a grid of square kernels."""

from __future__ import annotations

import math

import numpy as np

from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.listing.model import TensorInfo
from ckpt_viewer.core.values.decode import numpy_readable
from ckpt_viewer.core.values.read import read_window

POOL_STRIP = 1 << 22  # elements read at a time by pooled_2d


def _largest_magnitude(block: np.ndarray, row_step: int, col_step: int) -> np.ndarray:
    """Each row_step x col_step cell of block -> its value of largest |x| (sign kept; NaN
    only when the whole cell is NaN)."""
    height, width = block.shape
    padded = np.full((-(-height // row_step) * row_step, -(-width // col_step) * col_step), np.nan)
    padded[:height, :width] = block
    cells = padded.reshape(padded.shape[0] // row_step, row_step, -1, col_step)
    cells = cells.transpose(0, 2, 1, 3).reshape(cells.shape[0], cells.shape[2], -1)
    magnitude = np.abs(cells)
    magnitude[np.isnan(magnitude)] = -1.0
    pick = magnitude.argmax(axis=2)[..., None]
    return np.take_along_axis(cells, pick, axis=2)[..., 0]


def pooled_2d(tensor: TensorInfo, leading: tuple = (), limit: int = 1024):
    """Generator (yields progress 0..1, returns (array, row step, column step)): the last two
    dimensions reduced to at most limit x limit cells, each cell holding the value of largest
    magnitude of its block, so a single spike survives (every k-th row would drop it).
    Complex tensors are reduced by magnitude. It reads at most about POOL_STRIP elements
    between two yields (rows wider than that in column blocks), so closing it stops the read
    within one block."""
    shape = tensor.shape if len(tensor.shape) >= 2 else (tensor.numel, 1)
    n_rows, n_cols = shape[-2], shape[-1]
    row_step, col_step = max(1, -(-n_rows // limit)), max(1, -(-n_cols // limit))
    if not n_rows or not n_cols:
        return np.zeros((-(-n_rows // row_step), -(-n_cols // col_step))), row_step, col_step
    # whole cells in every block: rows by multiples of row_step, columns of col_step
    strip_rows = max(1, POOL_STRIP // n_cols // row_step) * row_step
    block_cols = max(1, POOL_STRIP // (strip_rows * col_step)) * col_step
    blocks = -(-n_rows // strip_rows) * -(-n_cols // block_cols)
    window = _window_source(tensor, leading)
    strips, done = [], 0
    for start in range(0, n_rows, strip_rows):
        rows = range(start, min(start + strip_rows, n_rows))
        pieces = []
        for first in range(0, n_cols, block_cols):
            block = window(rows, range(first, min(first + block_cols, n_cols)))
            block = np.abs(block) if np.iscomplexobj(block) else block.astype(np.float64)
            pieces.append(_largest_magnitude(block, row_step, col_step))
            done += 1
            yield done / blocks
        strips.append(np.concatenate(pieces, axis=1))
    return np.concatenate(strips), row_step, col_step


def _window_source(tensor: TensorInfo, leading: tuple):
    """(rows, cols) -> that window of the slice. A tensor only torch can read (DCP,
    per-channel quantized...) comes whole from read_window, so it is read once, not per block."""
    if len(tensor.shape) == 0 or tensor.layout == "ggml" or numpy_readable(tensor):
        return lambda rows, cols: read_window(tensor, leading, rows, cols)
    whole: list[np.ndarray] = []

    def window(rows: range, cols: range) -> np.ndarray:
        if not whole:
            n_rows = tensor.shape[-2] if len(tensor.shape) >= 2 else tensor.shape[0]
            n_cols = tensor.shape[-1] if len(tensor.shape) >= 2 else 1
            whole.append(read_window(tensor, leading, range(n_rows), range(n_cols)))
        return whole[0][rows.start : rows.stop, cols.start : cols.stop]

    return window


def filter_grid_columns(filters: int) -> int:
    """Tiles per row of `filter_grid`: near square."""
    return max(math.ceil(math.sqrt(filters)), 1)


def filter_grid(
    tensor: TensorInfo, in_channel: int = 0, max_filters: int = 64, pad: float = np.nan
):
    """Generator (yields progress 0..1 after each output channel, returns the mosaic): conv
    kernels [out, in, kh, kw] as a near-square grid of kh x kw tiles, one per output channel
    (its kernel for `in_channel`), row by row, a `pad` line between tiles."""
    out_channels, in_channels, kh, kw = tensor.shape
    if not 0 <= in_channel < in_channels:
        raise CheckpointError("slice indices are out of range")
    count = min(out_channels, max_filters)
    columns = filter_grid_columns(count)
    rows = math.ceil(count / columns)
    values = np.full((rows * (kh + 1) - 1, columns * (kw + 1) - 1), pad, np.float32)
    for o in range(count):
        top, left = (o // columns) * (kh + 1), (o % columns) * (kw + 1)
        tile = read_window(tensor, (o, in_channel), range(kh), range(kw))
        values[top : top + kh, left : left + kw] = tile
        yield (o + 1) / count
    return values
