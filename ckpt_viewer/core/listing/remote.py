"""The one seam between the readers and bytes: local paths and URLs alike.

A URL (`s3://`, `gs://`, `hf://`, `http(s)://`, any fsspec protocol) is read by byte ranges
through fsspec and the protocol's own filesystem (s3fs, gcsfs, huggingface_hub, aiohttp), with
credentials from that library's standard chain; nothing here stores them. fsspec is imported
only for a URL: a local path goes straight to `os.open()` and `os.path`.

Within an `opening()` (open_checkpoint), each path or URL is resolved once into a `Source`:
folder or regular file, its size, its identity and first bytes, and one handle that every
sniff, probe and reader shares; nothing opens the path again, so it cannot turn into a FIFO,
change or be swapped between two looks. Its identity stays pinned: a later read (values,
export, verify) opens the path afresh and refuses a file that is not the one opened.

Remote bytes go through a small shared cache of fixed, aligned blocks per URL (the readers open
the same file many times: sniff, end record, directory, data.pkl, each record's header): a read
fetches the missing blocks it covers in one request per contiguous run. A read larger than
LARGE (tensor values) is fetched exactly and kept in an anonymous temporary file, so the second
and third passes of a statistic read the same ranges from disk, not the network; a read that a
kept range covers (a statistic after the CRC pass of `stats`) is served from it, so a tensor
crosses the network once.

HTTP(S) is spoken here over aiohttp rather than through fsspec's cat_file, which holds a whole
answer in memory however long, inflates gzip, waits on a trickle for ever and never notices the
file changing between requests. Every request is bounded: connect and read-stall timeouts
(CKPT_VIEWER_CONNECT_TIMEOUT, CKPT_VIEWER_READ_TIMEOUT seconds), a floor on the transfer rate,
never more bytes than were asked for, no content encoding; and the size, ETag and Last-Modified
seen first are pinned: a later answer from another version of the file is refused."""

from __future__ import annotations

import bisect
import contextlib
import contextvars
import errno
import functools
import io
import os
import posixpath
import re
import stat
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from typing import IO, TYPE_CHECKING, Any, TypeVar, cast

from ckpt_viewer.core import CheckpointError

BLOCK = 256 * 1024  # cached block size
LARGE = 1024 * 1024  # larger reads are fetched exactly (the legacy reader's 1 MiB
# pickle windows stay cached: they overlap one another)
CACHE_BLOCKS = 256  # per URL: 64 MiB at most
SPILL_LIMIT = 4 << 30  # large reads kept on disk, per URL (then the spill starts over)
CACHED_URLS = 16
T = TypeVar("T")
Identity = tuple[int, int, int, int]  # a local file's (device, inode, size, mtime)

if TYPE_CHECKING:
    import aiohttp


def _seconds(variable: str, default: float) -> float:
    try:
        value = float(os.environ.get(variable, default))
    except ValueError:
        return default
    return value if 0 < value < 1e6 else default


# HTTP(S): a dead server fails, not hangs (the variables let tests shorten them)
CONNECT_TIMEOUT = _seconds("CKPT_VIEWER_CONNECT_TIMEOUT", 30)
READ_TIMEOUT = _seconds("CKPT_VIEWER_READ_TIMEOUT", 60)
MIN_RATE = 16 * 1024  # bytes/s an answer must average over every READ_TIMEOUT window

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def is_remote(path: object) -> bool:
    return isinstance(path, str) and _URL.match(path) is not None


def _is_http(url: str) -> bool:
    return url.lower().startswith(("http://", "https://"))


def _failure(url: str, exc: BaseException) -> CheckpointError:
    """One line for what went wrong with a URL (the caller prefixes the URL)."""
    status = _status(exc)
    cause = exc.__cause__
    if isinstance(exc, FileNotFoundError) and status is None and cause is not None:
        return _failure(url, cause)  # fsspec's size query reports any failure as "not found"
    if isinstance(exc, FileNotFoundError) and status is None:
        status = 404 if _is_http(url) else None
        if status is None:
            return CheckpointError("not found")
    if isinstance(exc, PermissionError) and status is None:
        return CheckpointError("access denied (check the credentials of your environment)")
    if isinstance(status, int):
        return _status_error(status)
    if isinstance(exc, TimeoutError) or "timeout" in type(exc).__name__.lower():
        return CheckpointError("timed out")
    if isinstance(exc, ImportError):
        scheme = url.split("://", 1)[0]
        return CheckpointError(
            f"reading {scheme}:// URLs needs a library that is not installed "
            f"(pip install 'ckpt-viewer[remote]'): {exc}"
        )
    text = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    return CheckpointError(f"cannot be read ({text})")


