"""TensorFlow checkpoints (TensorBundle): listed and read as TensorFlow loads them.

The committed fixtures in tests/fixtures/tf were written by TensorFlow itself
(make_tf_fixtures.py); manifest.json holds, per key, the dtype and shape TensorFlow lists and
the SHA-256 of what `tf.train.load_checkpoint(...).get_tensor(key)` returned. Where
tensorflow imports, test_fresh_files_equal_tensorflow writes new files and asks it directly."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.analysis.verify import verify
from ckpt_viewer.core.listing.model import Checkpoint
from ckpt_viewer.core.listing.open import open_checkpoint, sniff
from ckpt_viewer.core.listing.readers import tensor_bundle
from ckpt_viewer.core.listing.summary import totals
from ckpt_viewer.core.progress import run
from ckpt_viewer.core.values.read import read_array
from ckpt_viewer.core.values.stats import compute
from ckpt_viewer.core.values.torch_bridge import read_tensor
from ckpt_viewer.core.writing.export import ExportPlan, export

FIXTURES = Path(__file__).parent.parent / "fixtures" / "tf"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())


def script():
    spec = importlib.util.spec_from_file_location(
        "make_tf_fixtures", FIXTURES / "make_tf_fixtures.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def by_tf_key(checkpoint: Checkpoint) -> dict:
    """TF checkpoint key -> our node (the key is kept in the note)."""
    found = {}
    for node in [n for _, _, n in checkpoint.tensors()] + checkpoint.root.children:
        if "TF key " in node.note:
            found[node.note.rpartition("TF key ")[2]] = node
    return found


def stored_bytes(node) -> bytes:
    """The tensor's bytes as stored (little-endian), through torch, bit for bit."""
    value = read_tensor(node.tensor).contiguous().reshape(-1)
    return value.view(torch.uint8).numpy().tobytes()


def string_bytes(path: str, key: str) -> bytes:
    entry = next(e for e in tensor_bundle.read_entries(path)[1] if e.key == key)
    return b"".join(len(v).to_bytes(8, "little") + v for v in tensor_bundle.string_values(entry))


def assert_listed_as_tensorflow_loads(checkpoint: Checkpoint, manifest: dict) -> None:
    ours = by_tf_key(checkpoint)
    assert sorted(ours) == sorted(manifest["entries"])
    for key, expected in manifest["entries"].items():
        node = ours[key]
        if expected["dtype"] == "string":
            assert node.kind == "opaque" and node.value.startswith("not read")
            raw = string_bytes(checkpoint.path, key)
        else:
            assert node.tensor.dtype == expected["dtype"], key
            assert list(node.tensor.shape) == expected["shape"], key
            raw = stored_bytes(node)
        assert hashlib.sha256(raw).hexdigest() == expected["sha256"], key


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_fixture_lists_and_reads_as_tensorflow_loaded_it(name):
    prefix = str(FIXTURES / MANIFEST[name]["prefix"])
    checkpoint = open_checkpoint(prefix)  # a prefix: no file of that name
    assert checkpoint.format == "tensor_bundle"
    assert_listed_as_tensorflow_loads(checkpoint, MANIFEST[name])


def test_values_follow_the_formula():
    formula = script().formula
    checkpoint = open_checkpoint(str(FIXTURES / "dtypes" / "model.ckpt.index"))
    for index, (dtype, shape) in enumerate(script().DTYPES):
        node = checkpoint.find(f"dtypes.{dtype}_{index}")
        if dtype == "string":
            assert node.kind == "opaque"
            continue
        wide = "float32" if dtype == "bfloat16" else dtype  # read_array widens bfloat16
        expected = formula(100 + index, wide, shape)
        assert node.tensor.shape == shape
        assert np.array_equal(
            read_array(node.tensor), expected.astype(read_array(node.tensor).dtype)
        )


