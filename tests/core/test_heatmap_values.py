"""The heatmap's reduction of big matrices: each cell holds its block's value of largest
magnitude, so a single spike survives (every k-th row dropped it)."""

import numpy as np
import pytest
import torch

import builders
from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.listing.open import open_checkpoint
from ckpt_viewer.core.progress import run
from ckpt_viewer.core.values import heatmap
from ckpt_viewer.core.values.heatmap import pooled_2d


def reference(matrix: np.ndarray, row_step: int, col_step: int) -> np.ndarray:
    rows = -(-matrix.shape[0] // row_step)
    cols = -(-matrix.shape[1] // col_step)
    out = np.empty((rows, cols))
    for r in range(rows):
        for c in range(cols):
            cell = matrix[r * row_step : (r + 1) * row_step, c * col_step : (c + 1) * col_step]
            out[r, c] = cell.flat[np.argmax(np.abs(cell))]
    return out


@pytest.mark.parametrize("strip", [heatmap.POOL_STRIP, 300])
def test_pooled_keeps_spikes_and_signs(tmp_path, monkeypatch, strip):
    monkeypatch.setattr(heatmap, "POOL_STRIP", strip)
    torch.manual_seed(0)
    matrix = torch.randn(3, 203, 97) * 0.01
    matrix[1, 101, 33] = -50.0  # one spike in a row every-k-th sampling skips
    path = builders.save({"w": matrix}, tmp_path / "w.pt")
    info = open_checkpoint(path).find("w").tensor
    values, row_step, col_step = run(pooled_2d(info, (1,), limit=16))
    assert (row_step, col_step) == (13, 7)
    assert values.shape == (16, 14)
    expected = reference(matrix[1].double().numpy(), row_step, col_step)
    np.testing.assert_array_equal(values, expected)
    assert values.min() == -50.0


def test_pooled_small_and_complex(tmp_path):
    matrix = torch.tensor([[3 + 4j, 1j], [0, -2]], dtype=torch.complex64)
    vector = torch.tensor([1.0, float("nan"), -3.0])
    path = builders.save({"c": matrix, "v": vector}, tmp_path / "c.pt")
    checkpoint = open_checkpoint(path)
    values, row_step, col_step = run(pooled_2d(checkpoint.find("c").tensor))
    np.testing.assert_array_equal(values, [[5.0, 1.0], [0.0, 2.0]])  # magnitudes
    assert (row_step, col_step) == (1, 1)
    values, row_step, _ = run(pooled_2d(checkpoint.find("v").tensor, limit=2))
    np.testing.assert_array_equal(values, [[1.0], [-3.0]])  # NaN loses to a number
    assert row_step == 2


def counting_reads(monkeypatch):
    """Every read_window call pooled_2d makes, as (rows, columns) read."""
    reads, original = [], heatmap.read_window

    def read_window(tensor, leading, rows, cols):
        reads.append((len(rows), len(cols)))
        return original(tensor, leading, rows, cols)

    monkeypatch.setattr(heatmap, "read_window", read_window)
    return reads


def test_pooled_read_stops_between_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(heatmap, "POOL_STRIP", 500)
    path = builders.save({"w": torch.randn(400, 50)}, tmp_path / "w.pt")
    info = open_checkpoint(path).find("w").tensor
    reads = counting_reads(monkeypatch)
    job = pooled_2d(info)
    assert next(job) == 1 / 40 and next(job) == 2 / 40  # 10 rows of 50 at a time
    job.close()  # what a cancelled worker does
    assert reads == [(10, 50), (10, 50)]  # 2 of 40 chunks, then nothing


def test_pooled_wide_rows_are_read_in_column_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(heatmap, "POOL_STRIP", 300)
    torch.manual_seed(1)
    matrix = torch.randn(3, 2000)
    matrix[2, 1999] = 40.0
    path = builders.save({"w": matrix}, tmp_path / "w.pt")
    info = open_checkpoint(path).find("w").tensor
    reads = counting_reads(monkeypatch)
    values, row_step, col_step = run(pooled_2d(info, limit=100))
    assert (row_step, col_step) == (1, 20)
    np.testing.assert_array_equal(values, reference(matrix.double().numpy(), 1, 20))
    assert len(reads) > 3 and all(rows * cols <= 300 for rows, cols in reads)


def test_pooled_reads_a_torch_only_tensor_once(tmp_path, monkeypatch):
    monkeypatch.setattr(heatmap, "POOL_STRIP", 500)
    monkeypatch.setattr(heatmap, "numpy_readable", lambda tensor: False)  # as DCP
    matrix = torch.randn(400, 50)
    path = builders.save({"w": matrix}, tmp_path / "w.pt")
    info = open_checkpoint(path).find("w").tensor
    reads = counting_reads(monkeypatch)
    values, _, _ = run(pooled_2d(info))
    np.testing.assert_array_equal(values, matrix.double().numpy())
    assert reads == [(400, 50)]


def test_filter_grid_tiles_each_output_channel_in_a_square_grid(tmp_path):
    kernels = torch.randn(5, 2, 3, 3)
    path = builders.save({"k": kernels}, tmp_path / "k.pt")
    job = heatmap.filter_grid(open_checkpoint(path).find("k").tensor)
    assert next(job) == 1 / 5
    job.close()
    info = open_checkpoint(path).find("k").tensor
    grid = run(heatmap.filter_grid(info, in_channel=1))
    # 5 tiles of 3 x 3: 3 per row, 2 rows, a NaN line between tiles
    assert grid.shape == (2 * 4 - 1, 3 * 4 - 1)
    for o in range(5):
        top, left = (o // 3) * 4, (o % 3) * 4
        np.testing.assert_array_equal(grid[top : top + 3, left : left + 3], kernels[o, 1].numpy())
    assert np.isnan(grid[3]).all() and np.isnan(grid[:, 3]).all()
    assert np.isnan(grid[4:, 8:]).all()  # no sixth filter
    conv1 = torch.randn(64, 3, 7, 7)  # a ResNet stem: 8 x 8 square kernels, not a strip
    path = builders.save({"conv1.weight": conv1}, tmp_path / "stem.pt")
    grid = run(heatmap.filter_grid(open_checkpoint(path).find("conv1.weight").tensor))
    assert grid.shape == (63, 63)
    np.testing.assert_array_equal(grid[56:63, 56:63], conv1[63, 0].numpy())
    with pytest.raises(CheckpointError, match="out of range"):
        run(heatmap.filter_grid(info, in_channel=2))
