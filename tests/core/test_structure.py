"""Structure the format's own reader refuses, or reads in no defined way, is refused here and
reported by `verify` as damage naming the tensor: DCP chunk geometry (metadata written with
pickle of torch's own Metadata classes; torch's DCP reader is the oracle)."""

import io
import os
import pickle

import pytest
import torch

from ckpt_viewer.cli import main
from ckpt_viewer.core import CheckpointError, StructureError
from ckpt_viewer.core.export import ExportPlan, export
from ckpt_viewer.core.open import open_checkpoint
from ckpt_viewer.core.stats import compute, run

dcp = pytest.importorskip("torch.distributed.checkpoint")
from torch.distributed.checkpoint.filesystem import _StorageInfo  # noqa: E402
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save  # noqa: E402
from torch.distributed.checkpoint.metadata import (  # noqa: E402
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    TensorProperties,
    TensorStorageMetadata,
)


def write_dcp(folder, shape, chunks, dtype=torch.float32, transforms=None) -> str:
    """A DCP folder holding tensor "w" of `shape` from chunks [(offsets, sizes, stored tensor)],
    each stored as torch's writer stores it (torch.save into one data file)."""
    os.makedirs(folder)
    blob, md_chunks, storage = io.BytesIO(), [], {}
    for offsets, sizes, stored in chunks:
        start = blob.tell()
        torch.save(stored, blob)
        md_chunks.append(ChunkStorageMetadata(offsets=torch.Size(offsets),
                                              sizes=torch.Size(sizes)))
        storage[MetadataIndex("w", torch.Size(offsets))] = _StorageInfo(
            "d.distcp", start, blob.tell() - start, transforms)
    with open(os.path.join(folder, "d.distcp"), "wb") as f:
        f.write(blob.getvalue())
    metadata = Metadata(state_dict_metadata={"w": TensorStorageMetadata(
        TensorProperties(dtype=dtype), torch.Size(shape), md_chunks)}, storage_data=storage)
    with open(os.path.join(folder, ".metadata"), "wb") as f:
        pickle.dump(metadata, f)
    return str(folder)


def torch_reads(folder, target=None):
    """What torch's reader gives for "w": dcp_to_torch_save (target None) or dcp.load into
    `target`; the exception when it refuses."""
    try:
        if target is None:
            dcp_to_torch_save(folder, os.path.join(folder, "oracle.pt"))
            return torch.load(os.path.join(folder, "oracle.pt"), weights_only=True)["w"]
        state = {"w": target}
        dcp.load(state, checkpoint_id=folder)
        return state["w"]
    except BaseException as exc:    # noqa: BLE001 - its CheckpointException is a BaseException
        return exc


def verify_line(folder, capsys) -> str:
    code = main(["verify", folder])
    out = capsys.readouterr().out.strip()
    assert code == 1 and len(out.splitlines()) == 1 and out.startswith("damaged: "), out
    return out


def full(*shape, value=1.0, dtype=torch.float32):
    return torch.full(shape, value, dtype=dtype)


def test_overlapping_chunks_are_ambiguous(tmp_path, capsys):
    """Two chunks ending on the same row: torch's reader copies them in list order, so the
    same two chunks give two tensors. Neither is shown."""
    a, b = ((0, 0), (4, 3), full(4, 3, value=1.0)), ((2, 0), (2, 3), full(2, 3, value=2.0))
    ab = torch_reads(write_dcp(tmp_path / "ab", (4, 3), [a, b]))
    ba = torch_reads(write_dcp(tmp_path / "ba", (4, 3), [b, a]))
    assert ab[2:].eq(2).all() and ba.eq(1).all()             # order decides
    for folder in ("ab", "ba"):
        with pytest.raises(StructureError, match="'w' is ambiguous: .* overlap") as caught:
            open_checkpoint(str(tmp_path / folder))
        assert caught.value.key == "w"
        assert "'w'" in verify_line(str(tmp_path / folder), capsys)


def test_holes_are_refused(tmp_path, capsys):
    """torch's reader fills no hole: dcp.load leaves the target's old values there."""
    folder = write_dcp(tmp_path / "hole", (4, 3), [((0, 0), (2, 3), full(2, 3))])
    assert torch_reads(folder, full(4, 3, value=-7.0))[2:].eq(-7).all()
    with pytest.raises(StructureError, match="'w' has holes: its chunks cover 6 of its 12"):
        open_checkpoint(folder)
    assert "holes" in verify_line(folder, capsys)


