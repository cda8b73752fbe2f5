"""The model's structure as a graph, from what the file itself records — never by running it:

- a `.pt2` archive: its exported program's graph (ops as nodes, parameters, buffers and
  constants attached as inputs, tensor shapes on the edges) from `models/<name>.json`;
- a whole pickled model or TorchScript archive: the module hierarchy (class names and the
  hyperparameters the modules hold, parent -> child);
- any other checkpoint (state_dicts, GGUF, Hugging Face folders, training checkpoints): the
  blocks its keys imply — what comes before the repeated blocks, one block's parts, what comes
  after — with the architecture's sizes from its metadata (GGUF keys, config.json).

Repeated blocks (`layers.0`, `layers.1`...) can be collapsed to one node each. Layout is
grandalf's Sugiyama layout (`layout`), meant to run off the GUI thread."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from typing import Any

from ckpt_viewer.core.listing.model import Checkpoint, Node, iter_nodes
from ckpt_viewer.core.listing.text import safe_text

MAX_DETAIL = 120
BLOCK = re.compile(r"^(.*?)(?:^|\.)(\d+)(?:\.|$)")  # the first `.N.` of a key
SIZE_NAMES = (
    "block_count",
    "num_hidden_layers",
    "n_layer",
    "embedding_length",
    "hidden_size",
    "n_embd",
    "attention.head_count",
    "num_attention_heads",
    "n_head",
    "feed_forward_length",
    "intermediate_size",
    "vocab_size",
    "context_length",
    "max_position_embeddings",
)


@dataclass
class GraphNode:
    id: str
    label: str
    kind: str  # op | input | output | parameter | buffer | constant | module | block | keys
    detail: str = ""
    keys: list[str] = field(default_factory=list)  # tensor keys this node stands for
    group: str = ""  # the repeated block it belongs to ("layers.3"), "" if none


@dataclass
class Graph:
    kind: str  # program | modules | blocks
    source: str  # where the structure came from, in words
    nodes: list[GraphNode] = field(default_factory=list)
    edges: list[tuple[str, str, str]] = field(default_factory=list)  # (source id, target id, label)
    notes: list[str] = field(default_factory=list)

    def node(self, node_id: str) -> GraphNode | None:
        return next((n for n in self.nodes if n.id == node_id), None)

    def groups(self) -> list[str]:
        seen: dict[str, None] = {}
        for n in self.nodes:
            if n.group:
                seen.setdefault(n.group, None)
        return list(seen)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "source": self.source,
            "nodes": [
                {
                    "id": n.id,
                    "label": n.label,
                    "kind": n.kind,
                    "detail": n.detail,
                    "keys": n.keys,
                    "group": n.group,
                }
                for n in self.nodes
            ],
            "edges": [{"from": a, "to": b, "label": label} for a, b, label in self.edges],
            "notes": self.notes,
        }


def model_graph(checkpoint: Checkpoint) -> Graph:
    """The checkpoint's structure: its program graph, its module tree, or its key blocks."""
    programs = getattr(checkpoint, "graphs", None) or {}
    if programs:
        return _program_graph(checkpoint, programs)
    if any(n.kind == "module" for n in iter_nodes(checkpoint.root)):
        return _module_graph(checkpoint)
    return _block_graph(checkpoint)


# --- a .pt2 program ----------------------------------------------------------------------


def _as_dict(value: object) -> dict[str, Any]:
    """A JSON object of the file as it is, anything else (hostile or missing) as empty."""
    return value if isinstance(value, dict) else {}


def _shape_text(value: object) -> str:
    if not isinstance(value, dict):
        return ""
    sizes = value.get("sizes")
    if not isinstance(sizes, list):
        return ""
    parts = []
    for size in sizes:
        if isinstance(size, dict) and isinstance(size.get("as_int"), int):
            parts.append(str(size["as_int"]))
        else:
            parts.append("?")
    return "[" + ", ".join(parts) + "]"


def _tensor_names(arg: object) -> list[str]:
    if not isinstance(arg, dict):
        return []
    if isinstance(arg.get("as_tensor"), dict):
        return [str(arg["as_tensor"].get("name"))]
    if isinstance(arg.get("as_tensors"), list):
        return [str(t.get("name")) for t in arg["as_tensors"] if isinstance(t, dict)]
    if isinstance(arg.get("as_optional_tensors"), list):
        names = []
        for t in arg["as_optional_tensors"]:
            if isinstance(t, dict) and isinstance(t.get("as_tensor"), dict):
                names.append(str(t["as_tensor"].get("name")))
        return names
    return []


def _op_label(target: object) -> str:
    text = str(target)
    for prefix in ("torch.ops.aten.", "torch.ops."):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    return text.removesuffix(".default")


def _module_path(metadata: object) -> str:
    """The innermost module of an op (nn_module_stack's last entry), e.g. `layers.3.attn`."""
    stack = metadata.get("nn_module_stack") if isinstance(metadata, dict) else None
    if not isinstance(stack, str) or not stack:
        return ""
    last = stack.split(";")[-1].split(",")
    return last[1] if len(last) > 1 else ""