def _status_error(status: int) -> CheckpointError:
    import http

    try:
        phrase = http.HTTPStatus(status).phrase.lower()
    except ValueError:
        phrase = "error"
    return CheckpointError(f"HTTP {status} {phrase}")


def _status(exc: BaseException | None) -> int | None:
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


def _filesystem(url: str) -> tuple[Any, str]:
    try:
        import fsspec
    except ImportError as exc:
        raise _failure(url, exc) from None
    try:
        found: tuple[Any, str] = fsspec.core.url_to_fs(url)  # (filesystem, path in it)
        return found
    except Exception as exc:  # noqa: BLE001 - an unknown protocol or a missing library
        raise _failure(url, exc) from None


_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)$")


class _Http:
    """One HTTP(S) file: its size at open, then byte ranges, each answer checked against what
    was asked and against the version of the file first seen (`pins`, kept per URL)."""

    def __init__(self, url: str, pins: dict[str, Any]) -> None:
        try:
            import fsspec
        except ImportError as exc:
            raise _failure(url, exc) from None
        self.url, self.pins = url, pins
        # fsspec's filesystem for its event loop thread and the session it closes at exit
        self.fs = fsspec.filesystem("http", client_kwargs={"auto_decompress": False})
        self.size = self._sync(self._size)

    def cat(self, start: int, end: int) -> bytes:
        return self._sync(self._get, start, end)

    def _sync(self, coroutine: Callable[..., Awaitable[T]], *args: Any) -> T:
        from fsspec.asyn import sync

        return cast(T, sync(self.fs.loop, coroutine, *args))

    async def _size(self) -> int:
        response = await self._request("HEAD")
        try:
            if response.status == 200 and response.content_length is not None:
                self._check(response)
                return response.content_length
            if 200 < response.status < 300:  # "no content" and the like: not this file's size
                raise _status_error(response.status)
        finally:
            response.release()  # no body: the connection serves the next request
        # no HEAD (a URL signed for GET only) or no length in it: the first byte tells
        response = await self._request("GET", 0, 1)
        try:
            return self._check(response, 0, 1)
        finally:
            response.close()

    async def _get(self, start: int, end: int) -> bytes:
        response = await self._request("GET", start, end)
        try:
            self._check(response, start, end)
            data = await self._body(response, end - start)
        except BaseException:
            response.close()
            raise
        response.release()
        return data

    async def _request(
        self, method: str, start: int | None = None, end: int | None = None
    ) -> aiohttp.ClientResponse:
        """The answer's status and headers, within the connect and read timeouts however
        slowly the server sends them."""
        import asyncio  # here, not at the top: it doubles the import time of every local open

        import aiohttp

        session = await self.fs.set_session()
        headers = {"Accept-Encoding": "identity"}
        if start is not None and end is not None:
            headers["Range"] = f"bytes={start}-{end - 1}"
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT
        )
        try:
            # wait_for, not asyncio.timeout: that is Python 3.11+, and 3.10 is supported
            response: aiohttp.ClientResponse = await asyncio.wait_for(
                session.request(
                    method, self.url, headers=headers, timeout=timeout, allow_redirects=True
                ),
                CONNECT_TIMEOUT + READ_TIMEOUT,
            )
            return response
        except aiohttp.TooManyRedirects:
            raise CheckpointError("too many redirects") from None
        except aiohttp.ClientResponseError as exc:
            # not an answer's status (nothing here raises for one): aiohttp could not parse it
            text = str(exc.message).split(":")[0].strip()[:80] or "unreadable"
            raise CheckpointError(f"the server's answer is not valid HTTP ({text})") from None

    def _check(
        self, response: aiohttp.ClientResponse, start: int | None = None, end: int | None = None
    ) -> int:
        """Refuses an answer that is not the bytes [start, end) of the pinned version of the
        file; returns the file's size."""
        if response.status not in (200, 206):
            raise _status_error(response.status)
        headers = response.headers
        encoding = headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise CheckpointError(
                f"the server sent {_shown(encoding)}-encoded bytes although "
                "only unencoded ones were asked for"
            )
        size = response.content_length
        if (
            start is not None
            and end is not None
            and response.status == 200
            and (start or end != size)
        ):
            raise CheckpointError(
                f"the server ignored the byte range {start:,}-{end - 1:,} and "
                "sent the whole file (no byte-range support?)"
            )
        if response.status == 206:
            if start is None or end is None:
                raise CheckpointError(
                    "the server sent part of the file where all of it was asked for"
                )
            match = _CONTENT_RANGE.match(headers.get("Content-Range", ""))
            if match is None or (int(match[1]), int(match[2]) + 1) != (start, end):
                got = _shown(headers.get("Content-Range", "nothing"))
                raise CheckpointError(
                    f"the server answered a request for bytes {start:,}-{end - 1:,} with {got}"
                )
            if size is not None and size != end - start:
                raise CheckpointError(
                    f"the server answered a request for {end - start:,} "
                    f"bytes with a body of {size:,}"
                )
            size = int(match[3]) if match[3] != "*" else self.pins.get("size")
        observed = {
            "size": size,
            "ETag": headers.get("ETag", "").removeprefix("W/") or None,
            "Last-Modified": headers.get("Last-Modified"),
        }
        for name, value in observed.items():
            pinned = self.pins.get(name)
            if pinned is None:
                self.pins[name] = value
            elif value is not None and value != pinned:
                raise CheckpointError(
                    f"the file changed on the server while it was read "
                    f"(its {name} was {_shown(pinned)}, is now "
                    f"{_shown(value)}); reopen it"
                )
        if not isinstance(self.pins.get("size"), int):
            raise CheckpointError("the server does not say how large the file is")
        return cast(int, self.pins["size"])

    async def _body(self, response: aiohttp.ClientResponse, length: int) -> bytes:
        """Exactly `length` bytes, cut off at the first byte more, and at least MIN_RATE bytes/s
        in every READ_TIMEOUT window (a trickle never stalls long enough for the socket's own
        timeout)."""
        import asyncio

        out, got = bytearray(length), 0
        clock = asyncio.get_running_loop().time
        window_end, window_got = clock() + READ_TIMEOUT, 0
        while True:
            left = window_end - clock()
            if left <= 0:
                if got - window_got < min(MIN_RATE * READ_TIMEOUT, length - window_got):
                    raise CheckpointError("timed out (the server sends too slowly)")
                window_end, window_got = clock() + READ_TIMEOUT, got
                continue
            try:
                chunk = await asyncio.wait_for(response.content.readany(), left)
            except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
                continue
            if not chunk:
                break
            if got + len(chunk) > length:
                raise CheckpointError(
                    f"the server sent more than the {length:,} bytes asked "
                    "for (it ignored the byte range?)"
                )
            out[got : got + len(chunk)] = chunk
            got += len(chunk)
        if got != length:
            raise CheckpointError(
                f"the server's answer ended after {got:,} of the {length:,} bytes asked for"
            )
        return bytes(out)


