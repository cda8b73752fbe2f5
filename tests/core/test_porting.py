"""Porting Keras and Flax weights to PyTorch (`export --to-torch`, diff): the oracle is the
frameworks themselves. Keras (torch backend) and Flax models are saved with their own writers,
exported with --to-torch, loaded by torch's `load_state_dict(strict=True)` into the matching
torch module, and must give the same outputs as the source model on random input."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from ckpt_viewer.cli import main
from ckpt_viewer.core.analysis.diff import diff
from ckpt_viewer.core.analysis.porting import port
from ckpt_viewer.core.listing.open import open_checkpoint
from ckpt_viewer.core.progress import run
from ckpt_viewer.core.values.read import read_array

ATOL = 1e-5


def _keras():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip("keras runs another backend here")
    return keras


@pytest.fixture(scope="module", autouse=True)
def fresh_keras_names():
    """Keras numbers default names across a session: leave later tests the names they expect."""
    yield
    if "keras" in sys.modules:
        sys.modules["keras"].backend.clear_session()


def _channels_first(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A torch conv on Keras's channels-last input, its output channels-last again."""
    dims = x.dim()
    x = x.permute(0, dims - 1, *range(1, dims - 1))
    return conv(x).permute(0, *range(2, dims), 1)


def _keras_models(keras):
    """(name, keras model, torch module with the layers' names, torch forward, input)."""
    rng = np.random.default_rng(0)
    layers = keras.layers
    cases = []

    def case(name, inputs, outputs, modules, forward, x):
        model = keras.Model(inputs, outputs)
        for v in model.weights:  # random values everywhere: a misplaced element shows
            value = rng.normal(size=tuple(v.shape)).astype("float32")
            v.assign(np.abs(value) + 0.5 if "variance" in v.path else value)
        names = [layer.name for layer in model.layers if layer.weights]
        module = nn.Module()
        for layer_name, child in zip(names, modules):
            module.add_module(layer_name, child)
        cases.append((name, model, module, forward, x))

    x = keras.Input((5,))
    dense, bn, ln = layers.Dense(4), layers.BatchNormalization(), layers.LayerNormalization()
    dense2 = layers.Dense(3, use_bias=False)
    case(
        "dense",
        x,
        dense2(ln(bn(dense(x)))),
        [
            nn.Linear(5, 4),
            nn.BatchNorm1d(4, eps=1e-3),
            nn.LayerNorm(4, eps=1e-3),
            nn.Linear(4, 3, bias=False),
        ],
        lambda m, t: m.get_submodule(dense2.name)(
            m.get_submodule(ln.name)(m.get_submodule(bn.name)(m.get_submodule(dense.name)(t)))
        ),
        rng.normal(size=(3, 5)),
    )
    x = keras.Input((9, 3))
    conv1 = layers.Conv1D(4, 3)
    case(
        "conv1d",
        x,
        conv1(x),
        [nn.Conv1d(3, 4, 3)],
        lambda m, t: _channels_first(m.get_submodule(conv1.name), t),
        rng.normal(size=(2, 9, 3)),
    )
    x = keras.Input((7, 6, 2))
    conv2, depthwise = layers.Conv2D(3, (3, 2)), layers.DepthwiseConv2D((2, 2), depth_multiplier=2)
    case(
        "conv2d",
        x,
        depthwise(conv2(x)),
        [nn.Conv2d(2, 3, (3, 2)), nn.Conv2d(3, 6, (2, 2), groups=3)],
        lambda m, t: _channels_first(
            m.get_submodule(depthwise.name),
            _channels_first(m.get_submodule(conv2.name), t),
        ),
        rng.normal(size=(2, 7, 6, 2)),
    )
    x = keras.Input((4, 5, 4, 2))
    conv3 = layers.Conv3D(2, (2, 3, 2))
    case(
        "conv3d",
        x,
        conv3(x),
        [nn.Conv3d(2, 2, (2, 3, 2))],
        lambda m, t: _channels_first(m.get_submodule(conv3.name), t),
        rng.normal(size=(2, 4, 5, 4, 2)),
    )
    x = keras.Input((7,), dtype="int32")
    embedding = layers.Embedding(10, 4)
    case(
        "embedding",
        x,
        embedding(x),
        [nn.Embedding(10, 4)],
        lambda m, t: m.get_submodule(embedding.name)(t),
        rng.integers(0, 10, size=(2, 7)),
    )
    x = keras.Input((6, 3))
    lstm, gru = layers.LSTM(5, return_sequences=True), layers.GRU(4, return_sequences=True)
    case(
        "rnn",
        x,
        gru(lstm(x)),
        [nn.LSTM(3, 5, batch_first=True), nn.GRU(5, 4, batch_first=True)],
        lambda m, t: m.get_submodule(gru.name)(m.get_submodule(lstm.name)(t)[0])[0],
        rng.normal(size=(2, 6, 3)),
    )
    x = keras.Input((5, 6))
    attention = layers.MultiHeadAttention(num_heads=2, key_dim=3)
    case(
        "attention",
        x,
        attention(x, x),
        [nn.MultiheadAttention(6, 2, batch_first=True)],
        lambda m, t: m.get_submodule(attention.name)(t, t, t, need_weights=False)[0],
        rng.normal(size=(2, 5, 6)),
    )
    query, value = keras.Input((5, 6)), keras.Input((4, 4))
    cross = layers.MultiHeadAttention(num_heads=2, key_dim=3, use_bias=False)
    case(
        "cross_attention",  # key and value of another width: torch's separate projections
        [query, value],
        cross(query, value),
        [nn.MultiheadAttention(6, 2, bias=False, kdim=4, vdim=4, batch_first=True)],
        lambda m, q, v: m.get_submodule(cross.name)(q, v, v, need_weights=False)[0],
        [rng.normal(size=(2, 5, 6)), rng.normal(size=(2, 4, 4))],
    )
    return cases


