"""Every corpus file: never executed, never a traceback, never a hang; a clear outcome."""

import json
import os
import signal
import subprocess
import sys

import pytest

import builders
from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.listing.open import open_checkpoint
from corpus import CORPUS

TIME_LIMIT = 10


@pytest.fixture
def built(tmp_path, request):
    builder, expect = CORPUS[request.param]
    sentinel = tmp_path / "SENTINEL"
    folder = tmp_path / "files"
    folder.mkdir()
    path = builder(folder, sentinel)
    yield path, expect, sentinel
    assert not sentinel.exists(), "code from the file ran"


@pytest.mark.parametrize("built", sorted(CORPUS), indirect=True)
def test_core(built):
    path, expect, sentinel = built
    builders.alarm(TIME_LIMIT)
    try:
        try:
            checkpoint = open_checkpoint(path)
            outcome = "opens"
        except CheckpointError as exc:
            assert str(exc) and "\n" not in str(exc)
            outcome = "error"
            checkpoint = None
    finally:
        signal.alarm(0)
    assert outcome == expect
    if checkpoint is not None:
        from ckpt_viewer.core.listing.summary import inspect_dict
        from ckpt_viewer.core.listing.text import strict_json

        strict_json(inspect_dict(checkpoint))  # the whole listing serialises


@pytest.mark.parametrize("built", sorted(CORPUS), indirect=True)
def test_cli(built):
    path, expect, sentinel = built
    result = subprocess.run(
        [sys.executable, "-m", "ckpt_viewer", "inspect", path, "--json"],
        capture_output=True,
        text=True,
        timeout=TIME_LIMIT * 3,
    )
    assert "Traceback" not in result.stderr
    if expect == "error":
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ")
    else:
        assert result.returncode == 0, result.stderr
        limit = sys.get_int_max_str_digits()
        sys.set_int_max_str_digits(0)  # integers of any size are numbers
        try:
            json.loads(result.stdout, parse_constant=lambda name: pytest.fail(f"bare {name}"))
        finally:
            sys.set_int_max_str_digits(limit)
    text = subprocess.run(
        [sys.executable, "-m", "ckpt_viewer", "inspect", path],
        capture_output=True,
        text=True,
        timeout=TIME_LIMIT * 3,
    )
    assert "\x1b" not in text.stdout + text.stderr and "Traceback" not in text.stderr
    if expect == "error":
        assert len(text.stderr.splitlines()) == 1
        assert text.returncode == 2


def test_big_endian_values_are_swapped(tmp_path):
    import numpy as np

    from ckpt_viewer.core.values.read import read_array
    from corpus import big_endian

    checkpoint = open_checkpoint(big_endian(tmp_path, tmp_path / "s"))
    assert checkpoint.byteorder == "big"
    assert read_array(checkpoint.find("w").tensor).tolist() == list(np.arange(8.0))


