"""Sniff what a path holds (by its bytes, not its name) and hand it to the right reader."""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable

from ckpt_viewer.core import CheckpointError, paused_gc
from ckpt_viewer.core.listing import remote
from ckpt_viewer.core.listing.model import Checkpoint

PICKLE_STARTS = {b"(", b"}", b"]", b"L", b"I", b"c", b"N", b"F", b"S", b"V"}  # protocol 0/1

FOREIGN_FORMATS = [
    (b"\x1f\x8b", "a gzip-compressed file; decompress it first"),
    (b"BZh", "a bzip2-compressed file; decompress it first"),
    (b"\xfd7zXZ", "an xz-compressed file; decompress it first"),
]


def sniff(path: str) -> str:
    """The reader name for a path: torch_zip, pt2, torch_legacy, safetensors, pickle, hf_index,
    dcp, dcp_hf (Hugging Face storage DCP), training_dir, gguf, npy, npz, onnx, hdf5, keras,
    keras_sharded, flax_msgpack, tensor_bundle."""
    with remote.opening():
        return _sniff(path)


def _sniff(path: str) -> str:
    source = remote.source(path)
    if source.folder:
        if ".metadata" in source.entries:
            remote.check_regular(remote.join(path, ".metadata"))
            return "dcp"
        from ckpt_viewer.core.listing.readers.training_dir import state_files

        if state_files(path):
            return "training_dir"
        from ckpt_viewer.core.listing.readers.dcp import hf_shards

        if hf_shards(path):
            return "dcp_hf"
        raise CheckpointError(
            "directory holds no checkpoint (no .metadata, *.index.json or model weights file)"
        )
    if path.endswith(".json"):  # is_index's names all end so: its import costs
        from ckpt_viewer.core.listing.readers.hf_index import is_index

        if is_index(path):
            return "hf_index"
    if path.endswith(".index"):  # looks_like_bundle's own first test: its import costs
        from ckpt_viewer.core.listing.readers.tensor_bundle import looks_like_bundle

        if looks_like_bundle(path):
            return "tensor_bundle"
    if source.size == 0:
        raise CheckpointError("file is empty")
    head = source.head
    if head.startswith(b"GGUF"):
        return "gguf"
    # other frameworks' weights (issue #25)
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "hdf5"
    if head.startswith(b"PK\x03\x04"):  # the test torch.load makes
        if _first_record(head).endswith(b"/data.pkl"):
            return "torch_zip"  # torch.save's first record: no npz, Keras or pt2 archive's
        from ckpt_viewer.core.listing.readers.keras_h5 import is_keras
        from ckpt_viewer.core.listing.readers.numpy_files import is_npz

        if is_npz(path, head):
            return "npz"
        if is_keras(path, head):
            return "keras"
        from ckpt_viewer.core.listing.readers.pt2 import is_pt2

        return "pt2" if is_pt2(path, head) else "torch_zip"
    from ckpt_viewer.core.listing.readers.safetensors import looks_like_safetensors

    if looks_like_safetensors(head):
        return "safetensors"
    if (
        head[:1] in PICKLE_STARTS
        or head[:1] == b"\x80"
        and head[1:2] in b"\x00\x01\x02\x03\x04\x05"
    ):
        from ckpt_viewer.core.listing.readers.torch_legacy import is_legacy

        return "torch_legacy" if is_legacy(path) else "pickle"
    from ckpt_viewer.core.listing.readers.flax_msgpack import looks_like_flax

    if looks_like_flax(path, head):
        return "flax_msgpack"
    if len(head) >= 262 and head[257:262] == b"ustar":
        raise CheckpointError("a tar archive: the PyTorch < 0.4 tar format is not supported")
    for magic, what in FOREIGN_FORMATS:
        if head.startswith(magic):
            raise CheckpointError(f"this is {what}")
    if head.lstrip()[:1] == b"{" and path.endswith(".weights.json"):
        return "keras_sharded"
    if head.lstrip()[:1] in (b"{", b"["):
        raise CheckpointError("a JSON/text file, not a PyTorch checkpoint")
    from ckpt_viewer.core.listing.readers.onnx_file import looks_like_onnx

    if looks_like_onnx(path, head):
        return "onnx"
    preview = head[:8].hex(" ")
    raise CheckpointError(f"not a recognised checkpoint format (first bytes {preview})")


def _first_record(head: bytes) -> bytes:
    """The name of a zip's first local record (numpy_files.first_record_name, which is not
    imported for this: the other readers' imports cost more than a torch file's listing)."""
    length = int.from_bytes(head[26:28], "little") if len(head) >= 30 else 0
    return head[30 : 30 + length]


