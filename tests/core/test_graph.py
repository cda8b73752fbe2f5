"""The model's structure, checked against torch: named_modules(), the exported program's graph."""

from __future__ import annotations

import torch

from ckpt_viewer.core.listing.graph import collapsed, layout, model_graph
from ckpt_viewer.core.listing.open import open_checkpoint


class Block(torch.nn.Module):
    def __init__(self, d):
        super().__init__()
        self.norm = torch.nn.LayerNorm(d)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(d, 2 * d), torch.nn.GELU())
        self.out = torch.nn.Linear(2 * d, d)

    def forward(self, x):
        return x + self.out(self.mlp(self.norm(x)))


class Net(torch.nn.Module):
    def __init__(self, d=8, n=3):
        super().__init__()
        self.embed = torch.nn.Embedding(20, d)
        self.layers = torch.nn.ModuleList([Block(d) for _ in range(n)])
        self.head = torch.nn.Linear(d, 20)

    def forward(self, ids):
        x = self.embed(ids)
        for block in self.layers:
            x = block(x)
        return self.head(x)


def test_a_pickled_model_is_its_module_tree(tmp_path):
    net = Net()
    torch.save(net, tmp_path / "whole.pt")
    graph = model_graph(open_checkpoint(str(tmp_path / "whole.pt")))
    assert graph.kind == "modules"
    expected = {name or "(model)": type(m).__name__ for name, m in net.named_modules()}
    assert {n.id: n.label for n in graph.nodes} == expected
    parents = {b: a for a, b, _ in graph.edges}
    assert parents["layers.1.mlp.0"] == "layers.1.mlp" and parents["layers"] == "(model)"
    head = graph.node("head")
    assert head.keys == ["head.weight", "head.bias"] and "in_features=8" in head.detail


def test_a_pt2_is_its_programs_graph(tmp_path):
    net = Net().eval()
    program = torch.export.export(net, (torch.randint(0, 20, (1, 4)),))
    torch.export.save(program, tmp_path / "net.pt2")
    graph = model_graph(open_checkpoint(str(tmp_path / "net.pt2")))
    assert graph.kind == "program"
    ops = [n for n in program.graph.nodes if n.op == "call_function"]
    ours = [n for n in graph.nodes if n.kind == "op"]
    assert [n.label for n in ours] == [
        str(o.target).removeprefix("aten.").removesuffix(".default") for o in ops
    ]
    attached = {k for n in ours for k in n.keys}
    assert attached == set(program.graph_signature.parameters)
    inputs = [n.label for n in graph.nodes if n.kind == "input"]
    assert inputs == list(program.graph_signature.user_inputs)
    # every op consumes what an earlier node produced: edges follow the program's order
    position = {n.id: i for i, n in enumerate(graph.nodes)}
    assert all(position[a] < position[b] for a, b, _ in graph.edges)
    assert any(label == "[1, 4, 8]" for _, _, label in graph.edges)


def test_a_state_dict_is_its_blocks_and_repeats_collapse(tmp_path):
    net = Net(n=4)
    torch.save(
        {"model": net.state_dict(), "optimizer": {"state": {}, "param_groups": []}},
        tmp_path / "sd.pt",
    )
    graph = model_graph(open_checkpoint(str(tmp_path / "sd.pt")))
    assert graph.kind == "blocks"
    assert [n.label for n in graph.nodes] == [
        "model.embed",
        "model.layers.0",
        "model.layers.1",
        "model.layers.2",
        "model.layers.3",
        "model.head",
    ]
    assert graph.node("model.layers.2").keys == [
        f"model.layers.2.{k}" for k in net.layers[2].state_dict()
    ]
    small = collapsed(graph)
    assert [n.label for n in small.nodes] == ["model.embed", "model.layers \u00d7 4", "model.head"]
    assert len(small.edges) == 2
    positions = layout(small, {})
    assert set(positions) == {n.id for n in small.nodes}
    ys = [positions[n.id][1] for n in small.nodes]
    assert ys == sorted(ys)  # a chain laid out top to bottom
