"""Porting Keras and Flax weights to PyTorch: each variable mapped to the state_dict key of the
matching torch module, by rules per layer class (a rename, a transpose, a gate reorder, merged
projections), so export writes a state_dict `load_state_dict` takes and diff / Compare pair
variables with torch keys and compare values after the transform.

Naming: the torch module is named after the layer (Keras: the layer's name, its class from the
config, or without one (`.weights.h5`) from a name Keras gives by default, `conv2d_3`; Flax:
the module path without `params`, `Dense_0`), and its parameters as torch names them
(`conv2d_3.weight`). A Flax module's class comes from its default name (`Dense_0`) or its
variables (`embedding`; `scale`, `bias`; a 2-D `kernel`). A variable no rule takes is
listed with the reason, never guessed.

A transposed or permuted tensor is a view of the source's bytes (read chunk by chunk); one
assembled from several pieces (gate reorders, merged projections) or added (zeros) is built
when read, one tensor at a time."""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.listing.model import (
    DTYPE_SIZES,
    Checkpoint,
    DecodedBytes,
    Storage,
    TensorInfo,
    contiguous_strides,
)
from ckpt_viewer.core.listing.readers.keras_h5 import config_layers
from ckpt_viewer.core.listing.readers.safetensors import flat_tree
from ckpt_viewer.core.listing.text import safe_text
from ckpt_viewer.core.values.strided import strided_array

KERAS_FORMATS = frozenset({"hdf5", "keras", "keras-sharded"})
FLAX_FORMATS = frozenset({"flax-msgpack"})


@dataclass(frozen=True)
class Ported:
    key: str  # the torch state_dict key
    tensor: TensorInfo  # its values in torch's layout
    rule: str  # the rule that made it, as listed
    sources: tuple[str, ...]  # the source variables; none for an added tensor


@dataclass
class PortingMap:
    framework: str  # Keras | Flax
    ported: list[Ported] = field(default_factory=list)
    unmatched: dict[str, str] = field(default_factory=dict)  # source key -> why no rule took it

    @property
    def rules(self) -> dict[str, str]:
        return {p.key: p.rule for p in self.ported}

    def checkpoint(self, source: Checkpoint) -> Checkpoint:
        """The ported state_dict as a checkpoint of the source's file (so a write still never
        touches it), for export, diff and Compare."""
        return Checkpoint(
            path=source.path,
            format=source.format,
            file_bytes=source.file_bytes,
            root=flat_tree({p.key: p.tensor for p in self.ported}),
            warnings=list(source.warnings),
            metadata=dict(source.metadata),
        )

    def lines(self) -> list[str]:
        """'dense.kernel -> dense.weight  (Dense: kernel.T)', then each unmatched variable."""
        out = [f"{', '.join(p.sources) or '(added)'} -> {p.key}  ({p.rule})" for p in self.ported]
        out += [f"unmatched: {safe_text(k)} ({why})" for k, why in self.unmatched.items()]
        return out


def portable(checkpoint: Checkpoint) -> bool:
    return checkpoint.format in KERAS_FORMATS | FLAX_FORMATS


def port(checkpoint: Checkpoint) -> PortingMap:
    """The porting map of a Keras or Flax checkpoint; refuses any other file."""
    if checkpoint.format in FLAX_FORMATS:
        return _port_flax(checkpoint)
    if checkpoint.format in KERAS_FORMATS:
        return _port_keras(checkpoint)
    raise CheckpointError(
        f"porting to PyTorch reads Keras or Flax weights, not a {checkpoint.format} file"
    )


def ported_if_portable(checkpoint: Checkpoint) -> tuple[Checkpoint, PortingMap | None]:
    """(the ported checkpoint, its map) for Keras / Flax weights a rule matches; else
    (the checkpoint as it is, None)."""
    if not portable(checkpoint):
        return checkpoint, None
    mapping = port(checkpoint)
    if not mapping.ported:
        return checkpoint, None
    return mapping.checkpoint(checkpoint), mapping


# --- tensors in torch's layout --------------------------------------------------------------


def _plain(t: TensorInfo) -> bool:
    """A tensor whose stored elements a view can address (no chunks, bits or parts)."""
    return (
        t.layout == "strided"
        and t.storage is not None
        and not t.chunks
        and not t.parts
        and not (t.neg or t.conj)
    )


