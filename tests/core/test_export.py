"""Export: exact values, renames, casts, location tags, sharing, atomic and safe writes."""

import errno
import os
import stat
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import builders
from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.listing.open import open_checkpoint
from ckpt_viewer.core.listing.summary import inspect_dict
from ckpt_viewer.core.progress import run
from ckpt_viewer.core.writing.export import ExportPlan, export, plan_items


def do_export(src, dst, **plan):
    force = plan.pop("force", False)
    return run(export(open_checkpoint(str(src)), ExportPlan(**plan), str(dst), force=force))


@pytest.mark.parametrize("legacy", [False, True])
def test_model_state_dict_round_trip_loads_into_the_model(tmp_path, legacy):
    src = builders.training_checkpoint(tmp_path / "c.pt", legacy=legacy)
    summary = do_export(src, tmp_path / "m.pth", root="model_state_dict")
    assert summary.verified and summary.tensors == 9
    state = torch.load(tmp_path / "m.pth", weights_only=True)
    original = torch.load(src, weights_only=True)["model_state_dict"]
    assert list(state) == list(original)
    assert all(torch.equal(state[k], original[k]) for k in original)
    builders.tiny_model().load_state_dict(state)  # strict load works
    mmapped = torch.load(tmp_path / "m.pth", weights_only=True, mmap=True)
    assert all(torch.equal(mmapped[k], original[k]) for k in original)


def test_strip_prefix_cast_include_exclude(tmp_path):
    model = builders.tiny_model()
    src = builders.save(
        {"module." + k: v for k, v in model.state_dict().items()}, tmp_path / "dp.pt"
    )
    items = plan_items(
        open_checkpoint(src),
        ExportPlan(strip_prefix="module.", dtype="float16", exclude=["*.num_batches_tracked"]),
    )
    assert [i.key for i in items][:2] == ["0.weight", "0.bias"]
    assert all(i.dtype == "float16" for i in items)
    do_export(
        src,
        tmp_path / "h.pth",
        strip_prefix="module.",
        dtype="float16",
        exclude=["*.num_batches_tracked"],
        include=["module.0.*", "module.1.*"],
        add_prefix="enc.",
    )  # globs match keys as the source names them
    state = torch.load(tmp_path / "h.pth", weights_only=True)
    assert set(state) == {
        "enc.0.weight",
        "enc.0.bias",
        "enc.1.weight",
        "enc.1.bias",
        "enc.1.running_mean",
        "enc.1.running_var",
    }
    assert torch.equal(state["enc.0.weight"], model.state_dict()["0.weight"].half())


def test_bfloat16_and_integers_untouched(tmp_path):
    src = builders.save({"w": torch.randn(7, 3), "steps": torch.arange(5)}, tmp_path / "s.pt")
    do_export(src, tmp_path / "b.pth", dtype="bfloat16")
    state = torch.load(tmp_path / "b.pth", weights_only=True)
    assert state["w"].dtype == torch.bfloat16 and state["steps"].dtype == torch.int64
    assert torch.equal(state["w"], torch.load(src, weights_only=True)["w"].bfloat16())


