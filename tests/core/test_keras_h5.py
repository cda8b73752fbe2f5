"""Keras HDF5 (.h5, .weights.h5) and .keras archives: listed through h5py and our zip
directory, values equal to what Keras / h5py load."""

from __future__ import annotations

import os

import numpy as np
import pytest

from ckpt_viewer.cli import main
from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.analysis.verify import verify
from ckpt_viewer.core.listing.globals import triage
from ckpt_viewer.core.listing.model import DecodedBytes, FileSpan
from ckpt_viewer.core.listing.open import open_checkpoint, sniff
from ckpt_viewer.core.listing.report import text_report
from ckpt_viewer.core.values.read import read_array
from ckpt_viewer.core.values.stats import run

h5py = pytest.importorskip("h5py")


def listed(path) -> dict:
    return {key: read_array(t) for key, t, _ in open_checkpoint(str(path)).tensors()}


def h5py_arrays(path) -> dict:
    """Every dataset as h5py reads it, by its HDF5 path."""
    found = {}
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda name, obj: (
                found.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None
            )
        )
    return found


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory):
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip("keras runs another backend here")
    folder = tmp_path_factory.mktemp("keras")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(3, name="d1"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.Lambda(lambda x: x * 2, name="double"),
            keras.layers.Dense(2, use_bias=False, name="d2"),
        ]
    )
    model.save(folder / "m.keras")
    model.save_weights(folder / "m.weights.h5")
    model.save(folder / "legacy.h5")
    (folder / "sharded").mkdir()
    model.save_weights(folder / "sharded" / "m.weights.json", max_shard_size=1e-7)
    # keyed as Keras names them: the layer's name, the variable's name
    weights = {
        f"{layer.name}/{v.name}": keras.ops.convert_to_numpy(v)
        for layer in model.layers
        for v in layer.weights
    }
    return folder, weights


def test_keras_archive_keys_are_keras_variable_paths(keras_files):
    folder, weights = keras_files
    path = folder / "m.keras"
    assert sniff(str(path)) == "keras"
    ours = listed(path)
    assert len(weights) == 7
    for name, value in weights.items():
        key = name.replace("/", ".")
        assert ours[key].tobytes() == value.tobytes() and ours[key].shape == value.shape
    checkpoint = open_checkpoint(str(path))
    assert "keras.layers.Lambda" in checkpoint.globals_named
    assert [u.category for u in triage(checkpoint) if u.name == "keras.layers.Lambda"] == ["code"]


def test_weights_h5_named_by_layer(keras_files):
    folder, weights = keras_files
    ours = listed(folder / "m.weights.h5")
    stored = h5py_arrays(folder / "m.weights.h5")
    assert ours["d1.kernel"].tobytes() == weights["d1/kernel"].tobytes()
    assert ours["bn.moving_variance"].tobytes() == weights["bn/moving_variance"].tobytes()
    # without config.json a Dense without bias keeps its index (1 variable, not kernel+bias)
    assert ours["d2.0"].tobytes() == stored["layers/dense_1/vars/0"].tobytes()


def test_legacy_h5_lists_weight_names_and_the_lambda(keras_files):
    folder, weights = keras_files
    path = folder / "legacy.h5"
    checkpoint = open_checkpoint(str(path))
    ours = listed(path)
    assert ours["sequential.d1.kernel"].tobytes() == weights["d1/kernel"].tobytes()
    assert "model_config" in checkpoint.metadata
    assert checkpoint.global_code.get("keras.layers.Lambda")
    report = "\n".join(text_report(checkpoint))
    assert "keras.models.load_model(safe_mode=False) would run it" in report


def test_keras_export_and_verify(keras_files, tmp_path):
    from safetensors.numpy import load_file

    folder, weights = keras_files
    out = tmp_path / "m.safetensors"
    assert main(["export", str(folder / "m.keras"), "-o", str(out)]) == 0
    written = load_file(str(out))
    assert written["d1.kernel"].tobytes() == weights["d1/kernel"].tobytes()
    assert run(verify(str(folder / "m.keras"))).ok


def test_keras2_save_weights_layout(tmp_path):
    """Keras 2's save_weights: layer groups named by `layer_names`, `weight_names` inside."""
    path = tmp_path / "k2.h5"
    kernel = np.arange(12, dtype=np.float32).reshape(3, 4)
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"dense", b"flatten"]
        f.attrs["keras_version"] = b"2.15.0"
        layer = f.create_group("dense")
        layer.attrs["weight_names"] = [b"dense/kernel:0", b"dense/bias:0"]
        layer.create_dataset("dense/kernel:0", data=kernel)
        layer.create_dataset("dense/bias:0", data=np.ones(4, ">f8"))
        f.create_group("flatten").attrs["weight_names"] = np.array([], dtype="S1")
    ours = listed(path)
    assert sorted(ours) == ["dense.bias", "dense.kernel"]
    assert ours["dense.kernel"].tobytes() == kernel.tobytes()
    assert np.array_equal(ours["dense.bias"], np.ones(4))
    assert open_checkpoint(str(path)).metadata["keras_version"] == "2.15.0"


def test_chunked_compressed_dataset_is_decoded_by_h5py(tmp_path):
    path = tmp_path / "z.h5"
    data = np.random.default_rng(0).random((64, 32)).astype(np.float32)
    with h5py.File(path, "w") as f:
        f.create_dataset("g/w", data=data, chunks=(8, 8), compression="gzip")
        f.create_dataset("g/plain", data=data[0])
    checkpoint = open_checkpoint(str(path))
    sources = {k: type(t.storage.source) for k, t, _ in checkpoint.tensors()}
    assert sources == {"g.w": DecodedBytes, "g.plain": FileSpan}
    ours = listed(path)
    assert ours["g.w"].tobytes() == data.tobytes()
    assert ours["g.plain"].tobytes() == data[0].tobytes()


