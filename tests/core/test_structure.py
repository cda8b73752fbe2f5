"""Structure the format's own reader refuses, or reads in no defined way, is refused here and
reported by `verify` as damage naming the tensor — DCP chunk geometry (metadata pickled from
torch's own Metadata classes; torch's DCP reader is the oracle), `.pt2` views
(torch.export.load), GGUF keys (gguf's GGUFReader) — and folders are read as their own loaders
read them (transformers' from_pretrained, torch's HuggingFaceStorageReader)."""

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import builders
from ckpt_viewer.cli import main
from ckpt_viewer.core import CheckpointError, StructureError
from ckpt_viewer.core.listing.open import open_checkpoint
from ckpt_viewer.core.progress import run
from ckpt_viewer.core.values.stats import compute
from ckpt_viewer.core.writing.export import ExportPlan, export

dcp = pytest.importorskip("torch.distributed.checkpoint")
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save  # noqa: E402


def write_dcp(folder, shape, chunks, dtype=torch.float32, transforms=None) -> str:
    return builders.dcp_crafted(folder, shape, chunks, dtype, transforms)


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
    except BaseException as exc:  # noqa: BLE001 - its CheckpointException is a BaseException
        return exc


def verify_line(folder, capsys) -> str:
    code = main(["verify", folder])
    out = capsys.readouterr().out.strip()
    assert code == 1 and len(out.splitlines()) == 1 and out.startswith("damaged: "), out
    return out


def full(*shape, value=1.0, dtype=torch.float32):
    return torch.full(shape, value, dtype=dtype)