def test_chunk_past_the_tensor_is_refused(tmp_path, capsys):
    """torch clips a chunk that reaches past the tensor; its writer never writes one."""
    folder = write_dcp(tmp_path / "past", (4, 3), [((0, 0), (2, 3), full(2, 3)),
                                                   ((2, 0), (3, 3), full(3, 3, value=2.0))])
    assert torch_reads(folder)[2:].eq(2).all()
    with pytest.raises(StructureError, match=r"chunk at \[2, 0\] of size \[3, 3\] reaches past"):
        open_checkpoint(folder)
    assert "reaches past" in verify_line(folder, capsys)


@pytest.mark.parametrize("stored, torch_refuses", [
    (full(1, 3), True),                       # smaller: torch's size assertion
    (full(3, 2), True),                       # other shape, same count
    (full(6), True),                          # other rank
    (full(3, 3), False),                      # larger: torch narrows it
    (full(2, 3, dtype=torch.float64), False),  # other dtype: torch casts it
])
def test_chunk_stored_unlike_its_metadata(tmp_path, capsys, stored, torch_refuses):
    folder = write_dcp(tmp_path / "d", (4, 3), [((0, 0), (2, 3), stored),
                                                ((2, 0), (2, 3), full(2, 3, value=2.0))])
    assert isinstance(torch_reads(folder), BaseException) == torch_refuses
    checkpoint = open_checkpoint(folder)                  # the metadata alone is consistent
    tensor = checkpoint.find("w").tensor
    with pytest.raises(StructureError, match=r"chunk at \[0, 0\] in d.distcp at offset 0 stores"):
        run(compute(tensor))
    with pytest.raises(CheckpointError, match="stores"):
        run(export(checkpoint, ExportPlan(format="safetensors"), str(tmp_path / "out.st")))
    assert not (tmp_path / "out.st").exists()
    line = verify_line(folder, capsys)
    assert "DCP tensor 'w': its chunk at [0, 0]" in line and "where the metadata says" in line


def test_unknown_transform_is_refused_as_torch_refuses(tmp_path, capsys):
    folder = write_dcp(tmp_path / "t", (4, 3), [((0, 0), (4, 3), full(4, 3))],
                       transforms=["stream.rot13/1"])
    assert "Unknown extension" in str(torch_reads(folder))
    with pytest.raises(StructureError, match="transform 'stream.rot13'"):
        open_checkpoint(folder)
    assert "'w'" in verify_line(folder, capsys)


def test_expanded_chunk_is_not_read_as_600m_elements(tmp_path, capsys):
    """A 1.5 KB chunk declaring 600 million elements: refused before anything is
    materialised (torch's writer clones such a view before saving it)."""
    n = 600_000_000
    folder = write_dcp(tmp_path / "x", (n,), [((0,), (n,), torch.ones(1).expand(n))])
    tensor = open_checkpoint(folder).find("w").tensor
    with pytest.raises(StructureError, match="stores 1 elements for its 600,000,000"):
        run(compute(tensor))
    assert "expanded view" in verify_line(folder, capsys)


def test_torch_written_dcp_is_intact(tmp_path, capsys):
    state = {"emb": torch.randn(30, 4), "nested": {"b": torch.arange(5)}, "step": 3}
    dcp.save(state, checkpoint_id=str(tmp_path / "ok"))
    assert main(["verify", str(tmp_path / "ok")]) == 0
    assert capsys.readouterr().out.startswith("intact: ")


# --- .pt2 view geometry: torch.export.load builds each entry with torch.as_strided ----------

@pytest.fixture(scope="module")
def pt2_archive(tmp_path_factory):
    import warnings

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("pt2") / "m.pt2"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.export.save(torch.export.export(torch.nn.Linear(3, 2), (torch.randn(1, 3),)),
                          str(path))
    return str(path)


def pt2_with(src, dst, **tensor_meta) -> str:
    """A copy of the archive whose `weight` entry has the given sizes/strides/offset."""
    import json
    import zipfile

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name.endswith("_weights_config.json"):
                config = json.loads(data)
                config["config"]["weight"]["tensor_meta"].update(
                    {k: [{"as_int": v} for v in vs] if isinstance(vs, list) else {"as_int": vs}
                     for k, vs in tensor_meta.items()})
                data = json.dumps(config).encode()
            zout.writestr(name, data)
    return str(dst)