def test_cuda_location_tags_without_a_gpu(tmp_path):
    src = builders.training_checkpoint(tmp_path / "c.pt")
    do_export(src, tmp_path / "g.pth", root="model_state_dict", device="cuda:1")
    info = inspect_dict(open_checkpoint(str(tmp_path / "g.pth")))
    assert {t["device"] for t in info["tensors"]} == {"cuda:1"}
    state = torch.load(tmp_path / "g.pth", weights_only=True, map_location="cpu")
    assert len(state) == 9
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(tmp_path / "g.pth", weights_only=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_export_loads_onto_the_gpu(tmp_path):
    src = builders.training_checkpoint(tmp_path / "c.pt")
    do_export(src, tmp_path / "g.pth", root="model_state_dict", device="cuda")
    state = torch.load(tmp_path / "g.pth", weights_only=True)
    original = torch.load(src, weights_only=True)["model_state_dict"]
    assert all(v.device == torch.device("cuda:0") for v in state.values())
    assert all(torch.equal(state[k].cpu(), original[k]) for k in original)


def test_tied_weights_stay_shared_and_views_are_compact(tmp_path):
    big = torch.randn(1000, 100)
    src = builders.save({"embed": big, "head": big, "row": big[3]}, tmp_path / "t.pt")
    do_export(src, tmp_path / "tied.pth", exclude=["row"])
    state = torch.load(tmp_path / "tied.pth", weights_only=True)
    assert state["embed"].untyped_storage().data_ptr() == state["head"].untyped_storage().data_ptr()
    do_export(src, tmp_path / "row.pth", include=["row"])
    assert os.path.getsize(tmp_path / "row.pth") < 4096  # not the whole 400 KB base
    assert torch.equal(torch.load(tmp_path / "row.pth", weights_only=True)["row"], big[3])


def test_non_contiguous_view_alone(tmp_path):
    base = torch.arange(12.0).view(3, 4)
    src = builders.save({"t": base.t(), "col": base[:, 1]}, tmp_path / "v.pt")
    do_export(src, tmp_path / "v.pth", include=["col"])
    assert torch.equal(torch.load(tmp_path / "v.pth", weights_only=True)["col"], base[:, 1])


def test_safetensors_output_with_tied_weights(tmp_path):
    from safetensors.torch import load_file

    w = torch.randn(4, 4)
    src = builders.save(
        {"a": w, "b": w, "c": torch.zeros(2, dtype=torch.bfloat16)}, tmp_path / "s.pt"
    )
    do_export(src, tmp_path / "s.safetensors", format="safetensors")
    out = load_file(str(tmp_path / "s.safetensors"))
    # one copy of the tied weight, the alias noted in the metadata as save_model does
    assert set(out) == {"a", "c"}
    assert torch.equal(out["a"], w) and out["c"].dtype == torch.bfloat16
    from safetensors import safe_open

    with safe_open(str(tmp_path / "s.safetensors"), framework="pt") as f:
        assert f.metadata() == {"b": "a", "format": "pt"}
    # a different view of the same storage is a copy, not an alias
    src = builders.save({"m": w, "row": w[1]}, tmp_path / "v.pt")
    do_export(src, tmp_path / "v.safetensors", format="safetensors")
    out = load_file(str(tmp_path / "v.safetensors"))
    assert torch.equal(out["m"], w) and torch.equal(out["row"], w[1])


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_the_preview_counts_what_the_writer_writes(tmp_path, fmt):
    """written_payload (the export preview's figures) equals what torch / safetensors read back
    from the file written: tied names once, a shared storage's bytes once."""
    from safetensors.torch import load_file

    from ckpt_viewer.core.writing.export import written_payload

    w = torch.randn(8, 4)
    src = builders.save(
        {"a": w, "b": w, "row": w[1], "c": torch.zeros(3, dtype=torch.bfloat16)},
        tmp_path / "s.pt",
    )
    plan = ExportPlan(format=fmt)
    items, aliases, total = written_payload(plan_items(open_checkpoint(src), plan), fmt)
    dst = tmp_path / f"out.{fmt}"
    do_export(src, dst, format=fmt)
    if fmt == "safetensors":
        out = load_file(str(dst))
        assert sorted(i.key for i in items) == sorted(out) and aliases == {"b": "a"}
        assert total == sum(t.numel() * t.element_size() for t in out.values())
    else:
        out = torch.load(dst, weights_only=True)
        assert len(items) == len(out) and aliases == {}
        storages = {
            t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in out.values()
        }
        assert total == sum(storages.values())


def test_parse_size():
    from ckpt_viewer.core.writing.export import parse_size

    assert parse_size("2GB") == 2 * 10**9 and parse_size("500MB") == 500 * 10**6
    assert parse_size("50KB") == 50_000 and parse_size("1GiB") == 2**30
    assert parse_size("1000") == 1000 and parse_size("1.5 MB") == 1_500_000
    for bad in ("", "big", "-3MB", "0", "5XB"):
        with pytest.raises(CheckpointError):
            parse_size(bad)


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_sharded_output_loads_in_transformers(tmp_path, fmt):
    transformers = pytest.importorskip("transformers")
    import json

    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=16)
    model = transformers.GPT2LMHeadModel(config)
    src = tmp_path / "gpt2.pt"
    torch.save(model.state_dict(), src)
    folder = tmp_path / "out"
    folder.mkdir()
    config.save_pretrained(folder)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ckpt_viewer",
            "export",
            str(src),
            "-o",
            str(folder),
            "--format",
            fmt,
            "--max-shard-size",
            "50KB",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    index_name = (
        "model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json"
    )
    index = json.loads((folder / index_name).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and all(os.path.getsize(folder / s) < 50_000 + 40_000 for s in shards)
    assert shards[0].endswith(
        f"-00001-of-{len(shards):05d}." + ("safetensors" if fmt == "safetensors" else "bin")
    )
    if fmt == "safetensors":  # the tied head is written once
        assert "lm_head.weight" not in index["weight_map"]
    loaded = transformers.GPT2LMHeadModel.from_pretrained(folder)
    expected = model.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, expected[key]), key
    assert loaded.lm_head.weight.data_ptr() == loaded.transformer.wte.weight.data_ptr()
    base = transformers.AutoModel.from_pretrained(folder)
    assert torch.equal(base.h[1].mlp.c_fc.weight, model.transformer.h[1].mlp.c_fc.weight)


