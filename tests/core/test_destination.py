"""Writing never harms (issue #21): export and sanitize refuse any destination that is, holds or
lies inside a file or folder of the source, and never leave a folder a loader reads otherwise;
every refused write leaves every file byte-identical (sha256 before and after)."""

import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch

import builders
from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.listing.open import open_checkpoint
from ckpt_viewer.core.progress import run
from ckpt_viewer.core.writing.export import ExportPlan, export
from ckpt_viewer.core.writing.sanitize import sanitize


def do_export(src, dst, force=False, **plan):
    return run(export(open_checkpoint(str(src)), ExportPlan(**plan), str(dst), force=force))


def do_sanitize(src, dst, force=False):
    return run(sanitize(open_checkpoint(str(src)), str(dst), force=force))


def hashes(root) -> dict:
    """sha256 of every regular file under root (symlinks not followed), by relative path."""
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as f:
                    found[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return found


def refused(tmp_path, write, match):
    before = hashes(tmp_path)
    with pytest.raises(CheckpointError, match=match):
        write()
    assert hashes(tmp_path) == before  # nothing changed, no temporary file left


SHARDED = dict(format="safetensors", max_shard_size=200)


def test_export_into_the_source_models_own_folder(tmp_path):
    src = builders.hf_directory(tmp_path / "hf")
    index = os.path.join(src, "model.safetensors.index.json")
    for source in (src, index):
        refused(tmp_path, lambda: do_export(source, src, force=True, **SHARDED), "source folder")
        refused(
            tmp_path,
            lambda: do_export(source, os.path.join(src, "small.safetensors"), format="safetensors"),
            "inside the source folder",
        )
    os.mkdir(os.path.join(src, "sub"))
    refused(
        tmp_path,
        lambda: do_export(src, os.path.join(src, "sub", "o.pth")),
        "inside the source folder",
    )
    do_export(src, tmp_path / "elsewhere.pth")  # outside it: fine


def test_sanitize_onto_a_source_shard_or_dcp_data_file(tmp_path):
    hf = builders.hf_directory(tmp_path / "hf")
    shard = os.path.join(hf, "model-00002-of-00002.safetensors")
    refused(tmp_path, lambda: do_sanitize(hf, shard, force=True), "is the source")
    dcp, _ = builders.dcp_directory(tmp_path / "dcp")
    data = next(os.path.join(dcp, n) for n in os.listdir(dcp) if n.endswith(".distcp"))
    refused(tmp_path, lambda: do_sanitize(dcp, data, force=True), "is the source")
    refused(tmp_path, lambda: do_export(dcp, os.path.join(dcp, "m.pth")), "source folder")
    refused(
        tmp_path, lambda: do_sanitize(dcp, os.path.join(dcp, ".metadata"), force=True), "source"
    )


def test_hard_and_symbolic_links_to_the_source_count_as_the_source(tmp_path):
    src = builders.save({"w": torch.randn(8)}, tmp_path / "w.pt")
    other = tmp_path / "other"
    other.mkdir()
    os.link(src, other / "hard.pt")
    os.symlink(src, other / "soft.pt")
    for name in ("hard.pt", "soft.pt"):
        refused(tmp_path, lambda: do_export(src, other / name, force=True), "is the source")
        refused(tmp_path, lambda: do_sanitize(src, other / name, force=True), "is the source")
    # a sharded folder that holds a link to the source would replace or remove it
    refused(tmp_path, lambda: do_export(src, other, force=True, **SHARDED), "being read")
    hf = builders.hf_directory(tmp_path / "hf")
    os.symlink(hf, tmp_path / "alias")
    refused(tmp_path, lambda: do_export(hf, tmp_path / "alias" / "x.pth"), "source folder")
    refused(
        tmp_path, lambda: do_export(hf, tmp_path / "alias", force=True, **SHARDED), "source folder"
    )
    os.mkdir(os.path.join(hf, "sub"))
    os.symlink(os.path.join(hf, "sub"), tmp_path / "into")
    refused(tmp_path, lambda: do_export(hf, tmp_path / "into", **SHARDED), "source folder")


def test_a_training_folder_is_a_source_folder(tmp_path):
    folder = tmp_path / "checkpoint-5"
    folder.mkdir()
    torch.save({"w": torch.randn(4)}, folder / "pytorch_model.bin")
    torch.save({"state": {}, "param_groups": []}, folder / "optimizer.pt")
    (folder / "trainer_state.json").write_text('{"global_step": 5}')
    refused(
        tmp_path, lambda: do_sanitize(folder, folder / "trainer_state.json", force=True), "source"
    )
    refused(tmp_path, lambda: do_export(folder, folder / "small.pth"), "source folder")


def test_sharded_export_beside_another_models_weights_is_refused(tmp_path):
    from safetensors.torch import save_file

    src = builders.save({f"w{i}": torch.randn(40) for i in range(4)}, tmp_path / "w.pt")
    out = tmp_path / "out"
    out.mkdir()
    save_file({"other": torch.zeros(3)}, str(out / "model.safetensors"))
    (out / "config.json").write_text("{}")
    for force in (False, True):
        refused(
            tmp_path, lambda: do_export(src, out, force=force, **SHARDED), "holds model.safetensors"
        )
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]


