"""Every dtype torch saves and every dtype safetensors writes, end to end: listed, read,
summarised, exported (.pth, .safetensors), sanitized and consolidated from DCP. Each written
file is loaded back with the format's own library and compared byte for byte (NaN != NaN, and
bits/float4 tensors have no ops, so bytes are compared, never values)."""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pytest
import torch

from ckpt_viewer.cli import main
from ckpt_viewer.core.listing.model import DTYPE_SIZES, STORAGE_DTYPES
from ckpt_viewer.core.listing.open import open_checkpoint
from ckpt_viewer.core.listing.readers.safetensors import TORCH_TO_SAFETENSORS
from ckpt_viewer.core.values.decode import NUMPY_DTYPES
from ckpt_viewer.core.values.torch_bridge import read_tensor

warnings.filterwarnings("ignore", message=".*(ComplexHalf|quantize).*")

ALL_DTYPES = sorted({v for v in vars(torch).values() if isinstance(v, torch.dtype)}, key=str)
QUANTIZED = {torch.qint8, torch.quint8, torch.qint32, torch.quint4x2, torch.quint2x4}


def name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def sample(dtype: torch.dtype, seed: int = 0) -> torch.Tensor | None:
    """A 3x4 tensor of the dtype with varied bit patterns (extremes of 64-bit integers, NaNs,
    every nibble); None when torch cannot make one."""
    gen = torch.Generator().manual_seed(seed)
    if dtype in QUANTIZED:
        return torch.quantize_per_tensor(torch.randn(3, 4, generator=gen) * 3, 0.1, 3, dtype)
    try:
        size = element_size(dtype)
    except (RuntimeError, TypeError):
        return None
    raw = torch.randint(0, 256, (12 * size,), dtype=torch.uint8, generator=gen)
    raw[:size] = 255  # all ones: uint64 max, -1, NaN...
    raw[size : 2 * size] = 0
    if dtype == torch.bool:
        raw %= 2
    try:
        return raw.view(dtype).reshape(3, 4)
    except RuntimeError:
        return None


def saveable(tensor: torch.Tensor | None) -> bool:
    if tensor is None:
        return False
    buffer = io.BytesIO()
    try:
        torch.save(tensor, buffer)
        buffer.seek(0)
        torch.load(buffer, weights_only=True)
    except Exception:  # noqa: BLE001 - torch cannot save this dtype
        return False
    return True


SAVEABLE = [d for d in ALL_DTYPES if saveable(sample(d))]


def elements_bytes(t: torch.Tensor) -> bytes:
    """The tensor's elements' bytes in logical order, for any dtype (no op of the dtype used)."""
    if t.is_quantized and t.dtype in (torch.quint4x2, torch.quint2x4):
        assert t.is_contiguous()
        storage = bytes(t.untyped_storage())
        return storage  # sub-byte quantized: the packed storage is the value
    if t.is_quantized:
        t = t.int_repr()
    size = t.element_size()
    storage = torch.frombuffer(
        bytearray(bytes(t.untyped_storage())) or bytearray(1), dtype=torch.uint8
    )
    if not t.numel():
        return b""
    index = torch.arange(storage.numel() // size).as_strided(
        t.shape, t.stride(), t.storage_offset()
    )
    return storage.view(-1, size)[index.reshape(-1)].reshape(-1).numpy().tobytes()


def state() -> dict:
    """Per dtype: a tensor, a row and a column of it (sharing its storage) and a tensor of
    its own."""
    out = {}
    for i, dtype in enumerate(SAVEABLE):
        full = sample(dtype, seed=i)
        out[f"{name(dtype)}.full"] = full
        out[f"{name(dtype)}.solo"] = sample(dtype, seed=100 + i)
        if dtype not in (torch.quint4x2, torch.quint2x4):
            out[f"{name(dtype)}.row"] = full[1]
            out[f"{name(dtype)}.col"] = full[:, 1]
        if dtype in (torch.qint8, torch.quint8, torch.qint32):
            out[f"{name(dtype)}.channel"] = torch.quantize_per_channel(
                torch.randn(3, 4, generator=torch.Generator().manual_seed(i)),
                torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64),
                torch.tensor([0, 1, 2, 3]),
                1,
                dtype,
            )
    return out


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = tmp_path_factory.mktemp("dtypes") / "all.pt"
    torch.save(state(), path)
    return str(path)