def _shown(text: object) -> str:
    """A header value as one short printable line."""
    return repr(str(text)[:80])[1:-1]


class _Blob:
    """One remote file: its size and a bounded LRU of aligned blocks, shared by every open."""

    def __init__(self, url: str, size: int | None = None) -> None:
        self.url = url
        if _is_http(url):
            self.http: _Http | None = self._call(_Http, url, _pins.setdefault(url, {}))
            self.size = self.http.size
        else:
            self.http = None
            self.fs, self.path = _filesystem(url)
            self.size = self._call(self.fs.size, self.path) if size is None else size
        if not isinstance(self.size, int):
            raise CheckpointError("the server does not say how large the file is")
        self.blocks: OrderedDict[int, bytes] = OrderedDict()
        self.lock = threading.Lock()
        self.spill: IO[bytes] | None = None  # temporary file of large reads
        self.spilled: list[tuple[int, int, int]] = []  # sorted, disjoint (start, end, where)
        self.spill_end = 0

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return fn(*args)
        except CheckpointError:
            raise
        except Exception as exc:  # noqa: BLE001 - every library raises its own kinds
            raise _failure(self.url, exc) from None

    def fetch(self, start: int, end: int) -> bytes:
        """Bytes [start, end) in one range request."""
        if self.http is not None:
            return self._call(self.http.cat, start, end)
        # By keyword: s3fs's cat_file takes a version id before start and end.
        data: bytes = self._call(lambda: self.fs.cat_file(self.path, start=start, end=end))
        if len(data) != end - start:
            raise CheckpointError(
                f"the server answered a request for bytes {start:,}-{end - 1:,} "
                f"with {len(data):,} bytes (no byte-range support?)"
            )
        return data

    def read(self, start: int, length: int) -> bytes:
        end = min(start + max(length, 0), self.size)
        if start >= end:
            return b""
        if end - start > LARGE:
            return self._large(start, end)
        first, last = start // BLOCK, (end - 1) // BLOCK
        with self.lock:
            if self.spilled:  # a window inside a tensor a pass already fetched
                parts = self._kept(start, end)
                kept = [data for _, _, data in parts if data is not None]
                if len(kept) == len(parts):
                    return b"".join(kept)
            wanted = range(first, last + 1)
            missing = [i for i in wanted if i not in self.blocks]
            for run_start, run_end in _runs(missing):
                data = self.fetch(run_start * BLOCK, min((run_end + 1) * BLOCK, self.size))
                for i in range(run_start, run_end + 1):
                    self.blocks[i] = data[(i - run_start) * BLOCK : (i - run_start + 1) * BLOCK]
            pieces = []
            for i in wanted:
                self.blocks.move_to_end(i)
                pieces.append(self.blocks[i])
            while len(self.blocks) > max(CACHE_BLOCKS, len(wanted)):
                self.blocks.popitem(last=False)
        joined = b"".join(pieces)
        return joined[start - first * BLOCK : end - first * BLOCK]

    def _large(self, start: int, end: int) -> bytes:
        with self.lock:
            parts = self._kept(start, end)
        pieces = []
        for part_start, part_end, data in parts:
            if data is None:
                data = self.fetch(part_start, part_end)
                self._keep(part_start, data)
            pieces.append(data)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _kept(self, start: int, end: int) -> list[tuple[int, int, bytes | None]]:
        """[start, end) as (start, end, bytes) pieces read from the spill and (start, end,
        None) gaps to fetch."""
        parts: list[tuple[int, int, bytes | None]] = []
        position, spilled = start, self.spilled
        i = max(bisect.bisect_left(spilled, (start + 1,)) - 1, 0)
        while position < end:
            if i < len(spilled) and spilled[i][1] <= position:
                i += 1
            elif i < len(spilled) and spilled[i][0] <= position:
                kept_start, kept_end, where = spilled[i]
                stop = min(kept_end, end)
                assert self.spill is not None  # made with the first piece spilled
                self.spill.seek(where + position - kept_start)
                parts.append((position, stop, self.spill.read(stop - position)))
                position = stop
            else:
                stop = min(spilled[i][0], end) if i < len(spilled) else end
                parts.append((position, stop, None))
                position = stop
        return parts

    def _keep(self, start: int, data: bytes) -> None:
        end = start + len(data)
        with self.lock:
            if self.spill_end + len(data) > SPILL_LIMIT:
                self.spilled.clear()
                self.spill_end = 0
            i = bisect.bisect_left(self.spilled, (start,))
            if (i and self.spilled[i - 1][1] > start) or (
                i < len(self.spilled) and self.spilled[i][0] < end
            ):
                return  # another thread kept (part of) it meanwhile
            if self.spill is None:
                import tempfile

                self.spill = tempfile.TemporaryFile(prefix="ckpt-viewer-")
            self.spill.seek(self.spill_end)
            self.spill.write(data)
            self.spilled.insert(i, (start, end, self.spill_end))
            self.spill_end += len(data)


