"""Differential fuzzing of torch.distributed.checkpoint folders: a folder saved by DCP itself,
then its metadata edited field by field (chunk offsets and sizes, global sizes, dtypes,
duplicated, dropped or split chunks, storage offsets, lengths and paths, transforms) and its
data file cut. torch's own reader (`dcp_to_torch_save`, then `torch.load`) is the oracle: what it
loads we list and read bit for bit (or refuse as ambiguous, naming why); what it refuses we
refuse, or open saying why.

CI runs a few cases; the by-hand campaign:

    FUZZ_EXAMPLES=10000 FUZZ_LOG=/tmp/dcp.log python -m pytest -q tests/hostile/test_fuzz_dcp.py
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import shutil
import warnings

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from oracle import compare
from test_differential_fuzz import FUZZ, judge

from ckpt_viewer.core import Ambiguous, CheckpointError
from ckpt_viewer.core.listing.open import open_checkpoint
from ckpt_viewer.core.values.torch_bridge import read_tensor

dcp = pytest.importorskip("torch.distributed.checkpoint")


def seed_folder(folder) -> None:
    torch.manual_seed(0)
    state = {
        "a": torch.randn(4, 6),
        "b": torch.arange(10),
        "h": torch.randn(3).half(),
        "s": torch.tensor(2.5),
        "step": 3,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(state, checkpoint_id=str(folder), no_dist=True)


def _entry(metadata, fqn):
    return [(index, info) for index, info in metadata.storage_data.items() if index.fqn == fqn]


def _split(folder, metadata, row: int) -> None:
    """`a` as two chunks of rows [0,row) and [row,4), each a torch.save record of its own."""
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex

    ((index, info),) = _entry(metadata, "a")
    with open(os.path.join(folder, info.relative_path), "rb") as f:
        f.seek(info.offset)
        whole = torch.load(io.BytesIO(f.read(info.length)), weights_only=True)
    if not isinstance(whole, torch.Tensor) or whole.shape != (4, 6):
        raise ValueError("a is no longer the 4 x 6 tensor saved")
    del metadata.storage_data[index]
    chunks, blob = [], io.BytesIO()
    for number, (start, stop) in enumerate(((0, row), (row, 4))):
        record = io.BytesIO()
        torch.save(whole[start:stop].clone(), record)
        offsets, sizes = torch.Size([start, 0]), torch.Size([stop - start, 6])
        chunks.append(ChunkStorageMetadata(offsets=offsets, sizes=sizes))
        metadata.storage_data[MetadataIndex("a", offsets, number)] = type(info)(
            relative_path="__1_0.distcp", offset=blob.tell(), length=len(record.getvalue())
        )
        blob.write(record.getvalue())
    metadata.state_dict_metadata["a"].chunks = chunks
    with open(os.path.join(folder, "__1_0.distcp"), "wb") as f:
        f.write(blob.getvalue())


def apply(folder, metadata, edit) -> None:
    kind, fqn, arg = edit
    meta = metadata.state_dict_metadata.get(fqn)
    tensor = meta is not None and bool(getattr(meta, "chunks", None))
    entries = _entry(metadata, fqn)
    if kind == "split" and fqn == "a" and tensor and len(meta.chunks) == 1:
        try:
            _split(folder, metadata, 1 + arg % 3)
        except Exception:  # noqa: BLE001 - an earlier edit damaged `a`: no split then
            pass
    elif kind == "chunk_offset" and tensor:
        chunk = meta.chunks[arg % len(meta.chunks)]
        chunk.offsets = torch.Size([o + (arg % 3) - 1 for o in chunk.offsets])
    elif kind == "chunk_size" and tensor:
        chunk = meta.chunks[arg % len(meta.chunks)]
        chunk.sizes = torch.Size([max(s + (arg % 3) - 1, 0) for s in chunk.sizes])
    elif kind == "tensor_size" and tensor:
        meta.size = torch.Size(
            [[s + 1, max(s - 1, 0), s * 2, 0, 2**40][arg % 5] for s in meta.size]
        )
    elif kind == "dtype" and tensor:
        meta.properties.dtype = [torch.float64, torch.int8, torch.bfloat16, torch.bool][arg % 4]
    elif kind == "dup_chunk" and tensor:
        meta.chunks.append(meta.chunks[0])
    elif kind == "drop_chunk" and tensor and meta.chunks:
        meta.chunks.pop(arg % len(meta.chunks))
    elif kind == "drop_entry" and entries:
        del metadata.storage_data[entries[arg % len(entries)][0]]
    elif kind == "drop_key" and meta is not None:
        del metadata.state_dict_metadata[fqn]
    elif kind in ("storage_offset", "storage_length", "path", "transform") and entries:
        index, info = entries[arg % len(entries)]
        if kind == "storage_offset":
            info.offset = max(info.offset + [-1, 1, 64, 10**9][arg % 4], 0)
        elif kind == "storage_length":
            info.length = max(info.length + [-1, 1, -100, 10**9][arg % 4], 0)
        elif kind == "path":
            info.relative_path = ["missing.distcp", "../outside.distcp", "", "__1_0.distcp"][
                arg % 4
            ]
        else:
            info.transform_descriptors = [["gzip"], ["mystery"], []][arg % 3]
    elif kind == "truncate":
        data = os.path.join(folder, "__0_0.distcp")
        os.truncate(data, os.path.getsize(data) * (arg % 4) // 4)


EDITS = [
    "split",
    "split",
    "chunk_offset",
    "chunk_size",
    "tensor_size",
    "dtype",
    "dup_chunk",
    "drop_chunk",
    "drop_entry",
    "drop_key",
    "storage_offset",
    "storage_length",
    "path",
    "transform",
    "truncate",
]
edit = st.tuples(
    st.sampled_from(EDITS), st.sampled_from(["a", "b", "h", "s", "step"]), st.integers(0, 11)
)


# layouts torch's reader loads without a word but in no defined way (README, DCP row): holes
# (uninitialised memory), overlaps (copy order), chunks clipped, narrowed or cast, negative
# chunk offsets (narrow counts them from the end), a chunk with no stored data that torch's
# reader skips because it lies outside the tensor (leaving a hole)
UNDEFINED_IN_TORCH = (
    "has holes",
    "is ambiguous",
    "reaches past the tensor's size",
    "where the metadata says",
    "malformed offsets or sizes",
    "a chunk with no stored data",
)


def torch_reads(folder, out):
    """(object, None) as torch's DCP reader loads the folder, else (None, error)."""
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            dcp_to_torch_save(str(folder), str(out))
            return torch.load(str(out), weights_only=True), None
    except (Exception, CheckpointException) as exc:  # noqa: BLE001 - any refusal is an answer
        last = [line for line in str(exc).splitlines() if line.strip()][-1:] or [""]
        return None, f"{type(exc).__name__}: {last[0][:200]}"


