"""The Compare tab shows an undefined cosine (both sides all zero) as such, never as 1."""

import torch

import builders
from ckpt_viewer.core.analysis.diff import diff
from ckpt_viewer.core.listing.open import open_checkpoint
from ckpt_viewer.core.progress import run
from ckpt_viewer.qt.compare_view import COLUMNS, CompareModel


def test_compare_tab_cosine_of_zeros_is_not_applicable(qapp, tmp_path):
    a = builders.save({"zero": torch.zeros(4), "w": torch.ones(4)}, tmp_path / "a.pt")
    b = builders.save({"zero": torch.zeros(4), "w": torch.ones(4) * 2}, tmp_path / "b.pt")
    model = CompareModel(run(diff(open_checkpoint(a), open_checkpoint(b))))
    column = COLUMNS.index("cosine")
    cells = {
        model.index(row, 0).data(): model.index(row, column).data()
        for row in range(model.rowCount())
    }
    assert cells == {"zero": "n/a (both zero)", "w": "1.000000"}
