"""torch as the oracle: what torch.load(weights_only=True) returns, flattened to the keys we
list, compared tensor by tensor, bit for bit, with what ckpt-viewer lists and reads."""

from __future__ import annotations

import io
import warnings
from collections import OrderedDict

import torch

from ckpt_viewer.core import Ambiguous, CheckpointError
from ckpt_viewer.core.listing.open import open_checkpoint
from ckpt_viewer.core.values.torch_bridge import read_tensor


def torch_load(data_or_path):
    """(object, None) when torch loads it with weights_only=True, else (None, error text)."""
    source = io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else data_or_path
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(source, weights_only=True, map_location="cpu"), None
    except Exception as exc:  # noqa: BLE001 - any refusal is an answer here
        lines = [line for line in str(exc).splitlines() if line.strip()]
        # weights_only wraps its reason in a long explanation: keep the reason
        reason = next(
            (lines[i + 1] for i, line in enumerate(lines[:-1]) if "WeightsUnpickler error" in line),
            lines[0] if lines else "",
        )
        return None, f"{type(exc).__name__}: {reason}"


def flat_tensors(obj, prefix="") -> dict:
    """key -> tensor for every tensor in plain containers, keyed by dict keys and list indices."""
    found = {}
    stack = [(prefix, obj, frozenset())]
    while stack:
        key, value, ancestors = stack.pop()
        if isinstance(value, torch.Tensor):
            found[key] = value
            continue
        if id(value) in ancestors:  # a cycle; a container shared elsewhere is shown again
            continue
        ancestors = ancestors | {id(value)}
        if isinstance(value, (dict, OrderedDict)):
            items = [(str(k), v) for k, v in value.items()]
        elif isinstance(value, (list, tuple)):
            items = [(str(i), v) for i, v in enumerate(value)]
        else:
            continue
        for name, child in items:
            stack.append((f"{key}.{name}" if key else name, child, ancestors))
    return found


def bits(tensor: torch.Tensor) -> bytes:
    if not tensor.numel():
        return b""
    tensor = tensor.detach().resolve_conj()
    if tensor.dtype != torch.bool:  # -x of bools does not exist; torch keeps them as stored
        tensor = tensor.resolve_neg()
    elif tensor.is_neg():
        tensor = tensor._neg_view()  # the neg bit off again: the bits as stored
    if tensor.is_quantized:
        tensor = tensor.int_repr()
    if tensor.layout != torch.strided:
        tensor = tensor.to_dense()
    flat = torch.empty(tensor.shape, dtype=tensor.dtype).copy_(tensor).reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def compare(path, reference) -> list[str]:
    """Differences between our listing/values of `path` and torch's loaded `reference`."""
    checkpoint = open_checkpoint(path)
    ours = {key: tensor for key, tensor, _ in checkpoint.tensors()}
    theirs = flat_tensors(reference)
    problems = []
    if set(ours) != set(theirs):
        problems.append(
            f"keys differ: only ours {sorted(set(ours) - set(theirs))[:5]}, "
            f"only torch {sorted(set(theirs) - set(ours))[:5]}"
        )
    for key in sorted(set(ours) & set(theirs)):
        a, b = ours[key], theirs[key]
        if a.dtype != str(b.dtype).replace("torch.", "") or tuple(a.shape) != tuple(b.shape):
            problems.append(f"{key}: {a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}")
            continue
        if a.layout == "strided" and a.requires_grad != b.requires_grad:
            problems.append(f"{key}: requires_grad {a.requires_grad} vs {b.requires_grad}")
        if a.is_parameter != isinstance(b, torch.nn.Parameter):
            problems.append(f"{key}: Parameter {a.is_parameter} vs {type(b).__name__}")
        if bits(read_tensor(a)) != bits(b):
            problems.append(f"{key}: values differ")
    return problems


def differential(path) -> str:
    """One verdict line; the invariant holds unless it starts with 'MISMATCH'.
    torch loads it -> we open it with the same tensors, or refuse it as ambiguous;
    torch refuses it -> we refuse it too, or open it saying why torch would not load it."""
    reference, torch_error = torch_load(path)
    try:
        checkpoint = open_checkpoint(path)
    except Ambiguous as exc:
        return f"ambiguous (torch: {'loads' if torch_error is None else 'refuses'}): {exc}"
    except CheckpointError as exc:
        if torch_error is None:
            return f"MISMATCH: torch loads it, we refuse: {exc}"
        return f"both refuse: {exc}"
    if torch_error is not None:
        if checkpoint.refusals:
            return f"torch refuses, we show it and say why: {checkpoint.refusals[0]}"
        return f"MISMATCH: torch refuses ({torch_error}), we open it with no refusal"
    if checkpoint.refusals:
        return f"MISMATCH: torch loads it but we say it would not: {checkpoint.refusals[0]}"
    problems = compare(path, reference)
    return "MISMATCH: " + "; ".join(problems) if problems else "same"


def safetensors_oracle(path: str):
    """(key -> tensor, None) as safetensors loads it, else (None, error)."""
    from safetensors.torch import load_file

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return load_file(path), None
    except Exception as exc:  # noqa: BLE001 - any refusal is an answer
        return None, f"{type(exc).__name__}: {exc}"


def safetensors_differential(path: str) -> str:
    reference, error = safetensors_oracle(path)
    try:
        checkpoint = open_checkpoint(path)
    except CheckpointError as exc:
        return (
            f"both refuse: {exc}" if error else f"MISMATCH: safetensors loads it, we refuse: {exc}"
        )
    if error:
        return f"MISMATCH: safetensors refuses ({error}), we open it"
    ours = {key: tensor for key, tensor, _ in checkpoint.tensors()}
    if set(ours) != set(reference):
        return f"MISMATCH: keys {sorted(ours)} vs {sorted(reference)}"
    for key, theirs in reference.items():
        mine = ours[key]
        if mine.dtype != str(theirs.dtype).replace("torch.", "") or tuple(mine.shape) != tuple(
            theirs.shape
        ):
            return f"MISMATCH: {key}: {mine.dtype}{list(mine.shape)} vs {theirs.dtype}{list(theirs.shape)}"
        if bits(read_tensor(mine)) != bits(theirs):
            return f"MISMATCH: {key}: values differ"
    return "same"
