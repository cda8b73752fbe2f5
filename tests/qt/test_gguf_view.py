"""A GGUF file in the window: a quantized tensor's statistics and heatmap on its dequantized
values."""

import sys
from pathlib import Path

import numpy as np
import pytest
from qt_helpers import open_and_wait

pytest.importorskip("gguf")
sys.path.insert(0, str(Path(__file__).parent.parent / "core"))
from test_gguf import oracle, weights, write_gguf  # noqa: E402
from test_tensor_view import select, stats_table  # noqa: E402


def test_quantized_tensor_stats_and_heatmap(qtbot, window, tmp_path):
    path = write_gguf(tmp_path / "m.gguf", weights())
    expected = oracle(path)["blk.1.ffn_up.weight"][2]
    open_and_wait(qtbot, window, str(path))
    tab = window.tabs.currentWidget()
    select(qtbot, tab, "blk.1.ffn_up.weight")
    view = tab.tensor_view
    table = stats_table(view)
    assert float(table["min"]) == pytest.approx(float(expected.min()), rel=1e-5)
    assert float(table["max"]) == pytest.approx(float(expected.max()), rel=1e-5)
    with qtbot.waitSignal(view.heatmap.ready, timeout=20_000):
        view.pages.setCurrentWidget(view.heatmap)
    assert np.array_equal(view.heatmap.image.image, expected)
