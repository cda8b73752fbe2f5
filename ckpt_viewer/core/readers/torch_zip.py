"""torch.save zip archives (and TorchScript archives, read as data): directory + data.pkl."""

from __future__ import annotations

import zipfile
from collections import Counter

from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.model import DTYPE_SIZES, Storage
from ckpt_viewer.core.readers import MAX_PICKLE_BYTES, pickle_checkpoint, storage_pid
from ckpt_viewer.core.readers.zip_directory import read_directory, read_member
from ckpt_viewer.core.safe_pickle import dtype_of_storage

MAX_FORMAT_VERSION = 20
MAX_COMPRESSED_PICKLE = 64 * 1024 * 1024


def archive_prefix(names: list[str]) -> str:
    """The single top-level folder holding data.pkl."""
    counts = Counter(names)
    duplicates = [n for n, c in counts.items() if c > 1]
    if duplicates:
        raise CheckpointError(f"archive holds two entries named {duplicates[0]!r} "
                              "(torch would read the first, other tools the last)")
    prefixes = [n[: -len("data.pkl")] for n in names
                if n.endswith("/data.pkl") and n.count("/") == 1]
    if not prefixes:
        raise CheckpointError("zip archive has no data.pkl: not a PyTorch checkpoint")
    if len(prefixes) > 1:
        raise CheckpointError("zip archive holds more than one data.pkl")
    return prefixes[0]


def read(path: str):
    directory = read_directory(path)
    names = [m.name for m in directory]
    prefix = archive_prefix(names)
    members = {m.name: m for m in directory}
    byteorder = "little"
    if prefix + "byteorder" in members:
        byteorder = read_member(members[prefix + "byteorder"], 64).decode("ascii", "replace").strip()
        if byteorder not in ("little", "big"):
            raise CheckpointError(f"unsupported byteorder {byteorder[:20]!r} "
                                  "(only little and big are defined)")
    version = None
    for name in (prefix + "version", prefix + ".data/version"):
        if name in members:
            text = read_member(members[name], 64).decode("ascii", "replace").strip()
            if not text.isdigit() or int(text) > MAX_FORMAT_VERSION:
                raise CheckpointError(f"unsupported archive format version {text[:20]!r}")
            version = int(text)
    pickle_member = members[prefix + "data.pkl"]
    if pickle_member.compress_type != 0 and pickle_member.file_size > MAX_COMPRESSED_PICKLE:
        # torch never compresses data.pkl; a small record inflating this far is a zip bomb
        raise CheckpointError(f"data.pkl is compressed and would inflate to "
                              f"{pickle_member.file_size:,} bytes; refusing (zip bomb?)")
    data = read_member(pickle_member, MAX_PICKLE_BYTES)
    torchscript = prefix + "constants.pkl" in members or any(
        n.startswith(prefix + "code/") for n in names)
    storages: dict[str, Storage] = {}

    def storage_factory(pid):
        storage_type, key, location, numel = storage_pid(pid)
        dtype = dtype_of_storage(storage_type)
        if key in storages:
            return storages[key]
        member = members.get(f"{prefix}data/{key}")
        if member is None:
            raise CheckpointError(f"storage record data/{key} is missing from the archive")
        needed = numel * DTYPE_SIZES[dtype]
        if member.file_size < needed:
            raise CheckpointError(f"storage record data/{key} holds {member.file_size:,} bytes "
                                  f"but its tensors need {needed:,}")
        storages[key] = Storage(key, dtype, numel, location, member, byteorder)
        return storages[key]

    fmt = "torchscript" if torchscript else "torch-zip"
    checkpoint = pickle_checkpoint(path, fmt, data, storage_factory, byteorder=byteorder)
    if version is not None:
        checkpoint.metadata["archive format version"] = version
    if byteorder == "big":
        checkpoint.warnings.append("tensors are stored big-endian; values are byte-swapped when read")
    compressed = [s.key for s in storages.values() if s.source.compress_type != zipfile.ZIP_STORED]
    if compressed:
        checkpoint.warnings.append(f"{len(compressed)} storage record(s) are compressed; "
                                   "they are inflated, never memory-mapped, when read")
    return checkpoint