def test_links_to_other_files_are_not_followed(tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("secret", data=np.arange(3))
    path = tmp_path / "links.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("a/w", data=np.arange(4.0))
        f["ext"] = h5py.ExternalLink(str(other), "/secret")
        f["soft"] = h5py.SoftLink("/a/w")
        f["a"]["loop"] = f["a"]  # a hard-link cycle
        layout = h5py.VirtualLayout(shape=(3,), dtype="i8")
        layout[:] = h5py.VirtualSource(str(other), "secret", shape=(3,))
        f.create_virtual_dataset("virtual", layout)
    checkpoint = open_checkpoint(str(path))
    assert [k for k, _, _ in checkpoint.tensors()] == ["a.w"]
    text = " ".join(checkpoint.warnings)
    assert "ExternalLink not followed" in text and "SoftLink not followed" in text
    assert "virtual: not read" in text


def test_damaged_hdf5_is_one_line(tmp_path):
    path = tmp_path / "cut.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("w", data=np.arange(10000.0))
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError) as caught:
        open_checkpoint(str(path))
    assert "\n" not in str(caught.value)


def test_verify_decodes_compressed_datasets(tmp_path):
    path = tmp_path / "z.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset(
            "w", data=np.random.default_rng(0).random((64, 64)), chunks=(16, 16), compression="gzip"
        )
    assert run(verify(str(path))).ok
    with h5py.File(path, "r") as f:
        offset = f["w"].id.get_chunk_info(0).byte_offset
    raw = bytearray(path.read_bytes())
    raw[offset + 20] ^= 0xFF
    path.write_bytes(bytes(raw))
    report = run(verify(str(path)))
    assert not report.ok and report.tensor == "w" and "\n" not in report.problem


def test_a_corrupt_chunk_or_a_dying_decoder_is_one_line(tmp_path, monkeypatch):
    """Chunked data are decoded by libhdf5 in a child process: a corrupt chunk, or a child
    that dies (as libhdf5 can on a crafted chunk index), is one line, never a crash here."""
    import subprocess

    from ckpt_viewer.core.listing.readers import keras_h5

    path = tmp_path / "z.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("w", data=np.arange(4096.0), chunks=(512,), compression="gzip")
    with h5py.File(path, "r") as f:
        offset = f["w"].id.get_chunk_info(3).byte_offset
    raw = bytearray(path.read_bytes())
    raw[offset + 10 : offset + 30] = b"\xff" * 20
    path.write_bytes(bytes(raw))
    tensor = open_checkpoint(str(path)).find("w").tensor
    with pytest.raises(CheckpointError) as refused:
        read_array(tensor)
    assert "\n" not in str(refused.value) and "'/w'" in str(refused.value)

    def died(argv, **kwargs):
        return subprocess.CompletedProcess(argv, -11, b"", b"Segmentation fault\n")

    monkeypatch.setattr(keras_h5.subprocess, "run", died)
    with pytest.raises(CheckpointError, match=r"failed decoding dataset '/w' \(exit -11"):
        read_array(tensor)


@pytest.mark.parametrize("flag", [10**12, "yes", None])
def test_a_crafted_layer_option_names_by_index_and_builds_nothing(keras_files, tmp_path, flag):
    """config.json is the file's data: an option that is no bool ("use_bias": 10**12 would
    multiply a list) leaves that layer's variables named by index, and the listing opens."""
    import json
    import zipfile

    folder, _ = keras_files
    crafted = tmp_path / "crafted.keras"
    with zipfile.ZipFile(folder / "m.keras") as src, zipfile.ZipFile(crafted, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "config.json":
                config = json.loads(data)
                for layer in config["config"]["layers"]:
                    if layer["config"].get("name") == "d1":
                        layer["config"]["use_bias"] = flag
                data = json.dumps(config).encode()
            dst.writestr(item, data)
    keys = [key for key, _, _ in open_checkpoint(str(crafted)).tensors()]
    assert "d1.0" in keys and "d1.1" in keys and "d2.kernel" in keys


def test_sharded_weights_manifest(keras_files):
    folder, weights = keras_files
    path = folder / "sharded" / "m.weights.json"
    assert len(list((folder / "sharded").glob("*.weights.h5"))) > 1  # really sharded
    assert sniff(str(path)) == "keras_sharded"
    ours = listed(path)
    # no config.json here: the bias-less Dense keeps its index, as in a lone .weights.h5
    renamed = {"d2/kernel": "d2.0"}
    for name, value in weights.items():
        assert ours[renamed.get(name, name.replace("/", "."))].tobytes() == value.tobytes()
    assert run(verify(str(path))).ok


@pytest.mark.parametrize("shard", ["../m.weights.h5", "/etc/passwd", "sub/x.weights.h5"])
def test_sharded_manifest_names_only_files_beside_it(tmp_path, shard):
    import json

    path = tmp_path / "m.weights.json"
    path.write_text(json.dumps({"weight_map": {"/layers/dense/vars": [shard]}}))
    with pytest.raises(CheckpointError, match="not a file beside it"):
        open_checkpoint(str(path))


def test_an_oversized_attribute_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "big_attr.h5"
    with h5py.File(path, "w", libver="latest") as f:  # dense storage: no 64 KB header limit
        f.attrs.create("layer_names", np.zeros(2_000_000, dtype="S1"))
    with pytest.raises(CheckpointError, match="refusing to read it"):
        open_checkpoint(str(path))