def test_sharded_pth_keeps_shared_storages_in_one_shard(tmp_path):
    big = torch.randn(100, 100)
    src = builders.save(
        {"a": torch.randn(50, 50), "embed": big, "head": big, "z": torch.randn(10)},
        tmp_path / "t.pt",
    )
    do_export(src, tmp_path / "out", max_shard_size=20_000)
    import json

    index = json.loads((tmp_path / "out" / "pytorch_model.bin.index.json").read_text())
    assert index["weight_map"]["embed"] == index["weight_map"]["head"]
    state = torch.load(tmp_path / "out" / index["weight_map"]["head"], weights_only=True)
    assert state["embed"].untyped_storage().data_ptr() == state["head"].untyped_storage().data_ptr()
    with pytest.raises(CheckpointError, match="exists"):
        do_export(src, tmp_path / "out", max_shard_size=20_000)
    do_export(src, tmp_path / "out", max_shard_size=20_000, force=True)


@pytest.mark.parametrize("kind", ["safetensors", "dcp", "hf"])
def test_other_sources(tmp_path, kind):
    if kind == "safetensors":
        src = builders.safetensors_file(tmp_path / "w.safetensors")
        from safetensors.torch import load_file

        expected = load_file(src)
    elif kind == "dcp":
        src, state = builders.dcp_directory(tmp_path / "dcp")
        expected = {f"model.{k}": v for k, v in state.items()}
    else:
        src = builders.hf_directory(tmp_path / "hf")
        expected = None
    do_export(src, tmp_path / "o.pth")
    out = torch.load(tmp_path / "o.pth", weights_only=True)
    if expected is not None:
        assert set(out) == set(expected) and all(torch.equal(out[k], expected[k]) for k in expected)
    else:
        assert len(out) == 4


def test_whole_model_pickle_exports_its_state_dict(tmp_path):
    src = builders.whole_model_file(tmp_path / "whole.pt")
    do_export(src, tmp_path / "sd.pth", root="model")
    assert list(torch.load(tmp_path / "sd.pth", weights_only=True)) == [
        "encoder.scale",
        "encoder.proj.weight",
        "encoder.proj.bias",
        "head.weight",
        "head.bias",
    ]


