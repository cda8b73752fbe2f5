"""Bytes map, `inspect --by-module` and the memory a model needs, against torch's own counts."""

from __future__ import annotations

import json

import torch

import builders
from ckpt_viewer.cli import main
from ckpt_viewer.core.listing.footprint import bytes_map, memory_needs, module_rows
from ckpt_viewer.core.listing.open import open_checkpoint


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(10, 6)
        self.block = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.BatchNorm1d(6))
        self.head = torch.nn.Linear(6, 10, bias=False)
        self.head.weight = self.embed.weight  # tied


def _storage_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def test_bytes_map_counts_each_storage_once_with_roles_from_the_model(tmp_path):
    net = Net()
    torch.save(net.state_dict(), tmp_path / "net.pt")
    top = bytes_map(open_checkpoint(str(tmp_path / "net.pt")))
    state = net.state_dict()
    assert top.bytes == _storage_bytes(state.values())
    assert top.children["head"].bytes == 0 and top.children["head"].tensors == 1  # tied
    assert top.children["embed"].bytes == net.embed.weight.nbytes
    parameters = sum(p.numel() for p in net.parameters())  # tied counted once by torch too
    buffers = sum(b.numel() for b in net.buffers())
    assert top.by_role["parameters"] == 4 * parameters
    assert top.by_role["buffers"] == sum(b.nbytes for b in net.buffers())
    rows = module_rows(top, 2)
    assert [(d, b.path) for d, b in rows][:3] == [(1, "embed"), (2, "embed.weight"), (1, "block")]
    needs = memory_needs(open_checkpoint(str(tmp_path / "net.pt")))
    assert needs["parameters"] == parameters and needs["buffers"] == buffers
    buffer_bytes = sum(b.nbytes for b in net.buffers())
    assert needs["inference"]["float16"] == 2 * parameters + buffer_bytes
    assert needs["training"]["optimizer_state_from"] == "Adam (estimated)"
    assert needs["training"]["optimizer_state"] == 8 * parameters


def test_training_memory_uses_the_files_own_optimizer_state(tmp_path):
    path = builders.training_checkpoint(tmp_path / "train.pth")
    saved = torch.load(path, weights_only=True)
    optimizer_bytes = _storage_bytes(
        t for s in saved["optimizer_state_dict"]["state"].values() for t in s.values()
    )
    weights = _storage_bytes(saved["model_state_dict"].values())
    needs = memory_needs(open_checkpoint(str(path)))
    training = needs["training"]
    assert training["optimizer_state_from"] == "this file"
    assert training["optimizer_state"] == optimizer_bytes
    assert training["weights"] + training["buffers"] == weights
    assert training["total"] == 2 * training["weights"] + training["buffers"] + optimizer_bytes
    zero3 = next(r for r in needs["sharded"] if r["devices"] == 4)["zero3"]
    assert zero3 == training["buffers"] + -(-(2 * training["weights"] + optimizer_bytes) // 4)


def test_optimizer_state_blocks_carry_their_parameters_name(tmp_path):
    """A real Adam step: each state entry's block names the parameter it belongs to, in the
    order torch's state_dict numbers them (named_parameters order)."""
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    optimizer = torch.optim.Adam(net.parameters())
    net(torch.randn(5, 3)).sum().backward()
    optimizer.step()
    torch.save({"model": net.state_dict(), "optimizer": optimizer.state_dict()}, tmp_path / "t.pt")
    top = bytes_map(open_checkpoint(str(tmp_path / "t.pt")))
    state = top.children["optimizer"].children["state"]
    names = [name for name, _ in net.named_parameters()]
    assert {b.name: b.parameter for b in state.children.values()} == {
        str(i): name for i, name in enumerate(names)
    }


def test_whole_model_blocks_carry_class_names(tmp_path):
    path = builders.whole_model_file(tmp_path / "whole.pt")
    top = bytes_map(open_checkpoint(str(path)))
    classes = {b.class_name for _, b in module_rows(top, 4) if b.class_name}
    assert classes, "a pickled module's class is kept on its block"


def test_inspect_by_module_text_and_json(tmp_path, capsys):
    torch.save(Net().state_dict(), tmp_path / "net.pt")
    assert main(["inspect", str(tmp_path / "net.pt"), "--by-module", "--depth", "1"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:2] == ["module", "bytes"]
    assert "What the model needs" in out and "ZeRO-1 / ZeRO-2 / ZeRO-3" in out
    assert main(["inspect", str(tmp_path / "net.pt"), "--json", "--by-module"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {m["path"] for m in data["modules"] if m["depth"] == 1} == {"embed", "block", "head"}
    assert set(data["memory"]) >= {"parameters", "inference", "training", "sharded", "rules"}
