"""iter_chunks_ahead: a streaming pass's chunks read into alternating buffers with the OS asked
for what follows, against torch's own values."""

import os

import numpy as np
import pytest
import torch

import builders
from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.listing.open import open_checkpoint
from ckpt_viewer.core.values import read
from ckpt_viewer.core.values.read import iter_chunks_ahead
from ckpt_viewer.core.values.storage import StorageReader


def _saved(tmp_path, tensor):
    path = builders.save({"v": tensor}, tmp_path / "v.pt")
    return torch.load(path, weights_only=True)["v"], open_checkpoint(path).find("v").tensor


@pytest.mark.parametrize("direct", [False, True], ids=["pread", "direct"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int64])
def test_each_chunk_stays_valid_while_the_next_is_read(tmp_path, dtype, direct):
    reference, info = _saved(tmp_path, (torch.arange(1000) - 500).to(dtype) / 4)
    expected = reference.float().numpy() if dtype == torch.bfloat16 else reference.numpy()
    buffers = np.empty((2, 7 * 8 + read.DIRECT_SLACK), np.uint8)
    chunks = iter_chunks_ahead(info, 7, 64, buffers, direct)
    held = next(chunks)
    got = [held.copy()]
    for k, chunk in enumerate(chunks, start=1):
        assert np.array_equal(held, expected[(k - 1) * 7 : k * 7])  # untouched by chunk k
        if dtype != torch.bfloat16:  # read in place (bfloat16 is widened into a new array)
            assert np.shares_memory(chunk, buffers[k % 2])
        held = chunk
        got.append(chunk.copy())
    assert np.array_equal(np.concatenate(got), expected)


def test_other_layouts_yield_torch_values(tmp_path):
    reference, info = _saved(tmp_path, torch.arange(600.0).reshape(20, 30).t())
    got = np.concatenate(list(iter_chunks_ahead(info, 64, 0, np.empty((2, 0), np.uint8))))
    assert np.array_equal(got, reference.flatten().numpy())


def test_the_os_is_asked_for_what_follows_in_pieces_it_reads_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(read, "PREFETCH_PIECE", 40)  # bytes: 10 float32
    asked = []
    monkeypatch.setattr(StorageReader, "prefetch", lambda self, ranges, dtype: asked.extend(ranges))
    reference, info = _saved(tmp_path, torch.arange(1000.0))
    got = [c.copy() for c in iter_chunks_ahead(info, 16, 200, np.empty((2, 64), np.uint8))]
    assert np.array_equal(np.concatenate(got), reference.numpy())
    assert all(count <= 10 for _, count in asked)
    # every element asked for once, in the file's order
    ends = [info.offset] + [first + count for first, count in asked]
    assert [first for first, _ in asked] == ends[:-1] and ends[-1] == info.offset + 1000


def test_direct_reads_go_past_the_page_cache_and_end_at_a_truncation(tmp_path, monkeypatch):
    reference, info = _saved(tmp_path, torch.randn(5000))
    direct = []
    real = StorageReader.read_direct
    monkeypatch.setattr(
        StorageReader, "read_direct", lambda self, *a: direct.append(a[0]) or real(self, *a)
    )
    for skip in (0, 16, 4095):  # bytes from the buffer's start to its first whole block
        room = np.empty(2 * (1000 * 4 + read.DIRECT_SLACK) + 8192, np.uint8)
        start = (-room.ctypes.data - skip) % 4096
        buffers = room[start : start + 2 * (1000 * 4 + read.DIRECT_SLACK)].reshape(2, -1)
        assert -buffers.ctypes.data % 4096 == skip
        got = [c.copy() for c in iter_chunks_ahead(info, 1000, 0, buffers, direct=True)]
        assert np.array_equal(np.concatenate(got), reference.numpy())
    assert direct and all(fd is not None for fd in direct)  # O_DIRECT on this file system
    path = info.storage.source.path
    with open(path, "r+b") as f:  # the file shrinks under the reader
        f.truncate(os.path.getsize(path) - 9000)
    with pytest.raises(CheckpointError):
        list(iter_chunks_ahead(info, 1000, 0, buffers, direct=True))
