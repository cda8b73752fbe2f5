"""The globals triage, the `globals` command, and its snippet run for real: with it,
torch.load(weights_only=True) loads the file."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

import builders
from ckpt_viewer.core.listing.globals import category, report_dict, snippet, triage
from ckpt_viewer.core.listing.open import open_checkpoint


def test_categories():
    assert category("torch._utils._rebuild_tensor_v2") == "torch"
    assert category("argparse.Namespace") == "data"
    assert category("numpy._core.multiarray._reconstruct", called=True) == "data"
    assert category("torch.jit._pickle.build_intlist", called=True) == "data"
    assert category("mymodel.Net") == "class"
    assert category("posix.system", called=True) == "code"
    assert category("builtins.eval") == "code"
    assert category("subprocess.Popen") == "code"
    assert category("mymodule.helper", called=True) == "code"


def _run_snippet(code: str):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)


def test_data_globals_get_a_snippet_that_really_loads(tmp_path):
    path = builders.save(
        {
            "w": torch.ones(2),
            "args": argparse.Namespace(lr=0.1, name="run"),
            "loss": np.float64(0.25),
            "mask": np.arange(3),
            "dir": pathlib.PosixPath("/data"),
            "when": datetime.datetime(2026, 1, 2, 3, 4),
        },
        tmp_path / "d.pt",
    )
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    checkpoint = open_checkpoint(path)
    uses = triage(checkpoint)
    assert {u.category for u in uses} <= {"torch", "data"}
    code = snippet(checkpoint, uses)
    assert code and "safe_globals" in code
    result = _run_snippet(code + "\nprint(sorted(checkpoint))")
    assert result.returncode == 0, result.stderr
    assert "'args', 'dir', 'loss', 'mask', 'w', 'when'" in result.stdout


def test_code_global_is_shown_with_its_call_and_key(tmp_path):
    path = builders.save(
        {"w": torch.ones(2), "hook": builders.Call(os.system, "touch /tmp/never-run")},
        tmp_path / "c.pt",
    )
    report = report_dict(open_checkpoint(path))
    assert report["snippet"] is None and not report["loads_with_weights_only"]
    code = next(g for g in report["globals"] if g["category"] == "code")
    assert code["name"] == "posix.system" and code["keys"] == ["hook"]
    assert "touch /tmp/never-run" in code["calls"][0]
    assert not os.path.exists("/tmp/never-run")


def test_globals_cli_text_and_json(tmp_path):
    path = builders.save(
        {"w": torch.ones(2), "args": argparse.Namespace(lr=0.1)}, tmp_path / "a.pt"
    )
    run = [sys.executable, "-m", "ckpt_viewer", "globals"]
    text = subprocess.run(run + [path], capture_output=True, text=True)
    assert text.returncode == 0 and "[data] argparse.Namespace" in text.stdout
    assert "safe_globals" in text.stdout
    out = subprocess.run(run + [path, "--json"], capture_output=True, text=True)
    report = json.loads(out.stdout)
    assert report["loads_with_weights_only"] is False
    assert {"name": "argparse.Namespace", "category": "data"}.items() <= next(
        g for g in report["globals"] if g["name"] == "argparse.Namespace"
    ).items()


def test_plain_state_dict_loads_as_is(tmp_path):
    path = builders.save(builders.tiny_model().state_dict(), tmp_path / "s.pt")
    report = report_dict(open_checkpoint(path))
    assert report["loads_with_weights_only"] and report["snippet"] is None
    assert all(g["category"] == "torch" for g in report["globals"])


def test_legacy_file_globals(tmp_path):
    path = builders.save(
        {"w": torch.ones(2), "args": argparse.Namespace(lr=0.1)},
        tmp_path / "l.pt",
        _use_new_zipfile_serialization=False,
    )
    checkpoint = open_checkpoint(path)
    code = snippet(checkpoint, triage(checkpoint))
    assert code
    assert _run_snippet(code).returncode == 0
