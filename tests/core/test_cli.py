"""The command line: the inspect contract in DESIGN.md, exit codes, one-line errors."""

import json
import subprocess
import sys

import builders

FIELDS = {"path", "format", "file_bytes", "tensors", "scalars", "optimizers", "unsafe_globals",
          "warnings", "params", "total_params", "total_bytes", "globals"}


def cli(*args):
    return subprocess.run([sys.executable, "-m", "ckpt_viewer", *args], capture_output=True,
                          text=True, timeout=60)


def test_inspect_json_contract(tmp_path):
    path = builders.training_checkpoint(tmp_path / "c.pt")
    result = cli("inspect", path, "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert set(info) == FIELDS
    first = info["tensors"][0]
    assert set(first) == {"key", "shape", "dtype", "device", "nbytes"}
    assert first == {"key": "model_state_dict.0.weight", "shape": [3, 4], "dtype": "float32",
                     "device": "cpu", "nbytes": 48}
    assert info["optimizers"][0]["param_groups"][0]["params"][0] == "0.weight"
    assert info["total_params"] == sum(
        t["nbytes"] // (8 if t["dtype"] == "int64" else 4) for t in info["tensors"])
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
    path = builders.save({"w": __import__("torch").ones(1),
                          "x": builders.Call(os.system, "echo never")}, tmp_path / "c.pt")
    result = cli("inspect", path)
    assert "WARNING: code: posix.system('echo never') at x" in result.stdout


def test_errors_are_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x80\x02}q\x00(X")     # truncated pickle
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