def torch_export_loads(path):
    import logging

    logging.getLogger("torch.export").setLevel(logging.CRITICAL)   # its traceback warning
    try:
        return torch.export.load(path).state_dict
    except Exception as exc:    # noqa: BLE001 - the reference's refusal
        return exc


@pytest.mark.parametrize("meta, what", [
    ({"strides": [3, -1], "storage_offset": 2}, "negative stride"),
    ({"storage_offset": 1}, "reaching element 7 of record weight_0, which holds 6"),
    ({"sizes": [3, 3]}, "reaching element 9"),
])
def test_pt2_views_torch_refuses_are_refused(pt2_archive, tmp_path, capsys, meta, what):
    path = pt2_with(pt2_archive, tmp_path / "bad.pt2", **meta)
    assert isinstance(torch_export_loads(path), Exception)
    with pytest.raises(StructureError, match=what) as caught:
        open_checkpoint(path)
    assert caught.value.key == "weight"
    assert "'weight'" in verify_line(path, capsys)


def test_pt2_views_torch_reads_are_read_alike(pt2_archive, tmp_path):
    """A zero stride repeats a row, inside the record: torch reads it, and so do we."""
    from ckpt_viewer.core.values import read_tensor

    path = pt2_with(pt2_archive, tmp_path / "rows.pt2", strides=[0, 1])
    reference = torch_export_loads(path)["weight"]
    got = read_tensor(open_checkpoint(path).find("weight").tensor)
    assert torch.equal(got, reference.detach())


# --- GGUF keys: the gguf package's GGUFReader is the oracle ----------------------------------

def small_gguf(path, patch=None, **uint64_keys) -> str:
    """A GGUF file from gguf's own writer (keys general.aaaa and general.bbbb, tensors aaaa
    and bbbb), then each `patch` (old bytes -> new bytes, same length) applied."""
    import numpy as np

    gguf = pytest.importorskip("gguf")
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_uint32("general.aaaa", 1)
    writer.add_uint32("general.bbbb", 2)
    for key, value in uint64_keys.items():
        writer.add_uint64(key.replace("__", "."), value)
    writer.add_tensor("aaaa", np.arange(8, dtype=np.float32))
    writer.add_tensor("bbbb", np.ones(8, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    data = path.read_bytes()
    for old, new in (patch or {}).items():
        assert len(old) == len(new) and old in data
        data = data.replace(old, new, 1)
    path.write_bytes(data)
    return str(path)


def gguf_reads(path):
    import gguf

    try:
        return gguf.GGUFReader(path)
    except Exception as exc:    # noqa: BLE001 - the reference's refusal
        return exc


@pytest.mark.parametrize("patch, uint64_keys, what", [
    ({b"general.bbbb": b"general.aaaa"}, {}, "key 'general.aaaa' appears twice"),
    ({b"general.bbbb": b"GGUF.version"}, {}, "key 'GGUF.version' appears twice"),
    ({b"general.bbbb": b"general.\xffbbb"}, {}, "metadata key at byte .* is not valid UTF-8"),
    ({b"\x04" + bytes(7) + b"bbbb": b"\x04" + bytes(7) + b"aaaa"}, {}, "names tensor 'aaaa' twice"),
    ({b"\x04" + bytes(7) + b"bbbb": b"\x04" + bytes(7) + b"b\xffbb"}, {}, "tensor name at byte"),
    ({}, {"general__alignment": 32}, "general.alignment is of value type 10, not UINT32"),
])
def test_gguf_files_gguf_refuses_are_refused(tmp_path, capsys, patch, uint64_keys, what):
    path = small_gguf(tmp_path / "m.gguf", patch, **uint64_keys)
    assert isinstance(gguf_reads(path), Exception)
    with pytest.raises(StructureError, match=what):
        open_checkpoint(path)
    verify_line(path, capsys)


def test_gguf_file_gguf_reads_is_read_alike(tmp_path):
    from ckpt_viewer.core.values import read_array

    path = small_gguf(tmp_path / "m.gguf")
    reader = gguf_reads(path)
    checkpoint = open_checkpoint(path)
    assert [t.name for t in reader.tensors] == [k for k, _, _ in checkpoint.tensors()]
    for tensor in reader.tensors:
        assert read_array(checkpoint.find(tensor.name).tensor).tobytes() == tensor.data.tobytes()
