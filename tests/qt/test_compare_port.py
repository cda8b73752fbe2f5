"""The Compare tab pairs Flax (or Keras) variables with a torch state_dict by the porting map:
a Rule column names the rule of each pair, the summary lists what no rule takes, and a selected
pair's plots read the ported (transposed) tensor."""

import numpy as np
import pytest
import torch

import builders
from ckpt_viewer.core.analysis.diff import diff
from ckpt_viewer.core.listing.open import open_checkpoint
from ckpt_viewer.core.progress import run
from ckpt_viewer.core.values.read import read_array
from ckpt_viewer.qt.compare_view import CompareModel, CompareView


def _files(tmp_path):
    serialization = pytest.importorskip("flax.serialization")
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(3, 2)).astype(np.float32)
    bias = rng.normal(size=(2,)).astype(np.float32)
    tree = {"params": {"Dense_0": {"kernel": kernel, "bias": bias}, "odd": {"w": bias}}}
    flax_file = tmp_path / "flax_model.msgpack"
    flax_file.write_bytes(serialization.msgpack_serialize(tree))
    state = {"Dense_0.weight": torch.from_numpy(kernel.T.copy()), "Dense_0.bias": torch.ones(2)}
    return str(flax_file), builders.save(state, tmp_path / "torch.pt"), kernel


def test_compare_names_the_porting_rule_of_each_pair(qapp, tmp_path, synchronous_jobs):
    flax_file, torch_file, kernel = _files(tmp_path)
    a, b = open_checkpoint(flax_file), open_checkpoint(torch_file)
    report = run(diff(a, b, auto_align=True))
    model = CompareModel(report)
    rule = model.columns.index("Rule")
    cells = {
        model.index(r, 0).data(): (model.index(r, 1).data(), model.index(r, rule).data())
        for r in range(model.rowCount())
    }
    assert cells == {
        "Dense_0.weight": ("= identical", "Flax Dense: kernel.T"),
        "Dense_0.bias": ("\u2260 values differ", "Flax Dense: bias"),
    }
    view = CompareView(report, a, b, lambda: None)
    assert "A ported to PyTorch keys and layouts" in view.summary.text()
    assert "1 variable no rule takes: params.odd.w" in view.summary.text()
    assert view.select_key("Dense_0.weight")
    # the plots read the ported side: the kernel transposed, as torch holds it
    assert view.plot_status.text() == "Dense_0.weight: no finite values to plot"  # no pyqtgraph
    ported = report.compared[0].find("Dense_0.weight").tensor
    assert np.array_equal(read_array(ported), kernel.T)


def test_compare_of_torch_files_has_no_rule_column(qapp, tmp_path):
    a = builders.save({"w": torch.ones(2)}, tmp_path / "a.pt")
    model = CompareModel(run(diff(open_checkpoint(a), open_checkpoint(a))))
    assert "Rule" not in model.columns