def _runs(indices: list[int]) -> Iterator[tuple[int, ...]]:
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
_pins: dict[str, dict[str, Any]] = {}  # URL -> its size, ETag, Last-Modified as first seen (HTTP)
_blobs_lock = threading.Lock()


def _blob(url: str, size: int | None = None) -> _Blob:
    """The URL's shared block cache (`size`: the file's, where the caller was just told it)."""
    with _blobs_lock:
        blob = _blobs.get(url)
        if blob is not None:
            _blobs.move_to_end(url)
            return blob
    blob = _Blob(url, size)
    with _blobs_lock:
        _blobs[url] = blob
        while len(_blobs) > CACHED_URLS:
            _blobs.popitem(last=False)
    return blob


def forget(url: str) -> None:
    """Drop what is cached of a URL (its size, version, blocks): opening it again asks afresh."""
    with _blobs_lock:
        _blobs.pop(url, None)
        _pins.pop(url, None)


class PositionedFile(io.RawIOBase):
    """A read-only, seekable file of `size` bytes that keeps its own position (subclasses set
    `size` and `position` and read at the position in readinto/read)."""

    size: int
    position: int

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


class RemoteFile(PositionedFile):
    """A seekable, read-only binary file over a URL's shared block cache."""

    def __init__(self, blob: _Blob):
        super().__init__()
        self.blob, self.size, self.name, self.position = blob, blob.size, blob.url, 0

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self.size - self.position
        data = self.blob.read(self.position, size)
        self.position += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)


