"""DCP folders exported to one file, streamed chunk by chunk: the same tensors as torch's own
dcp_to_torch_save, bit for bit, and chunks split along any dimension assembled correctly."""

import io

import numpy as np
import pytest
import torch

from ckpt_viewer.core.listing.model import FileSpan, TensorInfo
from ckpt_viewer.core.listing.open import open_checkpoint
from ckpt_viewer.core.progress import run
from ckpt_viewer.core.values.dcp import dcp_slabs
from ckpt_viewer.core.values.read import iter_chunks
from ckpt_viewer.core.writing.export import ExportPlan, export

dcp = pytest.importorskip("torch.distributed.checkpoint")


def same_bits(a, b):
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(
            a.contiguous().view(-1).view(torch.uint8), b.contiguous().view(-1).view(torch.uint8)
        )
    )


def dcp_folder(folder):
    torch.manual_seed(0)
    state = {
        "emb": torch.randn(300, 40),
        "half": torch.randn(17, 3).half(),
        "bf": torch.randn(64).bfloat16(),
        "ints": torch.arange(-50, 50),
        "flags": torch.rand(33) > 0.5,
        "scalar": torch.tensor(2.5),
        "nested": {"w": torch.randn(5, 6, 7)},
        "step": 3,
    }
    writer = dcp.FileSystemWriter(str(folder), thread_count=4)  # several data files
    dcp.save(state, storage_writer=writer)
    return str(folder)


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_dcp_export_matches_dcp_to_torch_save(tmp_path, fmt):
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    folder = dcp_folder(tmp_path / "dcp")
    assert len([n for n in (tmp_path / "dcp").iterdir() if n.suffix == ".distcp"]) > 1
    dcp_to_torch_save(folder, tmp_path / "oracle.pt")
    oracle = torch.load(tmp_path / "oracle.pt", weights_only=True)
    expected = {
        "nested.w" if k == "nested" else k: v["w"] if k == "nested" else v
        for k, v in oracle.items()
        if k != "step"
    }
    out = tmp_path / f"out.{fmt}"
    run(export(open_checkpoint(folder), ExportPlan(format=fmt), str(out)))
    if fmt == "pth":
        got = torch.load(out, weights_only=True)
    else:
        from safetensors.torch import load_file

        got = load_file(str(out))
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert same_bits(got[key], value), key


def test_chunks_split_along_several_dims_are_assembled(tmp_path):
    full = torch.arange(6 * 10, dtype=torch.float32).view(6, 10)
    blob, chunks = io.BytesIO(), []
    for r0, r1 in ((0, 4), (4, 6)):
        for c0, c1 in ((0, 3), (3, 10)):
            start = blob.tell()
            piece = full[r0:r1, c0:c1].clone()
            torch.save(-piece if r0 else piece, blob)
            chunks.append(((r0, c0), (r1 - r0, c1 - c0), (start, blob.tell() - start)))
    path = tmp_path / "data.distcp"
    path.write_bytes(blob.getvalue())
    # the chunks of rows 4-5 hold negated values
    tensor = TensorInfo(
        dtype="float32",
        shape=(6, 10),
        chunks=[(o, s, FileSpan(str(path), a, n)) for o, s, (a, n) in chunks],
    )
    expected = full.clone()
    expected[4:] *= -1
    for max_bytes in (1, 40, 1 << 20):
        flat = np.concatenate(list(dcp_slabs(tensor, max_bytes))).view(np.float32)
        assert np.array_equal(flat, expected.numpy().reshape(-1))
    values = np.concatenate(list(iter_chunks(tensor, 7)))
    assert np.array_equal(values, expected.numpy().reshape(-1))


def test_row_sharded_chunks_are_copied_as_they_are(tmp_path):
    from ckpt_viewer.core.writing.export import _dcp_spans

    full = torch.arange(6 * 10, dtype=torch.float32).view(6, 10)
    blob, rows, grid = io.BytesIO(), [], []
    for (r0, r1), target in (((3, 6), rows), ((0, 3), rows), ((0, 6), grid)):
        for c0, c1 in ((0, 10),) if target is rows else ((0, 4), (4, 10)):
            start = blob.tell()
            torch.save(full[r0:r1, c0:c1].clone(), blob)
            target.append(
                (
                    (r0, c0),
                    (r1 - r0, c1 - c0),
                    FileSpan(str(tmp_path / "d"), start, blob.tell() - start),
                )
            )
    (tmp_path / "d").write_bytes(blob.getvalue())
    by_rows = TensorInfo(dtype="float32", shape=(6, 10), chunks=rows)
    spans = _dcp_spans(by_rows, "float32")
    assert [first for _, first, _ in spans] == [0, 0] and len(spans) == 2
    assert _dcp_spans(by_rows, "float16") is None  # a cast is not a copy
    assert (
        _dcp_spans(TensorInfo(dtype="float32", shape=(6, 10), chunks=grid[1:]), "float32") is None
    )


def test_a_0d_tensor_is_its_one_chunk_copied(tmp_path):
    from ckpt_viewer.core.writing.export import _dcp_spans

    blob = io.BytesIO()
    torch.save(torch.tensor(2.5), blob)
    (tmp_path / "d").write_bytes(blob.getvalue())
    span = FileSpan(str(tmp_path / "d"), 0, len(blob.getvalue()))
    spans = _dcp_spans(TensorInfo(dtype="float32", shape=(), chunks=[((), (), span)]), "float32")
    assert spans is not None and len(spans) == 1
    reader, first, nbytes = spans[0]
    with open(tmp_path / "d", "rb") as f:
        f.seek(reader.offset + first)
        assert f.read(nbytes) == torch.tensor(2.5).numpy().tobytes()
    # a chunk whose sizes do not describe a 0-d tensor is not taken as its bytes
    wrong = TensorInfo(dtype="float32", shape=(), chunks=[((), (1,), span)])
    assert _dcp_spans(wrong, "float32") is None
