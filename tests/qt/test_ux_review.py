"""What the second UX review on a real display found annoying, fixed: each test drives the real
widgets the way the review did."""

import torch
from qt_helpers import open_and_wait

import builders


def test_summary_stays_at_its_top_when_the_memory_section_arrives(qtbot, window, tmp_path):
    """A summary shorter than its view scrolled to its end as "What it needs to run" was
    appended: the path and format left the view; the section's long lines wrap."""
    path = builders.save(
        {"0.weight": torch.zeros(64, 32), "0.bias": torch.zeros(64)}, tmp_path / "m.pt"
    )
    window.resize(1366, 768)
    open_and_wait(qtbot, window, path)
    tab = window.tabs.currentWidget()
    qtbot.waitUntil(lambda: "What it needs to run" in tab.summary.toPlainText(), timeout=10_000)
    bar = tab.summary.verticalScrollBar()
    assert bar.maximum() > 0  # the section made the summary taller than its view
    assert bar.value() == 0
    assert tab.summary.horizontalScrollBar().maximum() == 0
