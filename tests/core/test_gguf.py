"""GGUF files written by the gguf package's own writer: the listing (numpy- and torch-free),
metadata, ggml types, shapes, and values dequantized bit for bit as gguf's reader does."""

import json
import subprocess
import sys

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from ckpt_viewer.core import CheckpointError  # noqa: E402
from ckpt_viewer.core.analysis.diff import diff  # noqa: E402
from ckpt_viewer.core.listing.open import open_checkpoint  # noqa: E402
from ckpt_viewer.core.listing.readers.gguf import GGML_TYPES  # noqa: E402
from ckpt_viewer.core.progress import run  # noqa: E402
from ckpt_viewer.core.values.read import iter_chunks, read_array, read_window  # noqa: E402
from ckpt_viewer.core.values.stats import compute  # noqa: E402

Q = gguf.GGMLQuantizationType


def weights(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "token_embd.weight": (rng.standard_normal((16, 64)).astype(np.float32), Q.F16),
        "blk.0.attn_q.weight": (rng.standard_normal((64, 64)).astype(np.float32), Q.Q8_0),
        "blk.0.attn_k.weight": (rng.standard_normal((32, 64)).astype(np.float32), Q.Q4_0),
        "blk.0.attn_norm.weight": (rng.standard_normal(64).astype(np.float32), Q.F32),
        "blk.1.ffn_up.weight": (rng.standard_normal((96, 128)).astype(np.float32), Q.Q8_0),
        "output_norm.weight": (rng.standard_normal(64).astype(np.float32), Q.F32),
    }


