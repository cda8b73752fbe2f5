"""A loopback HTTP server with byte-range support that counts what it serves.

Python's http.server ignores Range. This one serves the files of one folder on 127.0.0.1 only
(HEAD and GET, `Range: bytes=a-b`, `bytes=a-` and `bytes=-n`, an ETag and Last-Modified from
the file's stat), counts requests and body bytes, and shuts itself down after `lifetime`
seconds whatever happens to the test that started it."""

from __future__ import annotations

import os
import re
import socket
import threading
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


class RangeServer:
    def __init__(
        self,
        folder: str,
        lifetime: float = 600,
        statuses: dict | None = None,
        validators: bool = True,
    ):
        self.folder = os.path.abspath(folder)
        self.statuses = statuses or {}  # {"/name": 403} answers that status for that path
        self.validators = validators  # ETag and Last-Modified, from the file's stat
        self.requests: list[tuple[str, str, str]] = []  # (method, path, range header)
        self.bytes_sent = 0
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.timer = threading.Timer(lifetime, self.stop)
        self.timer.daemon = True

    def __enter__(self):
        self.thread.start()
        self.timer.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        self.timer.cancel()
        self.server.shutdown()
        self.server.server_close()

    def reset(self):
        with self.lock:
            self.requests.clear()
            self.bytes_sent = 0

    def _handler(self):
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def setup(self):
                super().setup()
                # headers and body go out in two writes: without this, Nagle's algorithm holds
                # the body until the client's delayed ACK of the headers
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_HEAD(self):
                self._serve(body=False)

            def do_GET(self):
                self._serve(body=True)

            def _serve(self, body: bool):
                with owner.lock:
                    owner.requests.append((self.command, self.path, self.headers.get("Range", "")))
                name = unquote(self.path.split("?", 1)[0])
                status = owner.statuses.get(name)
                path = os.path.normpath(os.path.join(owner.folder, name.lstrip("/")))
                if status is None and (
                    not path.startswith(owner.folder + os.sep) or not os.path.isfile(path)
                ):
                    status = 404
                if status is not None:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                stat = os.stat(path)
                size = stat.st_size
                start, end = 0, size  # [start, end)
                match = RANGE.match(self.headers.get("Range", ""))
                if match and (match[1] or match[2]):
                    if match[1]:
                        start = int(match[1])
                        end = min(size, int(match[2]) + 1) if match[2] else size
                    else:
                        start = max(0, size - int(match[2]))
                    if start >= size or start >= end:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{size}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
                else:
                    self.send_response(200)
                self.send_header("Accept-Ranges", "bytes")
                if owner.validators:  # as nginx makes them
                    self.send_header("ETag", f'"{stat.st_mtime_ns:x}-{size:x}"')
                    self.send_header("Last-Modified", formatdate(stat.st_mtime, usegmt=True))
                self.send_header("Content-Length", str(end - start))
                self.end_headers()
                if not body:
                    return
                with open(path, "rb") as f:
                    f.seek(start)
                    remaining = end - start
                    while remaining:
                        chunk = f.read(min(remaining, 1 << 20))
                        if not chunk:
                            break
                        try:
                            self.wfile.write(chunk)
                        except OSError:  # the client went away
                            return
                        with owner.lock:
                            owner.bytes_sent += len(chunk)
                        remaining -= len(chunk)

        return Handler


class ScriptedServer(RangeServer):
    """A RangeServer whose GET answers (and HEAD ones with `heads`) `script(handler, server)`
    may write itself (returning True; False leaves the request to the plain server).
    `stopping` is set when the server stops, so that a script's loops end with it; `written`
    counts what scripts say they sent."""

    def __init__(self, folder: str, script, heads: bool = False, **kwargs):
        self.script, self.stopping, self.written = script, threading.Event(), 0
        self.heads = heads
        self.encodings: list = []  # the Accept-Encoding of each request
        super().__init__(folder, **kwargs)

    def stop(self):
        self.stopping.set()
        super().stop()

    def _handler(self):
        base, owner = super()._handler(), self

        class Handler(base):
            def _serve(self, body):
                owner.encodings.append(self.headers.get("Accept-Encoding"))
                if not ((body or owner.heads) and owner.script(self, owner)):
                    super()._serve(body)

        return Handler
