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
    """The checkpoint's structure: its program graph, its module tree, the block diagram its
    architecture's metadata (config.json, GGUF keys) implies, or its key blocks."""
    programs = getattr(checkpoint, "graphs", None) or {}
    if programs:
        return _program_graph(checkpoint, programs)
    if any(n.kind == "module" for n in iter_nodes(checkpoint.root)):
        return _module_graph(checkpoint)
    config = _config(checkpoint)
    if config is None:
        return _block_graph(checkpoint)
    graph = _architecture_graph(checkpoint, config)
    if isinstance(graph, Graph):
        return graph
    fallback = _block_graph(checkpoint)
    fallback.notes.insert(0, graph)
    return fallback


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


# --- the block diagram an architecture's metadata implies -----------------------------------

# the names of each size: Hugging Face config.json fields, then GGUF's `<arch>.` keys
CONFIG_SIZES = {
    "layers": ("num_hidden_layers", "n_layer", "num_layers", "block_count"),
    "hidden": ("hidden_size", "n_embd", "d_model", "embedding_length"),
    "heads": ("num_attention_heads", "n_head", "attention.head_count"),
    "kv_heads": ("num_key_value_heads", "attention.head_count_kv"),
    "head_dim": ("head_dim", "attention.key_length"),
    "intermediate": ("intermediate_size", "n_inner", "feed_forward_length"),
    "vocab": ("vocab_size",),
    "experts": ("num_local_experts", "expert_count"),
}
ACTIVATIONS = ("hidden_act", "activation_function", "hidden_activation")
# a block's parts by the first name of its keys after `layers.N.`, across HF and GGUF names
PRE_ATTENTION_NORMS = {"input_layernorm", "ln_1", "attn_norm", "attention_norm", "ln_attn"}
PRE_MLP_NORMS = {"post_attention_layernorm", "ln_2", "ffn_norm", "pre_feedforward_layernorm"}
ATTENTION = ("self_attn", "attn", "attention", "self_attention")
MLP = ("mlp", "ffn", "feed_forward", "block_sparse_moe")
# outside the blocks, by the last name of the key's module
EMBEDDINGS = {"embed_tokens", "wte", "token_embd", "word_embeddings", "tok_embeddings", "embed_in"}
POSITIONS = {"wpe", "position_embd", "embed_positions", "position_embeddings"}
FINAL_NORMS = {"norm", "ln_f", "output_norm", "final_layernorm", "final_layer_norm"}
HEADS = {"lm_head", "output", "embed_out"}
PART_LABELS = {"norm": "norm", "attention": "attention", "norm2": "norm", "mlp": "MLP"}


@dataclass
class _Config:
    architecture: str
    source: str  # "config.json", "the GGUF metadata"
    values: dict[str, Any]  # the config's fields, names without their prefix
    sizes: dict[str, tuple[str, int]]  # "layers" -> (the field's name, its value)

    def size(self, name: str) -> int | None:
        found = self.sizes.get(name)
        return found[1] if found else None


def _config(checkpoint: Checkpoint) -> _Config | None:
    """The architecture's fields from config.json (`config.*` metadata) or a GGUF's `<arch>.*`
    keys; None without either, or without a layer count."""
    metadata = checkpoint.metadata
    architecture = metadata.get("general.architecture")
    if checkpoint.format == "gguf" and isinstance(architecture, str):
        prefix, source = f"{architecture}.", "the GGUF metadata"
    elif any(str(k).startswith("config.") for k in metadata):
        prefix, source = "config.", "config.json"
        architecture = metadata.get("config.model_type") or metadata.get("config.architectures")
    else:
        return None
    values = {k[len(prefix) :]: v for k, v in metadata.items() if str(k).startswith(prefix)}
    sizes = {}
    for size, names in CONFIG_SIZES.items():
        for name in names:
            value = values.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                sizes[size] = (name, value)
                break
    if "layers" not in sizes:
        return None
    if "intermediate" not in sizes and "n_embd" in values and "hidden" in sizes:
        # GPT-2's config leaves n_inner out (None): its MLP is 4 x n_embd wide
        sizes["intermediate"] = ("4 x n_embd", 4 * sizes["hidden"][1])
    return _Config(safe_text(str(architecture or "?")), source, values, sizes)


def _part(name: str) -> str:
    """A block's part ("norm", "attention", "norm2", "mlp", or the name itself) from the first
    name of a key inside the block."""
    if name in PRE_ATTENTION_NORMS:
        return "norm"
    if name in PRE_MLP_NORMS:
        return "norm2"
    if any(name == a or name.startswith(a + "_") for a in ATTENTION):
        return "attention"
    if any(name == m or name.startswith(m + "_") for m in MLP):
        return "mlp"
    return name