@pytest.fixture(scope="module")
def keras_cases(tmp_path_factory):
    keras = _keras()
    keras.utils.set_random_seed(0)
    folder = tmp_path_factory.mktemp("porting")
    cases = []
    for name, model, module, forward, x in _keras_models(keras):
        model.save(folder / f"{name}.keras")
        model.save_weights(folder / f"{name}.weights.h5")
        model.save(folder / f"{name}.h5")  # legacy HDF5: the config in an attribute
        model.save_weights(folder / f"{name}.weights.json", max_shard_size=1e-6)  # shards
        expected = keras.ops.convert_to_numpy(model(x, training=False))
        cases.append((name, folder, module, forward, x, expected))
    return cases


def _outputs(module: nn.Module, forward, x: np.ndarray | list) -> np.ndarray:
    module.eval()
    inputs = [
        torch.from_numpy(a if a.dtype.kind == "i" else a.astype(np.float32))
        for a in (x if isinstance(x, list) else [x])
    ]
    with torch.no_grad():
        return forward(module, *inputs).numpy()


@pytest.mark.parametrize("suffix", [".keras", ".weights.h5", ".h5", ".weights.json"])
def test_keras_export_to_torch_loads_strictly_and_gives_the_same_outputs(
    keras_cases, suffix, capsys
):
    for name, folder, module, forward, x, expected in keras_cases:
        source = folder / f"{name}{suffix}"
        out = folder / f"{name}{suffix}.safetensors"
        assert main(["export", str(source), "-o", str(out), "--to-torch", "--force"]) == 0
        printed = capsys.readouterr().out
        assert "unmatched" not in printed
        state = load_file(out)
        module.load_state_dict(state, strict=True)
        np.testing.assert_allclose(_outputs(module, forward, x), expected, atol=ATOL, err_msg=name)
        for key in state:  # each tensor written is listed with its rule
            assert f"-> {key}  (" in printed


