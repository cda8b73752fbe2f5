"""Sniff what a path holds (by its bytes, not its name) and hand it to the right reader."""

from __future__ import annotations

import functools
import glob
import os

from ckpt_viewer.core import CheckpointError, paused_gc
from ckpt_viewer.core.model import Checkpoint

LEGACY_MAGIC_PICKLE = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"

FOREIGN_FORMATS = [
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file (Keras/h5py), not a PyTorch checkpoint"),
    (b"\x93NUMPY", "a NumPy .npy array, not a PyTorch checkpoint"),
    (b"GGUF", "a GGUF (llama.cpp) model, not a PyTorch checkpoint"),
    (b"\x1f\x8b", "a gzip-compressed file; decompress it first"),
    (b"BZh", "a bzip2-compressed file; decompress it first"),
    (b"\xfd7zXZ", "an xz-compressed file; decompress it first"),
]
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.pt", "model.pth",
                "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def sniff(path: str) -> str:
    """The reader name for a path: torch_zip, torch_legacy, safetensors, pickle, hf_index, dcp."""
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, ".metadata")):
            return "dcp"
        raise CheckpointError("directory holds no checkpoint (no .metadata, *.index.json or "
                              "model weights file)")
    if path.endswith(".index.json"):
        return "hf_index"
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError("file is empty")
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "torch_zip"
    if head.startswith(LEGACY_MAGIC_PICKLE):
        return "torch_legacy"
    from ckpt_viewer.core.readers.safetensors import looks_like_safetensors
    if looks_like_safetensors(head):
        return "safetensors"
    if len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    if len(head) >= 262 and head[257:262] == b"ustar":
        raise CheckpointError("a tar archive: the PyTorch < 0.4 tar format is not supported")
    for magic, what in FOREIGN_FORMATS:
        if head.startswith(magic):
            raise CheckpointError(f"this is {what}")
    if head.lstrip()[:1] in (b"{", b"["):
        raise CheckpointError("a JSON/text file, not a PyTorch checkpoint")
    if head[:1] == b"\x08" and (b"onnx" in head.lower() or b"pytorch" in head.lower()):
        raise CheckpointError("an ONNX model, not a PyTorch checkpoint")
    preview = head[:8].hex(" ")
    raise CheckpointError(f"not a recognised checkpoint format (first bytes {preview})")


def resolve_directory(path: str) -> str:
    """A Hugging Face model directory -> its index file or single weights file."""
    if os.path.isfile(os.path.join(path, ".metadata")):
        return path
    indexes = sorted(glob.glob(os.path.join(glob.escape(path), "*.index.json")))
    safetensor_indexes = [p for p in indexes if p.endswith(".safetensors.index.json")]
    if safetensor_indexes or indexes:
        return (safetensor_indexes or indexes)[0]
    for name in WEIGHT_FILES:
        if os.path.isfile(os.path.join(path, name)):
            return os.path.join(path, name)
    singles = glob.glob(os.path.join(glob.escape(path), "*.safetensors"))
    if len(singles) == 1:
        return singles[0]
    return path


def open_file(path: str) -> Checkpoint:
    """Read only metadata; raises CheckpointError with a one-line message for any bad input."""
    from ckpt_viewer.core.readers import (
        dcp,
        hf_index,
        plain_pickle,
        safetensors,
        torch_legacy,
        torch_zip,
    )

    readers = {"torch_zip": torch_zip.read, "torch_legacy": torch_legacy.read,
               "safetensors": safetensors.read, "pickle": plain_pickle.read,
               "hf_index": functools.partial(hf_index.read, open_shard=open_file),
               "dcp": dcp.read}
    return readers[sniff(path)](path)


def open_checkpoint(path: str) -> Checkpoint:
    """Open any supported path and recognise its optimizers. The one entry point for callers."""
    from ckpt_viewer.core import optim

    path = os.fspath(path)
    try:
        if not os.path.exists(path):
            raise CheckpointError("no such file or directory")
        if os.path.isdir(path):
            path = resolve_directory(path)
        with paused_gc():
            checkpoint = open_file(path)
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
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, UnicodeError,
            OverflowError, EOFError, ArithmeticError) as exc:
        # Hostile or damaged data may trip any of these deep in a reader.
        text = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise CheckpointError(f"the file is damaged or malformed ({text})") from None