def _view(t: TensorInfo, perm: Sequence[int], shape: Sequence[int] | None = None) -> TensorInfo:
    """`t` (reshaped to `shape` first: contiguous then) with its dims permuted: same bytes."""
    stride: tuple[int, ...] = tuple(t.stride)
    dims: tuple[int, ...] = tuple(t.shape)
    if shape is not None:
        if not t.is_contiguous:
            raise Unmatched("a view whose elements cannot be reshaped")
        dims, stride = tuple(shape), contiguous_strides(tuple(shape))
    return replace(
        t, shape=tuple(dims[p] for p in perm), stride=tuple(stride[p] for p in perm), attrs={}
    )


def _transposed(t: TensorInfo) -> TensorInfo:
    return _view(t, (1, 0))


def _rows(t: TensorInfo, start: int, count: int) -> TensorInfo:
    return replace(t, shape=(count, *t.shape[1:]), offset=t.offset + start * t.stride[0])


def _built(key: str, dtype: str, shape: tuple[int, ...], make: Callable[[], bytes]) -> TensorInfo:
    numel = math.prod(shape)
    storage = Storage(key, dtype, numel, "cpu", DecodedBytes(numel * DTYPE_SIZES[dtype], make))
    return TensorInfo(dtype=dtype, shape=shape, stride=contiguous_strides(shape), storage=storage)


def _zeros(key: str, dtype: str, shape: tuple[int, ...]) -> TensorInfo:
    """Zero bits: 0 in every integer and floating dtype."""
    numel = math.prod(shape)
    return _built(key, dtype, shape, lambda: bytes(numel * DTYPE_SIZES[dtype]))


def _stacked(key: str, pieces: Sequence[TensorInfo]) -> TensorInfo:
    """The pieces (views of one dtype and byte order, equal but for dim 0) one after another
    along dim 0, built from their stored elements when read."""
    first = pieces[0]
    assert first.storage is not None
    unit = np.dtype(f"V{DTYPE_SIZES[first.dtype]}")

    def make() -> bytes:
        return b"".join(strided_array(p, unit).tobytes() for p in pieces)

    shape = (sum(p.shape[0] for p in pieces), *first.shape[1:])
    built = _built(key, first.dtype, shape, make)
    assert built.storage is not None
    built.storage.byteorder = first.storage.byteorder
    return built


def _reordered(key: str, t: TensorInfo, order: Sequence[int]) -> TensorInfo:
    """`t`'s dim 0 cut in len(order) equal blocks, taken in `order`."""
    size = t.shape[0] // len(order)
    return _stacked(key, [_rows(t, i * size, size) for i in order])


# --- Keras ----------------------------------------------------------------------------------

KERAS_CLASSES = (
    "Dense",
    "Conv1D",
    "Conv2D",
    "Conv3D",
    "DepthwiseConv2D",
    "BatchNormalization",
    "LayerNormalization",
    "Embedding",
    "LSTM",
    "GRU",
    "MultiHeadAttention",
)
# Keras names a layer after its class unless told otherwise: conv2d, conv2d_1, batch_normalization
DEFAULT_NAMES = {re.sub(r"(?<!^)(?=[A-Z][a-z])", "_", c).lower(): c for c in KERAS_CLASSES}

Variables = dict[str, tuple[str, TensorInfo]]  # variable name -> (source key, tensor)


class Unmatched(Exception):
    """Why a layer's variables have no rule (they are listed with it)."""


def _keras_config(checkpoint: Checkpoint) -> dict | None:
    for name in ("config", "model_config"):
        text = checkpoint.metadata.get(name)
        if isinstance(text, str):
            try:
                return config_layers(json.loads(text))[0]
            except (ValueError, RecursionError):
                return None
    return None


def _keras_layer(parts: list[str], layers: dict | None) -> tuple[int, str, dict] | None:
    """(index of the innermost part naming a layer, its class, its config) for a key's parts:
    the layer's name looked up in the config, or without a config a name Keras gives a layer
    of a class ported (`conv2d_3`)."""
    for index in range(len(parts) - 2, -1, -1):
        if layers is not None:
            if parts[index] in layers:
                cls, cfg = layers[parts[index]]
                return index, cls, cfg
            continue
        cls = DEFAULT_NAMES.get(re.sub(r"_\d+$", "", parts[index]))
        if cls is not None:
            return index, cls, {}
    return None