def _numbers(indices: list[int], total: int | None = None) -> str:
    total = len(indices) if total is None else total
    shown = ", ".join(map(str, indices[:8]))
    return shown + (f" and {total - 8:,} more" if total > 8 else "")


def _missing(present: set[int], count: int) -> tuple[list[int], int]:
    """(the first missing numbers of range(count), how many are missing), without walking a
    hostile count."""
    first = [i for i in range(min(count, len(present) + 8)) if i not in present][:8]
    return first, count - sum(1 for i in present if i < count)


def _architecture_graph(checkpoint: Checkpoint, config: _Config) -> Graph | str:
    """embedding -> layers x [norm, attention, norm, MLP] -> final norm -> lm head, sized by
    the config, each part holding its tensors; or why the keys do not map to it."""
    from ckpt_viewer.core.listing.summary import MODEL, tensor_categories

    categories = tensor_categories(checkpoint)
    shapes: dict[str, tuple[int, ...]] = {}
    blocks: dict[str, dict[int, dict[str, list[str]]]] = {}  # run -> index -> part -> keys
    outside: dict[str, list[str]] = {}  # role or module name -> keys
    for key, tensor, node in checkpoint.tensors():
        if categories.get(id(node)) != MODEL:
            continue
        shapes[key] = tuple(tensor.shape)
        group = _group_of(key)
        run, _, number = group.rpartition(".")
        if group and len(number) <= 9:
            stem = key[len(group) + 1 :].rsplit(".", 1)[0]
            part = _part(stem.split(".", 1)[0])
            blocks.setdefault(run, {}).setdefault(int(number), {}).setdefault(part, []).append(key)
            continue
        module = key.rsplit(".", 1)[0] if "." in key else key
        name = module.rsplit(".", 1)[-1]
        role = next(
            (
                role
                for role, names in (
                    ("embedding", EMBEDDINGS),
                    ("positions", POSITIONS),
                    ("final norm", FINAL_NORMS),
                    ("lm head", HEADS),
                )
                if name in names
            ),
            module,
        )
        outside.setdefault(role, []).append(key)
    name = f"{config.architecture} ({config.source})"
    runs = [run for run, layers in blocks.items() if len(layers) >= 2] or list(blocks)
    if len(runs) != 1:
        return f"{name}: the tensors hold {len(runs)} runs of repeated blocks; drawn as the blocks the keys imply"
    run = runs[0]
    layers = blocks[run]
    if not any("attention" in parts and "mlp" in parts for parts in layers.values()):
        return f"{name}: its tensor names map to no attention and MLP blocks; drawn as the blocks the keys imply"

    graph = Graph("architecture", f"the {config.architecture} architecture in {config.source}")
    embedding = outside.pop("embedding", [])
    positions = outside.pop("positions", [])
    notes = graph.notes
    hidden, heads = config.size("hidden"), config.size("heads")
    kv_heads, head_dim = config.size("kv_heads"), config.size("head_dim")
    if head_dim is None and hidden and heads:
        head_dim = hidden // heads
    intermediate, vocab = config.size("intermediate"), config.size("vocab")
    if vocab is None and hidden and embedding and hidden in shapes[embedding[0]]:
        vocab = next((d for d in shapes[embedding[0]] if d != hidden), hidden)
    activation = next((str(config.values[a]) for a in ACTIVATIONS if a in config.values), "")
    experts = config.size("experts")

    def add(node_id: str, label: str, detail: str, keys: list[str], group: str = "") -> None:
        if graph.nodes:
            graph.edges.append((graph.nodes[-1].id, node_id, ""))
        graph.nodes.append(
            GraphNode(
                node_id,
                safe_text(label)[:MAX_DETAIL],
                "block" if group else "keys",
                safe_text(detail)[:MAX_DETAIL],
                keys,
                group,
            )
        )

    if not embedding:
        notes.append("no token embedding tensor")
    elif hidden and hidden not in shapes[embedding[0]]:
        notes.append(
            f"{config.sizes['hidden'][0]} is {hidden} but the embedding is "
            f"{list(shapes[embedding[0]])}"
        )
    detail = f"{vocab} \u00d7 {hidden}" if vocab and hidden else ""
    add(
        "embedding",
        "embedding",
        detail + (" + positions" if positions else ""),
        embedding + positions,
    )
    lacking: dict[str, list[int]] = {"attention": [], "mlp": []}
    for index in sorted(layers):
        parts = dict(layers[index])
        group = f"{run}.{index}"
        for part in ("norm", "attention", "norm2", "mlp"):
            keys = parts.pop(part, [])
            if not keys and part in ("norm", "norm2"):
                continue  # a parallel block (phi) or one without norms
            if not keys:
                lacking[part].append(index)
            if part == "attention":
                sizes = [f"{heads} heads" if heads else ""]
                sizes.append(f"{kv_heads} kv heads" if kv_heads and kv_heads != heads else "")
                sizes.append(f"head dim {head_dim}" if head_dim else "")
            elif part == "mlp":
                gated = any("gate" in k[len(group) :] for k in keys)
                sizes = [f"{hidden} \u2192 {intermediate}" if hidden and intermediate else ""]
                sizes += [f"{experts} experts" if experts else "", "gated" if gated else ""]
                sizes.append(activation)
            else:
                sizes = [str(list(shapes[keys[0]]))]
            text = ", ".join(s for s in sizes if s) if keys else "no tensor in the file"
            add(f"{group}:{part}", PART_LABELS[part], f"layer {index}: {text}", keys, group)
        for part, keys in parts.items():
            add(f"{group}:{part}", part, f"layer {index}", keys, group)
    final = outside.pop("final norm", [])
    if final:
        add("final norm", "final norm", str(list(shapes[final[0]])), final)
    head = outside.pop("lm head", [])
    sizes_text = f"{hidden} \u2192 {vocab}" if hidden and vocab else ""
    if head:
        add("lm head", "lm head", sizes_text, head)
    else:
        if config.values.get("tie_word_embeddings") is False:
            notes.append("tie_word_embeddings is false but the file holds no lm head tensor")
        add("lm head", "lm head", f"{sizes_text}, tied to the embedding".strip(", "), embedding[:1])
    for module, keys in outside.items():
        add("k:" + module, module, str(list(shapes[keys[0]])), keys)

    said_name, said = config.sizes["layers"]
    summary = [f"{said} layers"] + [
        f"{what} {config.size(size)}"
        for what, size in (
            ("hidden", "hidden"),
            ("heads", "heads"),
            ("kv heads", "kv_heads"),
            ("intermediate", "intermediate"),
            ("vocab", "vocab"),
        )
        if config.size(size)
    ]
    notes.insert(0, f"{config.architecture}: " + ", ".join(summary))
    missing, missing_count = _missing(set(layers), said)
    extra = sorted(i for i in layers if i >= said)
    if missing_count or extra:
        text = f"{config.source} says {said} layers ({said_name}), the tensors hold {len(layers)}"
        text += f" (missing: {_numbers(missing, missing_count)})" if missing_count else ""
        text += f" (beyond: {_numbers(extra)})" if extra else ""
        notes.append(text)
    for part, indices in lacking.items():
        if indices:
            notes.append(f"no {PART_LABELS[part]} tensors in layers {_numbers(indices)}")
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
    for key, tensor, tensor_node in checkpoint.tensors():
        if categories.get(id(tensor_node)) != MODEL:
            continue
        group = _group_of(key)
        if group:
            block = order.get(group)
            if block is None:
                block = order[group] = GraphNode(group, safe_text(group), "block", "", [], group)
                graph.nodes.append(block)
            block.keys.append(key)
            continue
        stem = key.rsplit(".", 1)[0] if "." in key else key
        node = order.get("k:" + stem)
        if node is None:
            node = order["k:" + stem] = GraphNode("k:" + stem, safe_text(stem), "keys")
            graph.nodes.append(node)
        node.keys.append(key)
        node.detail = safe_text(f"{list(tensor.shape)} {tensor.dtype}")
    # safetensors and GGUF list keys by name (layers.10 before layers.2): each run's blocks
    # take the places its blocks held, in numeric order
    places: dict[str, list[int]] = {}
    for place, node in enumerate(graph.nodes):
        if node.kind == "block":
            places.setdefault(_run_of(node.group), []).append(place)
    for run in places.values():
        blocks = sorted((graph.nodes[p] for p in run), key=lambda n: _number(n.group))
        for place, block in zip(run, blocks):
            graph.nodes[place] = block
    graph.edges = [(a.id, b.id, "") for a, b in zip(graph.nodes, graph.nodes[1:])]
    for node in graph.nodes:
        if node.kind == "block":
            parts = dict.fromkeys(k[len(node.id) + 1 :].rsplit(".", 1)[0] for k in node.keys)
            node.detail = safe_text(", ".join(parts))[:MAX_DETAIL]
    return graph