def dcp_differential(folder, out) -> str:
    reference, torch_error = torch_reads(folder, out)
    try:
        checkpoint = open_checkpoint(str(folder))
    except Ambiguous as exc:
        return f"ambiguous (torch: {'loads' if torch_error is None else 'refuses'}): {exc}"
    except CheckpointError as exc:
        if torch_error is None and any(why in str(exc) for why in UNDEFINED_IN_TORCH):
            return f"torch reads it in no defined way, we refuse: {exc}"
        if torch_error is None:
            return f"MISMATCH: torch loads it, we refuse: {exc}"
        return f"both refuse: {exc}"
    if torch_error is not None:
        if checkpoint.warnings or checkpoint.refusals:
            said = (checkpoint.refusals or checkpoint.warnings)[0]
            return f"torch refuses, we open it and say why: {said}"
        try:
            for _, tensor, _ in checkpoint.tensors():
                read_tensor(tensor)
        except CheckpointError as exc:
            return f"both refuse (we, reading values): {exc}"
        return f"MISMATCH: torch refuses ({torch_error}), we open and read it with no warning"
    try:
        problems = compare(str(folder), reference)
    except CheckpointError as exc:
        if any(why in str(exc) for why in UNDEFINED_IN_TORCH):
            return f"torch reads it in no defined way, we refuse reading values: {exc}"
        raise
    return "MISMATCH: " + "; ".join(problems) if problems else "same"


@pytest.fixture(scope="module")
def seed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dcp-seed") / "ckpt"
    seed_folder(folder)
    return folder


@FUZZ
@given(edits=st.lists(edit, min_size=0, max_size=3))
def test_dcp_metadata_edits(seed, tmp_path_factory, edits):
    root = tmp_path_factory.mktemp("dcp")
    folder = root / "ckpt"
    shutil.copytree(seed, folder)
    with open(folder / ".metadata", "rb") as f:
        metadata = pickle.load(f)  # our own seed, written by dcp.save above
    for one in edits:
        apply(folder, metadata, one)
    with open(folder / ".metadata", "wb") as f:
        pickle.dump(metadata, f)
    judge(lambda: dcp_differential(folder, root / "torch.pt"), repr(edits))