def _variable_order(cls: str, cfg: dict) -> list[str]:
    """The layer's variables in creation order (the order of `vars/0`, `vars/1`...)."""
    bias = ["bias"] * (cfg.get("use_bias", True) is not False)
    if cls in ("LSTM", "GRU"):
        return ["kernel", "recurrent_kernel", *bias]
    if cls == "Embedding":
        return ["embeddings"]
    if cls not in ("BatchNormalization", "LayerNormalization"):
        return ["kernel", *bias]
    affine = [("gamma", cfg.get("scale", True)), ("beta", cfg.get("center", True))]
    order = [name for name, on in affine if on is not False]
    return order + ["moving_mean", "moving_variance"] * (cls == "BatchNormalization")


def _named_variables(cls: str, cfg: dict, found: dict[str, tuple[str, TensorInfo]]) -> Variables:
    """Variables by name: a `vars/<i>` index named from the class's order when the count fits
    (with or without a last bias), an RNN's cell dropped (`lstm_cell.kernel` -> `kernel`)."""
    groups: dict[str, dict[str, tuple[str, TensorInfo]]] = {}
    for name, value in found.items():
        owner, _, leaf = name.rpartition(".")
        groups.setdefault(owner, {})[leaf] = value
    named: Variables = {}
    for owner, leaves in groups.items():
        order = _variable_order(cls, cfg)
        if order[-1:] == ["bias"] and len(leaves) == len(order) - 1:
            order = order[:-1]  # the bias is the one optional variable, and it is last
        by_index = all(leaf.isdigit() for leaf in leaves) and len(leaves) == len(order)
        if cls in ("LSTM", "GRU") and owner.endswith("cell") and "." not in owner:
            owner = ""
        for leaf, value in leaves.items():
            leaf = order[int(leaf)] if by_index else leaf
            named[f"{owner}.{leaf}" if owner else leaf] = value
    return named


def _take(variables: Variables, name: str, ndim: int | None = None) -> tuple[str, TensorInfo]:
    if name not in variables:
        raise Unmatched(f"no {name} variable")
    key, t = variables.pop(name)
    if ndim is not None and len(t.shape) != ndim:
        raise Unmatched(f"{name} has shape {tuple(t.shape)}, not {ndim}-D")
    return key, t


def _dense(module: str, cls: str, variables: Variables) -> list[Ported]:
    key, kernel = _take(variables, "kernel", 2)
    out = [Ported(f"{module}.weight", _transposed(kernel), f"{cls}: kernel.T", (key,))]
    return out + _same(module, cls, variables, {"bias": "bias"})


def _same(module: str, cls: str, variables: Variables, names: dict[str, str]) -> list[Ported]:
    """Variables taken as they are, renamed (`gamma` -> `weight`)."""
    out = []
    for name, torch_name in names.items():
        if name in variables:
            key, t = variables.pop(name)
            rule = f"{cls}: {name}" + (f" as {torch_name}" if name != torch_name else "")
            out.append(Ported(f"{module}.{torch_name}", t, rule, (key,)))
    return out


def _conv(module: str, cls: str, variables: Variables, spatial: int) -> list[Ported]:
    key, kernel = _take(variables, "kernel", spatial + 2)
    perm = (spatial + 1, spatial, *range(spatial))
    rule = f"{cls}: kernel (k..,in,out) -> (out,in,k..)"
    out = [Ported(f"{module}.weight", _view(kernel, perm), rule, (key,))]
    return out + _same(module, cls, variables, {"bias": "bias"})


def _depthwise(module: str, cls: str, variables: Variables) -> list[Ported]:
    key, kernel = _take(variables, "kernel", 4)
    kh, kw, channels, mult = kernel.shape
    s = kernel.stride
    if s[2] != mult * s[3]:
        raise Unmatched("kernel is a view whose channels cannot be merged")
    view = replace(kernel, shape=(channels * mult, 1, kh, kw), stride=(s[3], 1, s[0], s[1]))
    rule = f"{cls}: kernel (kh,kw,in,m) -> (in*m,1,kh,kw)"
    return [Ported(f"{module}.weight", view, rule, (key,))] + _same(
        module, cls, variables, {"bias": "bias"}
    )


