"""What only torch can read or compute: quantized (per channel, packed, torchao), sparse,
complex32 and DCP tensors materialised bit-exact as torch tensors, and torch tensors widened
to numpy. torch is imported only when one of these is called."""

from __future__ import annotations

import warnings

import numpy as np

from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.listing import remote
from ckpt_viewer.core.listing.model import PACKED_VALUES, TensorInfo
from ckpt_viewer.core.values.decode import as_little_endian
from ckpt_viewer.core.values.ggml import ggml_elements
from ckpt_viewer.core.values.storage import StorageReader
from ckpt_viewer.core.values.strided import rechunked


def torch_chunks(value, size: int):
    """A torch tensor (maybe an expanded view) widened to numpy in logical-order chunks:
    converted block by block, never whole."""

    def blocks(view):
        if view.dim() == 0 or view.numel() <= size:
            yield to_numpy(view).reshape(-1)
            return
        inner = view[0].numel() if view.shape[0] else 0
        if 0 < inner <= size:
            rows = max(1, size // inner)
            for start in range(0, view.shape[0], rows):
                yield to_numpy(view[start : start + rows]).reshape(-1)
            return
        for row in view:
            yield from blocks(row)

    if value.numel():
        yield from rechunked(blocks(value), size)


def to_numpy(value) -> np.ndarray:
    import torch

    if value.dtype == torch.float4_e2m1fn_x2:
        raise CheckpointError(
            "float4_e2m1fn_x2 packs two 4-bit floats in each element, which "
            "neither torch nor numpy computes with: no values to summarise"
        )
    if value.is_quantized:
        value = value.dequantize()
    if value.is_sparse or value.layout != torch.strided:
        value = value.to_dense()
    if (
        value.dtype in (torch.bfloat16, torch.complex32)
        or value.dtype.itemsize == 1
        and value.dtype.is_floating_point
    ):
        value = value.to(torch.complex64 if value.dtype.is_complex else torch.float32)
    return value.detach().cpu().numpy()


def read_tensor(tensor: TensorInfo):
    """The tensor as a CPU torch.Tensor, bit-exact (quantized and sparse rebuilt)."""
    import torch

    if tensor.layout == "dtensor":  # objects._dtensor: only a shard of it is in this file
        raise CheckpointError(
            f"this DTensor's values are spread over its ranks' files; "
            f"{tensor.attrs.get('held', 'this file holds one shard')}"
        )
    if tensor.chunks:
        return _read_dcp(tensor)
    if not tensor.numel and tensor.layout == "strided":
        return torch.empty(tensor.shape, dtype=getattr(torch, tensor.dtype))
    if tensor.layout == "ggml":
        return torch.from_numpy(
            ggml_elements(tensor, tensor.offset, tensor.numel).reshape(tensor.shape).copy()
        )
    if tensor.layout == "torchao":
        return _dequantize_affine(tensor)
    if tensor.parts:
        parts = {name: read_tensor(part) for name, part in tensor.parts.items()}
        if tensor.layout == "sparse_coo":
            # invariants checked: indices from a hostile file must not reach past the values
            return torch.sparse_coo_tensor(
                parts["indices"], parts["values"], tensor.shape, check_invariants=True
            )
        return torch.sparse_compressed_tensor(
            parts["compressed_indices"],
            parts["plain_indices"],
            parts["values"],
            tensor.shape,
            layout=getattr(torch, tensor.layout),
            check_invariants=True,
        )
    if tensor.storage is None:
        raise CheckpointError("this tensor has no stored data")
    dtype = getattr(torch, tensor.dtype)
    if not tensor.numel:
        return torch.empty(tensor.shape, dtype=dtype)
    reader = StorageReader(tensor.storage)
    raw = as_little_endian(reader.read(0, tensor.storage.nbytes, np.dtype("u1")), tensor.storage)
    if tensor.dtype in PACKED_VALUES:
        return _packed_quantized(raw, tensor, dtype)
    storage_dtype = {"qint8": torch.int8, "quint8": torch.uint8, "qint32": torch.int32}.get(
        tensor.dtype, dtype
    )
    whole = raw.size - raw.size % storage_dtype.itemsize  # a v3 dtype wider than the storage
    flat = (
        torch.frombuffer(bytearray(raw[:whole]), dtype=storage_dtype)
        if whole
        else torch.empty(0, dtype=storage_dtype)
    )
    value = (
        torch.as_strided(flat, tensor.shape, tensor.stride, tensor.offset)
        if tensor.numel
        else torch.empty(tensor.shape, dtype=storage_dtype)
    )
    if tensor.layout == "quantized":
        return _quantize(value, tensor, dtype)
    if tensor.conj and value.is_complex():
        value = value.conj().resolve_conj()
    return -value if tensor.neg else value


def _packed_quantized(raw: np.ndarray, tensor: TensorInfo, dtype):
    """quint4x2 / quint2x4 (several values per byte, no int_repr to build them from): the
    bytes set under an empty quantized tensor, as torch's _rebuild_qtensor does."""
    import torch

    q = tensor.quantizer
    if "scale" not in q:
        raise CheckpointError(
            f"a {tensor.dtype} tensor without a per-tensor scale "
            "(torch only quantizes those per tensor)"
        )
    storage = torch.UntypedStorage.from_buffer(bytearray(raw), dtype=torch.uint8)
    with warnings.catch_warnings():  # torch's deprecation notice about quantized tensors
        warnings.simplefilter("ignore")
        value = torch._empty_affine_quantized(
            [0], scale=q["scale"], zero_point=q["zero_point"], dtype=dtype
        )
    return value.set_(
        torch.storage.TypedStorage(wrap_storage=storage, dtype=dtype, _internal=True),
        tensor.offset,
        tensor.shape,
        tensor.stride,
    )


def _quantize(int_repr, tensor: TensorInfo, dtype):
    import torch

    q = tensor.quantizer
    if "scale" in q:
        return torch._make_per_tensor_quantized_tensor(int_repr, q["scale"], q["zero_point"])
    scales, zero_points = read_tensor(q["scales"]), read_tensor(q["zero_points"])
    return torch._make_per_channel_quantized_tensor(int_repr, scales, zero_points, q["axis"])


def _dequantize_affine(tensor: TensorInfo):
    """A torchao affine-quantized weight's values, computed as its dequantize() does:
    (qdata - zero_point) * scale in the logical dtype (float8 qdata: qdata * scale in float32),
    one scale per block of quantizer["block_size"]."""
    import torch

    parts = {name: read_tensor(part) for name, part in tensor.parts.items()}
    qdata, scale, zero_point = parts["qdata"], parts["scale"], parts.get("zero_point")
    blocks = tensor.quantizer["block_size"]
    split = [n for size, b in zip(tensor.shape, blocks) for n in (size // b, b)]
    per_block = [n for size, b in zip(tensor.shape, blocks) for n in (size // b, 1)]
    out = getattr(torch, tensor.dtype)
    qdata, scale = qdata.reshape(split), scale.reshape(per_block)
    if qdata.dtype.is_floating_point:
        value = qdata.to(torch.float32) * scale
    else:
        value = qdata.to(out)
        if zero_point is not None:
            value = value - zero_point.reshape(per_block).to(out)
        value = value * scale
    return value.reshape(tensor.shape).to(out)


def _read_dcp(tensor: TensorInfo):
    """Assemble a DCP tensor from its chunks: small torch.save archives, or raw safetensors
    tensors (Hugging Face storage)."""
    import io

    import torch

    from ckpt_viewer.core.listing.readers.dcp import RawChunk, stored_chunk

    for offsets, sizes, span in tensor.chunks:  # before the tensor is allocated
        stored_chunk(tensor, offsets, sizes, span)
    out = torch.empty(tensor.shape, dtype=getattr(torch, tensor.dtype))
    for offsets, sizes, span in tensor.chunks:
        if isinstance(span, RawChunk):  # a safetensors tensor (HF storage)
            chunk = read_tensor(span.tensor)
        else:
            with remote.open_source(span.path) as f:
                f.seek(span.offset)
                data = f.read(span.nbytes)
            try:
                chunk = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
            except Exception as exc:  # noqa: BLE001 - a damaged chunk is a read error
                raise CheckpointError(f"DCP chunk of {span.path} cannot be read ({exc})") from None
        region = out
        for dim, (start, size) in enumerate(zip(offsets, sizes)):
            region = region.narrow(dim, start, size)
        if tuple(chunk.shape) != tuple(sizes):
            raise CheckpointError("DCP chunk shape differs from its metadata")
        region.copy_(chunk)
    return out
