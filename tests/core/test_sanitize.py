"""`sanitize`: the copy loads with plain torch.load(weights_only=True), every tensor bit for bit
what the trusted source holds (torch.load(weights_only=False), in a subprocess when the file's
classes only exist elsewhere), every conversion listed, nothing the file names ever run."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import enum
import errno
import inspect
import io
import os
import pathlib
import subprocess
import sys
import textwrap
import zipfile
from collections import Counter, OrderedDict

import numpy as np
import pytest
import torch

import builders
from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.listing.open import open_checkpoint
from ckpt_viewer.core.progress import run
from ckpt_viewer.core.writing.sanitize import sanitize
from ckpt_viewer.core.writing.torch_pickle import PickleWriter


def flat(obj, key="", out=None, seen=None):
    """Tensors by the viewer's dotted keys: modules by state_dict names, objects by fields."""
    out = {} if out is None else out
    seen = {} if seen is None else seen  # id -> object: kept alive, ids stay unique
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, np.ndarray) and obj.dtype != object:
        obj = torch.from_numpy(obj.astype(obj.dtype.newbyteorder("=")).copy())
    if isinstance(obj, torch.Tensor):
        out[key] = obj.detach()
        return out
    if id(obj) in seen:
        return out
    seen[id(obj)] = obj
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        items = vars(obj).items()
    else:
        return out
    for name, value in items:
        flat(value, f"{key}.{name}" if key else str(name), out, seen)
    return out


def bits(tensor: torch.Tensor) -> bytes:
    plain = tensor.resolve_conj().resolve_neg().contiguous().reshape(-1)
    return plain.view(torch.uint8).numpy().tobytes() if plain.numel() else b""