def test_verify_catches_one_flipped_bit_torch_load_does_not(tmp_path):
    import torch

    import builders
    from ckpt_viewer.core.listing.readers.zip_directory import data_offset, read_directory

    path = builders.save({"w": torch.randn(1000)}, tmp_path / "w.pt")
    member = next(m for m in read_directory(path) if m.name.endswith("/data/0"))
    data = bytearray(open(path, "rb").read())
    data[data_offset(member) + 123] ^= 0x04
    open(path, "wb").write(bytes(data))
    torch.load(path, weights_only=True)  # plain torch does not notice
    result = subprocess.run(
        [sys.executable, "-m", "ckpt_viewer", "verify", path],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and "data/0" in result.stdout and "CRC-32" in result.stdout
    from ckpt_viewer.core.analysis.verify import verify
    from ckpt_viewer.core.progress import run

    report = run(verify(path))
    assert not report.ok and report.tensor == "w"  # the GUI names the damage by its key


@pytest.mark.parametrize("flip", [None, 5, 4100, 9000])
def test_verify_crc_over_many_mapped_windows(tmp_path, monkeypatch, flip):
    """A stored record's CRC-32 is taken window by window, halves on two threads, joined in
    order: small windows (odd-sized halves, a short last window) agree with zlib, and a
    flipped bit in any window is found."""
    import torch

    import builders
    from ckpt_viewer.core.analysis import verify as verify_module
    from ckpt_viewer.core.listing import crc as crc_module
    from ckpt_viewer.core.listing.readers.zip_directory import data_offset, read_directory
    from ckpt_viewer.core.progress import run

    monkeypatch.setattr(verify_module, "WINDOW", 4097)
    monkeypatch.setattr(crc_module, "CRC_SPLIT", 1000)  # each window in pieces on threads
    path = builders.save({"w": torch.randn(2500)}, tmp_path / "w.pt")  # 10,000 bytes
    member = next(m for m in read_directory(path) if m.name.endswith("/data/0"))
    if flip is not None:
        data = bytearray(open(path, "rb").read())
        data[data_offset(member) + flip] ^= 0x10
        open(path, "wb").write(bytes(data))
    report = run(verify_module.verify(path))
    assert report.ok == (flip is None)
    if flip is not None:
        assert report.tensor == "w"


@pytest.mark.parametrize("kind", ["zip", "legacy", "safetensors", "hf", "dcp"])
def test_verify_intact(tmp_path, kind):
    import builders

    path = {
        "zip": lambda: builders.training_checkpoint(tmp_path / "c.pt"),
        "legacy": lambda: builders.training_checkpoint(tmp_path / "c.pt", legacy=True),
        "safetensors": lambda: builders.safetensors_file(tmp_path / "w.safetensors"),
        "hf": lambda: builders.hf_directory(tmp_path / "hf", "bin"),
        "dcp": lambda: builders.dcp_directory(tmp_path / "dcp")[0],
    }[kind]()
    result = subprocess.run(
        [sys.executable, "-m", "ckpt_viewer", "verify", path],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and result.stdout.startswith("intact: "), result.stdout


def test_verify_damaged_shard_is_named(tmp_path):
    import builders

    folder = builders.hf_directory(tmp_path / "hf", "bin")
    shard = os.path.join(folder, "pytorch_model-00002-of-00002.bin")
    data = bytearray(open(shard, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(shard, "wb").write(bytes(data))
    result = subprocess.run(
        [sys.executable, "-m", "ckpt_viewer", "verify", folder],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and "00002" in result.stdout


def test_verify_missing_file_is_exit_2(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "ckpt_viewer", "verify", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and result.stderr.startswith("error: ")


@pytest.mark.parametrize(
    "built", sorted(n for n, (_, e) in CORPUS.items() if e == "opens"), indirect=True
)
def test_values_of_every_file_that_opens(built):
    """Statistics of its tensors (the largest first) end in time, read or refused in one line."""
    from ckpt_viewer.core.progress import run
    from ckpt_viewer.core.values.stats import compute

    path, expect, sentinel = built
    checkpoint = open_checkpoint(path)
    tensors = sorted(checkpoint.tensors(), key=lambda item: -item[1].numel)[:3]
    builders.alarm(TIME_LIMIT)
    try:
        for _key, tensor, _ in tensors:
            try:
                stats = run(compute(tensor))
                assert stats.numel == tensor.numel
            except CheckpointError as exc:
                assert "\n" not in str(exc)
    finally:
        signal.alarm(0)


# Where verify deliberately differs from torch.load(weights_only=True), and why.
VERIFY_DIFFERS = {
    "two_data_pkl": "ambiguous archive: torch reads the first data.pkl, zipfile the last; refused",
    "zip_bomb_data_pkl": "a 300 MB pickle from a few KB: refused by our size limit",
    "integer_10_pow_100000": "torch's unpickler refuses LONG4; ours reads it (pickle layer, pending)",
}


@pytest.mark.parametrize(
    "name", sorted(n for n in CORPUS if not n.startswith("st_") and n not in ("empty_directory",))
)
def test_verify_agrees_with_torch_load(tmp_path, name):
    """`intact` with loads_with_weights_only exactly when torch.load(weights_only=True) loads
    the file (the safetensors side is test_safetensors_oracle.py); a refusal alone is never
    damage."""
    import warnings

    import torch

    from ckpt_viewer.core.analysis.verify import verify
    from ckpt_viewer.core.progress import run

    if name in VERIFY_DIFFERS:
        pytest.skip(VERIFY_DIFFERS[name])
    sentinel = tmp_path / "SENTINEL"
    path = CORPUS[name][0](tmp_path, sentinel)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.load(path, weights_only=True, map_location="cpu")
        loads = True
    except Exception:  # noqa: BLE001 - any refusal is the verdict
        loads = False
    try:
        report = run(verify(path))
        intact = report.ok and bool(report.loads_with_weights_only)
        assert "\n" not in report.problem
        if report.ok and report.loads_with_weights_only is False:
            assert report.loader_note and report.refusals
    except CheckpointError:
        intact = False
    assert intact == loads
    assert not sentinel.exists()


def test_an_hdf5_file_that_spins_libhdf5_is_refused_in_one_line(tmp_path, monkeypatch):
    """libhdf5 never returns on this fuzzed file; the listing runs first in a child process
    with a time limit, so the refusal is one line and nothing hangs."""
    import shutil
    from pathlib import Path

    from ckpt_viewer.core.listing.readers import keras_h5

    pytest.importorskip("h5py")
    path = tmp_path / "spin.h5"
    shutil.copy(Path(__file__).parent / "files" / "hdf5_spins_libhdf5.h5", path)
    monkeypatch.setattr(keras_h5, "PREFLIGHT_SECONDS", 3.0)
    with pytest.raises(CheckpointError) as refused:  # spins here; another libhdf5 may fail
        open_checkpoint(str(path))
    assert "libhdf5" in str(refused.value) or "HDF5" in str(refused.value)
    assert "\n" not in str(refused.value)
