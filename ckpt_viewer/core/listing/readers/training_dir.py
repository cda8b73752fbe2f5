"""Training folders opened as one checkpoint.

A Hugging Face Trainer `checkpoint-N/` (model weights, optimizer.pt, scheduler.pt, scaler.pt,
rng_state[_R].pth, trainer_state.json, training_args.bin) or an accelerate `save_state` folder
(model[_N].safetensors or pytorch_model[_N].bin, optimizer[_N].bin, scheduler[_N].bin,
sampler[_N].bin, random_states_R.pkl, scaler.pt, custom_checkpoint_N.pkl). Each file is read by
the reader for its own format and becomes one top-level node named after the file, so the model
file and the optimizer file are siblings (the optimizer's parameter names are matched against
it). config.json and adapter_config.json fields are shown as metadata."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.listing import remote
from ckpt_viewer.core.listing.model import Checkpoint, Node, iter_nodes
from ckpt_viewer.core.listing.readers import MAX_PICKLE_BYTES, torch_load_pickles
from ckpt_viewer.core.listing.readers.hf_index import (
    Plain,
    config_metadata,
    model_weights,
    read_json,
)
from ckpt_viewer.core.listing.safe_pickle import PickleReport, merge_part, merge_report
from ckpt_viewer.core.listing.tree import build_tree

STATE_FILE = re.compile(
    r"(optimizer|scheduler|sampler|dl_state_dict)(_\d+)?\.(pt|bin)|scaler\.pt"
    r"|rng_state(_\d+)?\.pth|random_states_\d+\.pkl|custom_checkpoint_\d+\.pkl"
    r"|trainer_state\.json|training_args\.bin"
)
EXTRA_MODEL_FILE = re.compile(r"(model|pytorch_model)_\d+\.(safetensors|bin)")  # accelerate
CONFIG_FILES = ("config.json", "adapter_config.json")


def state_files(folder: str) -> list[str]:
    """Names of the training-state files in a folder (none: it is not a training folder)."""
    try:
        names = remote.files(folder)
    except (OSError, CheckpointError):
        return []
    return sorted(n for n in names if STATE_FILE.fullmatch(n))


def folder_metadata(folder: str) -> dict[str, Plain]:
    fields: dict[str, Plain] = {}
    for name in CONFIG_FILES:
        fields.update(config_metadata(folder, name))
    return fields


def _natural(name: str) -> list[int | str]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def part_names(folder: str) -> list[str]:
    """The model first (its index or weights file, then accelerate's model_N files), then the
    state files; shards named by an index are read through it."""
    weights = model_weights(folder)
    names = [remote.basename(weights)] if weights else []
    names += sorted(
        (n for n in remote.files(folder) if EXTRA_MODEL_FILE.fullmatch(n) and n not in names),
        key=_natural,
    )
    return names + [n for n in state_files(folder) if n not in names]


def trainer_state(state: dict[str, Any]) -> dict[str, Any]:
    """trainer_state.json with its log_history summarised (it grows by one entry a log)."""
    summary = {k: v for k, v in state.items() if k != "log_history"}
    history = state.get("log_history")
    if isinstance(history, list):
        logs = [e for e in history if isinstance(e, dict)]
        steps = [e["step"] for e in logs if type(e.get("step")) is int]
        losses = [
            e["loss"]
            for e in logs
            if isinstance(e.get("loss"), (int, float)) and not isinstance(e.get("loss"), bool)
        ]
        brief: dict[str, object] = {"entries": len(history)}
        if steps:
            brief["first_step"], brief["last_step"] = min(steps), max(steps)
        if losses:
            brief["min_loss"] = min(losses)
        test: Callable[[dict[str, Any]], bool]
        for name, test in (
            ("last_train_log", lambda e: "loss" in e),
            ("last_eval_log", lambda e: any(str(k).startswith("eval_") for k in e)),
            ("train_summary", lambda e: "train_runtime" in e),
        ):
            entry = next((e for e in reversed(logs) if test(e)), None)
            if entry is not None:
                brief[name] = {
                    k: v for k, v in entry.items() if isinstance(v, (str, int, float, bool))
                }
        summary["log_history"] = brief
    return summary


def _read_part(path: str, open_file: Callable[[str], Checkpoint]) -> Checkpoint:
    if path.endswith(".json") and not path.endswith(".index.json"):
        value = trainer_state(read_json(path, "state"))
        return Checkpoint(
            path=path, format="json", file_bytes=remote.getsize(path), root=build_tree(value)
        )
    return open_file(path)


def _graft(part: Checkpoint, name: str) -> Node:
    """The part's tree under a node named after its file; every key gets the file name."""
    root = part.root
    for node in iter_nodes(root):
        node.key = f"{name}.{node.key}" if node.key else name
        if node.kind == "ref" and isinstance(node.value, str):
            node.value = f"{name}.{node.value}" if node.value else name
        if node.shared_with:
            node.shared_with = f"{name}.{node.shared_with}"
    root.name = name
    root.note = root.note or part.format
    return root


def read(folder: str, open_part: Callable[[str], Checkpoint]) -> Checkpoint:
    """`open_part` opens one file of the folder (core.listing.open.open_file)."""
    names = part_names(folder)
    if not names:
        raise CheckpointError("folder holds no model weights or training state files")
    root = Node(name="", kind="dict", type_name="folder")
    warnings, optimizer_nodes, metadata, total = [], [], {}, 0
    parts, unreadable = [], []
    for name in names:
        try:
            part = _read_part(remote.join(folder, name), open_part)
        except CheckpointError as exc:
            warnings.append(f"{name}: cannot be read ({exc})")
            root.children.append(
                Node(name=name, kind="opaque", key=name, type_name="unreadable", value=str(exc))
            )
            unreadable.append((name, _pickles_of(remote.join(folder, name))))
            continue
        parts.append((name, part))
        nodes = (
            part.optimizer_nodes
            if part.optimizer_nodes is not None
            else [n for n in iter_nodes(part.root) if n.kind == "optimizer"]
        )
        root.children.append(_graft(part, name))
        optimizer_nodes += nodes
        total += part.file_bytes
        warnings += [f"{name}: {w}" for w in part.warnings]
        if part.unsafe_globals:
            warnings.append(f"{name}: refers to {', '.join(part.unsafe_globals)}")
        metadata.update({f"{name} {k}": v for k, v in part.metadata.items()})
    if all(n.type_name == "unreadable" for n in root.children):
        raise CheckpointError(warnings[0])
    metadata.update(folder_metadata(folder))
    state = set(state_files(folder))
    fmt = (
        "hf-trainer"
        if state & {"trainer_state.json", "training_args.bin"}
        else "accelerate"
        if any(n.startswith("random_states_") or n.endswith(".bin") for n in state)
        else "training-dir"
    )
    checkpoint = Checkpoint(
        path=folder,
        format=fmt,
        file_bytes=total,
        root=root,
        warnings=warnings,
        metadata=metadata,
        optimizer_nodes=optimizer_nodes,
    )
    for name, part in parts:
        merge_part(checkpoint, part, name)
    for name, report in unreadable:
        merge_report(checkpoint, report, name)
    return checkpoint


def _pickles_of(path: str) -> PickleReport:
    """The globals a file we could not read names, as far as its pickles can be walked: the
    trainer unpickles the file with torch.load, so a payload there must still be named."""
    report = PickleReport()
    try:
        if path.endswith(".json") or remote.getsize(path) > MAX_PICKLE_BYTES:
            return report  # (a FIFO or device is refused by getsize)
        with remote.open_source(path) as f:
            torch_load_pickles(f.read(), report)
    except (CheckpointError, OSError):
        pass
    return report