# --- collapsing and layout --------------------------------------------------------------------


def _run_of(group: str) -> str:
    """`layers.3` -> `layers`: the repeated blocks a group belongs to."""
    return group.rpartition(".")[0] if "." in group else ""


def _number(group: str) -> int:
    """`layers.3` -> 3: a block's place in its run."""
    number = group.rpartition(".")[2]
    return int(number) if number.isdigit() and len(number) <= 9 else 10**9


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
    firsts = {run: min(groups, key=_number) for run, groups in runs.items()}
    out = Graph(graph.kind, graph.source, notes=list(graph.notes))
    where: dict[str, str] = {}
    made: dict[str, GraphNode] = {}
    counts: dict[str, int] = {}
    parts: dict[str, dict[str, None]] = {}  # a run's first block: its nodes' labels
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
        if node.group == firsts[run]:
            parts.setdefault(run_id, {})[node.label] = None
    for run_id, block in made.items():
        what = ", ".join(parts.get(run_id, {}))
        block.detail = safe_text(f"{counts[run_id]:,} nodes collapsed: {what}")[:MAX_DETAIL]
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
    return _placed(vertices, edges)


class _Layers(list):  # type: ignore[type-arg]
    """grandalf's list of layers, found by identity: each Layer looks itself up with index(),
    which compares it with every layer before it by a Python __eq__ (quadratic in layers)."""

    def index(self, layer: object, *bounds: Any) -> int:
        if len(getattr(self, "places", {})) != len(self):
            self.places = {id(item): i for i, item in enumerate(self)}
        return self.places[id(layer)]


