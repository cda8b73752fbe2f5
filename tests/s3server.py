"""An S3-compatible server on 127.0.0.1 for tests and benchmarks: moto's ThreadedMotoServer
behind a small loopback proxy that counts requests and response body bytes (moto keeps no count).

    with S3Server(lifetime=300) as s3:
        s3.client().create_bucket(Bucket="b")
        with pytest.MonkeyPatch.context() as mp:
            s3.use(mp)           # AWS_ENDPOINT_URL and test credentials in the environment

Both servers stop after `lifetime` seconds whatever happens to the caller. Needs moto[server]
and boto3 (which s3fs depends on)."""

from __future__ import annotations

import http.client
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from moto.server import ThreadedMotoServer

# Hop-by-hop headers (RFC 9110): not forwarded by a proxy.
HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class S3Server:
    def __init__(self, lifetime: float = 600):
        # ThreadedMotoServer binds the port it is given; 0 would bind, but it reports the
        # address only after start, so a free port is picked first.
        self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
        self.requests: list[tuple[str, str, str]] = []  # (method, path, range header)
        self.bytes_sent = 0
        self.lock = threading.Lock()
        self.proxy = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.proxy.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.proxy.server_address[1]}"
        self.thread = threading.Thread(target=self.proxy.serve_forever, daemon=True)
        self.timer = threading.Timer(lifetime, self.stop)
        self.timer.daemon = True
        self.stopped = False

    def __enter__(self):
        self.moto.start()
        self.moto_address = self.moto.get_host_and_port()
        self.thread.start()
        self.timer.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        with self.lock:
            if self.stopped:
                return
            self.stopped = True
        self.timer.cancel()
        self.proxy.shutdown()
        self.proxy.server_close()
        self.moto.stop()

    def reset(self):
        with self.lock:
            self.requests.clear()
            self.bytes_sent = 0

    def environment(self) -> dict[str, str]:
        """What botocore (and so s3fs and boto3) needs to talk to this server only."""
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def use(self, monkeypatch, home):
        """Point the environment at this server; `home` (a temporary folder) stands in for
        ~/.aws so a developer's own profile and config files play no part."""
        for name in (
            "AWS_PROFILE",
            "AWS_SESSION_TOKEN",
            "AWS_ENDPOINT_URL_S3",
            "FSSPEC_S3_ENDPOINT_URL",
        ):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("AWS_CONFIG_FILE", str(home / "config"))
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "credentials"))
        for name, value in self.environment().items():
            monkeypatch.setenv(name, value)

    def client(self):
        """A boto3 S3 client talking to moto directly (uploads are not counted)."""
        import boto3

        host, port = self.moto_address
        return boto3.client(
            "s3",
            endpoint_url=f"http://{host}:{port}",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def _handler(self):
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _forward(self):
                with owner.lock:
                    owner.requests.append((self.command, self.path, self.headers.get("Range", "")))
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
                host, port = owner.moto_address
                upstream = http.client.HTTPConnection(host, port, timeout=600)
                try:
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    answer = upstream.getresponse()
                    declared = answer.getheader("Content-Length")
                    data = None if declared is not None or self.command == "HEAD" else answer.read()
                    self.send_response(answer.status, answer.reason)
                    for name, value in answer.getheaders():
                        if name.lower() not in HOP and name.lower() != "content-length":
                            self.send_header(name, value)
                    self.send_header("Content-Length", declared if data is None else str(len(data)))
                    self.end_headers()
                    if self.command == "HEAD":
                        return
                    if data is not None:
                        self._send(data)
                        return
                    while chunk := answer.read(1 << 20):
                        self._send(chunk)
                finally:
                    upstream.close()

            def _send(self, chunk: bytes):
                self.wfile.write(chunk)
                with owner.lock:
                    owner.bytes_sent += len(chunk)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

        return Handler