def cli(capsys, *args) -> tuple[int, str, str]:
    code = main([*args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def same_bytes(written: dict, reference: dict):
    assert set(written) == set(reference)
    for key, theirs in reference.items():
        assert written[key].dtype == theirs.dtype, key
        assert tuple(written[key].shape) == tuple(theirs.shape), key
        assert elements_bytes(written[key]) == elements_bytes(theirs), key
        if theirs.is_quantized:
            assert quantizer(written[key]) == quantizer(theirs), key


def quantizer(t: torch.Tensor) -> tuple:
    if t.qscheme() == torch.per_tensor_affine:
        return t.qscheme(), t.q_scale(), t.q_zero_point()
    return (
        t.qscheme(),
        t.q_per_channel_axis(),
        t.q_per_channel_scales().tolist(),
        t.q_per_channel_zero_points().tolist(),
    )


def test_torch_saves_the_dtypes_the_issue_names():
    assert {
        torch.uint16,
        torch.uint32,
        torch.uint64,
        torch.complex32,
        torch.bits16,
        torch.bits8,
        torch.bits1x8,
        torch.float8_e8m0fnu,
        torch.float8_e4m3fnuz,
        torch.float8_e5m2fnuz,
        torch.float4_e2m1fn_x2,
        torch.quint4x2,
    } <= set(SAVEABLE)


def test_one_size_table_agrees_with_torch_for_every_dtype():
    for dtype in ALL_DTYPES:
        if name(dtype) in DTYPE_SIZES:
            assert DTYPE_SIZES[name(dtype)] == element_size(dtype), dtype
        else:
            assert dtype not in SAVEABLE, f"{dtype} is saved by torch but not in the table"
    # the tables that name dtypes for other reasons agree with it and with their own library
    for dtype, code in NUMPY_DTYPES.items():
        assert np.dtype(code).itemsize == DTYPE_SIZES[dtype], dtype
    for storage_class, dtype in STORAGE_DTYPES.items():  # torch reads an untyped one as bytes
        kind = getattr(torch, storage_class)
        assert name(getattr(kind, "dtype", torch.uint8)) == dtype, storage_class
    for dtype in TORCH_TO_SAFETENSORS:
        assert torch_can_write_safetensors(getattr(torch, dtype)), dtype


def test_inspect_lists_every_dtype(source, capsys):
    code, out, _ = cli(capsys, "inspect", source, "--json")
    assert code == 0
    listed = {t["key"]: t for t in json.loads(out)["tensors"]}
    for key, t in torch.load(source, weights_only=True).items():
        assert listed[key]["dtype"] == name(t.dtype), key
        assert listed[key]["shape"] == list(t.shape), key
        assert listed[key]["nbytes"] == t.nbytes, key


def test_values_read_are_torchs(source):
    reference = torch.load(source, weights_only=True)
    ours = {key: read_tensor(t) for key, t, _ in open_checkpoint(source).tensors()}
    same_bytes(ours, reference)


def _unsigned(t: torch.Tensor) -> np.ndarray:
    data = np.frombuffer(elements_bytes(t), dtype=f"<u{t.element_size()}")
    return data


def _signed(t: torch.Tensor) -> np.ndarray:
    return np.frombuffer(elements_bytes(t), dtype=f"<i{t.element_size()}")


@pytest.mark.parametrize("dtype", SAVEABLE, ids=name)
def test_stats_every_dtype(source, capsys, dtype):
    key = f"{name(dtype)}.full"
    code, out, err = cli(capsys, "stats", source, key, "--json")
    if dtype == torch.float4_e2m1fn_x2:  # packed pairs torch has no arithmetic for
        assert code == 2 and err.count("\n") == 1 and "float4_e2m1fn_x2" in err, err
        return
    assert code == 0, err
    stats = json.loads(out)
    t = torch.load(source, weights_only=True)[key]
    if name(dtype).startswith(("uint", "bits")):
        values = _unsigned(t)
    elif name(dtype).startswith("int"):
        values = _signed(t)
    else:
        return
    assert stats["min"] == int(values.min()) and type(stats["min"]) is int
    assert stats["max"] == int(values.max()) and type(stats["max"]) is int


def torch_can_write_safetensors(dtype: torch.dtype) -> bool:
    from safetensors.torch import save

    try:
        save({"x": sample(dtype)})
    except Exception:  # noqa: BLE001 - the library refuses this dtype
        return False
    return True


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_export_every_dtype(source, tmp_path, capsys, fmt):
    from safetensors.torch import load_file

    reference = torch.load(source, weights_only=True)
    for dtype in SAVEABLE:
        out = tmp_path / f"{name(dtype)}.{fmt}"
        code, _, err = cli(
            capsys,
            "export",
            source,
            "-o",
            str(out),
            "--format",
            fmt,
            "--include",
            f"{name(dtype)}.*",
        )
        wanted = {k: v for k, v in reference.items() if k.startswith(f"{name(dtype)}.")}
        if fmt == "pth" or torch_can_write_safetensors(dtype) and dtype not in QUANTIZED:
            assert code == 0, err
            written = torch.load(out, weights_only=True) if fmt == "pth" else load_file(out)
            same_bytes(written, wanted)
        else:
            assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
            assert f"'{name(dtype)}.full' has dtype {name(dtype)}" in err, err
            assert not out.exists()


def test_sanitize_every_dtype(source, tmp_path, capsys):
    out = tmp_path / "clean.pt"
    code, _, err = cli(capsys, "sanitize", source, "-o", str(out))
    assert code == 0, err
    same_bytes(torch.load(out, weights_only=True), torch.load(source, weights_only=True))


def test_dcp_consolidation_every_dtype(tmp_path, capsys):
    dcp = pytest.importorskip("torch.distributed.checkpoint")
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    tensors = {}
    for i, dtype in enumerate(SAVEABLE):
        t = sample(dtype, seed=i)
        probe = tmp_path / "probe" / name(dtype)
        try:  # two items: DCP's planner sizes them (bits types fail there)
            dcp.save({"x": t, "y": t}, checkpoint_id=str(probe))
            dcp_to_torch_save(probe, probe / "oracle.pt")
        except (Exception, CheckpointException):  # noqa: BLE001 - DCP cannot save/load it
            continue
        tensors[name(dtype)] = t
    assert {"uint16", "uint32", "uint64", "complex32", "float8_e8m0fnu"} <= set(tensors)
    dcp.save(tensors, checkpoint_id=str(tmp_path / "dcp"))
    dcp_to_torch_save(tmp_path / "dcp", tmp_path / "oracle.pt")
    code, _, err = cli(capsys, "export", str(tmp_path / "dcp"), "-o", str(tmp_path / "out.pth"))
    assert code == 0, err
    oracle = torch.load(tmp_path / "oracle.pt", weights_only=True)
    same_bytes(torch.load(tmp_path / "out.pth", weights_only=True), oracle)
    listed = {key: t for key, t, _ in open_checkpoint(str(tmp_path / "dcp")).tensors()}
    same_bytes({key: read_tensor(t) for key, t in listed.items()}, oracle)
    for key in ("uint64", "int64", "complex32"):
        code, out, err = cli(capsys, "stats", str(tmp_path / "dcp"), key, "--json")
        assert code == 0, err
        if key.endswith("int64"):
            values = (_unsigned if key == "uint64" else _signed)(oracle[key])
            assert (json.loads(out)["min"], json.loads(out)["max"]) == (
                int(values.min()),
                int(values.max()),
            )


def test_export_check_reads_records_as_torch_does(tmp_path, monkeypatch):
    """A record copied shorter than its header says (uint16 counted as bytes, as before) is
    caught by the check after writing, and nothing is left at the destination."""
    from ckpt_viewer.core import CheckpointError
    from ckpt_viewer.core.progress import run
    from ckpt_viewer.core.writing import export as export_module

    src = tmp_path / "u.pt"
    torch.save({"u": sample(torch.uint16), "f": torch.ones(3)}, src)
    real = export_module._raw_span

    def short(tensor, target, first, count):
        span = real(tensor, target, first, count)
        return span and (span[0], span[1], span[2] // DTYPE_SIZES[tensor.dtype])

    monkeypatch.setattr(export_module, "_raw_span", short)
    with pytest.raises(CheckpointError, match="does not hold the bytes"):
        run(
            export_module.export(
                open_checkpoint(str(src)), export_module.ExportPlan(), str(tmp_path / "out.pth")
            )
        )
    assert list(tmp_path.iterdir()) == [src]


def test_safetensors_files_of_every_dtype_the_library_writes(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    tensors = {
        name(d): sample(d)
        for d in SAVEABLE
        if d not in QUANTIZED and torch_can_write_safetensors(d)
    }
    assert {
        "float8_e4m3fnuz",
        "float8_e5m2fnuz",
        "float8_e8m0fnu",
        "float4_e2m1fn_x2",
        "uint64",
    } <= set(tensors)
    save_file(tensors, tmp_path / "all.safetensors")
    path = str(tmp_path / "all.safetensors")
    reference = load_file(path)
    code, out, _ = cli(capsys, "inspect", path, "--json")
    assert code == 0
    listed = {t["key"]: t for t in json.loads(out)["tensors"]}
    assert {k: (t["dtype"], t["shape"], t["nbytes"]) for k, t in listed.items()} == {
        k: (name(t.dtype), list(t.shape), t.nbytes) for k, t in reference.items()
    }
    same_bytes({key: read_tensor(t) for key, t, _ in open_checkpoint(path).tensors()}, reference)


def test_diff_every_dtype(source, tmp_path, capsys):
    changed = torch.load(source, weights_only=True)
    for i, dtype in enumerate(SAVEABLE):
        changed[f"{name(dtype)}.solo"] = sample(dtype, seed=200 + i)
    torch.save(changed, tmp_path / "changed.pt")
    code, out, err = cli(capsys, "diff", source, str(tmp_path / "changed.pt"), "--json")
    assert code in (0, 1), err
    status = {t["key"]: t["status"] for t in json.loads(out)["tensors"]}
    assert status == {key: "changed" if key.endswith(".solo") else "identical" for key in changed}


def test_big_endian_archive_read_and_exported_as_torch_loads_it(source, tmp_path, capsys):
    """torch byte-swaps a big-endian archive's storages by their storage type's element size:
    the untyped storages of uint16, uint64, float8... tensors are taken as they are."""
    import zipfile

    path = tmp_path / "big.pt"
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            zout.writestr(info, b"big" if info.filename.endswith("/byteorder") else data)
    reference = torch.load(path, weights_only=True)
    same_bytes(
        {key: read_tensor(t) for key, t, _ in open_checkpoint(str(path)).tensors()}, reference
    )
    for key in ("uint16.full", "uint64.col", "int32.row"):
        code, out, err = cli(capsys, "stats", str(path), key, "--json")
        values = (_signed if key.startswith("int") else _unsigned)(reference[key])
        assert (json.loads(out)["min"], json.loads(out)["max"]) == (
            int(values.min()),
            int(values.max()),
        ), key
    code, _, err = cli(capsys, "export", str(path), "-o", str(tmp_path / "out.pth"))
    assert code == 0, err
    same_bytes(torch.load(tmp_path / "out.pth", weights_only=True), reference)


def test_sharded_export_keeps_a_quantizer_with_its_tensor(source, tmp_path, capsys):
    """Scales and zero points of a tensor quantized per channel are records of their own; a
    shard boundary never falls between them and the tensor."""
    code, _, err = cli(
        capsys,
        "export",
        source,
        "-o",
        str(tmp_path / "shards"),
        "--include",
        "q*",
        "--max-shard-size",
        "1B",
    )
    assert code == 0, err
    index = json.loads((tmp_path / "shards" / "pytorch_model.bin.index.json").read_text())
    written = {}
    for shard in sorted(set(index["weight_map"].values())):
        written.update(torch.load(tmp_path / "shards" / shard, weights_only=True))
    assert {k for k, v in written.items() if v.qscheme() == torch.per_channel_affine} == {
        "qint8.channel",
        "quint8.channel",
        "qint32.channel",
    }
    same_bytes(
        written,
        {k: v for k, v in torch.load(source, weights_only=True).items() if k.startswith("q")},
    )


def test_legacy_format_source_every_dtype_it_holds(tmp_path, capsys):
    """A pre-1.6 stream (typed storages only) exported and sanitized like a zip archive."""
    legacy = {}
    for key, t in state().items():
        buffer = io.BytesIO()
        try:
            torch.save(t, buffer, _use_new_zipfile_serialization=False)
            buffer.seek(0)
            torch.load(buffer, weights_only=True)
        except Exception:  # noqa: BLE001 - torch cannot write this dtype in that format
            continue
        legacy[key] = t
    assert {"float64.full", "complex64.col", "qint8.channel", "quint4x2.full"} <= set(legacy)
    src = tmp_path / "legacy.pt"
    torch.save(legacy, src, _use_new_zipfile_serialization=False)
    reference = torch.load(src, weights_only=True)
    for command in ("export", "sanitize"):
        out = tmp_path / f"{command}.pt"
        code, _, err = cli(capsys, command, str(src), "-o", str(out))
        assert code == 0, err
        same_bytes(torch.load(out, weights_only=True), reference)


def test_a_0d_float4_is_refused_for_safetensors(tmp_path, capsys):
    src = tmp_path / "f4.pt"
    torch.save({"f4": torch.tensor(0x21, dtype=torch.uint8).view(torch.float4_e2m1fn_x2)}, src)
    code, _, err = cli(capsys, "export", str(src), "-o", str(tmp_path / "o.safetensors"))
    assert code == 2 and err.count("\n") == 1 and "'f4'" in err and "0-d" in err, err
    code, _, err = cli(capsys, "export", str(src), "-o", str(tmp_path / "o.pth"))
    assert code == 0, err
    same_bytes(
        torch.load(tmp_path / "o.pth", weights_only=True), torch.load(src, weights_only=True)
    )
