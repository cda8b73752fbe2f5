"""The one seam between the readers and bytes: local paths and URLs alike.

A URL (`s3://`, `gs://`, `hf://`, `http(s)://`, any fsspec protocol) is read by byte ranges
through fsspec and the protocol's own filesystem (s3fs, gcsfs, huggingface_hub, aiohttp), with
credentials from that library's standard chain; nothing here stores them. fsspec is imported
only for a URL: a local path goes straight to `open()` and `os.path`.

Remote bytes go through a small shared cache of fixed, aligned blocks per URL (the readers open
the same file many times: sniff, end record, directory, data.pkl, each record's header): a read
fetches the missing blocks it covers in one request per contiguous run. A read larger than
LARGE (tensor values) is fetched exactly and kept in an anonymous temporary file, so the second
and third passes of a statistic read the same ranges from disk, not the network."""

from __future__ import annotations

import io
import os
import posixpath
import re
import stat
import threading
from collections import OrderedDict

from ckpt_viewer.core import CheckpointError

BLOCK = 256 * 1024           # cached block size
LARGE = 1024 * 1024          # larger reads are fetched exactly (the legacy reader's 1 MiB
                             # pickle windows stay cached: they overlap one another)
CACHE_BLOCKS = 256           # per URL: 64 MiB at most
SPILL_LIMIT = 4 << 30        # large reads kept on disk, per URL (then the spill starts over)
CACHED_URLS = 16
CONNECT_TIMEOUT, READ_TIMEOUT = 30, 60     # seconds, HTTP(S): a dead server fails, not hangs

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def is_remote(path) -> bool:
    return isinstance(path, str) and _URL.match(path) is not None


def _is_http(url: str) -> bool:
    return url.lower().startswith(("http://", "https://"))


def _failure(url: str, exc: BaseException) -> CheckpointError:
    """One line for what went wrong with a URL (the caller prefixes the URL)."""
    import http

    status = _status(exc)
    cause = exc.__cause__
    if isinstance(exc, FileNotFoundError) and status is None and cause is not None:
        return _failure(url, cause)     # fsspec's size query reports any failure as "not found"
    if isinstance(exc, FileNotFoundError) and status is None:
        status = 404 if _is_http(url) else None
        if status is None:
            return CheckpointError("not found")
    if isinstance(exc, PermissionError) and status is None:
        return CheckpointError("access denied (check the credentials of your environment)")
    if isinstance(status, int):
        try:
            phrase = http.HTTPStatus(status).phrase.lower()
        except ValueError:
            phrase = "error"
        return CheckpointError(f"HTTP {status} {phrase}")
    if isinstance(exc, TimeoutError) or "timeout" in type(exc).__name__.lower():
        return CheckpointError("timed out")
    if isinstance(exc, ImportError):
        scheme = url.split("://", 1)[0]
        return CheckpointError(f"reading {scheme}:// URLs needs a library that is not installed "
                               f"(pip install 'ckpt-viewer[remote]'): {exc}")
    text = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    return CheckpointError(f"cannot be read ({text})")


def _status(exc: BaseException) -> int | None:
    """The HTTP status behind an exception, also where a library wrapped it (fsspec turns a
    failed size query into a FileNotFoundError caused by the real answer)."""
    seen = 0
    while exc is not None and seen < 8:
        status = getattr(exc, "status", None)
        if status is None:
            status = getattr(getattr(exc, "response", None), "status_code", None)
        if isinstance(status, int):
            return status
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def _filesystem(url: str):
    try:
        import fsspec
    except ImportError as exc:
        raise _failure(url, exc) from None
    options = {}
    if _is_http(url):
        import aiohttp
        options["client_kwargs"] = {"timeout": aiohttp.ClientTimeout(
            total=None, sock_connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT)}
    try:
        return fsspec.core.url_to_fs(url, **options)
    except Exception as exc:   # noqa: BLE001 - an unknown protocol or a missing library
        raise _failure(url, exc) from None


class _Blob:
    """One remote file: its size and a bounded LRU of aligned blocks, shared by every open."""

    def __init__(self, url: str):
        self.url = url
        self.fs, self.path = _filesystem(url)
        self.size = self._call(self.fs.size, self.path)
        if not isinstance(self.size, int):
            raise CheckpointError("the server does not say how large the file is")
        self.blocks: OrderedDict[int, bytes] = OrderedDict()
        self.lock = threading.Lock()
        self.spill = None                  # temporary file of large reads
        self.spilled: dict[tuple[int, int], int] = {}   # (start, end) -> where in the spill
        self.spill_end = 0

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except CheckpointError:
            raise
        except Exception as exc:   # noqa: BLE001 - every library raises its own kinds
            raise _failure(self.url, exc) from None

    def fetch(self, start: int, end: int) -> bytes:
        """Bytes [start, end) in one range request."""
        # By keyword: s3fs's cat_file takes a version id before start and end.
        data = self._call(lambda: self.fs.cat_file(self.path, start=start, end=end))
        if len(data) != end - start:
            raise CheckpointError(f"the server answered a request for bytes {start:,}-{end - 1:,} "
                                  f"with {len(data):,} bytes (no byte-range support?)")
        return data

    def read(self, start: int, length: int) -> bytes:
        end = min(start + max(length, 0), self.size)
        if start >= end:
            return b""
        if end - start > LARGE:
            return self._large(start, end)
        first, last = start // BLOCK, (end - 1) // BLOCK
        with self.lock:
            wanted = range(first, last + 1)
            missing = [i for i in wanted if i not in self.blocks]
            for run_start, run_end in _runs(missing):
                data = self.fetch(run_start * BLOCK, min((run_end + 1) * BLOCK, self.size))
                for i in range(run_start, run_end + 1):
                    self.blocks[i] = data[(i - run_start) * BLOCK:(i - run_start + 1) * BLOCK]
            pieces = []
            for i in wanted:
                self.blocks.move_to_end(i)
                pieces.append(self.blocks[i])
            while len(self.blocks) > max(CACHE_BLOCKS, len(wanted)):
                self.blocks.popitem(last=False)
        joined = b"".join(pieces)
        return joined[start - first * BLOCK:end - first * BLOCK]


    def _large(self, start: int, end: int) -> bytes:
        with self.lock:
            where = self.spilled.get((start, end))
            if where is not None:
                self.spill.seek(where)
                return self.spill.read(end - start)
        data = self.fetch(start, end)
        with self.lock:
            if self.spill_end + len(data) > SPILL_LIMIT:
                self.spilled.clear()
                self.spill_end = 0
            if self.spill is None:
                import tempfile
                self.spill = tempfile.TemporaryFile(prefix="ckpt-viewer-")
            self.spill.seek(self.spill_end)
            self.spill.write(data)
            self.spilled[(start, end)] = self.spill_end
            self.spill_end += len(data)
        return data


