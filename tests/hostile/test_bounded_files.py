"""Bounded everywhere (issue #21): only regular files are opened (a FIFO blocked forever, /dev/zero
as an index grew to gigabytes), for the path given and for every file an index, a folder or DCP
metadata points to; lengths read from a file are checked against its size before allocating.
Each case runs the CLI in a subprocess with a timeout, so a regression fails instead of hanging."""

import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

import builders
from ckpt_viewer.core.listing.open import open_checkpoint


def refused(*args, peak=False) -> str:
    """The one error line of a CLI run that must fail (exit 2) within the timeout."""
    command = (
        [sys.executable, "-c", builders.PEAK_OF_CLI]
        if peak
        else [sys.executable, "-m", "ckpt_viewer"]
    )
    result = subprocess.run(
        [*command, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    lines = [line for line in result.stderr.splitlines() if not line.startswith("peak-kb")]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    if peak:
        kb = int(result.stderr.split("peak-kb ")[1].split()[0])
        assert kb < 1 << 20, f"peak RSS {kb:,} kB"
    return lines[0]


def fifo(path) -> str:
    os.mkfifo(path)
    return str(path)


def test_the_path_given_is_a_fifo_or_a_device(tmp_path):
    assert refused("inspect", fifo(tmp_path / "pipe.pt")).endswith(
        "pipe.pt is a FIFO, not a regular file"
    )
    assert "is a FIFO" in refused("stats", tmp_path / "pipe.pt", "w")
    assert "is a FIFO" in refused("export", tmp_path / "pipe.pt", "-o", tmp_path / "o.pth")
    assert "is a FIFO" in refused("inspect", fifo(tmp_path / "pipe.index.json"))
    assert "character device" in refused("inspect", "/dev/zero")
    os.symlink("/dev/zero", tmp_path / "model.safetensors.index.json")
    assert "character device" in refused(
        "inspect", tmp_path / "model.safetensors.index.json", peak=True
    )
    import socket

    if len(str(tmp_path / "sock.pt")) < 100:  # within what AF_UNIX can bind
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(str(tmp_path / "sock.pt"))
            assert refused("inspect", tmp_path / "sock.pt").endswith(
                "sock.pt is a socket, not a regular file"
            )


def test_files_an_index_or_folder_points_to(tmp_path):
    hf = builders.hf_directory(tmp_path / "hf")
    shard = os.path.join(hf, "model-00002-of-00002.safetensors")
    os.remove(shard)
    fifo(shard)
    assert refused("inspect", hf).endswith(
        "hf: model-00002-of-00002.safetensors is a FIFO, not a regular file"
    )
    index = os.path.join(hf, "model.safetensors.index.json")
    os.remove(index)
    os.symlink("/dev/zero", index)  # the folder's index is a device
    assert "character device" in refused("inspect", hf, peak=True)
    single = tmp_path / "single"
    single.mkdir()
    fifo(single / "model.safetensors")
    assert "is a FIFO" in refused("inspect", single)


def test_dcp_metadata_and_data_files(tmp_path):
    dcp, _ = builders.dcp_directory(tmp_path / "dcp")
    data = next(n for n in os.listdir(dcp) if n.endswith(".distcp"))
    broken = tmp_path / "data"
    shutil.copytree(dcp, broken)
    os.remove(broken / data)
    fifo(broken / data)
    assert f"{data} is a FIFO" in refused("inspect", broken)
    os.remove(tmp_path / "dcp" / ".metadata")
    fifo(tmp_path / "dcp" / ".metadata")
    assert ".metadata is a FIFO" in refused("inspect", dcp)


def test_a_fifo_in_a_training_folder_is_reported_not_waited_for(tmp_path):
    folder = tmp_path / "checkpoint-1"
    folder.mkdir()
    torch.save({"w": torch.ones(2)}, folder / "pytorch_model.bin")
    fifo(folder / "optimizer.pt")
    result = subprocess.run(
        [sys.executable, "-m", "ckpt_viewer", "inspect", str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert (
        "optimizer.pt: cannot be read (optimizer.pt is a FIFO, not a regular file)"
        in result.stdout + result.stderr
    )


def gguf_file(path, **strings):
    gguf = pytest.importorskip("gguf")
    writer = gguf.GGUFWriter(str(path), "llama")
    for key, value in strings.items():
        writer.add_string(f"test.{key}", value)
    writer.add_array("test.words", ["alpha", "beta", "gamma"])
    writer.add_tensor("w", np.arange(8, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def patch_length(path, marker: bytes, value: int, before: int = 8):
    """Overwrite the u64 that precedes `marker` (a string's or an array's length field)."""
    data = bytearray(path.read_bytes())
    at = data.index(marker) - before
    data[at : at + 8] = struct.pack("<Q", value)
    path.write_bytes(bytes(data))


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc (Linux)")
def test_gguf_declared_lengths_fail_fast_and_small(tmp_path):
    gguf = pytest.importorskip("gguf")
    value = gguf_file(tmp_path / "value.gguf", note="MARKER-VALUE")
    patch_length(value, b"MARKER-VALUE", 1 << 30)
    assert "GGUF" in refused("inspect", value, peak=True)
    key = gguf_file(tmp_path / "key.gguf", marker_key="x")
    patch_length(key, b"test.marker_key", (1 << 30) - 1)
    assert "GGUF" in refused("inspect", key, peak=True)
    array = gguf_file(tmp_path / "array.gguf")
    patch_length(array, struct.pack("<Q", 5) + b"alpha", 1 << 40)  # its item count
    assert "GGUF" in refused("inspect", array, peak=True)
    # the unpatched file is read by the gguf package and by us alike
    clean = gguf_file(tmp_path / "clean.gguf", note="fine")
    reader = gguf.GGUFReader(str(clean))
    assert reader.fields["test.note"].contents() == "fine"
    metadata = open_checkpoint(str(clean)).metadata
    assert metadata["test.note"] == "fine"
    assert metadata["test.words"] == str(reader.fields["test.words"].contents())