@given(data=st.data())
@settings(
    max_examples=20,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_random_layouts_read_as_torch_reads_or_are_refused(tmp_path_factory, data):
    """Grids of chunks in any order, sometimes with one chunk dropped, grown or moved: what
    we read is what torch's reader loads, bit for bit; what we refuse is a layout whose result
    torch leaves to order or to old memory (dcp.load into a NaN target shows the holes)."""
    from ckpt_viewer.core.values.torch_bridge import read_tensor

    shape = (data.draw(st.integers(1, 6)), data.draw(st.integers(1, 6)))
    cuts = [sorted({0, n} | set(data.draw(st.lists(st.integers(1, n), max_size=3)))) for n in shape]
    full = torch.arange(1.0, shape[0] * shape[1] + 1).view(shape)
    boxes = [
        ((r0, c0), (r1 - r0, c1 - c0))
        for r0, r1 in zip(cuts[0], cuts[0][1:])
        for c0, c1 in zip(cuts[1], cuts[1][1:])
    ]
    change = data.draw(st.sampled_from(["none", "drop", "grow", "move"]))
    if change != "none" and len(boxes) > 1:
        i = data.draw(st.integers(0, len(boxes) - 1))
        (r, c), (h, w) = boxes[i]
        boxes[i] = {
            "drop": None,
            "grow": ((r, c), (min(h + 1, shape[0] - r), w)),
            "move": ((max(r - 1, 0), c), (h, w)),
        }[change]
    chunks = [
        (o, n, full[o[0] : o[0] + n[0], o[1] : o[1] + n[1]].clone())
        for o, n in data.draw(st.permutations([b for b in boxes if b]))
    ]
    folder = write_dcp(tmp_path_factory.mktemp("layout") / "d", shape, chunks)
    expected = torch_reads(folder, torch.full(shape, float("nan")))
    torch_refuses = isinstance(expected, BaseException)  # e.g. two chunks at one offset
    try:
        got = read_tensor(open_checkpoint(folder).find("w").tensor)
    except StructureError as exc:
        assert "\n" not in str(exc)
        assert change != "none" and (
            torch_refuses
            or expected.isnan().any()
            or not same_bits(expected, full)
            or change == "grow"
        )
        return
    assert not torch_refuses and same_bits(got, expected)


def test_overlapping_chunks_are_ambiguous(tmp_path, capsys):
    """Two chunks ending on the same row: torch's reader copies them in list order, so the
    same two chunks give two tensors. Neither is shown."""
    a, b = ((0, 0), (4, 3), full(4, 3, value=1.0)), ((2, 0), (2, 3), full(2, 3, value=2.0))
    ab = torch_reads(write_dcp(tmp_path / "ab", (4, 3), [a, b]))
    ba = torch_reads(write_dcp(tmp_path / "ba", (4, 3), [b, a]))
    assert ab[2:].eq(2).all() and ba.eq(1).all()  # order decides
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
    folder = write_dcp(
        tmp_path / "past",
        (4, 3),
        [((0, 0), (2, 3), full(2, 3)), ((2, 0), (3, 3), full(3, 3, value=2.0))],
    )
    assert torch_reads(folder)[2:].eq(2).all()
    with pytest.raises(StructureError, match=r"chunk at \[2, 0\] of size \[3, 3\] reaches past"):
        open_checkpoint(folder)
    assert "reaches past" in verify_line(folder, capsys)


@pytest.mark.parametrize(
    "stored, torch_refuses",
    [
        (full(1, 3), True),  # smaller: torch's size assertion
        (full(3, 2), True),  # other shape, same count
        (full(6), True),  # other rank
        (full(3, 3), False),  # larger: torch narrows it
        (full(2, 3, dtype=torch.float64), False),  # other dtype: torch casts it
    ],
)
def test_chunk_stored_unlike_its_metadata(tmp_path, capsys, stored, torch_refuses):
    folder = write_dcp(
        tmp_path / "d", (4, 3), [((0, 0), (2, 3), stored), ((2, 0), (2, 3), full(2, 3, value=2.0))]
    )
    assert isinstance(torch_reads(folder), BaseException) == torch_refuses
    checkpoint = open_checkpoint(folder)  # the metadata alone is consistent
    tensor = checkpoint.find("w").tensor
    with pytest.raises(StructureError, match=r"chunk at \[0, 0\] in d.distcp at offset 0 stores"):
        run(compute(tensor))
    with pytest.raises(CheckpointError, match="stores"):
        run(export(checkpoint, ExportPlan(format="safetensors"), str(tmp_path / "out.st")))
    assert not (tmp_path / "out.st").exists()
    line = verify_line(folder, capsys)
    assert "DCP tensor 'w': its chunk at [0, 0]" in line and "where the metadata says" in line


def test_unknown_transform_is_refused_as_torch_refuses(tmp_path, capsys):
    folder = write_dcp(
        tmp_path / "t", (4, 3), [((0, 0), (4, 3), full(4, 3))], transforms=["stream.rot13/1"]
    )
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
        torch.export.save(
            torch.export.export(torch.nn.Linear(3, 2), (torch.randn(1, 3),)), str(path)
        )
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
                    {
                        k: [{"as_int": v} for v in vs] if isinstance(vs, list) else {"as_int": vs}
                        for k, vs in tensor_meta.items()
                    }
                )
                data = json.dumps(config).encode()
            zout.writestr(name, data)
    return str(dst)


def torch_export_loads(path):
    import logging

    logging.getLogger("torch.export").setLevel(logging.CRITICAL)  # its traceback warning
    try:
        return torch.export.load(path).state_dict
    except Exception as exc:  # noqa: BLE001 - the reference's refusal
        return exc


@pytest.mark.parametrize(
    "meta, what",
    [
        ({"strides": [3, -1], "storage_offset": 2}, "negative stride"),
        ({"storage_offset": 1}, "reaching element 7 of record weight_0, which holds 6"),
        ({"sizes": [3, 3]}, "reaching element 9"),
    ],
)
def test_pt2_views_torch_refuses_are_refused(pt2_archive, tmp_path, capsys, meta, what):
    path = pt2_with(pt2_archive, tmp_path / "bad.pt2", **meta)
    assert isinstance(torch_export_loads(path), Exception)
    with pytest.raises(StructureError, match=what) as caught:
        open_checkpoint(path)
    assert caught.value.key == "weight"
    assert "'weight'" in verify_line(path, capsys)


