"""PyTorch / Hugging Face tensor names -> the names llama.cpp's converter gives them in a GGUF
file (`model.layers.0.self_attn.q_proj.weight` -> `blk.0.attn_q.weight`), through the gguf
package's own tensor name map for the file's architecture."""

from __future__ import annotations

from ckpt_viewer.core.model import Checkpoint


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
