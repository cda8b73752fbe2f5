"""Damaged and hostile files: a one-line CheckpointError, never a traceback, never executed."""

import os
import pickle
import random
import zipfile

import pytest

import builders
from builders import Call
from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.listing.open import open_checkpoint


def sentinel_payloads(sentinel):
    command = f"touch {sentinel}"
    return {
        "os.system": Call(os.system, command),
        "eval": Call(eval, f"open({str(sentinel)!r}, 'w')"),
        "exec": Call(exec, f"open({str(sentinel)!r}, 'w')"),
    }


def assert_refused_or_inert(path, sentinel):
    try:
        checkpoint = open_checkpoint(str(path))
    except CheckpointError as exc:
        assert "\n" not in str(exc)
        checkpoint = None
    assert not os.path.exists(sentinel), "code from the file ran"
    return checkpoint


@pytest.mark.parametrize("payload", ["os.system", "eval", "exec"])
@pytest.mark.parametrize("legacy", [False, True])
def test_hostile_pickles_are_listed_not_run(tmp_path, payload, legacy):
    sentinel = tmp_path / "pwned"
    obj = {
        "weights": builders.tiny_model().state_dict(),
        "nested": {"deep": [sentinel_payloads(sentinel)[payload]]},
    }
    path = builders.save(obj, tmp_path / "evil.pth", _use_new_zipfile_serialization=not legacy)
    checkpoint = assert_refused_or_inert(path, sentinel)
    assert checkpoint is not None
    assert checkpoint.unsafe_globals == [
        {"os.system": "posix.system", "eval": "builtins.eval", "exec": "builtins.exec"}[payload]
    ]
    assert checkpoint.find("nested.deep.0").kind == "object"


def test_getattr_chain_stays_inert(tmp_path):
    sentinel = tmp_path / "pwned"
    # builtins.getattr(builtins.__import__('os'), 'system')('touch ...')
    data = (
        b"\x80\x02cbuiltins\ngetattr\ncbuiltins\n__import__\nX\x02\x00\x00\x00os\x85R"
        b"X\x06\x00\x00\x00system\x86R"
        + b"X"
        + len(f"touch {sentinel}").to_bytes(4, "little")
        + f"touch {sentinel}".encode()
        + b"\x85R."
    )
    path = tmp_path / "chain.pkl"
    path.write_bytes(data)
    checkpoint = assert_refused_or_inert(path, sentinel)
    assert checkpoint is None or "builtins.getattr" in checkpoint.unsafe_globals


def _zip_with(tmp_path, name, entries):
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as zf:
        for entry_name, data in entries:
            zf.writestr(entry_name, data)
    return str(path)


def test_duplicate_data_pkl_is_rejected(tmp_path):
    good = pickle.dumps({"a": 1}, protocol=2)
    with pytest.warns(UserWarning):
        path = _zip_with(tmp_path, "dup.pt", [("a/data.pkl", good), ("a/data.pkl", good)])
    with pytest.raises(CheckpointError, match="two entries"):
        open_checkpoint(path)


def test_bad_byteorder_and_version(tmp_path):
    good = pickle.dumps({"a": 1}, protocol=2)
    path = _zip_with(
        tmp_path, "bo.pt", [("a/data.pkl", good), ("a/version", b"3"), ("a/byteorder", b"middle")]
    )
    with pytest.raises(CheckpointError, match="byteorder"):
        open_checkpoint(path)
    path = _zip_with(tmp_path, "v.pt", [("a/data.pkl", good), ("a/version", b"999\n")])
    with pytest.raises(CheckpointError, match="version"):
        open_checkpoint(path)


def test_missing_data_pkl(tmp_path):
    path = _zip_with(tmp_path, "nodata.pt", [("a/other", b"x"), ("a/version", b"3")])
    with pytest.raises(CheckpointError, match="no data.pkl"):
        open_checkpoint(path)


@pytest.mark.parametrize("legacy", [False, True])
def test_truncated_files_at_many_offsets(tmp_path, legacy):
    path = builders.training_checkpoint(tmp_path / "ok.pth", legacy=legacy)
    data = open(path, "rb").read()
    for cut in sorted(
        {1, 8, 64, 500, len(data) // 3, len(data) // 2, len(data) - 100, len(data) - 1}
    ):
        bad = tmp_path / f"cut{cut}.pth"
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError):
            open_checkpoint(str(bad))