def _components(vertices: dict[str, Any], edges: list[Any]) -> list[tuple[list[Any], list[Any]]]:
    """The connected components (vertices, edges), in the vertices' order: grandalf's own
    Graph finds them with list searches per edge, quadratic in a long chain."""
    parent = {id(v): v for v in vertices.values()}

    def root(v: Any) -> Any:
        while parent[id(v)] is not v:
            parent[id(v)] = parent[id(parent[id(v)])]
            v = parent[id(v)]
        return v

    for edge in edges:
        a, b = root(edge.v[0]), root(edge.v[1])
        if a is not b:
            parent[id(b)] = a
    found: dict[int, tuple[list[Any], list[Any]]] = {}
    for vertex in vertices.values():
        found.setdefault(id(root(vertex)), ([], []))[0].append(vertex)
    for edge in edges:
        found[id(root(edge.v[0]))][1].append(edge)
    return list(found.values())


def _feedback(vertices: list[Any], roots: list[Any]) -> set[int]:
    """The edges grandalf's get_scs_with_feedback marks as closing a cycle (to a vertex on the
    path of its depth-first search from the roots, then from each vertex left), found without
    its recursion per vertex and its search of the whole stack per edge."""
    seen: set[int] = set()
    path: set[int] = set()
    back: set[int] = set()
    for start in [*roots, *vertices]:
        if id(start) in seen:
            continue
        seen.add(id(start))
        path.add(id(start))
        stack = [(start, iter(start.e_out()))]
        while stack:
            vertex, out = stack[-1]
            for edge in out:
                target = edge.v[1]
                if id(target) not in seen:
                    seen.add(id(target))
                    path.add(id(target))
                    stack.append((target, iter(target.e_out())))
                    break
                if id(target) in path:
                    back.add(id(edge))
            else:
                stack.pop()
                path.discard(id(vertex))
    return back


def _placed(vertices: dict[str, Any], edges: list[Any]) -> dict[str, tuple[float, float]]:
    from grandalf.graphs import graph_core
    from grandalf.layouts import SugiyamaLayout
    from grandalf.utils import Poset

    placed: dict[str, tuple[float, float]] = {}
    offset = 0.0
    for members, links in _components(vertices, edges):
        # graph_core(members, links) as grandalf builds it, without its final check that
        # compares each vertex's component with the whole one as sets (quadratic)
        component = graph_core()
        component.sV = Poset(members)
        for edge in links:
            edge.attach()
            component.sE.add(edge)
        for vertex in members:
            vertex.c = component
        sugiyama = SugiyamaLayout(component)
        sugiyama.layers = _Layers()
        roots = [v for v in component.sV if not v.e_in()]
        back = _feedback(members, roots)
        sugiyama.init_all(roots, [e for e in component.sE if id(e) in back])
        sugiyama.draw()
        xs = [v.view.xy[0] - v.view.w / 2 for v in component.sV]
        shift = offset - min(xs)
        for vertex in component.sV:
            placed[vertex.data] = (vertex.view.xy[0] + shift, vertex.view.xy[1])
        offset = max(x + v.view.w / 2 for v, x in ((v, placed[v.data][0]) for v in component.sV))
        offset += 60.0
    return placed
