"""A reader that stops early (`ckpt-viewer check bad.pth | head -1`) does not change the verdict:
check, diff and verify keep exit 1 under `set -o pipefail`, and print no error about the pipe."""

import shlex
import subprocess
import sys

import torch

import builders
from ckpt_viewer.core.listing.readers.zip_directory import data_offset, read_directory


def piped(*args) -> subprocess.CompletedProcess:
    command = " ".join(shlex.quote(a) for a in (sys.executable, "-m", "ckpt_viewer", *args))
    return subprocess.run(
        ["bash", "-c", f"set -o pipefail; {command} | head -1"],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_and_diff_keep_exit_1_when_the_pipe_closes(tmp_path):
    # thousands of lines: the pipe is closed long before the last one is written
    nan = builders.save(
        {f"w{i}": torch.full((3,), float("nan")) for i in range(2000)}, tmp_path / "nan.pth"
    )
    ones = builders.save({f"w{i}": torch.ones(3) for i in range(2000)}, tmp_path / "ones.pth")
    # (diff's text is a short summary; its JSON lists every key)
    for args, first in ((("check", nan), "error"), (("diff", nan, ones, "--json"), "{")):
        result = piped(*args)
        assert result.returncode == 1, (args, result.stderr)
        assert result.stdout.startswith(first) and result.stderr == ""
    for args in (("check", ones), ("diff", ones, ones, "--json")):
        result = piped(*args)
        assert result.returncode == 0 and result.stderr == "", (args, result.stderr)


def test_verify_keeps_exit_1_when_piped(tmp_path):
    path = builders.save({"w": torch.arange(1000.0)}, tmp_path / "w.pth")
    record = next(m for m in read_directory(path) if m.name.endswith("data/0"))
    data = bytearray(open(path, "rb").read())
    data[data_offset(record)] ^= 1
    (tmp_path / "flipped.pth").write_bytes(bytes(data))
    result = piped("verify", str(tmp_path / "flipped.pth"))
    assert result.returncode == 1 and result.stdout.startswith("damaged: "), result.stderr