def test_pt2_views_torch_reads_are_read_alike(pt2_archive, tmp_path):
    """A zero stride repeats a row, inside the record: torch reads it, and so do we."""
    from ckpt_viewer.core.values.torch_bridge import read_tensor

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
    except Exception as exc:  # noqa: BLE001 - the reference's refusal
        return exc


@pytest.mark.parametrize(
    "patch, uint64_keys, what",
    [
        ({b"general.bbbb": b"general.aaaa"}, {}, "key 'general.aaaa' appears twice"),
        ({b"general.bbbb": b"GGUF.version"}, {}, "key 'GGUF.version' appears twice"),
        ({b"general.bbbb": b"general.\xffbbb"}, {}, "metadata key at byte .* is not valid UTF-8"),
        (
            {b"\x04" + bytes(7) + b"bbbb": b"\x04" + bytes(7) + b"aaaa"},
            {},
            "names tensor 'aaaa' twice",
        ),
        (
            {b"\x04" + bytes(7) + b"bbbb": b"\x04" + bytes(7) + b"b\xffbb"},
            {},
            "tensor name at byte",
        ),
        ({}, {"general__alignment": 32}, "general.alignment is of value type 10, not UINT32"),
    ],
)
def test_gguf_files_gguf_refuses_are_refused(tmp_path, capsys, patch, uint64_keys, what):
    path = small_gguf(tmp_path / "m.gguf", patch, **uint64_keys)
    assert isinstance(gguf_reads(path), Exception)
    with pytest.raises(StructureError, match=what):
        open_checkpoint(path)
    verify_line(path, capsys)


def test_gguf_file_gguf_reads_is_read_alike(tmp_path):
    from ckpt_viewer.core.values.read import read_array

    path = small_gguf(tmp_path / "m.gguf")
    reader = gguf_reads(path)
    checkpoint = open_checkpoint(path)
    assert [t.name for t in reader.tensors] == [k for k, _, _ in checkpoint.tensors()]
    for tensor in reader.tensors:
        assert read_array(checkpoint.find(tensor.name).tensor).tobytes() == tensor.data.tobytes()


# --- folders as their own loaders read them (issue #20) --------------------------------------


def same_bits(a, b) -> bool:
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(
            a.contiguous().view(-1).view(torch.uint8), b.contiguous().view(-1).view(torch.uint8)
        )
    )


def hf_reader_state(folder) -> dict:
    """Every tensor as torch's HuggingFaceStorageReader loads it."""
    from torch.distributed.checkpoint import HuggingFaceStorageReader

    metadata = HuggingFaceStorageReader(folder).read_metadata()
    state = {
        key: torch.empty(md.size, dtype=md.properties.dtype)
        for key, md in metadata.state_dict_metadata.items()
    }
    dcp.load(state, storage_reader=HuggingFaceStorageReader(folder), no_dist=True)
    return state


def assert_reads_like(checkpoint, expected: dict):
    from ckpt_viewer.core.values.torch_bridge import read_tensor

    got = {key: read_tensor(tensor) for key, tensor, _ in checkpoint.tensors()}
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert same_bits(got[key], value.detach()), key


def test_hf_storage_writer_folder_opens_as_its_reader_reads_it(tmp_path, capsys):
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    state = {"emb": torch.randn(6, 4), "norm.b": torch.randn(5).bfloat16(), "ints": torch.arange(7)}
    folder = str(tmp_path / "hf")
    dcp.save(
        state, storage_writer=HuggingFaceStorageWriter(folder, save_distributed=True), no_dist=True
    )
    assert not [n for n in os.listdir(folder) if n.endswith(".json") or n == ".metadata"]
    checkpoint = open_checkpoint(folder)
    assert checkpoint.format == "dcp"
    assert_reads_like(checkpoint, hf_reader_state(folder))
    assert main(["verify", folder]) == 0 and capsys.readouterr().out.startswith("intact: ")