def test_single_loader_file_beside_other_loader_weights_is_refused(tmp_path):
    src = builders.save({"w": torch.randn(4)}, tmp_path / "w.pt")
    hf = builders.hf_directory(tmp_path / "hf")
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.rename(
        os.path.join(hf, "model.safetensors.index.json"), theirs / "model.safetensors.index.json"
    )
    refused(
        tmp_path,
        lambda: do_export(src, theirs / "model.safetensors", format="safetensors"),
        "a loader would read",
    )
    (tmp_path / "st").mkdir()
    do_export(src, tmp_path / "st" / "model.safetensors", format="safetensors")
    refused(
        tmp_path,
        lambda: do_export(src, tmp_path / "st" / "pytorch_model.bin"),
        "a loader would read",
    )


def test_force_replaces_an_earlier_export_of_ours_whole(tmp_path):
    from safetensors.torch import load_file

    state = {f"w{i}": torch.randn(40) for i in range(5)}
    src = builders.save(state, tmp_path / "w.pt")
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")
    do_export(src, out, **SHARDED)  # five shards of 160 bytes
    assert len(os.listdir(out)) == 7
    refused(tmp_path, lambda: do_export(src, out, **SHARDED), "exists")
    do_export(src, out, force=True, format="safetensors", max_shard_size=400)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) == 3  # the old five are gone
    assert set(os.listdir(out)) == shards | {"model.safetensors.index.json", "config.json"}
    got = {k: v for s in shards for k, v in load_file(str(out / s)).items()}
    assert all(torch.equal(got[k], state[k]) for k in state)
    do_export(src, out, force=True, format="safetensors", max_shard_size=10**6)
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
    got = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(got[k], state[k]) for k in state)


def test_a_destination_that_is_not_a_regular_file_is_never_replaced(tmp_path):
    src = builders.save({"w": torch.randn(4)}, tmp_path / "w.pt")
    os.mkfifo(tmp_path / "pipe.pth")
    refused(tmp_path, lambda: do_export(src, tmp_path / "pipe.pth", force=True), "is a FIFO")
    refused(tmp_path, lambda: do_sanitize(src, tmp_path / "pipe.pth", force=True), "is a FIFO")
    assert os.path.exists(tmp_path / "pipe.pth")


def test_cli_refusal_is_one_line_and_leaves_the_files(tmp_path):
    hf = builders.hf_directory(tmp_path / "hf")
    before = hashes(tmp_path)
    for args in (
        ["export", hf, "-o", hf, "--max-shard-size", "1KB", "--format", "safetensors", "--force"],
        ["sanitize", hf, "-o", os.path.join(hf, "model-00001-of-00002.safetensors"), "--force"],
    ):
        result = subprocess.run(
            [sys.executable, "-m", "ckpt_viewer", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        lines = result.stderr.splitlines()
        assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ")
        assert hashes(tmp_path) == before