def resolve_directory(path: str) -> str:
    """A Hugging Face model directory -> its index file or single weights file; a training
    folder (weights with optimizer, scheduler... files) or a DCP folder stays as it is; a
    TensorFlow checkpoint or SavedModel folder -> its index."""
    from ckpt_viewer.core.listing.readers.tensor_bundle import folder_index
    from ckpt_viewer.core.listing.readers.training_dir import state_files

    if ".metadata" in remote.listdir(path) or state_files(path):
        return path
    from ckpt_viewer.core.listing.readers.hf_index import model_weights

    return model_weights(path) or folder_index(path) or path


def resolve_prefix(path: str) -> str:
    """A TensorFlow checkpoint prefix (`ckpt-3`, no file of that name) -> its `ckpt-3.index`."""
    if not remote.is_remote(path) and os.path.isfile(path):
        return path  # a file is no prefix (prefix_index's first test, without its import)
    from ckpt_viewer.core.listing.readers.tensor_bundle import prefix_index

    return prefix_index(path) or path


READERS = {  # format -> (reader module, its function)
    "torch_zip": ("torch_zip", "read"),
    "torch_legacy": ("torch_legacy", "read"),
    "safetensors": ("safetensors", "read"),
    "pickle": ("plain_pickle", "read"),
    "hf_index": ("hf_index", "read"),
    "dcp": ("dcp", "read"),
    "dcp_hf": ("dcp", "read_hf"),
    "pt2": ("pt2", "read"),
    "gguf": ("gguf", "read"),
    "training_dir": ("training_dir", "read"),
    "npy": ("numpy_files", "read_npy"),
    "npz": ("numpy_files", "read_npz"),
    "onnx": ("onnx_file", "read"),
    "hdf5": ("keras_h5", "read"),
    "keras": ("keras_h5", "read_keras"),
    "keras_sharded": ("keras_h5", "read_sharded"),
    "flax_msgpack": ("flax_msgpack", "read"),
    "tensor_bundle": ("tensor_bundle", "read"),
}


def open_file(path: str) -> Checkpoint:
    """Read only metadata; raises CheckpointError with a one-line message for any bad input."""
    with remote.opening():
        module, name = READERS[sniff(path)]
        # only the reader the format needs is imported: all of them cost more than a listing
        reader: Callable[..., Checkpoint] = getattr(
            importlib.import_module(f"ckpt_viewer.core.listing.readers.{module}"), name
        )
        if module in ("hf_index", "training_dir"):  # their parts are opened as files are
            part = "open_shard" if module == "hf_index" else "open_part"
            reader = functools.partial(reader, **{part: open_file})
        return reader(path)


def open_checkpoint(path: str) -> Checkpoint:
    """Open any supported path and recognise its optimizers. The one entry point for callers."""
    from ckpt_viewer.core.listing import optim

    path = os.fspath(path)
    try:
        if remote.is_remote(path):
            remote.forget(path)  # a URL opened again is asked afresh
        path = resolve_prefix(path)
        with remote.opening(), paused_gc():
            try:
                folder = path if remote.source(path).folder else None
            except FileNotFoundError:
                raise CheckpointError("no such file or directory") from None
            if folder:
                path = resolve_directory(path)
            checkpoint = open_file(path)
            if folder and path != folder:
                from ckpt_viewer.core.listing.readers.hf_index import unread_weights
                from ckpt_viewer.core.listing.readers.training_dir import folder_metadata

                checkpoint.warnings += unread_weights(folder, remote.basename(path))
                for key, value in folder_metadata(folder).items():
                    checkpoint.metadata.setdefault(key, value)
            checkpoint.optimizers = optim.find_optimizers(checkpoint)
        return checkpoint
    except CheckpointError:
        raise
    except PermissionError:
        raise CheckpointError("permission denied") from None
    except FileNotFoundError:
        raise CheckpointError("the file disappeared while it was being read") from None
    except IsADirectoryError:
        raise CheckpointError("expected a file but found a directory") from None
    except OSError as exc:
        raise CheckpointError(f"read error ({exc.strerror or exc})") from None
    except MemoryError:
        raise CheckpointError("not enough memory to read the file's metadata") from None
    except RecursionError:
        raise CheckpointError("the file's structure is nested too deeply") from None
    except (
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        AttributeError,
        UnicodeError,
        OverflowError,
        EOFError,
        ArithmeticError,
    ) as exc:
        # Hostile or damaged data may trip any of these deep in a reader.
        text = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise CheckpointError(f"the file is damaged or malformed ({text})") from None