def test_compressed_source_records(tmp_path):
    src = builders.save({"w": torch.arange(100.0)}, tmp_path / "w.pt")
    deflated = tmp_path / "deflated.pt"
    with zipfile.ZipFile(src) as a, zipfile.ZipFile(deflated, "w") as b:
        for info in a.infolist():
            b.writestr(
                info.filename,
                a.read(info),
                compress_type=zipfile.ZIP_DEFLATED
                if "/data/" in info.filename
                else zipfile.ZIP_STORED,
            )
    do_export(deflated, tmp_path / "o.pth")
    assert torch.equal(torch.load(tmp_path / "o.pth", weights_only=True)["w"], torch.arange(100.0))


def test_nothing_clobbered(tmp_path):
    src = builders.training_checkpoint(tmp_path / "c.pt")
    dst = tmp_path / "keep.pth"
    dst.write_bytes(b"precious")
    with pytest.raises(CheckpointError, match="exists"):
        do_export(src, dst)
    assert dst.read_bytes() == b"precious"
    with pytest.raises(CheckpointError, match="is the source"):
        do_export(src, src, force=True)
    checkpoint = open_checkpoint(src)
    generator = export(checkpoint, ExportPlan(), str(dst), force=True, cancelled=lambda: True)
    with pytest.raises(CheckpointError, match="cancelled"):
        run(generator)
    assert dst.read_bytes() == b"precious"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []
    do_export(src, dst, force=True, root="model_state_dict")
    assert len(torch.load(dst, weights_only=True)) == 9


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_exported_file_has_the_mode_a_plain_open_gives(tmp_path, umask):
    src = builders.training_checkpoint(tmp_path / "c.pt")
    previous = os.umask(umask)
    try:
        plain = tmp_path / "plain"
        plain.write_bytes(b"")
        for fmt in ("pth", "safetensors"):
            dst = tmp_path / f"out.{fmt}"
            do_export(src, dst, root="model_state_dict", format=fmt)
            assert stat.S_IMODE(dst.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
        assert stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~umask
    finally:
        os.umask(previous)


def test_disk_full_leaves_nothing(tmp_path, monkeypatch):
    src = builders.training_checkpoint(tmp_path / "c.pt")
    dst = tmp_path / "full.pth"
    dst.write_bytes(b"old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(CheckpointError, match="disk is full"):
        do_export(src, dst, force=True)
    assert dst.read_bytes() == b"old"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


def test_refusals(tmp_path):
    src = builders.save(builders.every_dtype(), tmp_path / "d.pt")
    with pytest.raises(CheckpointError, match="sparse_coo"):
        do_export(src, tmp_path / "o.pth")
    with pytest.raises(CheckpointError, match="nothing to export"):
        do_export(src, tmp_path / "o.pth", include=["nope*"])
    with pytest.raises(CheckpointError, match="device"):
        do_export(src, tmp_path / "o.pth", include=["t_float32"], device="tpu")
    do_export(src, tmp_path / "o.pth", exclude=["coo", "csr"])
    out = torch.load(tmp_path / "o.pth", weights_only=True)
    assert out["qchannel"].q_per_channel_axis() == 0 and out["qint8"].dtype == torch.qint8
    assert out["t_float8_e4m3fn"].dtype == torch.float8_e4m3fn and out["empty"].shape == (0, 4)
    assert out["scalar0d"].item() == 3.5
    collide = builders.save({"module.w": torch.ones(1), "w": torch.zeros(1)}, tmp_path / "col.pt")
    with pytest.raises(CheckpointError, match="would both be written"):
        do_export(collide, tmp_path / "x.pth", strip_prefix="module.")


def test_export_cli(tmp_path):
    src = builders.training_checkpoint(tmp_path / "c.pt")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "ckpt_viewer",
            "export",
            src,
            "-o",
            str(tmp_path / "e.safetensors"),
            "--root",
            "model_state_dict",
            "--dtype",
            "float16",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "9 tensors" in out.stdout and "verified" in out.stdout
    again = subprocess.run(
        [sys.executable, "-m", "ckpt_viewer", "export", src, "-o", str(tmp_path / "e.safetensors")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 2 and again.stderr.startswith("error: ") and "exists" in again.stderr


def test_casts_without_torch_are_bit_exact():
    import numpy as np

    from ckpt_viewer.core.writing.export import _numpy_cast

    x = torch.cat(
        [
            torch.randn(100_000) * 1e3,
            torch.tensor([float("inf"), -float("inf"), 1e-40, -0.0, 3.4e38, 65520.0, 1e6]),
        ]
    )
    raw = x.numpy().view(np.uint8)
    bf16 = _numpy_cast(raw, "float32", "bfloat16").view(np.int16)
    assert np.array_equal(bf16, x.bfloat16().view(torch.int16).numpy())
    fp16 = _numpy_cast(raw, "float32", "float16").view(np.int16)
    assert np.array_equal(fp16, x.half().view(torch.int16).numpy())
    back = _numpy_cast(x.bfloat16().view(torch.int16).numpy().view(np.uint8), "bfloat16", "float32")
    assert np.array_equal(back.view(np.float32), x.bfloat16().float().numpy())
    nan = _numpy_cast(np.array([np.nan], np.float32).view(np.uint8), "float32", "bfloat16")
    assert torch.from_numpy(nan.view(np.int16)).view(torch.bfloat16).isnan().all()


@pytest.mark.parametrize("kernel", ["copy_file_range", "refused", "absent"])
@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_unchanged_bytes_are_copied_file_to_file(tmp_path, monkeypatch, kernel, fmt):
    torch.manual_seed(0)
    base = torch.randn(300, 200)
    state = {
        "w": base,
        "tied": base,
        "t": base.t(),
        "neg": torch._neg_view(torch.randn(50)),
        "half": torch.randn(1000).half(),
        "ints": torch.arange(70000),
    }
    src = builders.save(state, tmp_path / "s.pt")
    calls = []
    real = getattr(os, "copy_file_range", None)

    def copy_file_range(*args):
        calls.append(args)
        if kernel == "refused":
            raise OSError(errno.EXDEV, "cross-device")
        return real(*args)

    if kernel == "absent" or real is None:
        monkeypatch.delattr(os, "copy_file_range", raising=False)
    else:
        monkeypatch.setattr(os, "copy_file_range", copy_file_range)
    from ckpt_viewer.core.writing import export as export_module

    flushed = []
    real_writeback = export_module.start_writeback
    monkeypatch.setattr(
        export_module,
        "start_writeback",
        lambda fd, at, count: flushed.append((at, count)) or real_writeback(fd, at, count),
    )
    window = 4096
    monkeypatch.setattr(export_module, "WRITEBACK_WINDOW", window)
    out = tmp_path / f"o.{fmt}"
    do_export(src, out, format=fmt)
    if kernel == "copy_file_range" and real is not None:
        assert calls  # the kernel did the copying
    # the disk is set to write the file window by window, in order, as soon as each is
    # written (copied records and the others alike), not all of it at the fsync
    assert flushed == [(at, window) for at in range(0, len(flushed) * window, window)]
    data_end = out.stat().st_size - (1000 if fmt == "pth" else 0)  # the zip directory
    assert len(flushed) == data_end // window
    if fmt == "pth":
        got = torch.load(out, weights_only=True)
        with zipfile.ZipFile(out) as zf:
            assert zf.testzip() is None  # every record's CRC-32 is right
        result = subprocess.run(
            [sys.executable, "-m", "ckpt_viewer", "verify", str(out)],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stdout + result.stderr
    else:
        from safetensors.torch import load_file

        got = load_file(str(out))
        state.pop("tied")
    for key, value in state.items():
        assert torch.equal(got[key], value.resolve_neg()), key


def test_sharded_export_never_overwrites_its_source(tmp_path):
    from safetensors.torch import save_file

    folder = tmp_path / "hf"
    folder.mkdir()
    save_file({"w": torch.randn(10)}, str(folder / "model.safetensors"))
    before = (folder / "model.safetensors").read_bytes()
    with pytest.raises(CheckpointError, match="being read"):
        do_export(folder, folder, format="safetensors", max_shard_size=10**9, force=True)
    assert (folder / "model.safetensors").read_bytes() == before


def test_a_copied_export_leaves_its_source_byte_identical(tmp_path, monkeypatch):
    """Records copied file to file, with the destination's writeback started as it goes: the
    source's bytes and its modification time stay what they were."""
    import hashlib

    from ckpt_viewer.core.writing import export as export_module

    started = []
    real = export_module.start_writeback
    monkeypatch.setattr(export_module, "start_writeback", lambda *a: started.append(a) or real(*a))
    monkeypatch.setattr(export_module, "WRITEBACK_WINDOW", 256)  # the file is a few KB
    src = Path(builders.training_checkpoint(tmp_path / "c.pt"))
    digest, modified = hashlib.sha256(src.read_bytes()).hexdigest(), src.stat().st_mtime_ns
    summary = do_export(src, tmp_path / "m.pth", root="model_state_dict")
    assert summary.verified and started
    assert hashlib.sha256(src.read_bytes()).hexdigest() == digest
    assert src.stat().st_mtime_ns == modified
    expected = torch.load(src, weights_only=True)["model_state_dict"]
    state = torch.load(tmp_path / "m.pth", weights_only=True)
    assert list(state) == list(expected)
    for key in state:
        got, want = state[key].reshape(-1), expected[key].reshape(-1)
        assert got.dtype == want.dtype and torch.equal(
            got.view(torch.uint8), want.view(torch.uint8)
        )


def test_crc32_combine_matches_zlib_on_the_joined_bytes():
    import random
    import zlib

    from ckpt_viewer.core.listing.crc import crc32_combine

    rng = random.Random(0)
    for first, second in [(0, 0), (0, 5), (7, 0), (1, 1), (4096, 3), (100_003, 65_537)]:
        a, b = rng.randbytes(first), rng.randbytes(second)
        assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


def test_the_crc32_we_use_is_zlibs_value():
    """ISA-L's CRC-32 (when installed) must give zlib's values, the ones zip readers check,
    whole and continued from a running value, at every alignment and size around its blocks."""
    import random
    import zlib

    from ckpt_viewer.core.listing.crc import crc32

    rng = random.Random(1)
    data = rng.randbytes(300_000)
    for start, size in [(0, 0), (1, 1), (3, 15), (7, 64), (5, 4095), (0, 65_536), (9, 299_991)]:
        piece = memoryview(data)[start : start + size]
        assert crc32(piece) == zlib.crc32(piece)
        running = zlib.crc32(data[:start])
        assert crc32(piece, running) == zlib.crc32(piece, running)


@pytest.mark.parametrize("lag", [0, 1 << 30])
def test_large_records_are_checksummed_in_pieces_and_checked(tmp_path, monkeypatch, lag):
    """Records larger than CRC_SPLIT get their CRC-32 from pieces on several threads, on
    writing and on the check after it, into their headers once computed (`lag` 0: the copy
    waits for each): zipfile (the oracle) and torch agree, and a record whose header
    checksum is not that of its bytes is caught."""
    from ckpt_viewer.core.listing import crc as crc_module
    from ckpt_viewer.core.writing import export as export_module

    monkeypatch.setattr(crc_module, "CRC_SPLIT", 1 << 16)
    monkeypatch.setattr(export_module, "COPY_CHUNK", 1 << 16)  # several copy steps too
    monkeypatch.setattr(export_module, "CRC_LAG", lag)
    torch.manual_seed(0)
    state = {"big": torch.randn(300_000), "small": torch.randn(10), "c": torch.arange(9)}
    src = builders.save(state, tmp_path / "s.pt")
    out = tmp_path / "o.pth"
    do_export(src, out)
    with zipfile.ZipFile(out) as zf:
        assert zf.testzip() is None
        raw = out.read_bytes()
        for info in zf.infolist():  # each local header holds the CRC-32 too, written later
            assert raw[info.header_offset : info.header_offset + 4] == b"PK\x03\x04"
            (local,) = struct.unpack_from("<I", raw, info.header_offset + 14)
            assert local == info.CRC, info.filename
    got = torch.load(out, weights_only=True)
    assert all(torch.equal(got[k], v) for k, v in state.items())

    real = export_module._Copied.settle

    def wrong(self, *args):  # a header checksum of other bytes than those written
        real(self, *args)
        self.info.CRC ^= 1

    monkeypatch.setattr(export_module._Copied, "settle", wrong)
    with pytest.raises(CheckpointError, match="does not hold the bytes"):
        do_export(src, tmp_path / "bad.pth")
    assert not (tmp_path / "bad.pth").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


def test_copied_records_are_checked_where_they_were_written_not_read_again(tmp_path, monkeypatch):
    """A record copied file to file gets its CRC-32 from the written pages while it is
    copied; the check after writing then reads only records written otherwise (a cast), and
    finds a copied record whose header's checksum is not of the bytes written, or whose bytes
    a later part of the archive overlaps. torch (the oracle) loads what passes."""
    from ckpt_viewer.core.writing import export as export_module

    torch.manual_seed(0)
    state = {"a": torch.randn(50_000), "b": torch.randn(300).double(), "c": torch.arange(7)}
    src = builders.save(state, tmp_path / "s.pt")
    read_back = []
    real_mapped = export_module.StorageReader.mapped
    real_check = export_module._check_records

    def check(*args, **kwargs):
        monkeypatch.setattr(
            export_module.StorageReader,
            "mapped",
            lambda self, *a: read_back.append(self.storage.key) or real_mapped(self, *a),
        )
        try:
            return real_check(*args, **kwargs)
        finally:
            monkeypatch.setattr(export_module.StorageReader, "mapped", real_mapped)

    monkeypatch.setattr(export_module, "_check_records", check)
    do_export(src, tmp_path / "o.pth")
    assert read_back == []
    got = torch.load(tmp_path / "o.pth", weights_only=True)
    assert all(torch.equal(got[k], v) for k, v in state.items())
    do_export(src, tmp_path / "cast.pth", dtype="float16")  # floats cast: read back
    assert len(read_back) == 2
    got = torch.load(tmp_path / "cast.pth", weights_only=True)
    assert torch.equal(got["a"], state["a"].half()) and torch.equal(got["c"], state["c"])

    real = export_module._copy_spans

    def overlapped(spans, out, *args, **kwargs):  # the next header written over the last byte
        value = real(spans, out, *args, **kwargs)
        out.seek(-1, os.SEEK_CUR)
        return value

    monkeypatch.setattr(export_module, "_copy_spans", overlapped)
    with pytest.raises(CheckpointError, match="begins inside it"):
        do_export(src, tmp_path / "bad.pth")
    assert not (tmp_path / "bad.pth").exists()


def test_record_spans_are_planned_ahead_in_order_and_stop_with_the_caller():
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from ckpt_viewer.core.writing.export import _ahead

    started = []
    lock = threading.Lock()

    def plan(n):
        with lock:
            started.append(n)
        return n * n

    with ThreadPoolExecutor(1) as pool:
        assert list(_ahead(pool, plan, range(100), depth=4)) == [n * n for n in range(100)]
    started.clear()
    with ThreadPoolExecutor(1) as pool:
        ahead = _ahead(pool, plan, range(100), depth=4)
        assert next(ahead) == 0
        ahead.close()  # the caller stops (an error, a cancel): nothing more is planned
    assert sorted(started) == list(range(5))