def write_rank_files(folder, ranks):
    """What ranks of HuggingFaceStorageWriter(save_distributed=True) write: one safetensors
    file each, its tensors' offsets in DCP_SHARDING_INFO. ranks: [{key: (offsets, tensor)}]."""
    import json

    from safetensors.torch import save_file

    os.makedirs(folder)
    for rank, tensors in enumerate(ranks):
        info = {key: {"saved_offsets": list(offsets)} for key, (offsets, _) in tensors.items()}
        save_file(
            {key: t for key, (_, t) in tensors.items()},
            os.path.join(folder, f"shard-{rank:05d}-model-00001-of-00001.safetensors"),
            metadata={"format": "pt", "DCP_SHARDING_INFO": json.dumps(info), "DCP_VERSION": "1.0"},
        )
    return str(folder)


def test_hf_storage_rank_files_assemble_like_its_reader(tmp_path):
    w = torch.randn(6, 4)
    folder = write_rank_files(
        tmp_path / "ranks",
        [
            {"w": ((0, 0), w[:3].clone()), "only0": ((0,), torch.arange(3))},
            {"w": ((3, 0), w[3:].clone())},
        ],
    )
    expected = hf_reader_state(folder)
    assert same_bits(expected["w"], w)
    checkpoint = open_checkpoint(folder)
    assert checkpoint.find("w").tensor.shape == (6, 4)
    assert_reads_like(checkpoint, expected)
    run(export(checkpoint, ExportPlan(format="pth"), str(tmp_path / "out.pth")))
    assert same_bits(torch.load(tmp_path / "out.pth", weights_only=True)["w"], w)


def test_hf_storage_rank_files_that_overlap_are_refused(tmp_path, capsys):
    folder = write_rank_files(
        tmp_path / "ranks",
        [{"w": ((0, 0), torch.ones(4, 4))}, {"w": ((2, 0), torch.full((4, 4), 2.0))}],
    )
    with pytest.raises(StructureError, match="'w' is ambiguous"):
        open_checkpoint(folder)
    assert "'w'" in verify_line(folder, capsys)


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    """Three differently initialised tiny GPT-2 models of one config, saved by transformers:
    sharded safetensors (with its index), a single safetensors file, a .bin file."""
    transformers = pytest.importorskip("transformers")
    base = tmp_path_factory.mktemp("gpt2")
    config = transformers.GPT2Config(
        n_layer=1, n_embd=8, n_head=2, vocab_size=16, n_positions=8, bos_token_id=0, eos_token_id=0
    )
    for seed, (name, kwargs) in enumerate(
        {"sharded": {"max_shard_size": "2KB"}, "single": {}, "bin": {}}.items()
    ):
        torch.manual_seed(seed)
        model = transformers.GPT2LMHeadModel(config)
        model.save_pretrained(base / name, **kwargs)
    # transformers 5 writes no .bin: the file older versions wrote, a torch.save'd state_dict
    os.remove(base / "bin" / "model.safetensors")
    torch.save(model.state_dict(), base / "bin" / "pytorch_model.bin")
    return base


def gpt2_folder(gpt2, folder, *parts) -> str:
    import shutil

    os.makedirs(folder)
    for part in parts:
        for name in os.listdir(gpt2 / part):
            shutil.copy(gpt2 / part / name, folder / name)
    return str(folder)


@pytest.mark.parametrize(
    "parts, read, unread",
    [
        (("sharded", "single"), "model.safetensors", "model.safetensors.index.json"),
        (("sharded", "bin"), "model.safetensors.index.json", "pytorch_model.bin"),
        (("single", "bin"), "model.safetensors", "pytorch_model.bin"),
    ],
)
def test_folder_reads_what_from_pretrained_reads(gpt2, tmp_path, parts, read, unread):
    import transformers

    folder = gpt2_folder(gpt2, tmp_path / "m", *parts)
    reference = transformers.GPT2LMHeadModel.from_pretrained(folder).state_dict()
    checkpoint = open_checkpoint(folder)
    assert (
        f"{unread} is not read: from_pretrained reads {read} in this folder" in checkpoint.warnings
    )
    keys = [key for key, _, _ in checkpoint.tensors()]
    assert_reads_like(checkpoint, {key: reference[key] for key in keys})