def _runs(indices: list[int]):
    """Sorted block indices as (first, last) runs of neighbours."""
    run = None
    for i in indices:
        if run and i == run[1] + 1:
            run[1] = i
            continue
        if run:
            yield tuple(run)
        run = [i, i]
    if run:
        yield tuple(run)


_blobs: OrderedDict[str, _Blob] = OrderedDict()
_blobs_lock = threading.Lock()


def _blob(url: str) -> _Blob:
    with _blobs_lock:
        blob = _blobs.get(url)
        if blob is not None:
            _blobs.move_to_end(url)
            return blob
    blob = _Blob(url)
    with _blobs_lock:
        _blobs[url] = blob
        while len(_blobs) > CACHED_URLS:
            _blobs.popitem(last=False)
    return blob


def forget(url: str):
    """Drop what is cached of a URL (its size, its blocks): opening it again asks afresh."""
    with _blobs_lock:
        _blobs.pop(url, None)


class RemoteFile(io.RawIOBase):
    """A seekable, read-only binary file over a URL's shared block cache."""

    def __init__(self, blob: _Blob):
        super().__init__()
        self.blob, self.size, self.name, self.position = blob, blob.size, blob.url, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.position, 2: self.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self.position = base + offset
        return self.position

    def tell(self) -> int:
        return self.position

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self.size - self.position
        data = self.blob.read(self.position, size)
        self.position += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[:len(data)] = data
        return len(data)


def open_source(path: str):
    """A binary file object with `.size`: the real file for a local path, a RemoteFile over
    the block cache for a URL."""
    if is_remote(path):
        return RemoteFile(_blob(path))
    # O_NONBLOCK: opening a FIFO waits for a writer; the file is checked before any read
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        check_regular(path)          # a socket cannot be opened at all: say what it is
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise not_regular(os.path.basename(path) or path, info.st_mode)
        os.set_blocking(fd, True)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    f.size = info.st_size
    return f


def not_regular(shown: str, mode: int) -> CheckpointError:
    kinds = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISDIR, "a directory"))
    kind = next((name for test, name in kinds if test(mode)), "a special file")
    return CheckpointError(f"{shown} is {kind}, not a regular file")


def check_regular(path: str):
    """Refuses a local path that exists but is not a regular file (a FIFO, a device, a
    socket), before anything opens it; a missing one is left to the caller to report."""
    if is_remote(path):
        return
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if not stat.S_ISREG(mode):
        raise not_regular(os.path.basename(path) or path, mode)


# --- os.path for local paths and URLs alike --------------------------------------------------

def getsize(path: str) -> int:
    return _blob(path).size if is_remote(path) else os.path.getsize(path)


def isdir(path: str) -> bool:
    if not is_remote(path):
        return os.path.isdir(path)
    if _is_http(path):       # HTTP has no folders (and listing one would GET the whole file)
        return False
    fs, inner = _filesystem(path)
    return _ask(path, fs.isdir, inner)


def isfile(path: str) -> bool:
    if not is_remote(path):
        return os.path.isfile(path)
    try:
        _blob(path)
    except CheckpointError:
        return False
    return True


def listdir(folder: str) -> list[str]:
    """Names in a folder (files and folders)."""
    if not is_remote(folder):
        return os.listdir(folder)
    if _is_http(folder):
        return []
    fs, inner = _filesystem(folder)
    return [posixpath.basename(p.rstrip("/")) for p in _ask(folder, fs.ls, inner, False)]


def _ask(url: str, fn, *args):
    try:
        return fn(*args)
    except Exception as exc:   # noqa: BLE001 - every library raises its own kinds
        raise _failure(url, exc) from None


def join(folder: str, name: str) -> str:
    return folder.rstrip("/") + "/" + name if is_remote(folder) else os.path.join(folder, name)


def dirname(path: str) -> str:
    if not is_remote(path):
        return os.path.dirname(os.path.abspath(path))
    scheme, rest = path.split("://", 1)
    return f"{scheme}://{posixpath.dirname(rest.rstrip('/'))}"


def basename(path: str) -> str:
    return posixpath.basename(path.rstrip("/")) if is_remote(path) else os.path.basename(path)
