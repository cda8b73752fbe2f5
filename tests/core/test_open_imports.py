"""Opening a file imports only the reader its format needs (issue #24: the other readers'
imports cost more than listing a 16 GB torch file)."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from ckpt_viewer.core.listing.open import READERS

LOADED = (
    "import json, sys; from ckpt_viewer.core.listing.open import open_checkpoint; "
    "open_checkpoint(sys.argv[1]); "
    "print(json.dumps(sorted(m for m in sys.modules if m.startswith('ckpt_viewer'))))"
)


def readers_after_open(path) -> set[str]:
    """The format readers (open.READERS' modules) imported by opening `path`."""
    out = subprocess.run(
        [sys.executable, "-c", LOADED, str(path)], capture_output=True, text=True, check=True
    )
    readers = {f"ckpt_viewer.core.listing.readers.{module}" for module, _ in READERS.values()}
    return readers & set(json.loads(out.stdout))


def test_a_torch_file_loads_no_other_reader(tmp_path):
    path = tmp_path / "m.pt"
    torch.save({"w": torch.ones(3), "opt": {"state": {}, "param_groups": []}}, path)
    assert readers_after_open(path) == {"ckpt_viewer.core.listing.readers.torch_zip"}


def test_a_safetensors_file_loads_its_reader_only(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "m.safetensors"
    save_file({"w": torch.ones(3)}, str(path))
    assert readers_after_open(path) == {"ckpt_viewer.core.listing.readers.safetensors"}


# modules that listing a torch file does not use: each costs the 16 GB file's `inspect
# --json` a few percent of its time (concurrent.futures brings logging along)
UNUSED_WHEN_LISTING = (
    "zipfile",
    "concurrent.futures",
    "pickletools",
    "logging",
    "datetime",
    "difflib",
)


def imported_of(argv: list[str], modules: tuple[str, ...]) -> list[str]:
    """Which of `modules` a `ckpt-viewer` run with argv imports."""
    code = (
        "import json, runpy, sys; sys.argv = ['ckpt-viewer'] + sys.argv[1:]\n"
        "try:\n    runpy.run_module('ckpt_viewer', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        f"print(json.dumps([m for m in {modules!r} if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.splitlines()[-1])


def test_inspect_json_of_a_torch_file_imports_no_unused_module(tmp_path):
    path = tmp_path / "m.pt"
    torch.save({"w": torch.ones(3), "opt": {"state": {}, "param_groups": []}}, path)
    assert imported_of(["inspect", "--json", str(path)], UNUSED_WHEN_LISTING) == []


def test_stats_json_imports_neither_the_text_report_nor_fractions(tmp_path):
    path = tmp_path / "m.pt"
    torch.save({"w": torch.randn(100)}, path)
    unused = ("ckpt_viewer.core.listing.report", "fractions")
    assert imported_of(["stats", str(path), "w", "--json"], unused) == []
