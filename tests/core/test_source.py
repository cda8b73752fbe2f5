"""One source per path: a path or URL is resolved and opened once per opening, and a value
read later refuses a file that changed since it was opened instead of reading other bytes."""

import os
import shutil
import sys
import threading
from collections import Counter

import numpy as np
import pytest
import torch
from rangeserver import RangeServer

import builders
from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.listing.open import open_checkpoint
from ckpt_viewer.core.values.read import read_array


def asked(server) -> tuple[Counter, Counter]:
    """HEADs per file and GETs per (file, range) the server answered."""
    heads = Counter(path for method, path, _ in server.requests if method == "HEAD")
    gets = Counter((path, rng) for method, path, rng in server.requests if method == "GET")
    return heads, gets


@pytest.mark.parametrize(
    "name, files, most_bytes",
    [
        ("big.pt", 1, 3 << 18),  # the first block (sniff), the zip's end record and directory
        ("model.safetensors", 1, 1 << 12),  # one range: its header
        ("hf/model.safetensors.index.json", 4, 1 << 13),  # index, two shard headers, config
    ],
)
def test_a_url_is_asked_once_per_file_for_metadata_only(tmp_path, name, files, most_bytes):
    torch.save({f"layer{i}.weight": torch.randn(256, 256) for i in range(40)}, tmp_path / "big.pt")
    builders.safetensors_file(tmp_path / "model.safetensors")
    builders.hf_directory(tmp_path / "hf")
    with RangeServer(str(tmp_path), lifetime=120) as server:
        open_checkpoint(f"{server.url}/{name}")
        heads, gets = asked(server)
    # one HEAD pins each file's size and version; each range is fetched once, every GET a range
    assert len(heads) == files and set(heads.values()) == {1}, server.requests
    assert all(rng and count == 1 for (_, rng), count in gets.items()), server.requests
    assert {path for path, _ in gets} == set(heads)
    assert len(server.requests) <= 3 * files and server.bytes_sent <= most_bytes


_watched: list[str] = []  # the folder whose opens the audit hook counts, while set
_opens: Counter = Counter()


def _count_opens(event: str, args: tuple) -> None:
    if event == "open" and _watched and isinstance(args[0], str):
        if args[0].startswith(_watched[0]):
            _opens[os.path.relpath(args[0], _watched[0])] += 1


sys.addaudithook(_count_opens)  # (hooks stay for the process: it counts only while watched)


def opens_while_opening(folder, path) -> Counter:
    """How often each file under `folder` is opened while `path` is opened (os.open and open()
    raise the "open" audit event)."""
    _opens.clear()
    _watched.append(str(folder))
    try:
        open_checkpoint(str(path))
    finally:
        _watched.clear()
    return Counter(_opens)


def test_each_local_file_is_opened_once(tmp_path):
    builders.save({"a": torch.ones(3)}, tmp_path / "zip.pt")
    builders.save(
        {"a": torch.ones(3)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False
    )
    builders.safetensors_file(tmp_path / "model.safetensors")
    builders.training_checkpoint(tmp_path / "train.pt")
    for name in ("zip.pt", "legacy.pt", "model.safetensors", "train.pt"):
        assert opens_while_opening(tmp_path, tmp_path / name) == {name: 1}
    # a folder is listed once, and each file in it that is read is opened once; a file the
    # listing lacks (adapter_config.json) is not looked for again
    hf = builders.hf_directory(tmp_path / "hf")
    names = ["config.json", "model.safetensors.index.json"]
    names += [f"model-0000{i}-of-00002.safetensors" for i in (1, 2)]
    assert opens_while_opening(hf, hf) == {".": 1, **{name: 1 for name in names}}
    dcp, _ = builders.dcp_directory(tmp_path / "dcp")
    opened = opens_while_opening(dcp, dcp)
    assert set(opened.values()) == {1} and {".", ".metadata"} <= set(opened)


def value_reader(tmp_path):
    """A checkpoint opened, and its tensor 'w' as torch.load reads it then."""
    path = builders.save({"w": torch.arange(4096.0)}, tmp_path / "w.pt")
    expected = torch.load(path, weights_only=True)["w"].numpy()
    tensor = open_checkpoint(path).find("w").tensor
    assert np.array_equal(read_array(tensor), expected)
    return path, tensor


def test_a_file_swapped_after_opening_is_refused_not_read(tmp_path):
    path, tensor = value_reader(tmp_path)
    other = builders.save({"w": torch.zeros(4096)}, tmp_path / "other.pt")
    os.replace(other, path)  # same size, same layout, other bytes
    with pytest.raises(CheckpointError, match=r"^w\.pt changed since it was opened; reopen it$"):
        read_array(tensor)
    reopened = open_checkpoint(path).find("w").tensor  # opening again takes the new file
    assert np.array_equal(read_array(reopened), torch.load(path, weights_only=True)["w"].numpy())


def test_a_file_rewritten_in_place_after_opening_is_refused(tmp_path):
    path, tensor = value_reader(tmp_path)
    shutil.copyfile(builders.save({"w": torch.ones(4096)}, tmp_path / "ones.pt"), path)
    os.utime(path, ns=(1, 1))  # whatever the clock's resolution, the mtime differs
    with pytest.raises(CheckpointError, match="changed since it was opened; reopen it"):
        read_array(tensor)


def test_a_fifo_swapped_in_after_opening_is_refused_without_blocking(tmp_path):
    path, tensor = value_reader(tmp_path)
    os.mkfifo(tmp_path / "pipe")
    os.replace(tmp_path / "pipe", path)
    outcome = []

    def read():
        try:
            read_array(tensor)
        except CheckpointError as exc:
            outcome.append(str(exc))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(60)
    assert outcome == ["w.pt is a FIFO, not a regular file"]


def test_a_device_as_the_path_is_refused_in_one_line():
    with pytest.raises(CheckpointError, match="^null is a character device, not a regular file$"):
        open_checkpoint("/dev/null")


def test_an_opening_holding_few_handles_reads_the_same(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from ckpt_viewer.core.listing import remote

    hf = builders.hf_directory(tmp_path / "hf")
    monkeypatch.setattr(remote, "SESSION_FDS", 1)  # each file let go, then opened again
    checkpoint = open_checkpoint(hf)
    assert checkpoint.metadata["config.model_type"] == "tiny"
    expected = {}
    for name in sorted(os.listdir(hf)):
        if name.endswith(".safetensors"):
            expected.update(load_file(os.path.join(hf, name)))
    got = {key: read_array(tensor) for key, tensor, _ in checkpoint.tensors()}
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert np.array_equal(got[key], value.numpy()), key
