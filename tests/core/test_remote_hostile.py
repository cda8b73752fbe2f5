"""HTTP servers that misbehave (loopback, 127.0.0.1 only): a trickle, a body that never ends, a
Range ignored with a huge body, a gzip answer, a file that changes between requests. Each
request is bounded and refused in one line; an export never mixes two versions of a file. Every
server loop is bounded and stops with the server; the command line runs in a subprocess with a
timeout, its read timeout shortened through CKPT_VIEWER_READ_TIMEOUT."""

import gzip
import os
import re
import subprocess
import sys

import pytest
import torch
from rangeserver import RANGE, RangeServer, ScriptedServer

import builders
from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.listing import remote
from ckpt_viewer.core.listing.open import open_checkpoint
from ckpt_viewer.core.progress import run
from ckpt_viewer.core.values.torch_bridge import read_tensor
from ckpt_viewer.core.writing.export import ExportPlan, export

pytest.importorskip("aiohttp")

CHUNK = 64 * 1024


def asked(handler, size):
    """The [start, end) a GET asked for."""
    match = RANGE.match(handler.headers.get("Range", ""))
    return int(match[1]), min(size, int(match[2]) + 1)


def head(handler, status, headers):
    handler.send_response(status)
    for name, value in headers.items():
        handler.send_header(name, str(value))
    handler.end_headers()


def pour(handler, owner, chunk=b"\0" * CHUNK, limit=1 << 30, pause=0.0):
    """Writes `chunk` again and again, up to `limit` bytes, until the client goes away or the
    server stops."""
    sent = 0
    while sent < limit and not owner.stopping.is_set():
        try:
            handler.wfile.write(chunk)
        except OSError:
            break
        sent += len(chunk)
        owner.written += len(chunk)
        if pause:
            owner.stopping.wait(pause)
    handler.close_connection = True
    return True


def file_of(tmp_path, megabytes=2):
    torch.manual_seed(0)
    path = builders.save({"w": torch.randn(megabytes * 1024 * 256)}, tmp_path / "w.pt")
    return os.path.getsize(path)


