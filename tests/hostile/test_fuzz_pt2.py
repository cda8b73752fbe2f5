"""Differential fuzzing of torch.export archives (.pt2): an archive written by torch.export.save,
then its weights/constants configs edited field by field (sizes, strides, storage offsets,
dtypes, record names, flags) and its raw records cut or grown. torch's own pt2 loader for
weights and constants (`torch.export.pt2_archive._package`, the code torch.export.load runs
for them) is the oracle: what it loads we list and read bit for bit; what it refuses we refuse,
or open saying why. Pickled records (`use_pickle`) are never loaded by the oracle here: torch
would run them; we only check that we do not present such a record as a plain tensor.

CI runs a few cases; the by-hand campaign:

    FUZZ_EXAMPLES=10000 FUZZ_LOG=/tmp/pt2.log python -m pytest -q tests/hostile/test_fuzz_pt2.py
"""

from __future__ import annotations

import json
import warnings
import zipfile

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from oracle import bits
from test_differential_fuzz import FUZZ, judge

from ckpt_viewer.core import Ambiguous, CheckpointError
from ckpt_viewer.core.listing.open import open_checkpoint
from ckpt_viewer.core.values.torch_bridge import read_tensor

CONFIGS = ("data/weights/model_weights_config.json", "data/constants/model_constants_config.json")


class Small(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)
        base = torch.randn(6, dtype=torch.float64)
        self.register_buffer("full", base)
        self.register_buffer("tail", base[2:5])  # shares full's storage
        self.register_buffer("t", torch.randn(4, 3).t())
        self.register_buffer("h", torch.randn(5).half())
        self.scale = torch.tensor([1.0, 2.0, 3.0])  # a lifted constant

    def forward(self, x):
        y = self.lin(x) + self.full.sum() + self.tail.sum() + self.t.sum(1)[:3] + self.scale
        return y + self.h.float().sum()


@pytest.fixture(scope="module")
def seed(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("pt2-seed") / "seed.pt2"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.export.save(torch.export.export(Small(), (torch.randn(2, 4),)), str(path))
    with zipfile.ZipFile(path) as archive:
        root = archive.namelist()[0].split("/")[0] + "/"
        return {name[len(root) :]: archive.read(name) for name in archive.namelist()}


def _int_edit(value: int, how: int) -> int:
    return [value + 1, value - 1, -1, 0, 2**40, value * 2][how % 6]


def apply(records: dict, edit) -> None:
    kind, which, how = edit
    config_name = CONFIGS[which % 2]
    config = json.loads(records[config_name])
    entries = list(config["config"].values())
    if not entries:
        return
    entry = entries[(which // 2) % len(entries)]
    meta = entry.get("tensor_meta") or {}
    if kind == "size" and meta.get("sizes"):
        dim = meta["sizes"][how % len(meta["sizes"])]
        dim["as_int"] = _int_edit(dim["as_int"], how // 3)
    elif kind == "stride" and meta.get("strides"):
        dim = meta["strides"][how % len(meta["strides"])]
        dim["as_int"] = _int_edit(dim["as_int"], how // 3)
    elif kind == "offset" and meta:
        meta["storage_offset"]["as_int"] = _int_edit(meta["storage_offset"]["as_int"], how)
    elif kind == "dtype" and meta:
        meta["dtype"] = [1, 2, 5, 6, 8, 12, 13, 29, 35, 99][how % 10]
    elif kind == "path":
        entry["path_name"] = ["weight_0", "weight_3", "tensor_0", "missing", "../x"][how % 5]
    elif kind == "param":
        entry["is_param"] = not entry.get("is_param")
    elif kind == "rank" and meta.get("sizes"):
        meta["sizes"].append({"as_int": 1})
    elif kind == "record":
        name = f"data/weights/weight_{how % 5}"
        if name in records:
            data = records[name]
            records[name] = [data[:-1], data + b"\0" * 8, b"", data[: len(data) // 2]][how % 4]
        return
    records[config_name] = json.dumps(config).encode()


EDITS = ["size", "stride", "offset", "dtype", "path", "param", "rank", "record"]
edit = st.tuples(st.sampled_from(EDITS), st.integers(0, 11), st.integers(0, 23))


def write_archive(records: dict, path) -> None:
    from torch.export.pt2_archive._package import PT2ArchiveWriter

    with PT2ArchiveWriter(str(path)) as writer:
        for name, data in records.items():
            if name not in (".data/version", "byteorder", ".data/serialization_id"):
                writer.write_bytes(name, data)


def torch_reads(path):
    """(fqn -> tensor, None) as torch's pt2 loader reads weights and constants, else (None, error)."""
    from torch.export.pt2_archive._package import (
        PT2ArchiveReader,
        _load_constants,
        _load_state_dict,
    )

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reader = PT2ArchiveReader(str(path))
            return {**_load_state_dict(reader, "model"), **_load_constants(reader, "model")}, None
    except Exception as exc:  # noqa: BLE001 - any refusal is an answer
        return None, f"{type(exc).__name__}: {str(exc)[:200]}"


def pt2_differential(path) -> str:
    reference, torch_error = torch_reads(path)
    try:
        checkpoint = open_checkpoint(str(path))
    except Ambiguous as exc:
        return f"ambiguous (torch: {'loads' if torch_error is None else 'refuses'}): {exc}"
    except CheckpointError as exc:
        if torch_error is None:
            return f"MISMATCH: torch loads it, we refuse: {exc}"
        return f"both refuse: {exc}"
    ours = {key: info for key, info, _ in checkpoint.tensors()}
    if torch_error is not None:
        if checkpoint.warnings or checkpoint.refusals:
            said = (checkpoint.refusals or checkpoint.warnings)[0]
            return f"torch refuses, we open it and say why: {said}"
        try:
            for info in ours.values():
                read_tensor(info)
        except CheckpointError as exc:
            return f"both refuse (we, reading values): {exc}"
        return f"MISMATCH: torch refuses ({torch_error}), we open and read it with no warning"
    if set(ours) != set(reference):
        return f"MISMATCH: keys {sorted(ours)} vs {sorted(reference)}"
    for key, expected in reference.items():
        info = ours[key]
        if (info.dtype, tuple(info.shape)) != (str(expected.dtype)[6:], tuple(expected.shape)):
            return (
                f"MISMATCH: {key}: {info.dtype} {tuple(info.shape)} vs torch {expected.dtype} "
                f"{tuple(expected.shape)}"
            )
        try:
            value = read_tensor(info)
        except CheckpointError as exc:
            said = [w for w in checkpoint.warnings if w.startswith(f"{key}: its record")]
            if said and "gives zeros" in said[0]:  # said, not read: never a wrong number
                continue
            return f"MISMATCH: we fail reading {key}: {exc}"
        if expected.numel() > 10**7:  # a zero-stride view of a small record: as stored
            same = (value.stride(), value.storage_offset()) == (
                expected.stride(),
                expected.storage_offset(),
            ) and bytes(value.untyped_storage()) == bytes(expected.untyped_storage())
        else:
            same = bits(value) == bits(expected)
        if not same:
            return f"MISMATCH: {key} values differ"
    return "same"


@FUZZ
@given(edits=st.lists(edit, min_size=0, max_size=3))
def test_pt2_config_edits(seed, tmp_path_factory, edits):
    records = dict(seed)
    for one in edits:
        apply(records, one)
    path = tmp_path_factory.mktemp("pt2") / "f.pt2"
    write_archive(records, path)
    judge(lambda: pt2_differential(path), repr(edits))