HEAD_BYTES = 512  # what sniffing looks at
SESSION_FDS = 64  # open files one opening keeps at most (a DCP folder may hold thousands)


class SizedReader(io.BufferedReader):
    """A local file read through its Source's handle, with the `.size` a RemoteFile has."""

    size: int


SizedFile = RemoteFile | SizedReader  # what open_source gives: either has `.size`


class Source:
    """One path or URL, resolved and opened once: a folder (its entries listed once) or a
    regular file (its size, its identity and its first bytes, with one open handle that every
    sniff and reader shares). A local file's identity is (device, inode, size, mtime); a URL's
    size, ETag and Last-Modified are pinned by its block cache."""

    def __init__(self, path: str, pin: bool) -> None:
        self.path, self.pin = path, pin
        self.folder = False
        self.entries: dict[str, bool] = {}  # a folder's names -> whether each is a folder
        self.size = 0
        self.fd: int | None = None
        self.blob: _Blob | None = None
        self.identity: Identity | None = None
        self.memo: dict[str, Any] = {}  # what readers parsed of it once (see `remembered`)
        if is_remote(path):
            self._resolve_url()
        else:
            self._resolve_local()

    def _resolve_url(self) -> None:
        url, size = self.path, None
        with _blobs_lock:
            known = _blobs.get(url)  # a file already asked about (values read after opening)
        # HTTP has no folders (and listing one would GET the whole file)
        if known is None and not _is_http(url):
            fs, inner = _filesystem(url)
            info = _ask(url, fs.info, inner)  # one question: folder or file, and its size
            if info.get("type") == "directory":
                self.folder = True
                for entry in _ask(url, fs.ls, inner, True):
                    name = posixpath.basename(str(entry["name"]).rstrip("/"))
                    self.entries[name] = entry.get("type") == "directory"
                return
            size = info.get("size")
        self.blob = known or _blob(url, size if isinstance(size, int) else None)
        self.size = self.blob.size

    def _resolve_local(self) -> None:
        path = self.path
        # O_NONBLOCK: opening a FIFO waits for a writer; the file is checked before any read
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            try:
                mode = os.stat(path).st_mode
            except OSError:
                raise exc from None
            if stat.S_ISREG(mode):
                raise
            if not stat.S_ISDIR(mode):
                raise not_regular(os.path.basename(path) or path, mode) from None  # a socket
            fd = None  # a folder where folders cannot be opened (Windows)
        try:
            info = os.stat(path) if fd is None else os.fstat(fd)
            self.size = info.st_size
            if stat.S_ISDIR(info.st_mode):
                self.folder = True
                with os.scandir(path if fd is None else fd) as entries:
                    self.entries = {e.name: _entry_is_folder(e) for e in entries}
                return
            if not stat.S_ISREG(info.st_mode):
                raise not_regular(os.path.basename(path) or path, info.st_mode)
            assert fd is not None  # only a folder is looked at without opening it
            os.set_blocking(fd, True)
            self.identity = _identity(info)
            key = os.path.abspath(path)
            if self.pin:
                _pinned[key] = self.identity
            elif _pinned.get(key, self.identity) != self.identity:
                raise changed(path)
            self.fd, fd = fd, None
        finally:
            if fd is not None:
                os.close(fd)

    @functools.cached_property
    def head(self) -> bytes:
        """The first bytes, read once, for sniffing."""
        if self.blob is not None:
            return self.blob.read(0, HEAD_BYTES)
        return os.pread(self.handle(), HEAD_BYTES, 0)

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)

    def __del__(self) -> None:
        self.close()

    def handle(self) -> int:
        """The open file, opened again where an opening holding many let it go, if it is
        still the same file."""
        if self.fd is None:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
            if _identity(os.fstat(fd)) != self.identity:
                os.close(fd)
                raise changed(self.path)
            os.set_blocking(fd, True)
            self.fd = fd
            opening = _session.get()
            if opening is not None and opening.sources.get(self.path) is self:
                opening.hold(self)
        return self.fd

    def reader(self, owned: bool = False) -> SizedFile:
        """A binary file object with `.size` over this source (seeks are its own); closing it
        closes the source only when `owned`."""
        if self.folder:
            raise IsADirectoryError(errno.EISDIR, "is a directory", self.path)
        if self.blob is not None:
            return RemoteFile(self.blob)
        f = SizedReader(_SharedFile(self, owned))
        f.size = self.size
        return f