def _batch_norm(module: str, cls: str, variables: Variables) -> list[Ported]:
    names = {
        "gamma": "weight",
        "beta": "bias",
        "moving_mean": "running_mean",
        "moving_variance": "running_var",
    }
    out = _same(module, cls, variables, names)
    if not any(p.key.endswith(".running_mean") for p in out):
        raise Unmatched("no moving_mean variable")
    # torch's BatchNorm has a step counter strict loading asks for
    key = f"{module}.num_batches_tracked"
    out.append(Ported(key, _zeros(key, "int64", ()), f"{cls}: num_batches_tracked = 0 (added)", ()))
    return out


def _check_gates(
    cls: str,
    gates: int,
    kernel: TensorInfo,
    recurrent: TensorInfo,
    bias: tuple[str, TensorInfo] | None,
    bias_shape: tuple[int, ...],
) -> None:
    """kernel (in, gates*units), recurrent_kernel (units, gates*units), bias as given."""
    width = gates * recurrent.shape[0]
    if kernel.shape[1] != width or recurrent.shape[1] != width:
        raise Unmatched(
            f"{cls} kernels {tuple(kernel.shape)}, {tuple(recurrent.shape)} are not "
            f"(in, {gates} x units), (units, {gates} x units)"
        )
    if bias is not None and tuple(bias[1].shape) != bias_shape:
        raise Unmatched(f"{cls} bias {tuple(bias[1].shape)} is not {bias_shape}")


def _lstm(module: str, cls: str, variables: Variables) -> list[Ported]:
    """Keras's gates i, f, c, o are torch's i, f, g, o: rows as they are."""
    key, kernel = _take(variables, "kernel", 2)
    recurrent_key, recurrent = _take(variables, "recurrent_kernel", 2)
    _check_gates(cls, 4, kernel, recurrent, variables.get("bias"), (4 * recurrent.shape[0],))
    out = [
        Ported(f"{module}.weight_ih_l0", _transposed(kernel), f"{cls}: kernel.T", (key,)),
        Ported(
            f"{module}.weight_hh_l0",
            _transposed(recurrent),
            f"{cls}: recurrent_kernel.T",
            (recurrent_key,),
        ),
    ]
    if "bias" in variables:
        bias_key, bias = _take(variables, "bias", 1)
        out.append(Ported(f"{module}.bias_ih_l0", bias, f"{cls}: bias", (bias_key,)))
        zero_key = f"{module}.bias_hh_l0"
        zeros = _zeros(zero_key, bias.dtype, tuple(bias.shape))
        out.append(Ported(zero_key, zeros, f"{cls}: bias_hh = 0 (added)", ()))
    return out


GRU_ORDER = (1, 0, 2)  # Keras's gates z, r, h as torch's r, z, n


def _gru(module: str, cls: str, cfg: dict, variables: Variables) -> list[Ported]:
    """reset_after (Keras 3's default) is torch's GRU: the reset gate applied after the
    recurrent product, with its own recurrent bias (the bias's second row)."""
    key, kernel = _take(variables, "kernel", 2)
    recurrent_key, recurrent = _take(variables, "recurrent_kernel", 2)
    bias = variables.pop("bias", None)
    if (bias is not None and len(bias[1].shape) != 2) or not cfg.get("reset_after", True):
        raise Unmatched("a GRU with reset_after=False has no torch equivalent")
    if bias is None and not cfg:
        raise Unmatched("a GRU without bias and without a config: reset_after is unknown")
    _check_gates(cls, 3, kernel, recurrent, bias, (2, 3 * recurrent.shape[0]))
    gates = "gates z,r,h -> r,z,n"
    out = [
        Ported(
            f"{module}.weight_ih_l0",
            _reordered(f"{module}.weight_ih_l0", _transposed(kernel), GRU_ORDER),
            f"{cls}: kernel.T, {gates}",
            (key,),
        ),
        Ported(
            f"{module}.weight_hh_l0",
            _reordered(f"{module}.weight_hh_l0", _transposed(recurrent), GRU_ORDER),
            f"{cls}: recurrent_kernel.T, {gates}",
            (recurrent_key,),
        ),
    ]
    if bias is not None:
        bias_key, both = bias
        for row, name in enumerate(("bias_ih_l0", "bias_hh_l0")):
            one = replace(_rows(both, row, 1), shape=(both.shape[1],), stride=(both.stride[1],))
            key = f"{module}.{name}"
            rule = f"{cls}: bias[{row}], {gates}"
            out.append(Ported(key, _reordered(key, one, GRU_ORDER), rule, (bias_key,)))
    return out