def write_gguf(path, tensors, arch="llama", blocks=2, heads=None):
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(blocks)
    if heads:
        writer.add_head_count(heads[0])
        writer.add_head_count_kv(heads[1])
    writer.add_name("tiny test model")
    writer.add_uint32("test.answer", 42)
    writer.add_float32("test.scale", 0.5)
    writer.add_array("test.list", list(range(40)))
    writer.add_array("test.words", ["a", "b"])
    for name, (values, qtype) in tensors.items():
        if qtype == Q.F32:
            writer.add_tensor(name, values)
        elif qtype == Q.F16:
            writer.add_tensor(name, values.astype(np.float16))
        else:
            writer.add_tensor(name, gguf.quants.quantize(values, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def converter_rows(weight, heads):
    """The row order llama.cpp's convert_hf_to_gguf gives a llama q/k projection."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, -1).swapaxes(1, 2).reshape(weight.shape)


def oracle(path):
    """{name: (ggml type name, ne shape, dequantized values)} through gguf's own reader."""
    reader = gguf.GGUFReader(str(path))
    return {
        t.name: (
            t.tensor_type.name,
            [int(d) for d in t.shape],
            gguf.quants.dequantize(t.data, t.tensor_type),
        )
        for t in reader.tensors
    }


def test_type_table_matches_the_package():
    for type_id, (name, block, size) in GGML_TYPES.items():
        assert gguf.GGML_QUANT_SIZES[Q(type_id)] == (block, size)
        assert Q(type_id).name == name


def test_listing_matches_gguf_reader(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", weights())
    checkpoint = open_checkpoint(str(path))
    assert checkpoint.format == "gguf"
    expected = oracle(path)
    listed = {key: t for key, t, _ in checkpoint.tensors()}
    assert list(listed) == list(expected)
    for name, (type_name, ne, values) in expected.items():
        t = listed[name]
        assert t.quantizer["ggml_type"] == type_name
        assert list(t.shape) == ne[::-1] == list(values.shape)  # numpy order: ne reversed
        assert t.nbytes == t.storage.source.nbytes
    assert listed["blk.0.attn_q.weight"].dtype == "Q8_0"
    assert listed["blk.0.attn_norm.weight"].dtype == "float32"
    assert listed["token_embd.weight"].dtype == "float16"
    # grouped by dotted names like other checkpoints
    assert [n.name for n in checkpoint.root.children] == ["token_embd", "blk", "output_norm"]
    meta = checkpoint.metadata
    assert meta["general.architecture"] == "llama" and meta["llama.block_count"] == 2
    assert meta["test.answer"] == 42 and meta["test.scale"] == 0.5
    assert meta["general.name"] == "tiny test model"
    assert meta["test.list"].startswith("[0, 1, 2") and "(40 items)" in meta["test.list"]


def test_values_bit_for_bit(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", weights())
    listed = {key: t for key, t, _ in open_checkpoint(str(path)).tensors()}
    for name, (_, _, values) in oracle(path).items():
        t = listed[name]
        got = read_array(t)
        if got.dtype != values.dtype:  # F16 is read as float16; gguf widens it
            got = got.astype(values.dtype)
        assert got.tobytes() == values.tobytes(), name
        chunks = np.concatenate([c.astype(values.dtype) for c in iter_chunks(t, 100)])
        assert chunks.tobytes() == values.reshape(-1).tobytes(), name
        if values.ndim == 2:
            window = read_window(t, (), range(1, values.shape[0], 3), range(5, values.shape[1], 7))
            assert np.array_equal(window.astype(values.dtype), values[1::3, 5::7]), name


def test_stats_on_dequantized_values(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", weights())
    t = open_checkpoint(str(path)).find("blk.1.ffn_up.weight").tensor
    values = oracle(path)["blk.1.ffn_up.weight"][2].astype(np.float64)
    stats = run(compute(t, bins=16, chunk=1000))
    assert stats.numel == values.size and sum(stats.counts) == values.size
    assert stats.min == values.min() and stats.max == values.max()
    assert stats.mean == pytest.approx(values.mean())


def test_layers_group_blk_stacks(tmp_path):
    from ckpt_viewer.core.analysis.layers import group_layers

    rng = np.random.default_rng(1)
    tensors = {
        f"blk.{i}.attn_q.weight": (rng.standard_normal((32, 64)).astype(np.float32), Q.Q8_0)
        for i in range(3)
    }
    stacks = group_layers(open_checkpoint(str(write_gguf(tmp_path / "l.gguf", tensors, blocks=3))))
    assert [(s.prefix, s.layers) for s in stacks] == [("blk", [0, 1, 2])]


def test_listing_imports_neither_numpy_nor_torch(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", weights())
    code = (
        "import sys; from ckpt_viewer.core.listing.open import open_checkpoint; "
        f"c = open_checkpoint({str(path)!r}); assert len(c.tensors()) == 6; "
        "assert 'numpy' not in sys.modules and 'torch' not in sys.modules, 'imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_diff_against_safetensors_maps_names(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    tensors = weights()
    hf_names = {
        "token_embd.weight": "model.embed_tokens.weight",
        "blk.0.attn_q.weight": "model.layers.0.self_attn.q_proj.weight",
        "blk.0.attn_k.weight": "model.layers.0.self_attn.k_proj.weight",
        "blk.0.attn_norm.weight": "model.layers.0.input_layernorm.weight",
        "blk.1.ffn_up.weight": "model.layers.1.mlp.up_proj.weight",
        "output_norm.weight": "model.norm.weight",
    }
    plain = {name: (v, Q.F32) for name, (v, _) in tensors.items()}
    gguf_path = write_gguf(tmp_path / "m.gguf", plain)
    rotated = dict(
        plain,
        **{
            "blk.0.attn_q.weight": (converter_rows(tensors["blk.0.attn_q.weight"][0], 4), Q.F32),
            "blk.0.attn_k.weight": (converter_rows(tensors["blk.0.attn_k.weight"][0], 2), Q.F32),
        },
    )
    rotated_path = write_gguf(tmp_path / "r.gguf", rotated, heads=(4, 2))
    save_file(
        {hf_names[n]: torch.from_numpy(v) for n, (v, _) in tensors.items()},
        str(tmp_path / "m.safetensors"),
    )
    a, b = open_checkpoint(str(gguf_path)), open_checkpoint(str(tmp_path / "m.safetensors"))
    report = run(diff(a, b))
    assert report.identical, report
    assert {t.key_b for t in report.tensors} == set(hf_names.values())
    # llama.cpp's q/k row order: compared in that order, shown with the original shapes
    report = run(diff(b, open_checkpoint(str(rotated_path))))
    assert report.identical, [(t.key, t.status) for t in report.tensors]
    q = next(t for t in report.tensors if t.key == "blk.0.attn_q.weight")
    assert q.shape_a == q.shape_b == [64, 64]
    without_heads = run(diff(b, open_checkpoint(str(write_gguf(tmp_path / "n.gguf", rotated)))))
    assert without_heads.count("changed") == 2
    unmapped = run(diff(a, b, map_gguf=False))
    assert not unmapped.tensors and len(unmapped.only_a) == 6
    # a quantized file against the float originals: same names, values close
    quantized = open_checkpoint(str(write_gguf(tmp_path / "q.gguf", tensors)))
    report = run(diff(b, quantized))
    by_key = {t.key: t for t in report.tensors}
    assert by_key["blk.0.attn_q.weight"].status == "dtype+changed"
    assert by_key["blk.0.attn_q.weight"].cosine > 0.99
    assert by_key["blk.0.attn_norm.weight"].status == "identical"


def test_cli_inspect_and_diff(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", weights())
    out = subprocess.run(
        [sys.executable, "-m", "ckpt_viewer", "inspect", "--json", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    data = json.loads(out)
    assert data["format"] == "gguf"
    keys = {t["key"]: t for t in data["tensors"]}
    assert keys["blk.0.attn_k.weight"]["dtype"] == "Q4_0"
    assert keys["blk.0.attn_k.weight"]["shape"] == [32, 64]
    fields = gguf.GGUFReader(str(path)).fields  # the metadata, as gguf reads it
    meta = data["metadata"]
    for name in (
        "general.architecture",
        "general.name",
        "llama.block_count",
        "test.answer",
        "test.scale",
    ):
        assert meta[name] == fields[name].contents()
    assert meta["test.list"].startswith("[0, 1, 2") and "(40 items)" in meta["test.list"]
    assert meta["test.words"] == str(fields["test.words"].contents())
    result = subprocess.run(
        [sys.executable, "-m", "ckpt_viewer", "stats", str(path), "blk.0.attn_k.weight"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "damage",
    ["truncate_header", "truncate_data", "bad_type", "version", "huge_count", "huge_string"],
)
def test_damaged_files_are_one_line_errors(tmp_path, damage):
    path = write_gguf(tmp_path / "m.gguf", weights())
    data = bytearray(path.read_bytes())
    if damage == "truncate_header":
        data = data[:200]
    elif damage == "truncate_data":
        data = data[:-100]
    elif damage == "version":
        data[4:8] = (9).to_bytes(4, "little")
    elif damage == "huge_count":
        data[8:16] = (2**62).to_bytes(8, "little")
    elif damage == "huge_string":
        data[24:32] = (2**60).to_bytes(8, "little")  # the first key's length
    elif damage == "bad_type":
        name = b"output_norm.weight"
        at = data.index(name) + len(name) + 4 + 8  # n_dims, one dim, then the type
        data[at : at + 4] = (99).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as error:
        open_checkpoint(str(path))
    assert "\n" not in str(error.value)