def test_keras_export_to_torch_pth(keras_cases, capsys):
    name, folder, module, forward, x, expected = keras_cases[5]  # LSTM and GRU
    out = folder / "rnn.pt"
    assert main(["export", str(folder / "rnn.keras"), "-o", str(out), "--to-torch"]) == 0
    assert "GRU: kernel.T, gates z,r,h -> r,z,n" in capsys.readouterr().out
    module.load_state_dict(torch.load(out, weights_only=True), strict=True)
    np.testing.assert_allclose(_outputs(module, forward, x), expected, atol=ATOL)


def test_diff_pairs_keras_variables_with_torch_keys_by_rule(keras_cases, tmp_path, capsys):
    for name, folder, module, _, _, _ in keras_cases:
        torch_file = tmp_path / f"{name}.pt"
        # the torch side: the module loaded by export (the same values, torch's own layout)
        exported = tmp_path / f"{name}.safetensors"
        assert (
            main(["export", str(folder / f"{name}.keras"), "-o", str(exported), "--to-torch"]) == 0
        )
        module.load_state_dict(load_file(exported), strict=True)
        state = module.state_dict()
        torch.save(state, torch_file)
        keras_checkpoint = open_checkpoint(str(folder / f"{name}.keras"))
        report = run(diff(keras_checkpoint, open_checkpoint(str(torch_file))))
        assert report.identical, name
        assert report.ported == "A" and len(report.tensors) == len(state)
        assert all(t.rule for t in report.tensors)
        # a perturbed tensor is found, under its torch key, after the transform
        perturbed = next(k for k, v in state.items() if v.dtype == torch.float32 and v.dim() >= 2)
        changed = {k: v.clone() for k, v in state.items()}
        changed[perturbed].view(-1)[-1] += 0.5
        torch.save(changed, torch_file)
        report = run(diff(open_checkpoint(str(torch_file)), keras_checkpoint))  # either order
        assert report.ported == "B" and not report.identical
        assert [t.key for t in report.tensors if t.status == "changed"] == [perturbed]
        assert [t.max_abs for t in report.tensors if t.status == "changed"] == [
            pytest.approx(0.5, abs=1e-6)
        ]
    capsys.readouterr()  # rnn.pt holds a perturbed tensor: exit 1, the pair's rule listed
    assert main(["diff", str(folder / "rnn.keras"), str(tmp_path / "rnn.pt")]) == 1
    printed = capsys.readouterr().out
    assert "A ported to PyTorch keys and layouts" in printed
    assert "  lstm.bias_hh_l0: LSTM: bias_hh = 0 (added)" in printed
    assert "  gru.weight_ih_l0: GRU: kernel.T, gates z,r,h -> r,z,n" in printed


def test_a_variable_no_rule_takes_is_listed_never_guessed(tmp_path, capsys):
    keras = _keras()
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(2, name="head"), keras.layers.PReLU()]
    )
    model.save_weights(tmp_path / "m.weights.h5")  # no config: classes by default names only
    mapping = port(open_checkpoint(str(tmp_path / "m.weights.h5")))
    assert not mapping.ported
    assert set(mapping.unmatched) == {"head.kernel", "head.bias", "p_re_lu.0"}
    assert "no config" in mapping.unmatched["head.kernel"]
    model.save(tmp_path / "m.keras")  # with its config: head is a Dense, PReLU has no rule
    mapping = port(open_checkpoint(str(tmp_path / "m.keras")))
    assert [p.key for p in mapping.ported] == ["head.weight", "head.bias"]
    assert mapping.unmatched == {"p_re_lu.0": "no porting rule for a PReLU layer"}
    out = tmp_path / "m.safetensors"
    assert main(["export", str(tmp_path / "m.keras"), "-o", str(out), "--to-torch"]) == 0
    assert "unmatched: p_re_lu.0 (no porting rule for a PReLU layer)" in capsys.readouterr().out
    assert set(load_file(out)) == {"head.weight", "head.bias"}


