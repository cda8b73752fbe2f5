"""The command line: the inspect contract (README.md), exit codes, one-line errors, and
mistakes answered kindly (unknown commands, bad numbers, missing keys, no display)."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch

import builders
from ckpt_viewer.cli import NO_DISPLAY, SUBCOMMANDS
from ckpt_viewer.core.listing.open import open_checkpoint
from ckpt_viewer.core.listing.readers.zip_directory import data_offset
from ckpt_viewer.core.listing.text import nearest_keys, plural

FIELDS = {
    "path",
    "format",
    "file_bytes",
    "tensors",
    "scalars",
    "optimizers",
    "metadata",
    "unsafe_globals",
    "warnings",
    "params",
    "total_params",
    "total_bytes",
    "memory",
    "globals",
}


def cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "ckpt_viewer", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def one_error_line(result) -> str:
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_inspect_json_contract(tmp_path):
    path = builders.training_checkpoint(tmp_path / "c.pt")
    result = cli("inspect", path, "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert set(info) == FIELDS
    first = info["tensors"][0]
    assert set(first) == {"key", "shape", "dtype", "device", "nbytes"}
    assert first == {
        "key": "model_state_dict.0.weight",
        "shape": [3, 4],
        "dtype": "float32",
        "device": "cpu",
        "nbytes": 48,
    }
    assert info["optimizers"][0]["param_groups"][0]["params"][0] == "0.weight"
    assert info["total_params"] == sum(
        t["nbytes"] // (8 if t["dtype"] == "int64" else 4) for t in info["tensors"]
    )
    assert info["params"] == {"model": 36, "optimizer_state": 64, "other": 0}
    assert sum(info["params"].values()) == info["total_params"]


def test_inspect_text_report(tmp_path):
    path = builders.training_checkpoint(tmp_path / "c.pt")
    result = cli("inspect", path)
    assert result.returncode == 0
    out = result.stdout
    assert "format:  torch-zip" in out and "epoch = 7" in out
    assert "optimizer optimizer_state_dict: Adam" in out and "lr=0.001" in out
    assert "0.weight  [3, 4]  float32" in out


def test_inspect_warns_about_globals(tmp_path):
    path = builders.whole_model_file(tmp_path / "w.pt")
    result = cli("inspect", path)
    assert "class globals (a class from the code that wrote the file" in result.stdout
    assert "__main__.Net" in result.stdout and "WARNING: code" not in result.stdout


def test_inspect_warns_in_red_words_only_for_code(tmp_path):
    import os

    path = builders.save(
        {"w": __import__("torch").ones(1), "x": builders.Call(os.system, "echo never")},
        tmp_path / "c.pt",
    )
    result = cli("inspect", path)
    assert "WARNING: code: posix.system('echo never') at x" in result.stdout


def test_errors_are_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x80\x02}q\x00(X")  # truncated pickle
    for target in (str(bad), str(tmp_path / "missing.pt")):
        result = cli("inspect", target, "--json")
        assert result.returncode == 2
        assert result.stdout == ""
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and target in lines[0]
        assert "Traceback" not in result.stderr


def test_version_and_help():
    assert cli("--version").stdout.startswith("ckpt-viewer ")
    assert "inspect" in cli("--help").stdout


def test_help_lists_the_window_and_every_command():
    lines = cli("--help").stdout.splitlines()
    assert any(line.split()[:1] == ["[PATH"] and "window" in line for line in lines)
    for command in SUBCOMMANDS:
        assert any(line.split()[:1] == [command] and len(line.split()) > 2 for line in lines)


def test_no_display_is_one_line_not_a_crash(tmp_path, gui_env):
    path = builders.save({"w": torch.ones(2)}, tmp_path / "w.pt")
    env = {
        k: v
        for k, v in gui_env.items()
        if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")
    }
    for args in ((), (path,)):
        assert one_error_line(cli(*args, env=env)) == NO_DISPLAY
    out = tmp_path / "shot.png"
    shot = cli(path, "--screenshot", str(out), env=env)  # sets the offscreen platform itself
    assert shot.returncode == 0, shot.stderr
    assert out.stat().st_size > 0


def test_unknown_command_and_missing_path(tmp_path):
    assert (
        one_error_line(cli("inpsect", "x.pt", "--json"))
        == "error: unknown command 'inpsect' (did you mean 'inspect'?)"
    )
    assert "unknown command 'frobnicate'" in one_error_line(cli("frobnicate"))
    missing = str(tmp_path / "missing.pt")
    assert one_error_line(cli(missing)) == f"error: {missing}: no such file or directory"
    # a TensorFlow checkpoint prefix names no file, but its .index is one: the window takes it
    (tmp_path / "ckpt-3.index").write_bytes(b"")
    prefix = str(tmp_path / "ckpt-3")
    assert "--size is for --screenshot" in one_error_line(cli(prefix, "--size", "800x600"))


@pytest.mark.parametrize(
    "args",
    [
        ("inspect", "--depth", "0"),
        ("inspect", "--depth", "-1"),
        ("stats", "--bins", "0"),
        ("stats", "--bins", "x"),
    ],
)
def test_numeric_options_are_checked(tmp_path, args):
    path = builders.save({"w": torch.ones(2)}, tmp_path / "w.pt")
    command, *options = args
    extra = ["w"] if command == "stats" else []
    line = one_error_line(cli(command, path, *extra, *options))
    assert line.startswith(f"error: argument {options[0]}: ")


def test_counts_of_one_are_singular(tmp_path):
    assert [
        plural(1, "entry"),
        plural(2, "entry"),
        plural(1, "size mismatch"),
        plural(3, "size mismatch"),
        plural(1200, "record"),
    ] == ["1 entry", "2 entries", "1 size mismatch", "3 size mismatches", "1,200 records"]
    one = builders.safetensors_file(tmp_path / "one.safetensors", {"m.w": torch.ones(3)})
    other = builders.safetensors_file(tmp_path / "other.safetensors", {"m.w": torch.zeros(3)})
    texts = [
        cli("inspect", one).stdout,
        cli("verify", one).stdout,
        cli("export", one, "-o", str(tmp_path / "out.pth")).stdout,
        cli("diff", one, other).stdout,
        cli("stats", one, "m.w", "--bins", "1").stdout,
    ]
    joined = "\n".join(texts)
    assert not re.search(r"\b1 (tensors|entries|records|bins|groups|shards)\b", joined), joined
    for expected in ("<group, 1 entry>", "1 record,", ": 1 tensor,", "1 common tensor:", "(1 bin)"):
        assert expected in joined, expected


def test_missing_key_suggests_full_keys(tmp_path):
    path = builders.training_checkpoint(tmp_path / "c.pt")
    keys = [key for key, _, _ in open_checkpoint(path).tensors()]
    short = keys[0].split(".", 1)[1]  # the key without its root
    line = one_error_line(cli("stats", path, short))
    assert f"did you mean {keys[0]!r}" in line
    assert nearest_keys(["model.fc1.weight", "fc1.weight.x"], "fc1.weight") == ["model.fc1.weight"]
    assert nearest_keys(["model.fc1.weight"], "model.fc1.wieght") == ["model.fc1.weight"]


def test_stats_warns_when_the_record_fails_its_crc(tmp_path):
    path = builders.save({"w": torch.arange(1000, dtype=torch.float32)}, tmp_path / "w.pt")
    member = open_checkpoint(path).find("w").tensor.storage.source
    with open(path, "r+b") as f:
        f.seek(data_offset(member) + 100)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    result = cli("stats", path, "w")
    assert result.returncode == 0 and "elements" in result.stdout
    warnings = result.stderr.splitlines()
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: {path}: ")
    assert "CRC-32 mismatch" in warnings[0]
    assert cli("stats", builders.save({"w": torch.ones(3)}, tmp_path / "ok.pt"), "w").stderr == ""