def _attention(module: str, cls: str, variables: Variables) -> list[Ported]:
    """query/key/value kernels (dim, heads, head_dim) -> nn.MultiheadAttention's projections
    (one in_proj_weight when key and value have the query's width), attention_output (heads,
    head_dim, dim) -> out_proj. torch needs heads x head_dim == the query's width == the
    output's width, and the value's head_dim == the key's."""
    kernels = {p: _take(variables, f"{p}.kernel", 3) for p in ("query", "key", "value")}
    out_key, out_kernel = _take(variables, "attention_output.kernel", 3)
    shapes = [tuple(t.shape) for _, t in kernels.values()]
    heads, head_dim = shapes[0][1:]
    width = heads * head_dim
    if any(s[1:] != (heads, head_dim) for s in shapes) or shapes[0][0] != width:
        raise Unmatched(
            f"query/key/value kernels {', '.join(map(str, shapes))}: nn.MultiheadAttention "
            "needs the same heads x head_dim, equal to the query's width"
        )
    if tuple(out_kernel.shape) != (heads, head_dim, width):
        raise Unmatched(f"attention_output kernel {tuple(out_kernel.shape)} is not (h,hd,d)")
    views = {p: _view(t, (1, 0), (t.shape[0], width)) for p, (_, t) in kernels.items()}
    sources = tuple(k for k, _ in kernels.values())
    out = []
    if shapes[1][0] == shapes[2][0] == width:
        key = f"{module}.in_proj_weight"
        rule = f"{cls}: query/key/value kernels (d,h,hd) -> in_proj_weight"
        out.append(Ported(key, _stacked(key, list(views.values())), rule, sources))
    else:  # key / value of another width: torch keeps the three apart
        for (part, view), source in zip(views.items(), sources):
            rule = f"{cls}: {part} kernel (d,h,hd) -> {part[0]}_proj_weight"
            out.append(Ported(f"{module}.{part[0]}_proj_weight", view, rule, (source,)))
    names = [f"{p}.bias" for p in ("query", "key", "value")]
    if all(n in variables for n in names):
        biases = [_take(variables, n, 2) for n in names]
        key = f"{module}.in_proj_bias"
        flat = [_view(t, (0,), (width,)) for _, t in biases]
        rule = f"{cls}: query/key/value biases (h,hd) -> in_proj_bias"
        out.append(Ported(key, _stacked(key, flat), rule, tuple(k for k, _ in biases)))
    elif any(n in variables for n in names):
        raise Unmatched("only some of query/key/value have a bias")
    view = _view(out_kernel, (1, 0), (width, width))
    rule = f"{cls}: attention_output kernel (h,hd,d) -> out_proj.weight"
    out.append(Ported(f"{module}.out_proj.weight", view, rule, (out_key,)))
    return out + _same(module, cls, variables, {"attention_output.bias": "out_proj.bias"})


def _keras_rules(module: str, cls: str, cfg: dict, variables: Variables) -> list[Ported]:
    if cls == "Dense":
        return _dense(module, cls, variables)
    if cls in ("Conv1D", "Conv2D", "Conv3D"):
        return _conv(module, cls, variables, int(cls[4]))
    if cls == "DepthwiseConv2D":
        return _depthwise(module, cls, variables)
    if cls == "BatchNormalization":
        return _batch_norm(module, cls, variables)
    if cls == "LayerNormalization":
        return _same(module, cls, variables, {"gamma": "weight", "beta": "bias"})
    if cls == "Embedding":
        key, table = _take(variables, "embeddings", 2)
        return [Ported(f"{module}.weight", table, f"{cls}: embeddings as weight", (key,))]
    if cls == "LSTM":
        return _lstm(module, cls, variables)
    if cls == "GRU":
        return _gru(module, cls, cfg, variables)
    if cls == "MultiHeadAttention":
        return _attention(module, cls, variables)
    raise Unmatched(f"no porting rule for a {safe_text(cls)} layer")