def test_storage_shorter_than_its_tensor(tmp_path):
    import torch

    path = builders.save({"w": torch.zeros(100)}, tmp_path / "w.pt")
    with zipfile.ZipFile(path) as zf:
        entries = [(i.filename, zf.read(i)) for i in zf.infolist()]
    entries = [(n, d[:40] if n.endswith("data/0") else d) for n, d in entries]
    short = _zip_with(tmp_path, "short.pt", entries)
    with pytest.raises(CheckpointError, match="holds 40 bytes"):
        open_checkpoint(short)


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", "empty"),
        # seeded: unseeded bytes had a 9th byte of "{" one time in 256 and read as safetensors
        (random.Random(4096).randbytes(4096), "not a recognised"),
        (b"\x89HDF\r\n\x1a\n" + bytes(100), "HDF5"),
        (b'{"not": "a checkpoint"}', "JSON"),
        (b"hello world, plain text", "not a recognised"),
    ],
)
def test_foreign_and_random_bytes(tmp_path, content, message):
    path = tmp_path / "model.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        open_checkpoint(str(path))


def test_missing_path_and_empty_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        open_checkpoint(str(tmp_path / "nope.pt"))
    with pytest.raises(CheckpointError, match="directory holds no checkpoint"):
        open_checkpoint(str(tmp_path))


def test_safetensors_header_lies(tmp_path):
    import struct

    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", 2**40) + b"{}")
    with pytest.raises(CheckpointError, match="header claims"):
        open_checkpoint(str(path))
    header = (
        b'{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},'
        b'"b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}}'
    )
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(24))
    with pytest.raises(CheckpointError, match="overlap"):
        open_checkpoint(str(path))


def test_safetensors_duplicate_keys_warn(tmp_path):
    import struct

    from safetensors import safe_open

    header = (
        b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
        b'"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    )
    path = tmp_path / "dup.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(4))
    checkpoint = open_checkpoint(str(path))
    assert any("last entry silently wins" in w for w in checkpoint.warnings)
    with safe_open(str(path), "np") as f:  # the library also reads the last one
        assert f.get_slice("a").get_shape() == list(checkpoint.find("a").tensor.shape)


def test_legacy_storage_larger_than_file_is_refused_before_allocating(tmp_path):
    import struct

    import torch

    path = builders.save(
        {"w": torch.zeros(4)}, tmp_path / "l.pt", _use_new_zipfile_serialization=False
    )
    data = bytearray(open(path, "rb").read())
    # the storage header is the 8 bytes before the last 16 data bytes
    data[-24:-16] = struct.pack("<q", 2**36)
    bad = tmp_path / "huge.pt"
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError):
        open_checkpoint(str(bad))


def test_tensor_pointing_outside_storage(tmp_path):
    import torch

    path = builders.save({"w": torch.zeros(10)}, tmp_path / "w.pt")
    with zipfile.ZipFile(path) as zf:
        entries = [(i.filename, zf.read(i)) for i in zf.infolist()]
    pkl = next(d for n, d in entries if n.endswith("data.pkl"))
    # storage offset 0 -> 8: the tensor then ends 8 elements past its storage
    patched = pkl.replace(b"K\x00K\n\x85", b"K\x08K\n\x85")
    assert patched != pkl
    entries = [(n, patched if n.endswith("data.pkl") else d) for n, d in entries]
    with pytest.raises(CheckpointError, match="reaches"):
        open_checkpoint(_zip_with(tmp_path, "oob.pt", entries))


def test_inflating_data_pkl_is_bounded(tmp_path, monkeypatch):
    from ckpt_viewer.core.listing.readers import torch_zip

    monkeypatch.setattr(torch_zip, "MAX_PICKLE_BYTES", 1_000_000)
    payload = pickle.dumps({"x": "a" * 5_000_000}, protocol=2)
    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a/data.pkl", payload)
        zf.writestr("a/version", "3")
    assert os.path.getsize(path) < 100_000
    with pytest.raises(CheckpointError, match="inflate"):
        open_checkpoint(str(path))
