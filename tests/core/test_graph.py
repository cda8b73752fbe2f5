"""The model's structure, checked against torch: named_modules(), the exported program's graph."""

from __future__ import annotations

import pytest
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


def test_a_pickled_cnn_is_its_module_tree(tmp_path):
    cnn = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 4 * 4, 10),
    )
    torch.save(cnn, tmp_path / "cnn.pt")
    graph = model_graph(open_checkpoint(str(tmp_path / "cnn.pt")))
    assert graph.kind == "modules"
    expected = {name or "(model)": type(m).__name__ for name, m in cnn.named_modules()}
    assert {n.id: n.label for n in graph.nodes} == expected
    for name, module in cnn.named_modules():
        own = [f"{name}.{k}" for k, _ in module.named_parameters(recurse=False)]
        own += [f"{name}.{k}" for k, _ in module.named_buffers(recurse=False)]
        assert sorted(graph.node(name or "(model)").keys) == sorted(own)
    assert "out_channels=8" in graph.node("0").detail
    assert "num_features=8" in graph.node("1").detail


class TinyTransformer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(20, 16)
        layer = torch.nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = torch.nn.Linear(16, 20)

    def forward(self, ids):
        return self.head(self.encoder(self.embed(ids)))


def test_a_pt2_transformer_is_its_programs_graph(tmp_path):
    program = torch.export.export(TinyTransformer().eval(), (torch.randint(0, 20, (1, 5)),))
    torch.export.save(program, tmp_path / "t.pt2")
    graph = model_graph(open_checkpoint(str(tmp_path / "t.pt2")))
    ops = [n for n in program.graph.nodes if n.op == "call_function"]
    ours = [n for n in graph.nodes if n.kind == "op"]
    assert [n.label for n in ours] == [
        str(o.target).removeprefix("aten.").removesuffix(".default") for o in ops
    ]
    signature = program.graph_signature
    assert {k for n in ours for k in n.keys} == set(signature.parameters) | set(signature.buffers)
    assert graph.groups() == ["encoder.layers.0", "encoder.layers.1"]
    small = collapsed(graph)
    assert [n.label for n in small.nodes if n.kind == "block"] == ["encoder.layers \u00d7 2"]


def test_a_training_checkpoint_draws_the_model_not_the_optimizer(tmp_path):
    net = Net(n=2)
    optimizer = torch.optim.Adam(net.parameters())
    net(torch.randint(0, 20, (1, 3))).sum().backward()
    optimizer.step()
    torch.save(
        {"model": net.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 3},
        tmp_path / "train.pt",
    )
    graph = model_graph(open_checkpoint(str(tmp_path / "train.pt")))
    assert graph.kind == "blocks"
    drawn = [k for n in graph.nodes for k in n.keys]
    assert sorted(drawn) == sorted(f"model.{k}" for k in net.state_dict())


# --- the block diagram of an architecture's config (transformers, gguf as the oracles) --------


def _parts(graph, part):
    return [n for n in graph.nodes if n.id.endswith(":" + part)]


def _tiny_llama(folder, **changes):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=40,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        **changes,
    )
    model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(folder)
    return config, model


def test_an_hf_llama_folder_is_its_configs_block_diagram(tmp_path):
    config, model = _tiny_llama(tmp_path)
    graph = model_graph(open_checkpoint(str(tmp_path)))
    assert graph.kind == "architecture" and "config.json" in graph.source
    parameters = dict(model.named_parameters())
    assert sorted(k for n in graph.nodes for k in n.keys) == sorted(parameters)
    assert graph.groups() == [f"model.layers.{i}" for i in range(config.num_hidden_layers)]
    for i, (attention, mlp) in enumerate(zip(_parts(graph, "attention"), _parts(graph, "mlp"))):
        assert sorted(attention.keys) == sorted(
            k for k in parameters if k.startswith(f"model.layers.{i}.self_attn.")
        )
        assert sorted(mlp.keys) == sorted(
            k for k in parameters if k.startswith(f"model.layers.{i}.mlp.")
        )
        assert f"{config.num_attention_heads} heads" in attention.detail
        assert f"{config.num_key_value_heads} kv heads" in attention.detail
        assert f"head dim {config.head_dim}" in attention.detail
        assert f"{config.hidden_size} \u2192 {config.intermediate_size}, gated" in mlp.detail
    labels = [n.label for n in graph.nodes]
    assert labels[0] == "embedding" and labels[-2:] == ["final norm", "lm head"]
    assert labels[1:5] == ["norm", "attention", "norm", "MLP"]
    assert graph.node("embedding").keys == ["model.embed_tokens.weight"]
    assert graph.node("lm head").keys == ["lm_head.weight"]
    assert graph.notes == [
        "llama: 3 layers, hidden 16, heads 4, kv heads 2, intermediate 40, vocab 64"
    ]
    assert [(a, b) for a, b, _ in graph.edges] == [
        (a.id, b.id) for a, b in zip(graph.nodes, graph.nodes[1:])
    ]
    small = collapsed(graph)
    assert [n.label for n in small.nodes] == [
        "embedding",
        "model.layers \u00d7 3",
        "final norm",
        "lm head",
    ]
    assert small.nodes[1].detail.endswith("norm, attention, MLP")


