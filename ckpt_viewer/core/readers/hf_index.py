"""Hugging Face sharded checkpoints: `*.index.json` naming a shard file for each tensor."""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Callable

from ckpt_viewer.core import CheckpointError, remote
from ckpt_viewer.core.model import Checkpoint
from ckpt_viewer.core.readers import safetensors
from ckpt_viewer.core.safe_pickle import merge_part
from ckpt_viewer.core.text import plural

MAX_INDEX_BYTES = 64 * 1024 * 1024

OpenShard = Callable[[str], Checkpoint]


def read_json(path: str, what: str) -> dict:
    if remote.getsize(path) > MAX_INDEX_BYTES:
        raise CheckpointError(f"{what} {remote.basename(path)} is larger than 64 MB")
    try:
        with remote.open_source(path) as f:
            value = json.loads(f.read(MAX_INDEX_BYTES + 1).decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{what} {remote.basename(path)} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{what} {remote.basename(path)} is not a JSON object")
    return value


def shard_tensors(path: str, open_shard: OpenShard) -> tuple[dict, Checkpoint]:
    """Tensors of one shard file, whatever its kind: ({key: TensorInfo}, the shard)."""
    checkpoint = open_shard(path)
    return {key: info for key, info, _ in checkpoint.tensors()}, checkpoint


def read(index_path: str, open_shard: OpenShard) -> Checkpoint:
    """open_shard opens one shard of any kind (shards may be .bin torch zip files); core.open
    passes its own opener in, so that no reader imports core.open."""
    index = read_json(index_path, "index")
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
        raise CheckpointError("index has no weight_map of tensor names to shard files")
    folder = remote.dirname(index_path)
    shards: dict[str, tuple] = {}
    for shard in dict.fromkeys(weight_map.values()):
        if os.path.basename(shard) != shard or shard in ("", ".", ".."):
            raise CheckpointError(f"index names a shard outside its folder: {shard!r:.80}")
        shard_path = remote.join(folder, shard)
        remote.check_regular(shard_path)
        if not remote.isfile(shard_path):
            raise CheckpointError(f"shard {shard} named by the index is missing")
        try:
            shards[shard] = shard_tensors(shard_path, open_shard)
        except CheckpointError as exc:
            raise CheckpointError(f"shard {shard}: {exc}") from None
    tensors, warnings = {}, []
    for key, shard in weight_map.items():
        shard_map = shards[shard][0]
        if key not in shard_map:
            raise CheckpointError(f"tensor {key!r} is not in shard {shard} as the index says")
        tensors[key] = shard_map[key]
    for shard, (shard_map, part) in shards.items():
        warnings += [f"{shard}: {w}" for w in part.warnings]
        extra = set(shard_map) - set(weight_map)
        if extra:
            warnings.append(f"{shard} holds {plural(len(extra), 'tensor')} the index does not list")
    metadata = {f"index.{k}": v for k, v in (index.get("metadata") or {}).items()
                if isinstance(v, (str, int, float, bool))}
    metadata["shards"] = len(shards)
    metadata.update(config_metadata(folder))
    total = sum(remote.getsize(remote.join(folder, s)) for s in shards)
    checkpoint = Checkpoint(path=index_path, format="hf-sharded", file_bytes=total,
                            root=safetensors.flat_tree(tensors), warnings=warnings,
                            metadata=metadata)
    for shard, (_, part) in shards.items():     # every shard is unpickled by its loader
        merge_part(checkpoint, part, shard)
    return checkpoint


def config_metadata(folder: str, name: str = "config.json") -> dict:
    """Plain top-level fields of a model directory's config.json (model_type, sizes...);
    short lists of plain values (architectures, target_modules) as one line of text."""
    path = remote.join(folder, name)
    if not remote.isfile(path):
        return {}
    try:
        config = read_json(path, "config")
    except CheckpointError:
        return {}
    prefix = name.removesuffix(".json")
    fields = {}
    for key, value in config.items():
        if isinstance(value, (str, int, float, bool)):
            fields[f"{prefix}.{key}"] = value
        elif isinstance(value, list) and 0 < len(value) <= 64 and all(
                isinstance(v, (str, int, float, bool)) for v in value):
            fields[f"{prefix}.{key}"] = ", ".join(str(v) for v in value)
    return fields


WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.pt", "model.pth",
                "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                "adapter_model.safetensors", "adapter_model.bin")


def model_weights(path: str) -> str | None:
    """A folder's model: its index file or its single weights file."""
    if remote.is_remote(path):
        return _remote_model_weights(path)
    indexes = sorted(glob.glob(os.path.join(glob.escape(path), "*.index.json")))
    safetensor_indexes = [p for p in indexes if p.endswith(".safetensors.index.json")]
    if safetensor_indexes or indexes:
        return (safetensor_indexes or indexes)[0]
    for name in WEIGHT_FILES:
        candidate = os.path.join(path, name)
        if os.path.exists(candidate) and not os.path.isdir(candidate):   # a FIFO: refused on open
            return candidate
    singles = glob.glob(os.path.join(glob.escape(path), "*.safetensors"))
    if len(singles) == 1:
        return singles[0]
    return None


def _remote_model_weights(folder: str) -> str | None:
    """model_weights for a remote folder: the same choice, from one listing."""
    names = set(remote.listdir(folder))
    indexes = sorted(n for n in names if n.endswith(".index.json"))
    safetensor_indexes = [n for n in indexes if n.endswith(".safetensors.index.json")]
    singles = [n for n in names if n.endswith(".safetensors")]
    name = next(iter(safetensor_indexes or indexes), None) or next(
        (n for n in WEIGHT_FILES if n in names), None) or (singles[0] if len(singles) == 1 else None)
    return remote.join(folder, name) if name else None