def test_export_to_torch_refuses_other_files_in_one_line(tmp_path, capsys):
    torch.save({"w": torch.ones(2)}, tmp_path / "a.pt")
    assert main(["export", str(tmp_path / "a.pt"), "-o", str(tmp_path / "b.pt"), "--to-torch"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert err[0].endswith("porting to PyTorch reads Keras or Flax weights, not a torch-zip file")
    assert not (tmp_path / "b.pt").exists()


def test_flax_export_to_torch_gives_the_same_outputs(tmp_path, capsys):
    jax = pytest.importorskip("jax")
    linen = pytest.importorskip("flax.linen")
    serialization = pytest.importorskip("flax.serialization")

    class Net(linen.Module):
        @linen.compact
        def __call__(self, ids):
            x = linen.Embed(10, 6)(ids)
            x = linen.Dense(5)(x)
            x = linen.LayerNorm()(x)
            return linen.Conv(4, (3,), padding="VALID")(x)

    ids = np.random.default_rng(1).integers(0, 10, size=(2, 7)).astype(np.int32)
    variables = Net().init(jax.random.PRNGKey(0), ids)
    expected = np.asarray(Net().apply(variables, ids))
    source = tmp_path / "flax_model.msgpack"
    source.write_bytes(serialization.to_bytes(variables))
    out = tmp_path / "ported.safetensors"
    assert main(["export", str(source), "-o", str(out), "--to-torch"]) == 0
    assert "Flax Dense: kernel.T" in capsys.readouterr().out
    module = nn.Module()
    module.add_module("Embed_0", nn.Embedding(10, 6))
    module.add_module("Dense_0", nn.Linear(6, 5))
    module.add_module("LayerNorm_0", nn.LayerNorm(5, eps=1e-6))
    module.add_module("Conv_0", nn.Conv1d(5, 4, 3))
    module.load_state_dict(load_file(out), strict=True)

    def forward(m, t):
        x = m.LayerNorm_0(m.Dense_0(m.Embed_0(t)))
        return _channels_first(m.Conv_0, x)

    np.testing.assert_allclose(_outputs(module, forward, ids), expected, atol=ATOL)
    # params alone (no `params` collection at the top), as Hugging Face saves them
    bare = tmp_path / "params.msgpack"
    bare.write_bytes(serialization.to_bytes(variables["params"]))
    assert main(["export", str(bare), "-o", str(tmp_path / "bare.pt"), "--to-torch"]) == 0
    module.load_state_dict(torch.load(tmp_path / "bare.pt", weights_only=True), strict=True)
    np.testing.assert_allclose(_outputs(module, forward, ids), expected, atol=ATOL)
    torch.save(module.state_dict(), tmp_path / "torch.pt")
    report = run(diff(open_checkpoint(str(source)), open_checkpoint(str(tmp_path / "torch.pt"))))
    assert report.identical and report.ported == "A"
    assert {t.key: t.rule for t in report.tensors}["Conv_0.weight"].startswith("Flax Conv")
    capsys.readouterr()
    assert main(["diff", str(tmp_path / "torch.pt"), str(source), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["ported"] == "B" and printed["unmatched"] == {}
    assert {t["key"]: t["rule"] for t in printed["tensors"]}["Dense_0.weight"] == (
        "Flax Dense: kernel.T"
    )


def test_a_layer_named_by_an_empty_vars_group_is_read_through_hard_links_only(tmp_path):
    """Keras 3 writes an LSTM's name in an empty vars group beside its cell's: a link there
    to another file is not followed (the key keeps the group's name)."""
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "m.weights.h5"
    with h5py.File(path, "w") as f:
        f.create_group("layers/lstm/vars").attrs["name"] = "encoder"
        f["layers/lstm_1/vars"] = h5py.ExternalLink(str(tmp_path / "absent.h5"), "/vars")
        for layer in ("lstm", "lstm_1"):
            cell = f.create_group(f"layers/{layer}/cell/vars")
            cell.attrs["name"] = "lstm_cell"
            for index, shape in enumerate([(3, 8), (2, 8), (8,)]):
                cell[str(index)] = np.zeros(shape, np.float32)
    keys = [key for key, _, _ in open_checkpoint(str(path)).tensors()]
    assert keys[:3] == [f"encoder.lstm_cell.{i}" for i in range(3)]
    assert keys[3:] == [f"lstm_1.lstm_cell.{i}" for i in range(3)]
    ported = [p.key for p in port(open_checkpoint(str(path))).ported]
    assert "lstm_1.weight_ih_l0" in ported and not any(k.startswith("encoder") for k in ported)


def test_gate_reorders_keep_a_big_endian_file_s_values_and_odd_shapes_are_unmatched(tmp_path):
    """Reordered GRU gates are built from the stored elements in the file's byte order; a GRU
    whose kernels are not 3 x units wide is listed, not cut."""
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(2)
    arrays = {
        "gru": [rng.normal(size=s).astype(">f4") for s in [(2, 9), (3, 9), (2, 9)]],
        "gru_1": [rng.normal(size=s).astype(">f4") for s in [(2, 8), (3, 8), (2, 8)]],
    }
    path = tmp_path / "m.weights.h5"
    with h5py.File(path, "w") as f:
        for layer, values in arrays.items():
            f.create_group(f"layers/{layer}/vars").attrs["name"] = layer
            cell = f.create_group(f"layers/{layer}/cell/vars")
            cell.attrs["name"] = "gru_cell"
            for index, value in enumerate(values):
                cell[str(index)] = value
    mapping = port(open_checkpoint(str(path)))
    ported = {p.key: read_array(p.tensor) for p in mapping.ported}
    kernel, recurrent, bias = (a.astype("<f4") for a in arrays["gru"])

    def gates(rows: np.ndarray) -> np.ndarray:  # z, r, h -> r, z, n
        z, r, h = np.split(rows, 3)
        return np.concatenate([r, z, h])

    assert np.array_equal(ported["gru.weight_ih_l0"], gates(kernel.T))
    assert np.array_equal(ported["gru.weight_hh_l0"], gates(recurrent.T))
    assert np.array_equal(ported["gru.bias_ih_l0"], gates(bias[0]))
    assert np.array_equal(ported["gru.bias_hh_l0"], gates(bias[1]))
    assert set(mapping.unmatched) == {f"gru_1.gru_cell.{name}" for name in ("0", "1", "2")}
    assert "are not (in, 3 x units)" in mapping.unmatched["gru_1.gru_cell.0"]


def test_odd_layers_are_listed_with_their_reason_and_names_escaped(tmp_path, capsys):
    """A crafted .weights.h5: what no rule can take is listed (one line each, the file's text
    escaped), the rest is still written."""
    h5py = pytest.importorskip("h5py")
    groups = {
        "dense": [(3, 2), (2,)],  # a plain Dense: ported
        "dense_1": [(3, 2, 2)],  # a 3-D kernel
        "batch_normalization": [(2,), (2,), (2,)],  # 3 of 4: gamma or beta missing? unnamed
        "multi_head_attention": [],  # projections without attention_output (below)
        "dense\x1b[2J": [(2, 2)],
    }
    path = tmp_path / "m.weights.h5"
    with h5py.File(path, "w") as f:
        for name, shapes in groups.items():
            group = f.create_group(f"layers/{name}/vars")
            group.attrs["name"] = name
            for index, shape in enumerate(shapes):
                group[str(index)] = np.ones(shape, np.float32)
        for part in ("query", "key", "value"):
            sub = f.create_group(f"layers/multi_head_attention/{part}_dense/vars")
            sub.attrs["name"] = part
            sub["0"] = np.ones((4, 2, 2), np.float32)
    out = tmp_path / "out.safetensors"
    assert main(["export", str(path), "-o", str(out), "--to-torch"]) == 0
    printed = capsys.readouterr().out
    assert "\x1b" not in printed and "unmatched: dense\\x1b[2J.0 (no config" in printed
    assert "unmatched: dense_1.0 (kernel has shape (3, 2, 2), not 2-D)" in printed
    assert "unmatched: batch_normalization.0 (no moving_mean variable)" in printed
    assert "unmatched: multi_head_attention.query.0 (no attention_output.kernel variable)" in (
        printed
    )
    assert set(load_file(out)) == {"dense.weight", "dense.bias"}