def test_an_hf_gpt2_folder_ties_its_head_to_the_embedding(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=4, n_positions=8)
    model = transformers.GPT2LMHeadModel(config)
    model.save_pretrained(tmp_path)
    graph = model_graph(open_checkpoint(str(tmp_path)))
    assert graph.kind == "architecture"
    # named_parameters() gives a tied tensor once: under the embedding's name
    assert sorted({k for n in graph.nodes for k in n.keys}) == sorted(
        dict(model.named_parameters())
    )
    assert len(_parts(graph, "attention")) == len(_parts(graph, "mlp")) == config.n_layer
    assert graph.node("lm head").keys == ["transformer.wte.weight"]
    assert "tied to the embedding" in graph.node("lm head").detail
    assert all("16 \u2192 64" in n.detail for n in _parts(graph, "mlp"))  # 4 x n_embd


def test_config_and_tensors_that_disagree_are_noted(tmp_path):
    import json

    from safetensors.torch import load_file, save_file

    _tiny_llama(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["num_hidden_layers"] = 5
    (tmp_path / "config.json").write_text(json.dumps(config))
    tensors = load_file(tmp_path / "model.safetensors")
    tensors = {k: v for k, v in tensors.items() if not k.startswith("model.layers.1.mlp.")}
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    graph = model_graph(open_checkpoint(str(tmp_path)))
    assert graph.kind == "architecture"
    assert (
        "config.json says 5 layers (num_hidden_layers), the tensors hold 3 (missing: 3, 4)"
        in graph.notes
    )
    assert "no MLP tensors in layers 1" in graph.notes
    assert graph.node("model.layers.1:mlp").keys == []
    assert "no tensor" in graph.node("model.layers.1:mlp").detail


def test_an_unknown_architecture_falls_back_to_the_key_blocks(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=32,
        hidden_size=8,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=8,
    )
    transformers.BertModel(config).save_pretrained(tmp_path)
    graph = model_graph(open_checkpoint(str(tmp_path)))
    assert graph.kind == "blocks"
    assert graph.notes[0].startswith("bert (config.json): ")
    assert "drawn as the blocks the keys imply" in graph.notes[0]


def test_a_gguf_llama_is_its_metadatas_block_diagram(tmp_path):
    gguf = pytest.importorskip("gguf")
    import numpy as np

    path = str(tmp_path / "tiny.gguf")
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_block_count(2)
    writer.add_embedding_length(16)
    writer.add_feed_forward_length(40)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    random = np.random.default_rng(0)
    shapes = {"token_embd.weight": (64, 16), "output_norm.weight": (16,)}
    for i in range(2):
        for name, shape in [
            ("attn_norm", (16,)),
            ("attn_q", (16, 16)),
            ("attn_k", (8, 16)),
            ("attn_v", (8, 16)),
            ("attn_output", (16, 16)),
            ("ffn_norm", (16,)),
            ("ffn_gate", (40, 16)),
            ("ffn_up", (40, 16)),
            ("ffn_down", (16, 40)),
        ]:
            shapes[f"blk.{i}.{name}.weight"] = shape
    for name, shape in shapes.items():  # no output.weight: the head is token_embd
        writer.add_tensor(name, random.standard_normal(shape, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    reader = gguf.GGUFReader(path)

    def field(name):
        return reader.fields[name].contents()

    graph = model_graph(open_checkpoint(path))
    assert graph.kind == "architecture" and "GGUF" in graph.source
    assert sorted({k for n in graph.nodes for k in n.keys}) == sorted(
        t.name for t in reader.tensors
    )
    assert len(graph.groups()) == field("llama.block_count")
    for i, attention in enumerate(_parts(graph, "attention")):
        assert attention.keys == [f"blk.{i}.attn_{p}.weight" for p in ("q", "k", "v", "output")]
        assert attention.detail == (
            f"layer {i}: {field('llama.attention.head_count')} heads, "
            f"{field('llama.attention.head_count_kv')} kv heads, head dim 4"
        )
    for mlp in _parts(graph, "mlp"):
        assert f"16 \u2192 {field('llama.feed_forward_length')}, gated" in mlp.detail
    assert graph.node("embedding").detail == "64 \u00d7 16"  # vocab from the embedding
    assert graph.node("lm head").keys == ["token_embd.weight"]
    assert [n.label for n in graph.nodes][-2:] == ["final norm", "lm head"]


def _grandalf_layout(graph, size=(120.0, 40.0)):
    """grandalf's own pipeline (Graph, its components, init_all, draw) on a connected graph."""
    from grandalf.graphs import Edge, Vertex
    from grandalf.graphs import Graph as Layout
    from grandalf.layouts import SugiyamaLayout

    class View:
        w, h, xy = size[0], size[1], (0.0, 0.0)

    vertices = {n.id: Vertex(n.id) for n in graph.nodes}
    for vertex in vertices.values():
        vertex.view = View()
    edges = [Edge(vertices[a], vertices[b]) for a, b, _ in graph.edges]
    (component,) = Layout(list(vertices.values()), edges).C
    sugiyama = SugiyamaLayout(component)
    sugiyama.init_all()
    sugiyama.draw()
    left = min(v.view.xy[0] - size[0] / 2 for v in component.sV)
    return {v.data: (v.view.xy[0] - left, v.view.xy[1]) for v in component.sV}


def test_layout_places_nodes_as_grandalfs_own_pipeline_does(tmp_path):
    from ckpt_viewer.core.listing.graph import Graph, GraphNode

    program = torch.export.export(TinyTransformer().eval(), (torch.randint(0, 20, (1, 5)),))
    torch.export.save(program, tmp_path / "t.pt2")
    exported = model_graph(open_checkpoint(str(tmp_path / "t.pt2")))
    connected = {a for a, _, _ in exported.edges} | {b for _, b, _ in exported.edges}
    exported.nodes = [n for n in exported.nodes if n.id in connected]
    cyclic = Graph("blocks", "a cycle and branches")
    cyclic.nodes = [GraphNode(str(i), str(i), "keys") for i in range(8)]
    pairs = [(0, 1), (1, 2), (2, 3), (3, 1), (2, 4), (4, 5), (5, 6), (0, 6), (6, 7), (7, 2)]
    cyclic.edges = [(str(a), str(b), "") for a, b in pairs]
    for graph in (exported, cyclic):
        expected = _grandalf_layout(graph)
        assert layout(graph, {}) == expected


def test_a_hostile_config_is_drawn_without_trusting_it(tmp_path):
    import json

    from safetensors.torch import save_file

    tensors = {f"model.layers.{i}.self_attn.q_proj.weight": torch.zeros(2, 2) for i in range(2)}
    tensors |= {f"model.layers.{i}.mlp.up_proj.weight": torch.zeros(2, 2) for i in range(2)}
    tensors[f"model.layers.{'9' * 5000}.mlp.up_proj.weight"] = torch.zeros(1)
    save_file(tensors, tmp_path / "model.safetensors")
    config = {
        "model_type": "\x1b[31mevil\n",
        "num_hidden_layers": 10**18,
        "hidden_size": 10**12,
        "num_attention_heads": 0,
        "intermediate_size": True,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    graph = model_graph(open_checkpoint(str(tmp_path)))
    assert graph.kind == "architecture"
    assert len(_parts(graph, "attention")) == 2
    text = " ".join(graph.notes + [n.label + n.detail for n in graph.nodes])
    assert "\x1b" not in text and "\n" not in text
    assert any(
        f"says {10**18} layers (num_hidden_layers), the tensors hold 2 (missing: 2, 3, 4" in note
        for note in graph.notes
    )
    assert "no token embedding tensor" in graph.notes
    assert max(len(n.label) for n in graph.nodes) <= 120
    positions = layout(collapsed(graph), {})
    assert set(positions) == {n.id for n in collapsed(graph).nodes}


def test_a_trainer_checkpoint_folder_draws_its_models_architecture(tmp_path):
    import json

    _, model = _tiny_llama(tmp_path)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randint(0, 64, (1, 4))).logits.sum().backward()
    optimizer.step()
    torch.save(optimizer.state_dict(), tmp_path / "optimizer.pt")
    (tmp_path / "trainer_state.json").write_text(json.dumps({"global_step": 1}))
    graph = model_graph(open_checkpoint(str(tmp_path)))
    assert graph.kind == "architecture"
    assert sorted(k for n in graph.nodes for k in n.keys) == sorted(
        f"model.safetensors.{name}" for name, _ in model.named_parameters()
    )