def _group_of(path: str) -> str:
    match = BLOCK.match(path)
    if not match:
        return ""
    prefix, number = match.group(1), match.group(2)
    return f"{prefix}.{number}" if prefix else number


def _program_graph(checkpoint: Checkpoint, programs: dict[str, object]) -> Graph:
    graph = Graph("program", "the exported program's graph (models/*.json)")
    for model, program in programs.items():
        prefix = "" if len(programs) == 1 else f"{model}."
        module = _as_dict(program)
        inner = module.get("graph")
        if not isinstance(inner, dict):
            graph.notes.append(f"{safe_text(model)}: no graph recorded")
            continue
        values = _as_dict(inner.get("tensor_values"))
        producer: dict[str, str] = {}
        attached: dict[str, str] = {}  # graph input name -> parameter/buffer/constant key
        signature = _as_dict(module.get("signature"))
        for spec in signature.get("input_specs") or []:
            if not isinstance(spec, dict) or not spec:
                continue
            kind, body = next(iter(spec.items()))
            if not isinstance(body, dict):
                continue
            arg = _as_dict(body.get("arg"))
            name = str(arg.get("name") or next(iter(_tensor_names(arg)), ""))
            if not name:
                continue  # a constant input (an int, a None): no tensor flows from it
            fqn = next(
                (str(v) for k, v in body.items() if k.endswith("_name") and isinstance(v, str)),
                "",
            )
            node_kind = {
                "parameter": "parameter",
                "buffer": "buffer",
                "tensor_constant": "constant",
                "constant_tensor": "constant",
            }.get(kind, "input")
            if node_kind != "input" and fqn:
                attached[name] = prefix + fqn  # drawn inside the ops that use it
                continue
            node_id = f"{prefix}in:{name}"
            graph.nodes.append(
                GraphNode(node_id, safe_text(fqn or name), node_kind, _shape_text(values.get(name)))
            )
            producer[name] = node_id
        for index, op in enumerate(inner.get("nodes") or []):
            if not isinstance(op, dict):
                continue
            node_id = f"{prefix}op:{index}"
            outputs = [n for out in op.get("outputs") or [] for n in _tensor_names(out)]
            path = _module_path(op.get("metadata"))
            detail = ", ".join(_shape_text(values.get(n)) for n in outputs if n in values)
            node = GraphNode(
                node_id,
                safe_text(_op_label(op.get("target", "?"))),
                "op",
                safe_text(f"{path}  {detail}".strip())[:MAX_DETAIL],
                [],
                _group_of(path),
            )
            graph.nodes.append(node)
            for argument in op.get("inputs") or []:
                for name in _tensor_names(_as_dict(argument).get("arg")):
                    if name in attached:
                        node.keys.append(attached[name])
                    elif name in producer:
                        shape = _shape_text(values.get(name))
                        graph.edges.append((producer[name], node_id, shape))
            for name in outputs:
                producer[name] = node_id
        output_id = f"{prefix}output"
        graph.nodes.append(GraphNode(output_id, "output", "output"))
        for out in inner.get("outputs") or []:
            for name in _tensor_names(out):
                if name in producer:
                    graph.edges.append((producer[name], output_id, _shape_text(values.get(name))))
    return graph


# --- a whole pickled model ----------------------------------------------------------------


def _module_graph(checkpoint: Checkpoint) -> Graph:
    graph = Graph("modules", "the pickled modules (classes, names and hyperparameters)")
    stack: list[tuple[Node, str]] = [(checkpoint.root, "")]
    while stack:
        node, parent_id = stack.pop()
        if node.kind == "module":
            node_id = node.key or "(model)"
            keys = [c.key for c in node.children if c.kind == "tensor"]
            class_name = (node.type_name or "Module").rsplit(".", 1)[-1]
            # the tree's note on a module is its hyperparameters (in_features=768, ...)
            detail = f"{node.name}  {node.note}".strip() if node.key else node.note
            graph.nodes.append(
                GraphNode(
                    node_id,
                    safe_text(class_name),
                    "module",
                    safe_text(detail)[:MAX_DETAIL],
                    keys,
                    _group_of(node.key),
                )
            )
            if parent_id:
                graph.edges.append((parent_id, node_id, ""))
            parent_id = node_id
        stack.extend(
            (child, parent_id)
            for child in reversed(node.children)
            if child.children or child.kind == "module"
        )
    return graph


# --- blocks implied by the keys ---------------------------------------------------------------


def _sizes(checkpoint: Checkpoint) -> str:
    found = []
    for key, value in checkpoint.metadata.items():
        name = str(key).split(".", 1)[-1] if str(key).count(".") else str(key)
        if any(str(key).endswith(n) for n in SIZE_NAMES) and isinstance(value, (int, float)):
            found.append(f"{name}={value}")
    return safe_text(", ".join(dict.fromkeys(found)))[:MAX_DETAIL]


