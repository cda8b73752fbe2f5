"""URLs read by byte ranges: served over loopback HTTP (tests/rangeserver.py, 127.0.0.1 only)
and from fsspec's in-memory filesystem; never the network. What a URL lists and reads must be
what the same file lists and reads on disk, bit for bit, in a bounded number of requests."""

import json
import os
import socket
import subprocess
import sys
import uuid

import pytest
import torch
from rangeserver import RangeServer

import builders
from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.analysis.verify import verify
from ckpt_viewer.core.listing import remote
from ckpt_viewer.core.listing.open import open_checkpoint
from ckpt_viewer.core.listing.summary import inspect_dict
from ckpt_viewer.core.progress import run
from ckpt_viewer.core.values.stats import compute
from ckpt_viewer.core.values.torch_bridge import read_tensor

pytest.importorskip("aiohttp")


def listing(checkpoint):
    info = inspect_dict(checkpoint)
    return (
        [(t["key"], t["shape"], t["dtype"], t["device"], t["nbytes"]) for t in info["tensors"]],
        info["scalars"],
        info["total_params"],
        info["total_bytes"],
        info["file_bytes"],
    )


def bits(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes (bit-identity, NaNs and -0.0 included)."""
    flat = tensor.detach().contiguous().reshape(-1)
    return flat.view(torch.uint8) if flat.numel() else flat


def assert_same_values(remote_checkpoint, local_checkpoint):
    local = {key: tensor for key, tensor, _ in local_checkpoint.tensors()}
    for key, tensor, _ in remote_checkpoint.tensors():
        a, b = read_tensor(tensor), read_tensor(local[key])
        assert a.dtype == b.dtype and a.shape == b.shape, key
        assert torch.equal(bits(a), bits(b)), key


def fixtures(folder):
    """One file of each kind a URL is most likely to point at."""
    torch.manual_seed(0)
    state = {
        "weight": torch.randn(64, 32),
        "transposed": torch.randn(16, 8).t(),
        "half": torch.randn(100).to(torch.bfloat16),
        "steps": torch.arange(10),
        "nan": torch.tensor([float("nan"), -0.0, float("inf")]),
    }
    return {
        "zip.pt": builders.save({"model": state, "epoch": 3}, folder / "zip.pt"),
        "legacy.pt": builders.training_checkpoint(folder / "legacy.pt", legacy=True),
        "train.pt": builders.training_checkpoint(folder / "train.pt"),
        "model.safetensors": builders.safetensors_file(folder / "model.safetensors"),
    }


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = tmp_path_factory.mktemp("served")
    files = fixtures(folder)
    builders.hf_directory(folder / "hf")
    with RangeServer(str(folder), lifetime=300) as server:
        yield server, folder, files


@pytest.mark.parametrize("name", ["zip.pt", "legacy.pt", "train.pt", "model.safetensors"])
def test_url_lists_and_reads_what_the_file_does(served, name):
    server, folder, files = served
    url = f"{server.url}/{name}"
    remote_checkpoint, local_checkpoint = open_checkpoint(url), open_checkpoint(files[name])
    assert remote_checkpoint.path == url
    assert listing(remote_checkpoint) == listing(local_checkpoint)
    assert_same_values(remote_checkpoint, local_checkpoint)


def test_values_equal_torch_load(served):
    server, folder, files = served
    checkpoint = open_checkpoint(f"{server.url}/zip.pt")
    expected = torch.load(files["zip.pt"], weights_only=True)["model"]
    for key, value in expected.items():
        assert torch.equal(bits(read_tensor(checkpoint.find(f"model.{key}").tensor)), bits(value))


def test_sharded_index_by_url(served):
    server, folder, _ = served
    url = f"{server.url}/hf/model.safetensors.index.json"
    remote_checkpoint = open_checkpoint(url)
    local_checkpoint = open_checkpoint(str(folder / "hf" / "model.safetensors.index.json"))
    assert listing(remote_checkpoint) == listing(local_checkpoint)
    assert remote_checkpoint.metadata["config.model_type"] == "tiny"
    assert_same_values(remote_checkpoint, local_checkpoint)


def test_opening_a_zip_takes_few_requests_and_bytes(served, tmp_path):
    server, folder, _ = served
    torch.save(
        {f"layer{i}.weight": torch.randn(256, 256) for i in range(40)}, folder / "big.pt"
    )  # 10 MB, 40 storage records
    server.reset()
    open_checkpoint(f"{server.url}/big.pt")
    assert len(server.requests) <= 6, server.requests
    assert server.bytes_sent <= 4 * remote.BLOCK


def test_stats_fetch_the_tensor_once(served):
    server, folder, _ = served
    torch.save({"w": torch.randn(1024, 1024), "b": torch.zeros(4)}, folder / "stats.pt")
    checkpoint = open_checkpoint(f"{server.url}/stats.pt")
    tensor = checkpoint.find("w").tensor
    server.reset()
    stats = run(compute(tensor))  # several passes over the values
    # the tensor once, plus its first block and, under load (an evicted block), the record's
    # local header read again: never a second copy of the tensor
    assert server.bytes_sent <= tensor.nbytes + 2 * remote.BLOCK
    local = run(compute(open_checkpoint(str(folder / "stats.pt")).find("w").tensor))
    assert (stats.mean, stats.std, stats.counts) == (local.mean, local.std, local.counts)


def test_a_window_of_a_fetched_tensor_costs_no_transfer(served):
    """Rows paged through after a statistic are read from the ranges it fetched."""
    from ckpt_viewer.core.values.read import read_window

    server, folder, _ = served
    expected = torch.randn(1024, 1024)
    torch.save({"w": expected}, folder / "window.pt")
    tensor = open_checkpoint(f"{server.url}/window.pt").find("w").tensor
    run(compute(tensor))
    server.reset()
    window = read_window(tensor, (), range(100, 140), range(7, 500))
    assert server.bytes_sent == 0
    assert torch.equal(torch.from_numpy(window), expected[100:140, 7:500])


def test_cli_stats_fetch_the_tensor_once(served):
    """`stats` checks the record's CRC-32, then computes: the second pass reads the bytes the
    first one fetched."""
    server, folder, _ = served
    torch.save({"w": torch.randn(2048, 1024)}, folder / "crc.pt")  # 8 MB, above LARGE
    server.reset()
    out = cli("stats", f"{server.url}/crc.pt", "w", "--json")
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert server.bytes_sent <= 2048 * 1024 * 4 + 4 * remote.BLOCK
    local = cli("stats", str(folder / "crc.pt"), "w", "--json")
    assert json.loads(out.stdout) == json.loads(local.stdout)


def test_gguf_by_url(served):
    """A GGUF file lists and reads over HTTP as gguf's own reader reads it from disk."""
    pytest.importorskip("gguf")
    import numpy as np
    from test_gguf import oracle, weights, write_gguf

    server, folder, _ = served
    path = write_gguf(folder / "m.gguf", weights())
    remote_checkpoint = open_checkpoint(f"{server.url}/m.gguf")
    assert remote_checkpoint.format == "gguf"
    assert listing(remote_checkpoint) == listing(open_checkpoint(str(path)))
    assert remote_checkpoint.metadata == open_checkpoint(str(path)).metadata
    listed = {key: t for key, t, _ in remote_checkpoint.tensors()}
    for name, (_, _, values) in oracle(path).items():
        got = np.asarray(read_tensor(listed[name]).numpy(), dtype=values.dtype)
        assert got.tobytes() == values.tobytes(), name
    assert cli("verify", f"{server.url}/m.gguf").stdout.startswith("intact:")


def test_verify_by_url(served):
    server, _, _ = served
    report = run(verify(f"{server.url}/train.pt"))
    assert report.ok and report.records > 0


def cli(*args):
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-m", "ckpt_viewer", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_cli_commands_take_urls(served, tmp_path):
    server, _, files = served
    url = f"{server.url}/zip.pt"
    assert cli("inspect", url).returncode == 0
    out = cli("stats", url, "model.weight", "--json")
    assert out.returncode == 0 and '"numel": 2048' in out.stdout
    assert cli("diff", url, f"{server.url}/zip.pt").returncode == 0
    assert cli("globals", url).returncode == 0
    assert cli("check", url).returncode in (0, 1)
    assert cli("verify", url).stdout.startswith("intact:")
    out = cli("export", url, "-o", str(tmp_path / "out.safetensors"), "--format", "safetensors")
    assert out.returncode == 0, out.stderr
    exported = open_checkpoint(str(tmp_path / "out.safetensors"))
    expected = torch.load(files["zip.pt"], weights_only=True)["model"]
    for key, value in expected.items():
        assert torch.equal(bits(read_tensor(exported.find(f"model.{key}").tensor)), bits(value))


@pytest.mark.parametrize(
    "status, text",
    [
        (404, "HTTP 404 not found"),
        (403, "HTTP 403 forbidden"),
        (500, "HTTP 500 internal server error"),
    ],
)
def test_http_errors_are_one_line(tmp_path, status, text):
    with RangeServer(str(tmp_path), lifetime=60, statuses={"/x.pt": status}) as server:
        url = f"{server.url}/x.pt"
        out = cli("inspect", url)
    assert out.returncode == 2
    assert out.stderr == f"error: {url}: {text}\n"


def test_missing_url_raises_checkpoint_error(tmp_path):
    with RangeServer(str(tmp_path), lifetime=60) as server:
        with pytest.raises(CheckpointError, match="HTTP 404 not found"):
            open_checkpoint(f"{server.url}/nothing.pt")


def test_server_that_ignores_ranges_is_refused(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"PK\x03\x04" + bytes(4 * remote.BLOCK))

    class NoRanges(RangeServer):
        def _handler(self):
            handler = super()._handler()

            class Handler(handler):
                def _serve(self, body):
                    del self.headers["Range"]
                    super()._serve(body)

            return Handler

    with NoRanges(str(tmp_path), lifetime=60) as server:
        with pytest.raises(CheckpointError, match="no byte-range support"):
            open_checkpoint(f"{server.url}/x.pt")


def test_unknown_protocol_is_one_line():
    with pytest.raises(CheckpointError, match="cannot be read|protocol|not installed"):
        open_checkpoint("nosuchprotocol://bucket/x.pt")


def test_refused_connection_is_not_reported_as_404():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(CheckpointError, match="cannot be read") as error:
        open_checkpoint(f"http://127.0.0.1:{port}/x.pt")
    # the URL's own port may hold the digits 404: only the rest of the message counts
    assert "404" not in str(error.value).replace(str(port), "")


def test_silent_server_times_out(monkeypatch):
    monkeypatch.setattr(remote, "READ_TIMEOUT", 0.5)
    with socket.socket() as listener:  # accepts, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/x.pt"
        with pytest.raises(CheckpointError, match="^timed out$"):
            open_checkpoint(url)


@pytest.fixture
def memory_folder(tmp_path):
    """Files put into fsspec's in-memory filesystem (no network, no server)."""
    import fsspec

    fs = fsspec.filesystem("memory")
    root = f"/ckpt-viewer-test-{uuid.uuid4().hex}"
    files = fixtures(tmp_path)
    dcp_folder, _ = builders.dcp_directory(tmp_path / "dcp")
    for name, path in files.items():
        fs.pipe(f"{root}/{name}", open(path, "rb").read())
    for name in os.listdir(dcp_folder):
        fs.pipe(f"{root}/dcp/{name}", open(os.path.join(dcp_folder, name), "rb").read())
    yield f"memory://{root}", files, dcp_folder
    fs.rm(root, recursive=True)


def test_memory_filesystem(memory_folder):
    root, files, dcp_folder = memory_folder
    for name, path in files.items():
        remote_checkpoint, local_checkpoint = (
            open_checkpoint(f"{root}/{name}"),
            open_checkpoint(path),
        )
        assert listing(remote_checkpoint)[:4] == listing(local_checkpoint)[:4], name
        assert_same_values(remote_checkpoint, local_checkpoint)
    remote_dcp, local_dcp = open_checkpoint(f"{root}/dcp"), open_checkpoint(dcp_folder)
    assert remote_dcp.format == "dcp"
    assert listing(remote_dcp)[:4] == listing(local_dcp)[:4]
    assert_same_values(remote_dcp, local_dcp)
    # statistics stream a DCP tensor chunk by chunk (each chunk's header read by URL too)
    local = {key: tensor for key, tensor, _ in local_dcp.tensors()}
    for key, tensor, _ in remote_dcp.tensors():
        a, b = run(compute(tensor)), run(compute(local[key]))
        assert (a.numel, a.counts, a.min, a.max) == (b.numel, b.counts, b.min, b.max), key


def test_local_paths_never_import_fsspec(tmp_path):
    path = builders.training_checkpoint(tmp_path / "t.pt")
    code = (
        "import sys; from ckpt_viewer.core.listing.open import open_checkpoint; "
        f"open_checkpoint({path!r}); print('fsspec' in sys.modules, 'torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=os.getcwd()),
    )
    assert out.stdout.split() == ["False", "False"], out.stderr


# --- S3: moto's server on 127.0.0.1, found through AWS_ENDPOINT_URL (botocore's own setting) --


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    s3fs = pytest.importorskip("s3fs")
    pytest.importorskip("moto.server")  # moto[server]: flask and werkzeug
    from s3server import S3Server

    folder = tmp_path_factory.mktemp("s3")
    files = fixtures(folder)
    bucket = f"ckpt-viewer-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem.clear_instance_cache()  # a filesystem made before keeps its endpoint
    with S3Server(lifetime=300) as server, pytest.MonkeyPatch.context() as mp:
        server.use(mp, folder)
        client = server.client()
        client.create_bucket(Bucket=bucket)
        for name, path in files.items():
            client.upload_file(str(path), bucket, name)
        yield server, f"s3://{bucket}", files
        s3fs.S3FileSystem.clear_instance_cache()


@pytest.mark.parametrize("name", ["zip.pt", "legacy.pt", "train.pt", "model.safetensors"])
def test_s3_lists_and_reads_what_the_file_does(s3, name):
    server, bucket, files = s3
    remote_checkpoint, local_checkpoint = (
        open_checkpoint(f"{bucket}/{name}"),
        open_checkpoint(files[name]),
    )
    assert listing(remote_checkpoint) == listing(local_checkpoint)
    assert_same_values(remote_checkpoint, local_checkpoint)
    assert server.requests and all(r[1].startswith("/" + bucket[5:]) for r in server.requests)


def test_s3_opening_a_zip_takes_few_requests(s3, tmp_path):
    server, bucket, _ = s3
    torch.save(
        {f"layer{i}.weight": torch.randn(256, 256) for i in range(40)}, tmp_path / "big.pt"
    )  # 10 MB, 40 storage records
    server.client().upload_file(str(tmp_path / "big.pt"), bucket[5:], "big.pt")
    server.reset()
    open_checkpoint(f"{bucket}/big.pt")
    # one HEAD says it is a file and its size (no listing asks whether it is a folder), then
    # the first block (sniff) and the end record with the directory
    assert [method for method, *_ in server.requests] == ["HEAD", "GET", "GET"], server.requests
    assert server.bytes_sent <= 3 * remote.BLOCK


def test_s3_cli(s3):
    server, bucket, files = s3
    out = cli("inspect", f"{bucket}/train.pt", "--json")
    local = cli("inspect", str(files["train.pt"]), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["tensors"] == json.loads(local.stdout)["tensors"]
    out = cli("stats", f"{bucket}/zip.pt", "model.weight", "--json")
    assert out.returncode == 0 and '"numel": 2048' in out.stdout


def test_s3_missing_key_is_one_line(s3):
    server, bucket, _ = s3
    out = cli("inspect", f"{bucket}/nothing.pt")
    assert (out.returncode, out.stderr) == (2, f"error: {bucket}/nothing.pt: not found\n")
