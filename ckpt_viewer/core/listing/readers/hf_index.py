"""Hugging Face sharded checkpoints: `*.index.json` naming a shard file for each tensor."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from typing import Any

from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.listing import remote
from ckpt_viewer.core.listing.model import Checkpoint, TensorInfo
from ckpt_viewer.core.listing.readers import safetensors
from ckpt_viewer.core.listing.safe_pickle import merge_part
from ckpt_viewer.core.listing.text import plural

MAX_INDEX_BYTES = 64 * 1024 * 1024

OpenShard = Callable[[str], Checkpoint]
Plain = str | int | float | bool  # a config field shown as metadata


def read_json(path: str, what: str) -> dict[str, Any]:
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


def shard_tensors(path: str, open_shard: OpenShard) -> tuple[dict[str, TensorInfo], Checkpoint]:
    """Tensors of one shard file, whatever its kind: ({key: TensorInfo}, the shard)."""
    checkpoint = open_shard(path)
    return {key: info for key, info, _ in checkpoint.tensors()}, checkpoint


def read(index_path: str, open_shard: OpenShard) -> Checkpoint:
    """open_shard opens one shard of any kind (shards may be .bin torch zip files); core.listing.open
    passes its own opener in, so that no reader imports core.listing.open."""
    index = read_json(index_path, "index")
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise CheckpointError("index has no weight_map of tensor names to shard files")
    folder = remote.dirname(index_path)
    shards: dict[str, tuple[dict[str, TensorInfo], Checkpoint]] = {}
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
    metadata = {
        f"index.{k}": v
        for k, v in (index.get("metadata") or {}).items()
        if isinstance(v, (str, int, float, bool))
    }
    metadata["shards"] = len(shards)
    metadata.update(config_metadata(folder))
    total = sum(remote.getsize(remote.join(folder, s)) for s in shards)
    checkpoint = Checkpoint(
        path=index_path,
        format="hf-sharded",
        file_bytes=total,
        root=safetensors.flat_tree(tensors),
        warnings=warnings,
        metadata=metadata,
    )
    for shard, (_, part) in shards.items():  # every shard is unpickled by its loader
        merge_part(checkpoint, part, shard)
    return checkpoint


def config_metadata(folder: str, name: str = "config.json") -> dict[str, Plain]:
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
    fields: dict[str, Plain] = {}
    for key, value in config.items():
        if isinstance(value, (str, int, float, bool)):
            fields[f"{prefix}.{key}"] = value
        elif (
            isinstance(value, list)
            and 0 < len(value) <= 64
            and all(isinstance(v, (str, int, float, bool)) for v in value)
        ):
            fields[f"{prefix}.{key}"] = ", ".join(str(v) for v in value)
    return fields


# The file each library's from_pretrained reads from a folder, first found first:
# transformers (modeling_utils._get_resolved_checkpoint_files) takes a single safetensors file
# before its index and safetensors before .bin; diffusers (ModelMixin.from_pretrained) reads
# the model as sharded whenever its safetensors index is there; PEFT its adapter file.
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
    "adapter_model.safetensors",
    "adapter_model.bin",
    "model.pt",
    "model.pth",
)
INDEX_NAME = re.compile(r".+\.index(\.[^./]+)?\.json")  # a variant's: x.index.fp16.json
VARIANT = re.compile(
    r"(model|pytorch_model|diffusion_pytorch_model|adapter_model)"
    r"(\.safetensors\.index|\.bin\.index)?\.([^./]+)\.(safetensors|bin|json)"
)
SHARD_SUFFIX = re.compile(r"-\d+-of-\d+$")


def is_index(path: str) -> bool:
    return bool(INDEX_NAME.fullmatch(remote.basename(path)))


def add_variant(name: str, variant: str) -> str:
    """transformers' and diffusers' _add_variant: model.safetensors -> model.fp16.safetensors."""
    stem, _, extension = name.rpartition(".")
    return f"{stem}.{variant}.{extension}"


def choose_weights(folder: str, names: set[str]) -> tuple[str | None, list[str]]:
    """(the weights file from_pretrained reads in a folder holding `names`, the other weights
    files it leaves unread); (None, []) when none is recognised."""
    candidates = [n for n in WEIGHT_FILES if n in names]
    config = remote.join(folder, "config.json")
    if "config.json" in names:
        try:  # transformers reads the file config.json names, when it names one
            explicit = read_json(config, "config").get("transformers_weights")
        except CheckpointError:
            explicit = None
        if (
            isinstance(explicit, str)
            and explicit in names
            and (
                explicit.endswith((".safetensors", ".safetensors.index.json"))
                or explicit == "adapter_model.bin"
            )
        ):
            candidates.insert(0, explicit)
    if not candidates:
        variants = sorted({v for v in map(_variant, names) if v})
        if len(variants) > 1:
            raise CheckpointError(
                f"folder holds no default weights but the variants "
                f"{', '.join(variants)}; open one variant's file"
            )
        if variants:  # what from_pretrained(variant=...) reads, the folder's only choice
            candidates = [
                add_variant(n, variants[0])
                for n in WEIGHT_FILES
                if add_variant(n, variants[0]) in names
            ]
    indexes = sorted(n for n in names if INDEX_NAME.fullmatch(n))
    candidates += [n for n in indexes if n.endswith(".safetensors.index.json")] + indexes
    if not candidates:
        return None, []
    chosen = candidates[0]
    ignored = [
        n
        for n in dict.fromkeys(candidates + sorted(n for n in names if _variant(n)))
        if n != chosen
    ]
    return chosen, ignored


def _variant(name: str) -> str | None:
    """The variant a weights file or index belongs to (model.fp16.safetensors: fp16); not
    its shards' (model.fp16-00001-of-00003.safetensors)."""
    match = VARIANT.fullmatch(name)
    if (
        not match
        or (match.group(2) is None) != (match.group(4) != "json")
        or SHARD_SUFFIX.search(match.group(3))
    ):
        return None
    return match.group(3)


def _names(folder: str) -> set[str]:
    # not only regular files: a FIFO or device named like a weights file is chosen, then
    # refused on open
    return set(remote.files(folder))


def model_weights(path: str) -> str | None:
    """A folder's model: the index file or single weights file from_pretrained reads."""
    names = _names(path)
    chosen, _ = choose_weights(path, names)
    if chosen is None:
        from ckpt_viewer.core.listing.readers.dcp import hf_shards

        singles = [n for n in names if n.endswith(".safetensors")]
        chosen = singles[0] if len(singles) == 1 and not hf_shards(path) else None
    return remote.join(path, chosen) if chosen else None


def unread_weights(folder: str, chosen: str) -> list[str]:
    """Warnings naming the weights files of a folder that from_pretrained does not read."""
    _, ignored = choose_weights(folder, _names(folder))
    return [
        f"{name} is not read: from_pretrained reads {chosen} in this folder"
        for name in ignored
        if name != chosen
    ]