def test_variant_index_opens_as_a_file_and_as_a_folder(gpt2, tmp_path):
    """transformers' from_pretrained(variant="fp16") reads model.safetensors.index.fp16.json;
    diffusers names its variant index diffusion_pytorch_model.safetensors.index.fp16.json."""
    import transformers

    torch.manual_seed(5)
    model = transformers.GPT2LMHeadModel(
        transformers.GPT2LMHeadModel.from_pretrained(str(gpt2 / "single")).config
    )
    folder = tmp_path / "fp16"
    model.save_pretrained(folder, variant="fp16", max_shard_size="2KB")
    reference = transformers.GPT2LMHeadModel.from_pretrained(folder, variant="fp16").state_dict()
    index = folder / "model.safetensors.index.fp16.json"
    for path in (index, folder):
        checkpoint = open_checkpoint(str(path))
        assert checkpoint.format == "hf-sharded"
        keys = [key for key, _, _ in checkpoint.tensors()]
        assert_reads_like(checkpoint, {key: reference[key] for key in keys})
    index.rename(folder / "diffusion_pytorch_model.safetensors.index.fp16.json")
    os.remove(folder / "config.json")
    for path in (folder / "diffusion_pytorch_model.safetensors.index.fp16.json", folder):
        checkpoint = open_checkpoint(str(path))
        assert_reads_like(checkpoint, {key: reference[key] for key, _, _ in checkpoint.tensors()})


def test_big_endian_gguf_reads_as_gguf_reader_reads_it(tmp_path):
    """GGUFReader reads a file of the other byte order: plain values byte-swapped, quantized
    blocks as their raw bytes (gguf's writer swaps only plain arrays)."""
    import numpy as np

    gguf = pytest.importorskip("gguf")
    from ckpt_viewer.core.values.read import read_array

    path = str(tmp_path / "be.gguf")
    writer = gguf.GGUFWriter(path, "llama", endianess=gguf.GGUFEndian.BIG)
    writer.add_uint32("general.answer", 42)
    writer.add_array("general.list", [1, 2, 3])
    values = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    writer.add_tensor("f32", values)
    writer.add_tensor("f16", values.astype(np.float16))
    writer.add_tensor("i32", np.arange(-5, 5, dtype=np.int32))
    q8 = gguf.GGMLQuantizationType.Q8_0
    writer.add_tensor("q8", gguf.quants.quantize(values, q8), raw_dtype=q8)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    reader = gguf.GGUFReader(path)
    assert reader.byte_order == "S"
    checkpoint = open_checkpoint(path)
    assert checkpoint.metadata["general.answer"] == 42
    assert checkpoint.metadata["general.list"] == "[1, 2, 3]"
    listed = {key: t for key, t, _ in checkpoint.tensors()}
    assert list(listed) == [t.name for t in reader.tensors]
    for t in reader.tensors:  # (gguf's dequantize views plain data in native order)
        expected = (
            t.data.astype(t.data.dtype.newbyteorder("="))
            if t.data.dtype != np.uint8
            else gguf.quants.dequantize(t.data, t.tensor_type)
        )
        got = read_array(listed[t.name])
        assert got.dtype.newbyteorder("=") == expected.dtype, t.name
        assert np.array_equal(got, expected), t.name
        if t.data.dtype != np.uint8:
            assert run(compute(listed[t.name])).max == float(expected.max())
    run(export(checkpoint, ExportPlan(format="safetensors", exclude=["q8"]), str(tmp_path / "o")))
    from safetensors.numpy import load_file

    for name, value in load_file(str(tmp_path / "o")).items():
        assert np.array_equal(
            value, reader.tensors[[t.name for t in reader.tensors].index(name)].data
        ), name
