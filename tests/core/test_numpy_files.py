"""NumPy .npy / .npz files: listed by our header and zip parsing, values equal to numpy.load's."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
from safetensors.numpy import load_file

from ckpt_viewer.cli import main
from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.analysis.verify import verify
from ckpt_viewer.core.listing.open import open_checkpoint, sniff
from ckpt_viewer.core.values.read import read_array
from ckpt_viewer.core.values.stats import run

ARRAYS = {
    "f16": np.linspace(-3, 3, 12, dtype=np.float16).reshape(3, 4),
    "f32_big_endian": np.arange(10, dtype=">f4"),
    "f64_fortran": np.asfortranarray(np.random.default_rng(0).random((4, 3))),
    "i8": np.arange(-4, 4, dtype=np.int8),
    "u16": np.arange(7, dtype=np.uint16),
    "i64_scalar": np.array(7, dtype=np.int64),
    "bool": np.array([True, False, True]),
    "c64": np.array([1 + 2j, -3j], dtype=np.complex64),
    "empty": np.zeros((0, 5), dtype=np.float32),
}


def listed(path) -> dict:
    return {key: read_array(tensor) for key, tensor, _ in open_checkpoint(str(path)).tensors()}


def assert_same(ours: np.ndarray, theirs: np.ndarray):
    """Same shape, dtype and bits (either byte order: values are compared, not layouts)."""
    assert ours.shape == theirs.shape
    assert (ours.dtype.kind, ours.dtype.itemsize) == (theirs.dtype.kind, theirs.dtype.itemsize)
    native = theirs.dtype.newbyteorder("=")
    assert ours.astype(native).tobytes() == np.ascontiguousarray(theirs, native).tobytes()


@pytest.mark.parametrize("name", sorted(ARRAYS))
def test_npy_values_equal_numpy_load(tmp_path, name):
    path = tmp_path / f"{name}.npy"
    np.save(path, ARRAYS[name])
    assert sniff(str(path)) == "npy"
    assert list(listed(path)) == [name]
    assert_same(listed(path)[name], np.load(path, allow_pickle=False))


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_npz_values_equal_numpy_load(tmp_path, save):
    path = tmp_path / "arrays.npz"
    save(path, **ARRAYS, **{"params/dense.kernel": np.ones((2, 2), np.float32)})
    ours = listed(path)
    with np.load(path, allow_pickle=False) as theirs:
        assert sorted(ours) == sorted(theirs.files)
        for key in theirs.files:
            assert_same(ours[key], theirs[key])


def test_object_array_is_listed_not_read(tmp_path):
    path = tmp_path / "mixed.npz"
    np.savez(path, w=np.arange(3.0), o=np.array([{"a": 1}, None], dtype=object))
    checkpoint = open_checkpoint(str(path))
    assert [k for k, _, _ in checkpoint.tensors()] == ["w"]
    assert any("o: not read: object array" in w for w in checkpoint.warnings)
    assert checkpoint.find("o").kind == "opaque"
    with pytest.raises(ValueError):
        np.load(path, allow_pickle=False)["o"]  # the oracle refuses it too


def test_torch_save_is_still_a_torch_zip(tmp_path):
    import torch

    path = tmp_path / "m.pt"
    torch.save({"w": torch.ones(2)}, path)
    assert sniff(str(path)) == "torch_zip"


def test_export_and_verify(tmp_path, capsys):
    path, out = tmp_path / "c.npz", tmp_path / "c.safetensors"
    np.savez_compressed(path, w=np.arange(20, dtype=np.float32).reshape(4, 5), b=np.ones(3))
    assert main(["export", str(path), "-o", str(out)]) == 0
    with np.load(path) as theirs:
        written = load_file(str(out))
        assert all(np.array_equal(written[k], theirs[k]) for k in theirs.files)
    assert run(verify(str(path))).ok


def test_verify_finds_a_flipped_bit_in_a_compressed_record(tmp_path):
    path = tmp_path / "c.npz"
    np.savez_compressed(path, w=np.arange(4000, dtype=np.float32))
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("w.npy")
    raw = bytearray(path.read_bytes())
    raw[info.header_offset + 30 + len("w.npy") + 200] ^= 0x10
    path.write_bytes(bytes(raw))
    report = run(verify(str(path)))
    assert not report.ok and "\n" not in report.problem


@pytest.mark.parametrize(
    "header, why",
    [
        (b"{'descr': '<f4', 'fortran_order': False, 'shape': (1000,), }", "bytes of data"),
        (b"__import__('os').system('touch SENTINEL')", "not a dict literal"),
        (b"{'descr': '<f4', 'shape': (2,), }", "exactly descr"),
        (b"{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }", "tuple of sizes"),
        (b"[" * 50_000, "npy header"),
    ],
)
def test_hostile_npy_is_one_line(tmp_path, header, why, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "bad.npy"
    length = len(header)
    version = b"\x01\x00" + length.to_bytes(2, "little") if length < 65536 else None
    if version is None:
        version = b"\x02\x00" + length.to_bytes(4, "little")
    path.write_bytes(b"\x93NUMPY" + version + header + bytes(16))
    with pytest.raises(CheckpointError, match=why) as caught:
        open_checkpoint(str(path))
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "SENTINEL").exists()


def test_unknown_dtype_is_listed_not_read(tmp_path):
    path = tmp_path / "text.npy"
    np.save(path, np.array(["a", "bc"]))
    checkpoint = open_checkpoint(str(path))
    assert not checkpoint.tensors()
    assert "has no torch dtype" in checkpoint.warnings[0]
