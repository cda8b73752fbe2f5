"""PyTorch / Hugging Face tensor names -> the names llama.cpp's converter gives them in a GGUF
file (`model.layers.0.self_attn.q_proj.weight` -> `blk.0.attn_q.weight`), through the gguf
package's own tensor name map for the file's architecture."""

from __future__ import annotations

import copy

from ckpt_viewer.core.listing.model import Checkpoint, TensorInfo


def gguf_names(gguf_checkpoint: Checkpoint, keys) -> dict:
    """{key: GGUF name} for the keys the map knows; empty when the file names no architecture
    the gguf package knows (or the package is missing)."""
    try:
        import gguf
    except ImportError:
        return {}
    metadata = gguf_checkpoint.metadata
    arch_name = metadata.get("general.architecture")
    archs = {name: arch for arch, name in gguf.MODEL_ARCH_NAMES.items()}
    if arch_name not in archs:
        return {}
    blocks = metadata.get(f"{arch_name}.block_count")
    blocks = blocks if type(blocks) is int and 0 <= blocks <= 100_000 else 0
    name_map = gguf.get_tensor_name_map(archs[arch_name], blocks)
    out = {}
    for key in keys:
        name = name_map.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is not None:
            out[key] = name
    return out


def rotary_heads(gguf_checkpoint: Checkpoint, gguf_name: str) -> int:
    """llama.cpp's converter reorders the rows of a llama model's q and k projections (each
    head's two rotary halves interleaved: rows reshaped to (heads, 2, half) and the last two
    swapped). The head count to undo that with for this tensor, or 0 where it does not apply."""
    metadata = gguf_checkpoint.metadata
    if metadata.get("general.architecture") != "llama":
        return 0
    heads = metadata.get("llama.attention.head_count")
    if gguf_name.endswith(".attn_k.weight"):
        heads = metadata.get("llama.attention.head_count_kv", heads)
    elif not gguf_name.endswith(".attn_q.weight"):
        return 0
    return heads if type(heads) is int and heads > 0 else 0


def in_gguf_row_order(tensor: TensorInfo, heads: int) -> TensorInfo | None:
    """A view of a 2-D PyTorch q/k weight whose logical order is the GGUF file's row order,
    as 4-D (heads, half, 2, columns) strides over the same storage; None if it does not fit."""
    if (
        len(tensor.shape) != 2
        or tensor.storage is None
        or tensor.chunks
        or tensor.shape[0] % (2 * heads)
    ):
        return None
    half = tensor.shape[0] // heads // 2
    row, column = tensor.stride
    view = copy.copy(tensor)
    view.shape = (heads, half, 2, tensor.shape[1])
    view.stride = (2 * half * row, row, half * row, column)
    return view


def as_4d(tensor: TensorInfo, shape: tuple) -> TensorInfo:
    """The GGUF tensor (contiguous) seen with the same 4-D shape, for an element-wise compare."""
    view = copy.copy(tensor)
    view.shape = shape
    stride: list[int] = []
    step = 1
    for dim in reversed(shape):
        stride.insert(0, step)
        step *= dim
    view.stride = tuple(stride)
    return view
