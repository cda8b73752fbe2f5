"""Which paths make a training run: a folder of checkpoints (files or step folders), several
paths, or a glob. Listing only: names and folder entries, nothing read from the files."""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterable

from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.listing import remote

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors", ".gguf", ".pt2", ".tar")


def numbers_in(text: str) -> list[int]:
    """The whole numbers in a name, in order (`epoch=3-step=1200.ckpt` -> [3, 1200])."""
    return [int(n) for n in re.findall(r"\d+", text)]


def _looks_like_checkpoint(folder: str, name: str) -> bool:
    path = remote.join(folder, name)
    if remote.isdir(path):
        return bool(numbers_in(name)) or name.startswith(("checkpoint", "step", "epoch", "ckpt"))
    return name.endswith(CHECKPOINT_SUFFIXES)


def is_run_folder(path: str) -> bool:
    """A folder holding several checkpoints (files or step folders), not itself one checkpoint
    (a model folder with its index or single weights file, a DCP or a training folder)."""
    from ckpt_viewer.core.listing.open import resolve_directory
    from ckpt_viewer.core.listing.readers.training_dir import state_files

    try:
        if not remote.isdir(path):
            return False
        names = remote.listdir(path)
        if (
            ".metadata" in names
            or any(n.endswith(".index.json") for n in names)
            or state_files(path)
        ):
            return False
        candidates = [n for n in names if _looks_like_checkpoint(path, n)]
        if sum(1 for n in candidates if numbers_in(n)) >= 2:
            return True  # step_100.pt, step_200.safetensors, checkpoint-300/...
        if resolve_directory(path) != path:
            return False  # a model folder: its one weights file
    except (OSError, CheckpointError):
        return False
    return len(candidates) >= 2 or any(remote.isdir(remote.join(path, n)) for n in candidates)


def expand_paths(paths: Iterable[str]) -> list[tuple[str, str]]:
    """(path, label) of each checkpoint named: run folders are listed, globs expanded."""
    found: list[tuple[str, str]] = []
    for path in paths:
        if (
            not remote.is_remote(path)
            and any(c in path for c in "*?[")
            and not os.path.exists(path)
        ):
            matches = sorted(glob.glob(path))
            if not matches:
                raise CheckpointError(f"{path}: no file matches")
            found += [(m, os.path.basename(m.rstrip("/"))) for m in matches]
        elif is_run_folder(path):
            names = sorted(n for n in remote.listdir(path) if _looks_like_checkpoint(path, n))
            found += [(remote.join(path, n), n) for n in names]
        else:
            found.append((path, os.path.basename(path.rstrip("/")) or path))
    return found
