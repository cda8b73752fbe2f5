"""The heatmap's reduction of big matrices: each cell holds its block's value of largest
magnitude, so a single spike survives (every k-th row dropped it)."""

import numpy as np
import pytest
import torch

import builders
from ckpt_viewer.core import values as values_module
from ckpt_viewer.core.open import open_checkpoint
from ckpt_viewer.core.stats import run
from ckpt_viewer.core.values import pooled_2d


def reference(matrix: np.ndarray, row_step: int, col_step: int) -> np.ndarray:
    rows = -(-matrix.shape[0] // row_step)
    cols = -(-matrix.shape[1] // col_step)
    out = np.empty((rows, cols))
    for r in range(rows):
        for c in range(cols):
            cell = matrix[r * row_step:(r + 1) * row_step, c * col_step:(c + 1) * col_step]
            out[r, c] = cell.flat[np.argmax(np.abs(cell))]
    return out


@pytest.mark.parametrize("strip", [values_module.POOL_STRIP, 300])
def test_pooled_keeps_spikes_and_signs(tmp_path, monkeypatch, strip):
    monkeypatch.setattr(values_module, "POOL_STRIP", strip)
    torch.manual_seed(0)
    matrix = torch.randn(3, 203, 97) * 0.01
    matrix[1, 101, 33] = -50.0            # one spike in a row every-k-th sampling skips
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
    np.testing.assert_array_equal(values, [[5.0, 1.0], [0.0, 2.0]])   # magnitudes
    assert (row_step, col_step) == (1, 1)
    values, row_step, _ = run(pooled_2d(checkpoint.find("v").tensor, limit=2))
    np.testing.assert_array_equal(values, [[1.0], [-3.0]])            # NaN loses to a number
    assert row_step == 2
