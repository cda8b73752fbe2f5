"""Where a write may go: export and sanitize (command line and dialogs alike) ask here first.

A destination may not be, hold or lie inside any file or folder the source consists of (the
same inode counts: a hard link or a symlink is the same file), may not replace something that
is not a regular file, and a write may not leave a folder that a loader reads otherwise than
what was written (a stray single weights file beside a new index, an old index beside new
weights). Sharded output goes into a new or empty folder, or with force into a folder that
holds only an earlier export of ours."""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import re
import secrets
import stat
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType

from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.listing import remote
from ckpt_viewer.core.listing.model import Checkpoint, FileSpan, ZipMember
from ckpt_viewer.core.listing.readers.hf_index import read_json
from ckpt_viewer.core.listing.remote import not_regular

INDEX_NAMES = {"safetensors": "model.safetensors.index.json", "pth": "pytorch_model.bin.index.json"}
SHARD_STEMS = {"safetensors": ("model", "safetensors"), "pth": ("pytorch_model", "bin")}
# what transformers' from_pretrained looks for in a folder (its first find wins)
LOADER_NAMES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# a model folder's other files (config.json, tokenizer files, a model card): no loader reads
# them as weights, and from_pretrained needs config.json beside the shards
SIDE_FILE = re.compile(r"[^.].*\.(json|txt|md|model|tiktoken|jinja)|\.gitattributes")


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class Sources:
    """The (device, inode) of every file and folder a checkpoint consists of: the path opened,
    every file a tensor's bytes lie in (shards, DCP data files, training-folder parts), and the
    folder of a sharded, DCP or training-folder checkpoint."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        files: set[str] = set()
        folders: set[str] = set()
        path = checkpoint.path
        if not remote.is_remote(path):
            (folders if os.path.isdir(path) else files).add(path)
            if checkpoint.format == "hf-sharded":
                folders.add(os.path.dirname(os.path.abspath(path)))
        for _, tensor, _ in checkpoint.tensors():
            for t in (tensor, *tensor.parts.values()):
                source = t.storage.source if t.storage is not None else None
                if isinstance(source, (ZipMember, FileSpan)):
                    files.add(source.path)
                files.update(span.path for _, _, span in t.chunks)
        self.files = {i for i in map(_identity, files) if i}
        self.folders = {i for i in map(_identity, folders) if i}

    def refuse_inside(self, destination: str, folder: str) -> None:
        """`folder` (where `destination` goes) and every folder above it, symlinks resolved."""
        here = os.path.realpath(folder)
        while True:
            if _identity(here) in self.folders:
                raise CheckpointError(
                    f"{destination} lies inside the source folder {here}; "
                    "choose another destination"
                )
            parent = os.path.dirname(here)
            if parent == here:
                return
            here = parent

    def refuse_source(self, path: str) -> None:
        if _identity(path) in self.files | self.folders:
            raise CheckpointError(
                f"{path} is the source file (or one of the files being "
                "read); choose another destination"
            )


def default_destination(opened: str, checkpoint: Checkpoint) -> str:
    """Where an export is proposed: beside what the user opened, named after it, never inside
    a model folder (an HF folder's index.json, or its one model.safetensors, would put it
    among the source's files). A URL's export goes to the home folder."""
    path = opened.rstrip("/") or opened
    if remote.is_remote(path):
        folder = os.path.expanduser("~")
        name = path.split("?")[0].rstrip("/").rsplit("/", 1)[-1] or "download"
    else:
        if checkpoint.format == "hf-sharded" and not os.path.isdir(path):
            path = os.path.dirname(os.path.abspath(path))  # the index names the folder
        folder, name = os.path.split(os.path.abspath(path))
    if not os.path.isdir(path):
        name = os.path.splitext(name)[0]
    return os.path.join(folder, name + "-export.pth")


def check_file(checkpoint: Checkpoint, destination: str, force: bool) -> str:
    """The absolute path one output file may be written to; raises CheckpointError why not."""
    destination = os.path.abspath(destination)
    if os.path.isdir(destination):
        raise CheckpointError(f"{destination} is a directory")
    folder = os.path.dirname(destination)
    if not os.path.isdir(folder):
        raise CheckpointError(f"folder {folder} does not exist")
    sources = Sources(checkpoint)
    sources.refuse_source(destination)
    sources.refuse_inside(destination, folder)
    if os.path.lexists(destination):
        try:
            mode = os.stat(destination).st_mode
        except OSError:  # a dangling symlink: replacing it touches nothing else
            mode = stat.S_IFREG
        if not stat.S_ISREG(mode):
            raise not_regular(destination, mode)
        if not force:
            raise CheckpointError(f"{destination} exists (use --force to replace it)")
    name = os.path.basename(destination)
    if name in LOADER_NAMES:
        other = [n for n in LOADER_NAMES if n != name and os.path.lexists(os.path.join(folder, n))]
        if other:
            raise CheckpointError(
                f"{folder} already holds {other[0]}, which a loader would read "
                f"instead of or beside {name}; choose another folder"
            )
    return destination


def check_folder(checkpoint: Checkpoint, folder: str, force: bool, names: list[str]) -> list[str]:
    """Sharded output into `folder` (made by the caller when new), as files `names`: returns
    the names of an earlier export of ours there that the new one does not replace (to be
    removed once it is in place); raises CheckpointError when the folder may not be used."""
    if os.path.lexists(folder) and not os.path.isdir(folder):
        raise CheckpointError(f"{folder} is not a folder (sharded output goes into one)")
    if not os.path.isdir(os.path.dirname(folder)):
        raise CheckpointError(f"folder {os.path.dirname(folder)} does not exist")
    sources = Sources(checkpoint)
    if _identity(folder) in sources.folders:
        raise CheckpointError(f"{folder} is the source folder; choose another one")
    if not os.path.isdir(folder):
        sources.refuse_inside(folder, os.path.dirname(folder))
        return []
    sources.refuse_inside(folder, folder)  # itself too: it may be a symlink into one
    entries = sorted(os.listdir(folder))
    for entry in entries:
        path = os.path.join(folder, entry)
        if _identity(path) in sources.files | sources.folders:
            raise CheckpointError(
                f"{folder} holds {entry}, one of the files being read; choose another folder"
            )
    weights = [
        entry
        for entry in entries
        if not SIDE_FILE.fullmatch(entry) or entry.endswith(".index.json")
    ]
    if not weights:
        return []
    ours = _earlier_export(folder, weights, names)
    if ours is None:
        raise CheckpointError(
            f"{folder} exists and holds {weights[0]}: sharded output goes into "
            "a new folder or one with only configuration and tokenizer files "
            "(or, with --force, one that holds an earlier export of ours)"
        )
    if not force:
        raise CheckpointError(
            f"{os.path.join(folder, ours[0])} exists (use --force to replace "
            "it and the rest of that export)"
        )
    return [entry for entry in ours if entry not in names]


def _earlier_export(folder: str, entries: list[str], names: list[str]) -> list[str] | None:
    """The entries, when they are exactly an export of ours: an index of ours and the shards it
    names, or the one weights file the new export writes too (an unsharded output); else None."""
    if len(entries) == 1 and entries[0] in names and not entries[0].endswith(".index.json"):
        mode = os.lstat(os.path.join(folder, entries[0])).st_mode
        return entries if stat.S_ISREG(mode) else None
    for fmt, index_name in INDEX_NAMES.items():
        if index_name not in entries:
            continue
        try:
            index = read_json(os.path.join(folder, index_name), "index")
        except CheckpointError:
            return None
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict):
            return None
        shards = {str(v) for v in weight_map.values()}
        stem, ext = SHARD_STEMS[fmt]
        pattern = re.compile(rf"{stem}-\d{{5}}-of-\d{{5}}\.{ext}")
        if set(entries) != shards | {index_name} or not all(
            pattern.fullmatch(s) and stat.S_ISREG(os.lstat(os.path.join(folder, s)).st_mode)
            for s in shards
        ):
            return None
        return entries
    return None


class Cancelled(Exception):
    """Raised by a writer between steps when the user cancelled."""


class Staged:
    """The one way export and sanitize write: hidden temporary files beside their destinations,
    each synced to disk once written, renamed into place only when all are written and checked.
    Used as a context manager: any failure removes the temporary files, and a cancel or an OS
    error becomes one CheckpointError line saying that nothing was changed."""

    def __init__(self, destination: str, what: str):
        self.destination, self.what = destination, what
        self.temps: list[str] = []
        self.targets: list[str] = []

    def temp(self, target: str) -> str:
        """A new empty temporary file for `target`, created with the mode a plain open() gives
        (0666 less the umask; mkstemp's 0600 would hide the export from the group)."""
        folder, name = os.path.split(target)
        while True:
            temp = os.path.join(folder, f".{name}.{secrets.token_hex(4)}.part")
            try:
                os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            except FileExistsError:
                continue
            self.temps.append(temp)
            self.targets.append(target)
            return temp

    @staticmethod
    def sync(path: str, meanwhile: Callable[[], object] | None = None) -> None:
        """Sync the file to disk; `meanwhile` (a check that reads it back, from the page
        cache) runs while the disk writes, not after."""
        with ThreadPoolExecutor(1) as pool:
            synced = pool.submit(_fsync, path)
            if meanwhile is not None:
                meanwhile()
            synced.result()

    def commit(self) -> None:
        """Every temporary file renamed onto its target."""
        for temp, target in zip(self.temps, self.targets):
            os.replace(temp, target)
        self.temps = []

    def __enter__(self) -> Staged:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for temp in self.temps:
            remove_quietly(temp)
        self.temps = []
        if isinstance(exc, Cancelled):
            raise CheckpointError(f"{self.what} cancelled; nothing was written") from None
        if isinstance(exc, OSError):
            raise CheckpointError(os_error(exc, self.destination)) from None


SYNC_FILE_RANGE_WRITE = 2


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    call.restype = ctypes.c_int
    return call


def start_writeback(fd: int, at: int, count: int) -> None:
    """Starts writing these bytes of the file to disk and returns (Linux's sync_file_range;
    elsewhere nothing): the disk then writes while the rest of a large file is copied, as the
    final fsync would otherwise write it all after the copy, and close() on ext4 (a file
    created or truncated) would start that writeback itself. Only a hint; fsync still
    decides what is durable."""
    call = _sync_file_range()
    if call is not None:
        call(fd, at, count, SYNC_FILE_RANGE_WRITE)  # a failure only loses the head start


def _fsync(path: str) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def os_error(exc: OSError, destination: str) -> str:
    if exc.errno == errno.ENOSPC:
        return f"the disk is full; {destination} was not written (nothing was changed)"
    if exc.errno == errno.EFBIG:
        return f"the file is larger than this file system allows; {destination} was not written"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"no permission to write {destination}"
    return f"writing {destination} failed ({exc.strerror or exc}); nothing was changed"
