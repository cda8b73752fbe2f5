"""Element ranges of one storage, read from the file (pread or a read-only mapping, with
fadvise read-ahead) or from an inflated zip record; bounds are checked again at every read."""

from __future__ import annotations

import contextlib
import mmap
import os
import zipfile
from collections.abc import Iterator

import numpy as np

from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.listing import remote
from ckpt_viewer.core.listing.model import (
    DTYPE_SIZES,
    DecodedBytes,
    FileSpan,
    InlineBytes,
    Storage,
    ZipMember,
)
from ckpt_viewer.core.listing.readers.zip_directory import data_offset, read_member
from ckpt_viewer.core.values.decode import NUMPY_DTYPES

DIRECT_ALIGN = 4096  # O_DIRECT reads: file offsets, lengths and memory in whole blocks of this


class StorageReader:
    """Reads element ranges of one storage: from the file, or from an inflated record."""

    def __init__(self, storage: Storage | None):
        if storage is None:
            raise CheckpointError("the tensor has no storage to read")
        self.storage = storage
        source = storage.source
        self.inflated: bytes | None = None
        self.path: str | None
        if isinstance(source, ZipMember):
            if source.compress_type == zipfile.ZIP_STORED:
                self.path, self.offset = source.path, data_offset(source)
            else:
                self.inflated = read_member(source, limit=source.file_size)
                self.path, self.offset = None, 0
        elif isinstance(source, InlineBytes):
            self.inflated = source.data
            self.path, self.offset = None, 0
        elif isinstance(source, DecodedBytes):  # a chunked/compressed HDF5 dataset (h5py)
            self.inflated = source.decode()
            self.path, self.offset = None, 0
        elif isinstance(source, FileSpan):
            self.path, self.offset = source.path, source.offset
        else:
            raise CheckpointError(f"storage {storage.key!r} has no data location")
        order = ">" if storage.byteorder == "big" else "<"
        self.np_dtype = (
            np.dtype(order + NUMPY_DTYPES[storage.dtype])
            if storage.dtype in NUMPY_DTYPES
            else np.dtype("u1")
        )
        self.itemsize = DTYPE_SIZES[storage.dtype]

    def read(
        self, first: int, count: int, np_dtype=None, into: np.ndarray | None = None
    ) -> np.ndarray:
        """Elements [first, first+count) of the storage, in `np_dtype` units (a private copy).
        `into` (uint8, at least their bytes): read into its start instead of fresh memory,
        valid until the buffer is read into again."""
        dtype, start, nbytes = self._span(first, count, np_dtype)
        if self.inflated is not None:
            return np.frombuffer(self.inflated, dtype=dtype, count=count, offset=start)
        out = np.empty(count, dtype=dtype) if into is None else into[:nbytes].view(dtype)
        if not nbytes:  # nothing to read, wherever the storage says it lies
            return out
        with self._file(self.offset + start + nbytes) as f:
            f.seek(self.offset + start)
            got = f.readinto(out.data.cast("B"))
        if got != nbytes:
            raise self._ended()
        return out

    def blocks(
        self, first: int, count: int, into: np.ndarray, np_dtype=None
    ) -> Iterator[np.ndarray]:
        """Elements [first, first+count) as consecutive blocks read into `into` (uint8: as
        many elements a block as fit), each valid only until the next is asked for. One open
        file and one pread a block: a streaming pass costs what `cat` does (a copy into a
        buffer that stays in the CPU cache), neither a page fault per mapped page nor an open
        per block."""
        dtype, start, nbytes = self._span(first, count, np_dtype)
        step = into.nbytes // dtype.itemsize
        if self.inflated is not None or not nbytes or remote.is_remote(self.path):
            for at in range(first, first + count, step):
                yield self.read(at, min(step, first + count - at), np_dtype, into)
            return
        with self._file(self.offset + start + nbytes) as f:
            fd, position = f.fileno(), self.offset + start
            for at in range(0, count, step):
                size = min(step, count - at) * dtype.itemsize
                block = into[:size]
                if os.preadv(fd, [block.data], position + at * dtype.itemsize) != size:
                    raise self._ended()
                yield block.view(dtype)

    def mapped(self, first: int, count: int, np_dtype=None) -> np.ndarray:
        """Like read, but a read-only view of the file's pages: no copy and no fresh memory to
        fault in, which halves the time of a streaming pass. The mapping goes away with the
        last view of it."""
        dtype, start, nbytes = self._span(first, count, np_dtype)
        if self.inflated is not None or nbytes == 0 or remote.is_remote(self.path):
            return self.read(first, count, np_dtype)
        position = self.offset + start
        aligned = position - position % mmap.ALLOCATIONGRANULARITY
        with self._file(position + nbytes) as f:
            # not MAP_POPULATE: CPython holds the GIL through mmap(), so populating a cold chunk
            # froze the GUI thread for the whole disk read; faults inside numpy do not
            pages = mmap.mmap(
                f.fileno(), position + nbytes - aligned, offset=aligned, access=mmap.ACCESS_READ
            )
        return np.frombuffer(pages, dtype=dtype, count=count, offset=position - aligned)

    def prefetch(self, ranges: list, np_dtype=None, advice: int | None = None):
        """Ask the OS to start reading these (first, count) element ranges all at once: a few
        scattered reads from a cold file then cost one disk round trip, not one each. (With
        POSIX_FADV_DONTNEED: tell it they are done with.)"""
        if (
            self.inflated is not None
            or not hasattr(os, "posix_fadvise")
            or remote.is_remote(self.path)
        ):
            return
        with self._file(0) as f:
            for first, count in ranges:
                _, start, nbytes = self._span(first, count, np_dtype)
                os.posix_fadvise(
                    f.fileno(),
                    self.offset + start,
                    nbytes,
                    os.POSIX_FADV_WILLNEED if advice is None else advice,
                )

    def direct_descriptor(self) -> int | None:
        """An O_DIRECT descriptor of the file, reopened through its open handle (the same
        file, whatever its path names now); None where there is none to have."""
        if self.path is None or remote.is_remote(self.path) or not hasattr(os, "O_DIRECT"):
            return None
        try:
            with self._file(0) as f:
                return os.open(f"/proc/self/fd/{f.fileno()}", os.O_RDONLY | os.O_DIRECT)
        except (OSError, CheckpointError):
            return None

    def read_direct(
        self, fd: int | None, first: int, count: int, dtype: np.dtype, buffer: np.ndarray
    ) -> np.ndarray | None:
        """Elements [first, first + count) read through `fd` (direct_descriptor): the whole
        blocks around them, into the block-aligned part of `buffer`; None where fd is None or
        the read is refused."""
        if fd is None:
            return None
        _, start, nbytes = self._span(first, count, dtype)
        position = self.offset + start
        low = position - position % DIRECT_ALIGN
        high = -(-(position + nbytes) // DIRECT_ALIGN) * DIRECT_ALIGN
        skip = -buffer.ctypes.data % DIRECT_ALIGN
        if skip + high - low > buffer.size:
            return None
        try:
            got = os.preadv(fd, [buffer[skip : skip + high - low].data], low)
        except OSError:
            return None
        if got < position + nbytes - low:
            raise self._ended()
        inner = skip + position - low
        return buffer[inner : inner + nbytes].view(dtype)

    def _span(self, first: int, count: int, np_dtype):
        dtype = np_dtype or self.np_dtype
        start, nbytes = first * dtype.itemsize, count * dtype.itemsize
        if start + nbytes > self.storage.nbytes:
            raise CheckpointError(f"read past the end of storage {self.storage.key!r}")
        return dtype, start, nbytes

    @contextlib.contextmanager
    def _file(self, needed_size: int):
        """The open file, checked to still hold `needed_size` bytes (a mapping past the end
        would kill the process with SIGBUS instead of raising)."""
        assert self.path is not None  # an inflated record is read from memory
        try:
            with remote.open_source(self.path) as f:
                if f.size < needed_size:
                    raise self._ended()
                yield f
        except FileNotFoundError:
            raise CheckpointError(f"{self.path} has disappeared since it was opened") from None
        except OSError as exc:
            raise CheckpointError(f"{self.path} cannot be read ({exc.strerror or exc})") from None

    def _ended(self) -> CheckpointError:
        return CheckpointError(
            f"file ended while reading storage {self.storage.key!r} "
            "(changed or truncated since it was opened?)"
        )


def larger_than_memory(reader: StorageReader) -> bool:
    if reader.path is None or not hasattr(os, "posix_fadvise") or remote.is_remote(reader.path):
        return False
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return os.path.getsize(reader.path) > memory // 2
    except (OSError, ValueError):
        return False