def test_names_come_from_the_object_graph_and_slots_are_marked():
    keras = open_checkpoint(str(FIXTURES / "keras"))
    keys = {k for k, _, _ in keras.tensors()}
    # the Keras 3 variables' own names, not optimizer/_trainable_variables/0
    assert {"mlp.hidden.kernel", "mlp.out.bias"} <= keys
    assert keras.metadata["object graph"] == "yes"
    assert keras.metadata["save_counter"] == 1  # written by Checkpoint.save, which counts
    momentum = keras.find("adam.mlp_hidden_kernel_momentum")
    assert momentum.note.startswith("optimizer state")
    slots = open_checkpoint(str(FIXTURES / "slots" / "ckpt"))
    m = slots.find("optimizer.model.w.m")
    assert m.note.startswith("optimizer slot m of model/w")
    assert "TF key model/w/.OPTIMIZER_SLOT/optimizer/m/.ATTRIBUTES/VARIABLE_VALUE" in m.note
    assert slots.find("model.w").note == "TF key model/w/.ATTRIBUTES/VARIABLE_VALUE"
    split = totals(slots).split
    assert split["model"] == 16 and split["optimizer_state"] == 12 * 2 + 4 * 2 + 2


def test_without_an_object_graph_keys_are_the_saved_names():
    checkpoint = open_checkpoint(str(FIXTURES / "dtypes" / "model.ckpt"))
    assert checkpoint.metadata["object graph"] == "no"
    assert checkpoint.find("dtypes.int64_7").tensor.shape == ()


@pytest.mark.parametrize(
    "where",
    [
        "keras",  # a folder with a `checkpoint` state file
        "keras/ckpt-1",  # a prefix
        "keras/ckpt-1.index",
        "saved_model",  # a SavedModel folder
        "saved_model/variables",
        "sharded",  # the folder's only index
    ],
)
def test_every_way_to_name_a_checkpoint(where):
    checkpoint = open_checkpoint(str(FIXTURES / where))
    assert checkpoint.format == "tensor_bundle" and checkpoint.path.endswith(".index")


def test_the_state_file_is_followed_only_inside_its_folder(tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(FIXTURES / "keras", folder)
    # written elsewhere (an absolute path), or pointing out of the folder: its name, here
    for named in ("/elsewhere/train/ckpt-1", "../../ckpt-1"):
        (folder / "checkpoint").write_text(f'model_checkpoint_path: "{named}"\n')
        assert open_checkpoint(str(folder)).path == str(folder / "ckpt-1.index")


def test_sniff_reads_the_footer_not_the_name(tmp_path):
    index = FIXTURES / "slots" / "ckpt.index"
    assert sniff(str(index)) == "tensor_bundle"
    other = tmp_path / "x.index"
    other.write_bytes(b"\0" * 100)
    with pytest.raises(CheckpointError):
        open_checkpoint(str(other))


def test_partitioned_variables_are_assembled_from_their_slices():
    checkpoint = open_checkpoint(str(FIXTURES / "sharded"))
    assert checkpoint.metadata["data files"] > 1
    sliced = [k for k, t, _ in checkpoint.tensors() if t.chunks]
    assert sliced  # MaxShardSizePolicy split the larger variables
    assert_listed_as_tensorflow_loads(checkpoint, MANIFEST["sharded"])


def test_slices_that_do_not_cover_the_variable_are_refused():
    with pytest.raises(CheckpointError, match="slices do not cover it"):
        open_checkpoint(str(FIXTURES / "sliced" / "model.ckpt"))


def test_stats_and_export_go_through_the_normal_paths(tmp_path):
    from safetensors.torch import load_file

    checkpoint = open_checkpoint(str(FIXTURES / "sharded"))
    kernel = checkpoint.find("mlp.hidden.kernel").tensor
    assert kernel.chunks
    stats = run(compute(kernel))
    values = read_array(kernel)
    assert stats.min == values.min() and stats.max == values.max()
    run(export(checkpoint, ExportPlan(format="safetensors"), str(tmp_path / "out.safetensors")))
    written = load_file(str(tmp_path / "out.safetensors"))
    for key, _, node in checkpoint.tensors():
        assert written[key].reshape(-1).view(torch.uint8).numpy().tobytes() == stored_bytes(node)


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_verify_checks_each_entrys_crc32c(name):
    pytest.importorskip("google_crc32c")
    report = run(verify(str(FIXTURES / MANIFEST[name]["prefix"])))
    assert report.ok, report.problem
    assert report.records >= len(MANIFEST[name]["entries"])


def test_verify_finds_a_flipped_bit(tmp_path):
    pytest.importorskip("google_crc32c")
    shutil.copytree(FIXTURES / "slots", tmp_path / "slots")
    data = tmp_path / "slots" / "ckpt.data-00000-of-00001"
    entry = next(
        e
        for e in tensor_bundle.read_entries(str(tmp_path / "slots" / "ckpt.index"))[1]
        if e.key == "model/w/.ATTRIBUTES/VARIABLE_VALUE"
    )
    raw = bytearray(data.read_bytes())
    raw[entry.offset + 5] ^= 0x10
    data.write_bytes(bytes(raw))
    report = run(verify(str(tmp_path / "slots")))
    assert not report.ok
    assert "CRC32C mismatch" in report.problem and report.tensor == "model.w"


def test_verify_without_google_crc32c_reads_every_byte_and_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "google_crc32c", None)  # import fails
    report = run(verify(str(FIXTURES / "slots")))
    assert report.ok and report.bytes > 0
    assert any("CRC32C not checked" in note for note in report.notes)