def _identity(info: os.stat_result) -> Identity:
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns


def _entry_is_folder(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def changed(path: str) -> CheckpointError:
    shown = basename(path) or path
    return CheckpointError(f"{shown} changed since it was opened; reopen it")


class _SharedFile(PositionedFile):
    """Positioned reads (pread) of a Source's one handle: every reader keeps its own
    position, none moves another's."""

    def __init__(self, source: Source, owned: bool) -> None:
        super().__init__()
        self.source, self.owned, self.position = source, owned, 0
        self.name, self.size = source.path, source.size

    def fileno(self) -> int:
        return self.source.handle()

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        fd = self.source.handle()
        if hasattr(os, "preadv"):
            got = os.preadv(fd, [view], self.position)
        else:
            data = os.pread(fd, len(view), self.position)
            got = len(data)
            view[:got] = data
        self.position += got
        return got

    def close(self) -> None:
        if self.owned and not self.closed:
            self.source.close()
        super().close()


_pinned: dict[str, Identity] = {}  # local path -> its identity when it was last opened


class _Opening:
    """The Sources of one opening by path (a failure to resolve one is kept too), and those
    holding an open handle, oldest first."""

    def __init__(self) -> None:
        self.sources: dict[str, Source | BaseException] = {}
        self.handles: OrderedDict[str, Source] = OrderedDict()

    def hold(self, source: Source) -> None:
        """Counts a source's handle as open, letting the oldest go beyond SESSION_FDS (they
        are opened again, checked to be the same file, if read again)."""
        self.handles[source.path] = source
        self.handles.move_to_end(source.path)
        while len(self.handles) > SESSION_FDS:
            _, old = self.handles.popitem(last=False)
            old.close()

    def close(self) -> None:
        for found in self.sources.values():
            if isinstance(found, Source):
                found.close()


_session: contextvars.ContextVar[_Opening | None] = contextvars.ContextVar(
    "ckpt_viewer_opening", default=None
)


@contextlib.contextmanager
def opening() -> Iterator[None]:
    """While this lasts, each path resolves to one Source, made at its first use and shared
    by every later sniff, probe and reader; the files are closed at the end. Each file is
    pinned: a later read (values, export, verify) refuses it if it changed since."""
    if _session.get() is not None:  # within another opening (a shard, a training part)
        yield
        return
    opening = _Opening()
    token = _session.set(opening)
    try:
        yield
    finally:
        _session.reset(token)
        opening.close()


def source(path: str) -> Source:
    """The path's one Source within an opening (resolved at its first use; a failure is
    remembered too); outside one a new Source, which the caller closes."""
    opening = _session.get()
    if opening is None:
        return Source(path, pin=False)
    found = opening.sources.get(path)
    if found is None:
        folder, name = path.rstrip("/").rsplit("/", 1) if is_remote(path) else os.path.split(path)
        parent = opening.sources.get(folder)
        try:
            if isinstance(parent, Source) and parent.folder and name not in parent.entries:
                # the folder was listed once: a name not in it is not asked about again
                raise FileNotFoundError(errno.ENOENT, "no such file or directory", path)
            found = Source(path, pin=True)
        except (OSError, CheckpointError) as exc:
            found = exc
        opening.sources[path] = found
        if isinstance(found, Source) and found.fd is not None:
            opening.hold(found)
    if isinstance(found, BaseException):
        raise found.with_traceback(None)
    return found


def remembered(path: str, what: str, compute: Callable[[], T]) -> T:
    """compute() once per opening for this path (a zip directory that sniffing and the reader
    both need); outside an opening, every time."""
    if _session.get() is None:
        return compute()
    memo = source(path).memo
    if what not in memo:
        memo[what] = compute()
    return cast(T, memo[what])


@contextlib.contextmanager
def _resolved(path: str) -> Iterator[Source]:
    """The path's Source for a quick question: the opening's, or one closed afterwards."""
    if _session.get() is not None:
        yield source(path)
        return
    with Source(path, pin=False) as found:
        yield found


def open_source(path: str) -> SizedFile:
    """A binary file object with `.size` over the path's Source: within an opening the one
    shared handle; outside one a fresh open, refused if the file is not the one last opened."""
    if _session.get() is not None:
        return source(path).reader()
    return Source(path, pin=False).reader(owned=True)


def not_regular(shown: str, mode: int) -> CheckpointError:
    kinds = (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a directory"),
    )
    kind = next((name for test, name in kinds if test(mode)), "a special file")
    return CheckpointError(f"{shown} is {kind}, not a regular file")


def check_regular(path: str) -> None:
    """Refuses a local path that exists but is not a regular file (a FIFO, a device, a
    socket, a folder); a missing one is left to the caller to report."""
    if is_remote(path):
        return
    if _session.get() is not None:
        try:
            found = source(path)
        except OSError:
            return
        if found.folder:
            raise not_regular(os.path.basename(path) or path, stat.S_IFDIR)
        return
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if not stat.S_ISREG(mode):
        raise not_regular(os.path.basename(path) or path, mode)


# --- os.path for local paths and URLs alike --------------------------------------------------


def getsize(path: str) -> int:
    if _session.get() is None and not is_remote(path):
        return os.path.getsize(path)
    with _resolved(path) as found:
        return found.size


def isdir(path: str) -> bool:
    if _session.get() is None and not is_remote(path):
        return os.path.isdir(path)
    if _is_http(path):  # no request: HTTP has no folders
        return False
    try:
        with _resolved(path) as found:
            return found.folder
    except (OSError, CheckpointError):
        return False


def isfile(path: str) -> bool:
    if _session.get() is None and not is_remote(path):
        return os.path.isfile(path)
    try:
        with _resolved(path) as found:
            return not found.folder
    except (OSError, CheckpointError):
        return False


def listdir(folder: str) -> list[str]:
    """Names in a folder (files and folders)."""
    return list(_entries(folder))


def files(folder: str) -> list[str]:
    """Names in a folder that are not folders (a FIFO or device among them is listed, and
    refused when it is opened)."""
    return [name for name, is_folder in _entries(folder).items() if not is_folder]


def _entries(folder: str) -> dict[str, bool]:
    if _is_http(folder):
        return {}
    with _resolved(folder) as found:
        if not found.folder:
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", folder)
        return found.entries


def _ask(url: str, fn: Callable[..., T], *args: Any) -> T:
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - every library raises its own kinds
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
