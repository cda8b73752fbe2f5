"""GGUF quantized values, dequantized by the gguf package block by block."""

from __future__ import annotations

import numpy as np

from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.listing.model import TensorInfo
from ckpt_viewer.core.values.storage import StorageReader


def ggml_elements(tensor: TensorInfo, first: int, count: int) -> np.ndarray:
    """Elements [first, first+count) of a GGUF quantized tensor (flat, in file order) as
    float32, dequantized by the gguf package; only the blocks holding them are read."""
    try:
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize
    except ImportError:
        raise CheckpointError(
            "reading GGUF quantized values needs the gguf package (pip install gguf)"
        ) from None
    block, type_size = tensor.quantizer["block"], tensor.quantizer["type_size"]
    if count <= 0:
        return np.zeros(0, np.float32)
    first_block, end_block = first // block, -(-(first + count) // block)
    raw = StorageReader(tensor.storage).mapped(
        first_block * type_size, (end_block - first_block) * type_size
    )
    try:
        values = dequantize(raw, GGMLQuantizationType[tensor.quantizer["ggml_type"]])
    except NotImplementedError:
        raise CheckpointError(
            f"the gguf package cannot dequantize {tensor.quantizer['ggml_type']} values"
        ) from None
    skip = first - first_block * block
    return values.reshape(-1)[skip : skip + count]


def ggml_window(tensor, leading, shape, stride, rows, cols) -> np.ndarray:
    base = tensor.offset + sum(i * s for i, s in zip(leading, stride[:-2]))
    out = np.zeros((len(rows), len(cols)), np.float32)
    if not len(cols):
        return out
    step = cols.step * stride[-1]
    for index, r in enumerate(rows):
        first = base + r * stride[-2] + cols.start * stride[-1]
        out[index] = ggml_elements(tensor, first, (len(cols) - 1) * step + 1)[::step]
    return out