def cli(*args):
    """(exit status, stderr without the memory line, peak RSS in MB or None)."""
    env = dict(
        os.environ,
        PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""),
        CKPT_VIEWER_READ_TIMEOUT="1",
        CKPT_VIEWER_CONNECT_TIMEOUT="2",
    )
    out = subprocess.run(
        [sys.executable, "-c", builders.PEAK_OF_CLI, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    lines = out.stderr.splitlines(keepends=True)
    peak = None
    if lines and lines[-1].startswith("peak-kb"):
        peak = int(lines.pop().split()[1]) / 1024
    return out.returncode, "".join(lines), peak


def refused(tmp_path, script, pattern):
    """`inspect` of w.pt served by `script`: exit 2, one line matching `pattern`, under 1 GB."""
    file_of(tmp_path)
    with ScriptedServer(str(tmp_path), script, lifetime=60) as server:
        url = f"{server.url}/w.pt"
        status, stderr, peak = cli("inspect", url)
    assert status == 2 and stderr.count("\n") == 1, stderr
    assert re.fullmatch(f"error: {re.escape(url)}: {pattern}\n", stderr), stderr
    assert peak is None or peak < 1024
    return server


def test_trickling_body_times_out(tmp_path):
    def trickle(handler, owner):
        start, end = asked(handler, os.path.getsize(tmp_path / "w.pt"))
        head(
            handler,
            206,
            {
                "Content-Range": f"bytes {start}-{end - 1}/{os.path.getsize(tmp_path / 'w.pt')}",
                "Content-Length": end - start,
            },
        )
        return pour(handler, owner, b"x", limit=end - start, pause=0.02)

    refused(tmp_path, trickle, r"timed out \(the server sends too slowly\)")


def test_trickling_headers_time_out(tmp_path):
    def trickle(handler, owner):  # a status line, then one header for ever
        handler.wfile.write(b"HTTP/1.1 206 Partial Content\r\nX-Slow: ")
        return pour(handler, owner, b"a", limit=8000, pause=0.02)

    refused(tmp_path, trickle, "timed out")


def test_endless_body_is_cut_off(tmp_path):
    size = file_of(tmp_path)

    def endless(handler, owner):  # the right range, then zeros for ever (no length)
        start, end = asked(handler, size)
        head(
            handler,
            206,
            {"Content-Range": f"bytes {start}-{end - 1}/{size}", "Connection": "close"},
        )
        return pour(handler, owner)

    server = refused(
        tmp_path,
        endless,
        r"the server sent more than the [\d,]+ bytes asked "
        r"for \(it ignored the byte range\?\)",
    )
    assert server.written < 64 << 20


def test_range_ignored_with_a_huge_body_is_refused(tmp_path):
    def whole(handler, owner):  # 200 and 2 GB, whatever was asked
        head(handler, 200, {"Content-Length": 2 << 30})
        return pour(handler, owner, limit=2 << 30)

    server = refused(
        tmp_path,
        whole,
        r"the server ignored the byte range [\d,]+-[\d,]+ and "
        r"sent the whole file \(no byte-range support\?\)",
    )
    assert server.written < 64 << 20


def test_gzip_answer_is_refused(tmp_path):
    size = file_of(tmp_path)
    packed = gzip.compress((tmp_path / "w.pt").read_bytes())

    def gzipped(handler, owner):  # a "bomb" would be worse; any encoding is refused
        start, end = asked(handler, size)
        head(
            handler,
            206,
            {
                "Content-Range": f"bytes {start}-{end - 1}/{size}",
                "Content-Encoding": "gzip",
                "Content-Length": len(packed),
            },
        )
        handler.wfile.write(packed)
        return True

    server = refused(
        tmp_path,
        gzipped,
        "the server sent gzip-encoded bytes although only unencoded ones were asked for",
    )
    assert server.encodings and set(server.encodings) == {"identity"}


def test_wrong_content_range_is_refused(tmp_path):
    size = file_of(tmp_path)

    def elsewhere(handler, owner):
        head(handler, 206, {"Content-Range": f"bytes 0-9/{size}", "Content-Length": 10})
        handler.wfile.write(b"0123456789")
        return True

    refused(
        tmp_path,
        elsewhere,
        r"the server answered a request for bytes [\d,]+-[\d,]+ "
        r"with bytes 0-9/\d+",
    )


def test_short_body_is_refused(tmp_path):
    size = file_of(tmp_path)

    def short(handler, owner):  # half of what it asked, then the connection closes
        start, end = asked(handler, size)
        head(
            handler,
            206,
            {"Content-Range": f"bytes {start}-{end - 1}/{size}", "Connection": "close"},
        )
        handler.wfile.write(b"\0" * ((end - start) // 2))
        handler.close_connection = True
        return True

    refused(
        tmp_path,
        short,
        r"the server's answer ended after [\d,]+ of the [\d,]+ bytes "
        r"asked for",
    )


def test_export_cut_off_at_the_tensor_leaves_nothing(tmp_path):
    """Opening goes well; the tensor's own range gets a body that never ends."""
    size = file_of(tmp_path)

    def endless_values(handler, owner):
        start, end = asked(handler, size)
        if end - start <= remote.LARGE:
            return False
        head(
            handler,
            206,
            {"Content-Range": f"bytes {start}-{end - 1}/{size}", "Connection": "close"},
        )
        return pour(handler, owner)

    out = tmp_path / "out.safetensors"
    with ScriptedServer(str(tmp_path), endless_values, lifetime=60) as server:
        url = f"{server.url}/w.pt"
        status, stderr, peak = cli("export", url, "-o", str(out), "--format", "safetensors")
    assert status == 2 and re.fullmatch(
        f"error: {re.escape(url)}: the server sent more than "
        r"the [\d,]+ bytes asked for \(it ignored the byte "
        r"range\?\)\n",
        stderr,
    ), stderr
    assert server.written < 64 << 20 and (peak is None or peak < 1024)
    assert sorted(os.listdir(tmp_path)) == ["w.pt"]


def test_in_process_trickle_times_out(tmp_path, monkeypatch):
    monkeypatch.setattr(remote, "READ_TIMEOUT", 0.5)
    size = file_of(tmp_path)

    def trickle(handler, owner):
        start, end = asked(handler, size)
        head(
            handler,
            206,
            {"Content-Range": f"bytes {start}-{end - 1}/{size}", "Content-Length": end - start},
        )
        return pour(handler, owner, b"x", limit=end - start, pause=0.02)

    with ScriptedServer(str(tmp_path), trickle, lifetime=60) as server:
        with pytest.raises(CheckpointError, match="^timed out"):
            open_checkpoint(f"{server.url}/w.pt")


# --- a file that changes between requests ----------------------------------------------------


def two_versions(tmp_path):
    """w.pt of two 2 MB tensors (read by ranges of their own at export), and a second version
    of the same size."""
    torch.manual_seed(0)
    first = builders.save({"a": torch.randn(1 << 19), "b": torch.randn(1 << 19)}, tmp_path / "w.pt")
    (tmp_path / "v2").mkdir()  # the same name: the same archive prefix
    second = builders.save(
        {"a": torch.randn(1 << 19), "b": torch.randn(1 << 19)}, tmp_path / "v2" / "w.pt"
    )
    assert os.path.getsize(first) == os.path.getsize(second)
    return first, second


def replace(path, source):
    """`source` takes the place of `path`, a second newer (its ETag and Last-Modified change)."""
    stat = os.stat(path)
    os.replace(source, path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))


@pytest.mark.parametrize("validators", [True, False])
def test_export_of_a_file_changed_on_the_server_is_refused(tmp_path, validators):
    first, second = two_versions(tmp_path)
    if not validators:  # no ETag, no Last-Modified: a changed size still tells
        builders.save({"a": torch.randn(1 << 19), "b": torch.randn(1 << 20)}, second)
    out = tmp_path / "out.safetensors"
    with RangeServer(str(tmp_path), lifetime=60, validators=validators) as server:
        checkpoint = open_checkpoint(f"{server.url}/w.pt")
        replace(first, second)
        with pytest.raises(
            CheckpointError, match="the file changed on the server while it was read"
        ) as error:
            run(export(checkpoint, ExportPlan(format="safetensors"), str(out)))
    assert ("ETag" if validators else "size") in str(error.value)
    assert not out.exists()


def test_a_changed_file_opened_again_reads_the_new_version(tmp_path):
    first, second = two_versions(tmp_path)
    expected = torch.load(second, weights_only=True)
    with RangeServer(str(tmp_path), lifetime=60) as server:
        open_checkpoint(f"{server.url}/w.pt")
        replace(first, second)
        checkpoint = open_checkpoint(f"{server.url}/w.pt")
        for key in ("a", "b"):
            assert torch.equal(read_tensor(checkpoint.find(key).tensor), expected[key])


def test_unchanged_file_exports_bit_for_bit(tmp_path):
    first, _ = two_versions(tmp_path)
    expected = torch.load(first, weights_only=True)
    out = tmp_path / "out.safetensors"
    with RangeServer(str(tmp_path), lifetime=60) as server:
        run(
            export(
                open_checkpoint(f"{server.url}/w.pt"), ExportPlan(format="safetensors"), str(out)
            )
        )
    from safetensors.torch import load_file

    written = load_file(out)
    assert written.keys() == expected.keys()
    assert all(torch.equal(written[k], expected[k]) for k in expected)


@pytest.mark.parametrize(
    "text, seconds",
    [("2.5", 2.5), ("abc", 30), ("0", 30), ("-1", 30), ("nan", 30), ("inf", 30), ("", 30)],
)
def test_timeout_variables(monkeypatch, text, seconds):
    monkeypatch.setenv("CKPT_VIEWER_CONNECT_TIMEOUT", text)
    assert remote._seconds("CKPT_VIEWER_CONNECT_TIMEOUT", 30) == seconds
