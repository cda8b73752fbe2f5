"""Hostile DCP geometry (declared sizes far beyond the stored bytes, expanded chunks, a grid
of chunks too interleaved to check): every command ends in time with one clear line."""

import signal

import pytest
import torch

import builders
from ckpt_viewer.cli import main

pytest.importorskip("torch.distributed.checkpoint")

TIME_LIMIT = 10
N = 600_000_000


K = 130  # a K x K grid of chunks: K**3 / 2 pairs to compare, past the reader's bound

CASES = {
    # 2**40 elements declared, 4 stored
    "huge_declared_size": lambda f: builders.dcp_crafted(
        f, (2**40,), [((0,), (2**40,), torch.ones(4))]
    ),
    # 600 million elements from one stored
    "expanded_chunk": lambda f: builders.dcp_crafted(
        f, (N,), [((0,), (N,), torch.ones(1).expand(N))]
    ),
    # K * K one-element chunks sharing one stored record
    "interleaved_chunks": lambda f: builders.dcp_crafted(
        f,
        (K, K),
        [((0, 0), (1, 1), torch.ones(1, 1))]
        + [((i // K, i % K), (1, 1), None) for i in range(1, K * K)],
    ),
}
COMMANDS = ["inspect", "verify", "stats", "export", "check"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile_dcp")
    return {name: build(base / name) for name, build in CASES.items()}


@pytest.mark.parametrize(
    "name, command",
    [
        (n, c)
        for n in sorted(CASES)
        for c in COMMANDS
        if n != "interleaved_chunks" or c in COMMANDS[:2]
    ],
)
def test_every_command_ends_in_one_line(folders, tmp_path, capsys, name, command):
    folder = folders[name]
    argv = {
        "stats": ["stats", folder, "w"],
        "export": ["export", folder, "-o", str(tmp_path / "out.pth")],
    }.get(command, [command, folder])
    builders.alarm(TIME_LIMIT)
    try:
        code = main(argv)
    finally:
        signal.alarm(0)
    captured = capsys.readouterr()
    if code == 2:
        assert len(captured.err.splitlines()) == 1 and captured.err.startswith("error: ")
    elif command == "verify":
        assert code == 1 and captured.out.startswith("damaged: ")
    else:
        assert command in ("inspect", "check") and code in (0, 1)
    assert not (tmp_path / "out.pth").exists()
