"""ONNX models: initializers and constants listed, values equal to onnx.numpy_helper's."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.analysis.verify import verify
from ckpt_viewer.core.listing.open import open_checkpoint, sniff
from ckpt_viewer.core.values.read import read_array
from ckpt_viewer.core.values.stats import run

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def oracle(path) -> dict:
    """What onnx loads: every initializer and Constant value, external data included, of the
    graph and of the subgraphs its nodes hold (If branches, Loop/Scan bodies)."""
    model = onnx.load(str(path))
    found: dict = {}

    def walk(graph):
        found.update({t.name: numpy_helper.to_array(t) for t in graph.initializer})
        for node in graph.node:
            if node.op_type == "Constant":
                found[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
            for attribute in node.attribute:
                for sub in [attribute.g] if attribute.HasField("g") else attribute.graphs:
                    walk(sub)

    walk(model.graph)
    return found


def assert_listed_as_onnx_loads(path):
    ours = {key: read_array(t) for key, t, _ in open_checkpoint(str(path)).tensors()}
    theirs = oracle(path)
    assert sorted(ours) == sorted(theirs)
    for key, value in theirs.items():
        assert ours[key].shape == value.shape
        assert ours[key].tobytes() == value.tobytes(), key


def model_with(tensors, constants=()) -> onnx.ModelProto:
    nodes = [
        helper.make_node("Constant", [], [name], name=f"make_{name}", value=value)
        for name, value in constants
    ]
    graph = helper.make_graph(nodes, "g", [], [], initializer=list(tensors))
    return helper.make_model(graph, producer_name="test")


def test_torch_onnx_export(tmp_path):
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 4),), str(path), dynamo=False)
    assert sniff(str(path)) == "onnx"
    checkpoint = open_checkpoint(str(path))
    assert checkpoint.metadata["producer"].startswith("pytorch")
    assert {k for k, _, _ in checkpoint.tensors()} == set(model.state_dict())
    assert_listed_as_onnx_loads(path)


@pytest.mark.parametrize("raw", [True, False])
def test_dtypes_raw_and_typed_fields(tmp_path, raw):
    rng = np.random.default_rng(1)
    arrays = {
        "f32": rng.random((3, 4), dtype=np.float32),
        "f16": rng.random(5).astype(np.float16),
        "f64": rng.random(2),
        "i8": np.arange(-3, 3, dtype=np.int8),
        "u8": np.arange(6, dtype=np.uint8),
        "i32": np.arange(4, dtype=np.int32),
        "i64": np.array([-(2**40), 7]),
        "bool": np.array([True, False]),
        "scalar": np.array(2.5, dtype=np.float32),
    }
    tensors = [
        helper.make_tensor(
            name,
            helper.np_dtype_to_tensor_dtype(a.dtype),
            a.shape,
            a.tobytes() if raw else a.flatten().tolist(),
            raw=raw,
        )
        for name, a in arrays.items()
    ]
    constant = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "c")
    path = tmp_path / "dtypes.onnx"
    onnx.save(model_with(tensors, [("/const_out", constant)]), str(path))
    assert_listed_as_onnx_loads(path)
    node = open_checkpoint(str(path)).find("/const_out")
    assert "Constant node" in node.note


def test_external_data_read_by_range(tmp_path):
    weights = [numpy_helper.from_array(np.full((4, 4), i, np.float32), f"w{i}") for i in range(3)]
    path = tmp_path / "ext.onnx"
    onnx.save_model(
        model_with(weights),
        str(path),
        save_as_external_data=True,
        location="w.bin",
        size_threshold=0,
    )
    checkpoint = open_checkpoint(str(path))
    spans = [t.storage.source for _, t, _ in checkpoint.tensors()]
    assert {s.path for s in spans} == {str(tmp_path / "w.bin")}
    assert_listed_as_onnx_loads(path)
    assert run(verify(str(path))).ok
    (tmp_path / "w.bin").write_bytes((tmp_path / "w.bin").read_bytes()[:100])
    with pytest.raises(CheckpointError, match="past the end"):
        open_checkpoint(str(path))


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "sub/../../x.bin"])
def test_external_data_outside_the_folder_is_refused(tmp_path, location):
    tensor = numpy_helper.from_array(np.zeros(4, np.float32), "w")
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    path = tmp_path / "bad.onnx"
    onnx.save(model_with([tensor]), str(path))
    with pytest.raises(CheckpointError, match="outside the model's folder"):
        open_checkpoint(str(path))


def test_raw_data_of_the_wrong_size_is_refused(tmp_path):
    tensor = numpy_helper.from_array(np.zeros(4, np.float32), "w")
    tensor.raw_data = bytes(12)
    path = tmp_path / "short.onnx"
    onnx.save(model_with([tensor]), str(path))
    with pytest.raises(CheckpointError, match="needs 16"):
        open_checkpoint(str(path))


def test_damaged_protobuf_is_one_line(tmp_path):
    path = tmp_path / "cut.onnx"
    raw = model_with([numpy_helper.from_array(np.zeros(64, np.float32), "w")])
    path.write_bytes(raw.SerializeToString()[:-40])
    with pytest.raises(CheckpointError) as caught:
        open_checkpoint(str(path))
    assert "\n" not in str(caught.value)


def test_sparse_initializers_are_named_in_a_warning(tmp_path):
    values = numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "s")
    indices = numpy_helper.from_array(np.array([0, 3], np.int64), "s_indices")
    model = model_with([numpy_helper.from_array(np.zeros(2, np.float32), "w")])
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [4]))
    path = tmp_path / "sparse.onnx"
    onnx.save(model, str(path))
    checkpoint = open_checkpoint(str(path))
    assert [k for k, _, _ in checkpoint.tensors()] == ["w"]
    assert "1 sparse initializer(s) not listed" in checkpoint.warnings[0]


def test_subgraph_initializers_are_listed(tmp_path):
    """An If node's branches carry their own initializers and constants (a torch.onnx export
    of data-dependent control flow does): listed and read as onnx loads them."""
    rng = np.random.default_rng(0)
    then_w = numpy_helper.from_array(rng.random((2, 3), dtype=np.float32), "then_w")
    else_w = numpy_helper.from_array(np.arange(6, dtype=np.int64).reshape(2, 3), "else_w")
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    then_graph = helper.make_graph(
        [helper.make_node("Identity", ["then_w"], ["y"])], "then", [], [out], [then_w]
    )
    inner = helper.make_node(
        "Constant", [], ["k"], value=numpy_helper.from_array(np.float32([1.5]), "k")
    )
    else_graph = helper.make_graph(
        [inner, helper.make_node("Cast", ["else_w"], ["y"], to=TensorProto.FLOAT)],
        "else",
        [],
        [out],
        [else_w],
    )
    cond = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
    node = helper.make_node("If", ["c"], ["y"], then_branch=then_graph, else_branch=else_graph)
    graph = helper.make_graph([node], "g", [cond], [out])
    path = tmp_path / "if.onnx"
    onnx.save(helper.make_model(graph, producer_name="test"), str(path))
    assert {"then_w", "else_w", "k"} <= set(oracle(path))
    assert_listed_as_onnx_loads(path)