def trusted_tensors(path, tmp_path, extra_path=None, prelude="") -> dict:
    """torch.load(weights_only=False) of the source in a fresh interpreter (its classes are
    importable there, not here), flattened and saved as a plain state_dict to read here."""
    out = tmp_path / "trusted.pt"
    env = dict(os.environ)
    if extra_path:
        env["PYTHONPATH"] = str(extra_path) + os.pathsep + env.get("PYTHONPATH", "")
    code = (
        "import numpy as np, torch\n"
        + inspect.getsource(flat)
        + prelude
        + textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.path.dirname(path)!r})
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        obj = torch.load({str(path)!r}, weights_only=False)
        torch.save(flat(obj), {str(out)!r})
    """)
    )
    subprocess.run(
        [sys.executable, "-c", code],
        cwd=os.path.dirname(path),
        env=env,
        check=True,
        capture_output=True,
    )
    return torch.load(out, weights_only=True)


def cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "ckpt_viewer", *args], capture_output=True, text=True, timeout=120
    )


def sanitized(src, tmp_path) -> tuple[object, list[str]]:
    """Run `ckpt-viewer sanitize`; the copy loaded with plain weights_only, and stdout lines."""
    dst = tmp_path / "clean.pt"
    result = cli("sanitize", str(src), "-o", str(dst))
    assert result.returncode == 0, result.stderr
    return torch.load(dst, weights_only=True), result.stdout.splitlines()


def assert_same_tensors(clean, trusted: dict):
    got = flat(clean)
    assert set(got) == set(trusted)
    for key, tensor in trusted.items():
        assert got[key].dtype == tensor.dtype and got[key].shape == tensor.shape, key
        assert bits(got[key]) == bits(tensor), key


class Color(enum.Enum):
    RED = 1
    GREEN = "green"


@dataclasses.dataclass
class Settings:
    depth: int = 3
    tags: tuple = ("a", "b")


def test_data_objects_become_plain_values(tmp_path):
    torch.manual_seed(0)
    base = torch.randn(6, 4)
    src = builders.save(
        {
            "args": argparse.Namespace(lr=0.1, name="run"),
            "settings": Settings(),
            "array": np.arange(6, dtype=np.float32).reshape(2, 3),
            "fortran_big_endian": np.asfortranarray(np.arange(6, dtype=">i4").reshape(2, 3)),
            "loss": np.float64(0.25),
            "dir": pathlib.PosixPath("/data/run"),
            "when": datetime.datetime(2026, 1, 2, 3, 4, 5),
            "color": Color.GREEN,
            "base": base,
            "rows": base[1:3],
            "transposed": base.t(),
            "tied": base,
            "negated": torch.randn(3).neg(),
            "param": torch.nn.Parameter(torch.ones(2)),
            "f8": torch.ones(3, dtype=torch.float8_e4m3fn),
            "empty": torch.zeros(0, 2),
            "nested": OrderedDict(inner=OrderedDict(w=torch.ones(1))),
            "count": Counter(a=2),
            "big": 2**100,
            "huge": -(2**3000),
            "nan": float("nan"),
            "inf": float("-inf"),
            "raw": b"\x00\xff",
            "pair": (1, [2, None]),
        },
        tmp_path / "data.pt",
    )
    trusted = flat(torch.load(src, weights_only=False))
    clean, lines = sanitized(src, tmp_path)
    assert_same_tensors(clean, trusted)
    assert clean["args"] == {"lr": 0.1, "name": "run"}
    assert clean["settings"] == {"depth": 3, "tags": ("a", "b")}
    assert clean["loss"] == 0.25 and clean["dir"] == "/data/run"
    assert clean["when"] == "2026-01-02T03:04:05" and clean["color"] == "green"
    assert clean["tied"] is clean["base"]
    assert clean["rows"].untyped_storage().data_ptr() == clean["base"].untyped_storage().data_ptr()
    assert type(clean["param"]) is torch.nn.Parameter and clean["param"].requires_grad
    assert type(clean["nested"]["inner"]) is OrderedDict and type(clean["count"]) is Counter
    assert clean["big"] == 2**100 and clean["huge"] == hex(-(2**3000))
    assert clean["nan"] != clean["nan"] and clean["inf"] == float("-inf")
    assert clean["raw"] == b"\x00\xff" and clean["pair"] == (1, [2, None])
    text = "\n".join(lines)
    for expected in (
        "args: argparse.Namespace -> dict",
        "array: numpy array -> tensor",
        "dir: pathlib.PosixPath -> str",
        "when: datetime.datetime -> str",
        "color: test_sanitize.Color('green') -> its value",
        "settings: class test_sanitize.Settings reduced to its state (dict)",
        "1 numpy scalar -> Python numbers",
        "huge: an integer of 3001 bits",
    ):
        assert expected in text
    assert "base" not in text and "rows" not in text  # tensors are copied, not changed


def test_whole_model_pickle_becomes_state_dicts(tmp_path):
    src = builders.whole_model_file(tmp_path / "whole.pt")
    clean, lines = sanitized(src, tmp_path)
    trusted = trusted_tensors(src, tmp_path, prelude=builders.WHOLE_MODEL_CLASSES)
    assert_same_tensors(clean, trusted)
    in_torch_order = [key[len("model.") :] for key in trusted if key.startswith("model.")]
    assert list(clean["model"]) == in_torch_order  # torch's state_dict order
    assert "encoder.cache" not in clean["model"]  # a non-persistent buffer
    assert type(clean["model"]["head.weight"]) is torch.Tensor
    assert "model: module __main__.Net -> its state_dict" in lines


def test_lightning_like_checkpoint(tmp_path):
    src = builders.lightning_file(tmp_path / "run.ckpt")
    clean, lines = sanitized(src, tmp_path)
    trusted = trusted_tensors(src, tmp_path, extra_path=tmp_path / "stub")
    assert_same_tensors(clean, trusted)
    assert clean["hyper_parameters"] == {"lr": 0.1, "hidden": 64, "name": "run-1"}
    assert clean["optimizer_states"][0]["param_groups"][0]["lr"] == 0.1
    assert set(clean["optimizer_states"][0]["state"]) == {0, 1}  # integer keys stay integers
    assert any(line.startswith("hyper_parameters: ") for line in lines)


def test_code_is_dropped_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    weight = torch.randn(3, 2)
    src = builders.save(
        {
            "w": weight,
            "hook": builders.Call(os.system, f"touch {marker}"),
            "hooks": [1, builders.Call(eval, "1+1"), 3],
        },
        tmp_path / "evil.pt",
    )
    clean, lines = sanitized(src, tmp_path)
    assert not marker.exists()
    assert set(clean) == {"w", "hooks"} and clean["hooks"] == [1, None, 3]
    assert bits(clean["w"]) == bits(weight)
    assert any(line.startswith("hook: dropped code: posix.system(") for line in lines)
    assert any(line.startswith("hooks.1: dropped code: builtins.eval(") for line in lines)


def test_legacy_source(tmp_path):
    torch.manual_seed(1)
    base = torch.randn(5, 3)
    src = builders.save(
        {
            "args": argparse.Namespace(a=1),
            "mask": np.ones(3),
            "base": base,
            "view": base[2:],
            "model": builders.tiny_model(),
        },
        tmp_path / "old.pt",
        _use_new_zipfile_serialization=False,
    )
    clean, lines = sanitized(src, tmp_path)
    assert_same_tensors(clean, flat(torch.load(src, weights_only=False)))
    assert clean["args"] == {"a": 1}
    assert clean["view"].untyped_storage().data_ptr() == clean["base"].untyped_storage().data_ptr()
    assert "model: module torch.nn.modules.container.Sequential -> its state_dict" in lines


def test_safetensors_and_sharded_sources_become_flat_state_dicts(tmp_path):
    src = builders.safetensors_file(tmp_path / "m.safetensors")
    clean, lines = sanitized(src, tmp_path)
    from safetensors.torch import load_file

    assert_same_tensors(clean, load_file(src))
    assert lines[0].startswith("(root): a safetensors source -> a flat state_dict")
    folder = builders.hf_directory(tmp_path / "hf")
    (tmp_path / "clean.pt").unlink()
    clean, _ = sanitized(folder, tmp_path)
    assert set(clean) == {"embed.weight", "layers.0.weight", "layers.1.weight", "lm_head.weight"}


def test_location_tags_are_kept(tmp_path):
    src = builders.cuda_tagged(
        tmp_path / "gpu.pt", {"w": torch.ones(2), "args": argparse.Namespace(a=1)}
    )
    dst = str(tmp_path / "clean.pt")
    run(sanitize(open_checkpoint(src), dst))
    assert [t.device for _, t, _ in open_checkpoint(dst).tensors()] == ["cuda:0"]
    assert torch.load(dst, weights_only=True, map_location="cpu")["args"] == {"a": 1}


def test_never_overwrites_and_leaves_nothing_on_failure(tmp_path):
    src = builders.save({"w": torch.ones(4), "args": argparse.Namespace(a=1)}, tmp_path / "s.pt")
    dst = tmp_path / "out.pt"
    dst.write_bytes(b"keep me")
    result = cli("sanitize", src, "-o", str(dst))
    assert result.returncode == 2 and result.stderr.startswith("error: ")
    assert len(result.stderr.splitlines()) == 1 and dst.read_bytes() == b"keep me"
    with pytest.raises(CheckpointError, match="cancelled"):
        run(sanitize(open_checkpoint(src), str(dst), force=True, cancelled=lambda: True))
    assert sorted(os.listdir(tmp_path)) == ["out.pt", "s.pt"] and dst.read_bytes() == b"keep me"
    assert cli("sanitize", src, "-o", str(dst), "--force").returncode == 0
    assert torch.load(dst, weights_only=True)["args"] == {"a": 1}


def test_sanitize_writes_through_the_export_writer(tmp_path, monkeypatch):
    """One torch-archive writer: stored bytes are copied file to file by the kernel, as
    export copies them, and a disk that fills up leaves nothing behind, as in export."""
    torch.manual_seed(0)
    base = torch.randn(300, 200)
    state = {"w": base, "t": base.t(), "half": torch.randn(1000).half(), "args": Settings()}
    src = builders.save(state, tmp_path / "s.pt")
    calls = []
    real = getattr(os, "copy_file_range", None)
    if real is None:
        pytest.skip("no os.copy_file_range here")
    monkeypatch.setattr(os, "copy_file_range", lambda *a: calls.append(a) or real(*a))
    dst = tmp_path / "clean.pt"
    run(sanitize(open_checkpoint(src), str(dst)))
    assert calls
    clean = torch.load(dst, weights_only=True)
    assert_same_tensors(clean, {k: v for k, v in state.items() if k != "args"})
    with zipfile.ZipFile(dst) as zf:
        assert zf.testzip() is None

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(CheckpointError, match="disk is full"):
        run(sanitize(open_checkpoint(src), str(dst), force=True))
    assert sorted(os.listdir(tmp_path)) == ["clean.pt", "s.pt"]


def test_pickle_writer_round_trips_plain_values():
    shared = [1, 2]
    value = {
        "ints": [0, 255, 256, -1, 2**31, -(2**63), 2**2000],
        "text": "é\u2028",
        "floats": (0.1, -0.0),
        "shared": (shared, shared),
        7: OrderedDict(a=None),
        (1, "k"): {True, 2},
        "bytes": bytearray(b"ab"),
        "complex": 1 - 2j,
        "empty": {},
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("archive/data.pkl", PickleWriter().dump(value))
        zf.writestr("archive/byteorder", b"little")
        zf.writestr("archive/version", b"3\n")
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    assert loaded == value
    assert loaded["shared"][0] is loaded["shared"][1]


def test_torchscript_archive_becomes_its_state_dict(tmp_path):
    src = builders.torchscript_file(tmp_path / "scripted.pt")
    clean, lines = sanitized(src, tmp_path)
    expected = torch.jit.load(src).state_dict()  # our own file: trusted here
    assert list(clean) == list(expected)
    assert all(bits(clean[key]) == bits(value) for key, value in expected.items())
    assert lines[0].startswith("(root): TorchScript module ")


def test_an_expanded_view_stays_small(tmp_path):
    src = builders.save({"wide": torch.ones(3).expand(100_000, 3)}, tmp_path / "wide.pt")
    dst = str(tmp_path / "clean.pt")
    summary = run(sanitize(open_checkpoint(src), dst))
    assert summary.bytes < 4096
    assert torch.equal(torch.load(dst, weights_only=True)["wide"], torch.ones(100_000, 3))


def test_sanitized_file_has_the_mode_a_plain_open_gives(tmp_path):
    import stat

    src = builders.save({"w": torch.ones(2)}, tmp_path / "s.pt")
    previous = os.umask(0o022)
    try:
        run(sanitize(open_checkpoint(src), str(tmp_path / "out.pt")))
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "out.pt").stat().st_mode) == 0o644