def _block_graph(checkpoint: Checkpoint) -> Graph:
    """The model's keys (optimizer state and other values left out): keys before the first
    repeated block, each block (its parts in order), keys after."""
    from ckpt_viewer.core.listing.summary import MODEL, tensor_categories

    graph = Graph("blocks", "the blocks the model's keys imply")
    categories = tensor_categories(checkpoint)
    sizes = _sizes(checkpoint)
    if sizes:
        graph.notes.append(f"architecture: {sizes}")
    order: dict[str, GraphNode] = {}
    previous = ""
    for key, tensor, tensor_node in checkpoint.tensors():
        if categories.get(id(tensor_node)) != MODEL:
            continue
        group = _group_of(key)
        if group:
            block = order.get(group)
            if block is None:
                block = order[group] = GraphNode(group, safe_text(group), "block", "", [], group)
                graph.nodes.append(block)
                if previous:
                    graph.edges.append((previous, group, ""))
                previous = group
            block.keys.append(key)
            continue
        stem = key.rsplit(".", 1)[0] if "." in key else key
        node = order.get("k:" + stem)
        if node is None:
            node = order["k:" + stem] = GraphNode("k:" + stem, safe_text(stem), "keys")
            graph.nodes.append(node)
            if previous:
                graph.edges.append((previous, node.id, ""))
            previous = node.id
        node.keys.append(key)
        node.detail = safe_text(f"{list(tensor.shape)} {tensor.dtype}")
    for node in graph.nodes:
        if node.kind == "block":
            parts = dict.fromkeys(k[len(node.id) + 1 :].rsplit(".", 1)[0] for k in node.keys)
            node.detail = safe_text(", ".join(parts))[:MAX_DETAIL]
    return graph


# --- collapsing and layout --------------------------------------------------------------------


def _run_of(group: str) -> str:
    """`layers.3` -> `layers`: the repeated blocks a group belongs to."""
    return group.rpartition(".")[0] if "." in group else ""


def collapsed(graph: Graph) -> Graph:
    """Each run of repeated blocks (`layers.0` ... `layers.N`) as one node, `layers × N+1`;
    edges into and out of the run kept, those inside it dropped."""
    runs: dict[str, set[str]] = {}
    for node in graph.nodes:
        if node.group:
            runs.setdefault(_run_of(node.group), set()).add(node.group)
    runs = {run: groups for run, groups in runs.items() if len(groups) >= 2}
    if not runs:
        return graph
    out = Graph(graph.kind, graph.source, notes=list(graph.notes))
    where: dict[str, str] = {}
    made: dict[str, GraphNode] = {}
    counts: dict[str, int] = {}
    for node in graph.nodes:
        run = _run_of(node.group) if node.group else None
        if run not in runs:
            out.nodes.append(node)
            where[node.id] = node.id
            continue
        run_id = "run:" + run
        where[node.id] = run_id
        counts[run_id] = counts.get(run_id, 0) + 1
        block = made.get(run_id)
        if block is None:
            label = f"{run or 'blocks'} \u00d7 {len(runs[run])}"
            block = made[run_id] = GraphNode(run_id, safe_text(label), "block", "", [], run)
            out.nodes.append(block)
        block.keys += node.keys
    for run_id, block in made.items():
        block.detail = f"{counts[run_id]:,} nodes collapsed"
    seen: set[tuple[str, str]] = set()
    for a, b, label in graph.edges:
        a, b = where.get(a, a), where.get(b, b)
        if a != b and (a, b) not in seen:
            seen.add((a, b))
            out.edges.append((a, b, label))
    return out


def layout(graph: Graph, sizes: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    """{node id: (x, y)} centres by grandalf's Sugiyama layout; `sizes`: {id: (w, h)}."""
    from grandalf.graphs import Edge, Vertex

    class _View:
        def __init__(self, w: float, h: float):
            self.w, self.h = w, h
            self.xy = (0.0, 0.0)

    vertices = {}
    for node in graph.nodes:
        vertex = Vertex(node.id)
        vertex.view = _View(*sizes.get(node.id, (120.0, 40.0)))
        vertices[node.id] = vertex
    edges = [
        Edge(vertices[a], vertices[b])
        for a, b, _ in graph.edges
        if a in vertices and b in vertices and a != b
    ]
    # grandalf's depth-first search recurses once per vertex of a chain, and sets the limit
    # to just the vertex count, ignoring the frames already on the stack
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 3 * len(vertices) + 1000))
    try:
        return _placed(vertices, edges)
    finally:
        sys.setrecursionlimit(limit)


def _placed(vertices: dict[str, Any], edges: list[Any]) -> dict[str, tuple[float, float]]:
    from grandalf.graphs import Graph as Layout
    from grandalf.layouts import SugiyamaLayout

    placed: dict[str, tuple[float, float]] = {}
    offset = 0.0
    for component in Layout(list(vertices.values()), edges).C:
        sugiyama = SugiyamaLayout(component)
        sugiyama.init_all()
        sugiyama.draw()
        xs = [v.view.xy[0] - v.view.w / 2 for v in component.sV]
        shift = offset - min(xs)
        for vertex in component.sV:
            placed[vertex.data] = (vertex.view.xy[0] + shift, vertex.view.xy[1])
        offset = max(x + v.view.w / 2 for v, x in ((v, placed[v.data][0]) for v in component.sV))
        offset += 60.0
    return placed