def test_a_missing_or_short_data_file_is_one_line(tmp_path):
    shutil.copytree(FIXTURES / "slots", tmp_path / "slots")
    data = tmp_path / "slots" / "ckpt.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="reaches past the end"):
        open_checkpoint(str(tmp_path / "slots"))
    data.unlink()
    with pytest.raises(CheckpointError, match="data file ckpt.data-00000-of-00001 is missing"):
        open_checkpoint(str(tmp_path / "slots" / "ckpt"))


def test_slice_keys_match_tensorflows_encoding():
    """Every slice the sharded fixture lists was found under the key we compute."""
    header, entries = tensor_bundle.read_entries(str(FIXTURES / "sharded" / "ckpt.index"))
    stored = {e.raw for e in entries}
    sliced = [e for e in entries if e.slices]
    assert sliced
    for entry in sliced:
        for starts, lengths in entry.slices:
            assert tensor_bundle.slice_key(entry.raw, starts, lengths) in stored
    # OrderedCode's signed numbers past the one-byte form
    assert tensor_bundle._signed_increasing(-1) == b"\x7f"
    assert tensor_bundle._signed_increasing(64) == b"\xc0\x40"
    assert tensor_bundle._signed_increasing(-65) == b"\x3f\xbf"


def test_fresh_files_equal_tensorflow(tmp_path):
    """With TensorFlow installed: files it writes now, every tensor compared with
    tf.train.load_checkpoint(...).get_tensor(key)."""
    tf = pytest.importorskip("tensorflow")
    script().main(str(tmp_path))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    for name, fixture in manifest.items():
        prefix = str(tmp_path / fixture["prefix"])
        reader = tf.train.load_checkpoint(prefix)
        checkpoint = open_checkpoint(prefix)
        ours = by_tf_key(checkpoint)
        assert sorted(ours) == sorted(reader.get_variable_to_shape_map()), name
        for key, node in ours.items():
            value = reader.get_tensor(key)
            if node.kind == "opaque":
                raw = string_bytes(checkpoint.path, key)
                expected = b"".join(len(v).to_bytes(8, "little") + v for v in np.ravel(value))
            else:
                raw = stored_bytes(node)
                expected = np.ascontiguousarray(value).tobytes()
                assert tuple(node.tensor.shape) == value.shape, key
            assert raw == expected, (name, key)