def _port_keras(checkpoint: Checkpoint) -> PortingMap:
    layers = _keras_config(checkpoint)
    modules: dict[str, tuple[str, dict, dict[str, tuple[str, TensorInfo]]]] = {}
    mapping = PortingMap("Keras")
    for key, tensor, _ in checkpoint.tensors():
        parts = key.split(".")
        layer = _keras_layer(parts, layers)
        if layer is None:
            mapping.unmatched[key] = (
                "no layer of the config holds it"
                if layers is not None
                else "no config, and not under a layer named as Keras names a class ported"
            )
            continue
        index, cls, cfg = layer
        module = ".".join(parts[: index + 1])
        modules.setdefault(module, (cls, cfg, {}))[2][".".join(parts[index + 1 :])] = (key, tensor)
    for module, (cls, cfg, found) in modules.items():
        _add(mapping, found, functools.partial(_keras_rules, module, cls, cfg), cls, cfg)
    return mapping


def _add(
    mapping: PortingMap,
    found: dict[str, tuple[str, TensorInfo]],
    rules: Callable[[Variables], list[Ported]],
    cls: str = "",
    cfg: dict | None = None,
) -> None:
    """One layer's ported tensors into the map, or each of its variables as unmatched."""
    variables = _named_variables(cls, cfg or {}, found) if cls else dict(found)
    taken = set(p.key for p in mapping.ported)
    try:
        if not all(_plain(t) for _, t in variables.values()):
            raise Unmatched("not a plain stored tensor")
        ported = rules(variables)
        if taken & {p.key for p in ported}:
            raise Unmatched("another layer is ported to the same torch keys")
    except Unmatched as why:
        for key, _ in found.values():
            mapping.unmatched[key] = str(why)
        return
    mapping.ported += ported
    for key, _ in variables.values():  # left over: no rule of the layer takes them
        mapping.unmatched[key] = f"not a variable of a {safe_text(cls or 'Flax')} layer's rule"


# --- Flax linen -----------------------------------------------------------------------------

FLAX_CLASSES = ("Dense", "Conv", "LayerNorm", "Embed")


def _flax_class(name: str, variables: Variables) -> str | None:
    """A linen module's class: from its default name (`Dense_0`), else from its variables
    (a 2-D kernel is a Dense; a kernel of more dims could be a Conv or a DenseGeneral)."""
    default = re.fullmatch(r"([A-Za-z]+)_\d+", name)
    if default and default[1] in FLAX_CLASSES:
        return default[1]
    names = set(variables)
    if names == {"embedding"}:
        return "Embed"
    if (
        names
        and names <= {"scale", "bias"}
        and all(len(t.shape) == 1 for _, t in variables.values())
    ):
        return "LayerNorm"
    if "kernel" in names and names <= {"kernel", "bias"} and len(variables["kernel"][1].shape) == 2:
        return "Dense"
    return None


def _flax_rules(module: str, cls: str, variables: Variables) -> list[Ported]:
    if cls == "Dense":
        return _dense(module, "Flax Dense", variables)
    if cls == "Conv":
        kernel = variables.get("kernel")
        if kernel is None or len(kernel[1].shape) < 3:
            raise Unmatched("a Conv without a kernel of 3 or more dims")
        return _conv(module, "Flax Conv", variables, len(kernel[1].shape) - 2)
    if cls == "LayerNorm":
        return _same(module, "Flax LayerNorm", variables, {"scale": "weight", "bias": "bias"})
    key, table = _take(variables, "embedding", 2)
    return [Ported(f"{module}.weight", table, "Flax Embed: embedding as weight", (key,))]


def _port_flax(checkpoint: Checkpoint) -> PortingMap:
    """Variables (`init`'s whole tree) under `params`; or, with no `params` at the top, a tree
    of params alone (as `to_bytes(variables["params"])` and Hugging Face write them)."""
    modules: dict[str, dict[str, tuple[str, TensorInfo]]] = {}
    mapping = PortingMap("Flax")
    tensors = checkpoint.tensors()
    collections = any(key.startswith("params.") for key, _, _ in tensors)
    for key, tensor, _ in tensors:
        collection, _, rest = key.partition(".") if collections else ("params", "", key)
        module, _, leaf = rest.rpartition(".")
        if collection != "params" or not module:
            mapping.unmatched[key] = "not a module's variable in the params collection"
            continue
        modules.setdefault(module, {})[leaf] = (key, tensor)
    for module, found in modules.items():
        cls = _flax_class(module.rpartition(".")[2], found)
        if cls is None:
            for key, _ in found.values():
                mapping.unmatched[key] = "not a Dense, Conv, LayerNorm or Embed module"
            continue
        _add(mapping, found, functools.partial(_flax_rules, module, cls))
    return mapping
