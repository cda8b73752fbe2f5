"""Health check: planted anomalies are each reported with the right key and kind; clean files
have no findings; the CLI keeps README.md's contract."""

import json
import subprocess
import sys
import threading

import pytest
import torch

import builders
from ckpt_viewer.core.analysis import check as check_module
from ckpt_viewer.core.analysis.check import check
from ckpt_viewer.core.listing.open import open_checkpoint
from ckpt_viewer.core.progress import run


def findings_of(path):
    report = run(check(open_checkpoint(path)))
    return report, {(f.key, f.kind) for f in report.findings}


def cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "ckpt_viewer", *args], capture_output=True, text=True, timeout=120
    )


def clean_training_file(path):
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.GELU(), torch.nn.Linear(6, 3))
    optimizer = torch.optim.AdamW(model.named_parameters(), lr=0.01)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(16, 8)).pow(2).sum().backward()
        optimizer.step()
    return builders.save(
        {"epoch": 3, "model": model.state_dict(), "optimizer": optimizer.state_dict()}, path
    )


def planted_state():
    torch.manual_seed(0)
    sd = {f"ok{i}.weight": torch.randn(16, 8) for i in range(3)}
    sd["nan.weight"] = torch.randn(16, 8)
    sd["nan.weight"][3, 2] = float("nan")
    sd["inf.bias"] = torch.randn(16)
    sd["inf.bias"][5] = -float("inf")
    sd["zero.weight"] = torch.zeros(16, 8)
    sd["ones.weight"] = torch.full((16, 8), 0.5)
    sd["dead.weight"] = torch.randn(16, 8)
    sd["dead.weight"][[1, 7]] = 0
    sd["copy.weight"] = sd["ok0.weight"].clone()
    sd["tied.weight"] = sd["ok1.weight"]  # shared storage: not a duplicate
    sd["flip.weight"] = sd["ok2.weight"].flip(0).contiguous()  # same extremes and word sums
    sd["big.weight"] = torch.randn(16, 8)
    sd["big.weight"][0, 0] = 1e5
    sd["big_bf16.weight"] = (torch.randn(16, 8) * 1e6).to(torch.bfloat16)
    sd["half.weight"] = torch.randn(16, 8).half()  # float16 cannot overflow float16
    sd["bn.running_var"] = torch.rand(16) + 0.1
    sd["bn.running_var"][4] = -0.25
    sd["bn.running_mean"] = torch.randn(16)
    sd["tiny_bf16.weight"] = torch.randn(16, 8).to(torch.bfloat16)
    sd["tiny_bf16.weight"][2, 2] = 1e-39
    sd["step"] = torch.tensor(3)
    sd["ids"] = torch.arange(40)
    return sd


EXPECTED = {
    ("nan.weight", "nan"),
    ("inf.bias", "inf"),
    ("zero.weight", "all_zero"),
    ("ones.weight", "constant"),
    ("dead.weight", "dead_rows"),
    ("copy.weight", "duplicate"),
    ("big.weight", "fp16_overflow"),
    ("big_bf16.weight", "fp16_overflow"),
    ("bn.running_var", "negative_variance"),
    ("tiny_bf16.weight", "bf16_subnormal"),
}


@pytest.mark.parametrize("writer", ["zip", "legacy", "safetensors"])
def test_each_planted_anomaly_reported_with_key_and_kind(tmp_path, writer):
    sd = planted_state()
    if writer == "safetensors":
        del sd["tied.weight"]
        path = builders.safetensors_file(
            tmp_path / "p.safetensors", {k: v.contiguous() for k, v in sd.items()}
        )
    else:
        path = builders.save(sd, tmp_path / "p.pt", _use_new_zipfile_serialization=writer == "zip")
    report, found = findings_of(path)
    if writer == "safetensors":  # stored in name order: the copy comes first
        found = {("copy.weight", k) if key == "ok0.weight" else (key, k) for key, k in found}
    assert found == EXPECTED
    by_kind = {f.kind: f for f in report.findings}
    assert by_kind["nan"].severity == "error" and "1 NaN value of " in by_kind["nan"].message
    assert "2 of 16 output rows" in by_kind["dead_rows"].message
    duplicate = by_kind["duplicate"]
    assert {duplicate.key, duplicate.message.split()[3]} == {"ok0.weight", "copy.weight"}
    assert report.tensors_scanned == len(sd)
    assert not report.ok
    assert [f.severity for f in report.findings] == sorted(
        (f.severity for f in report.findings), key=check_module.SEVERITIES.index
    )


def test_clean_training_file_has_no_findings(tmp_path):
    path = clean_training_file(tmp_path / "clean.pt")
    report, found = findings_of(path)
    assert found == set()
    assert report.ok
    total = sum(t.nbytes for _, t, _ in open_checkpoint(path).tensors())
    assert report.bytes_scanned == total


def test_anomalies_across_segments_and_chunks(tmp_path, monkeypatch):
    """Small chunks and segments, so rows straddle chunk and segment boundaries and the pool
    merges many parts of one tensor."""
    monkeypatch.setattr(check_module, "CHUNK", 37)
    monkeypatch.setattr(check_module, "SEGMENT", 37 * 5)
    torch.manual_seed(3)
    weight = torch.randn(97, 53)
    weight[[0, 40, 96]] = 0
    weight[50, 52] = float("nan")
    other = torch.randn(97, 53)
    path = builders.save(
        {"w.weight": weight, "a.weight": other, "b.weight": other.clone()}, tmp_path / "s.pt"
    )
    report, found = findings_of(path)
    assert found == {("w.weight", "dead_rows"), ("w.weight", "nan"), ("b.weight", "duplicate")}
    dead = next(f for f in report.findings if f.kind == "dead_rows")
    assert "3 of 97 output rows" in dead.message and "row 0" in dead.message


def test_optimizer_state_mismatch_missing_state_and_steps(tmp_path):
    model, optimizer = builders.trained(torch.optim.Adam, named=True)
    state = optimizer.state_dict()
    state["state"][0]["exp_avg"] = torch.randn(4, 3)  # parameter 0.weight is [3, 4]
    del state["state"][3]  # 1.bias has no state left
    state["state"][2]["step"] = torch.tensor(9.0)
    state["state"][1]["exp_avg_sq"] = -state["state"][1]["exp_avg_sq"] - 1
    path = builders.save(
        {"model_state_dict": model.state_dict(), "optimizer_state_dict": state}, tmp_path / "o.pt"
    )
    report, found = findings_of(path)
    assert ("optimizer_state_dict.state.0.exp_avg", "optimizer_mismatch") in found
    assert ("model_state_dict.1.bias", "optimizer_mismatch") in found
    assert ("optimizer_state_dict.state.2.step", "step_mismatch") in found
    assert ("optimizer_state_dict.state.1.exp_avg_sq", "negative_variance") in found
    mismatch = next(f for f in report.findings if f.key == "optimizer_state_dict.state.0.exp_avg")
    assert (
        mismatch.severity == "error"
        and "[4, 3]" in mismatch.message
        and "[3, 4]" in mismatch.message
    )


def test_unreadable_tensor_is_an_error_finding_not_a_crash(tmp_path):
    path = builders.save({"a": torch.randn(1000), "b": torch.randn(10)}, tmp_path / "t.pt")
    checkpoint = open_checkpoint(path)
    with open(path, "r+b") as f:  # cut the file after it was opened
        f.truncate(1500)
    report = run(check(checkpoint))
    assert any(f.kind == "unreadable" and f.severity == "error" for f in report.findings)


def test_closing_the_generator_stops_the_scan_and_its_workers(tmp_path, monkeypatch):
    monkeypatch.setattr(check_module, "SEGMENT", 1 << 14)  # a task per tensor ...
    monkeypatch.setattr(check_module, "CHUNK", 1 << 6)  # ... read in 256 pieces
    reads = []
    mapped = check_module.StorageReader.mapped

    def counted(self, *args, **kwargs):
        reads.append(1)
        return mapped(self, *args, **kwargs)

    monkeypatch.setattr(check_module.StorageReader, "mapped", counted)
    path = builders.save({f"t{i}": torch.randn(1 << 14) for i in range(20)}, tmp_path / "c.pt")
    checkpoint = open_checkpoint(path)
    scan = check(checkpoint)
    next(scan)
    workers = [t for t in threading.enumerate() if t.name.startswith("check_")]
    assert workers  # the scan is under way on its pool
    scan.close()  # what a cancelled worker's generator gets
    at_close = len(reads)
    for worker in workers:
        worker.join(timeout=30)
        assert not worker.is_alive()
    # a worker finishes at most the piece it was reading; the tasks under way stop there
    assert len(reads) - at_close <= len(workers)
    with pytest.raises(StopIteration):
        next(scan)
    tensors = [tensor for _, tensor, _ in checkpoint.tensors()]
    assert all(checkpoint.stats_cache.facts(t) is None for t in tensors)  # nothing concluded
    run(check(checkpoint))  # a scan run to its end remembers every tensor's facts
    assert all(checkpoint.stats_cache.facts(t) is not None for t in tensors)


def test_cli_check_contract(tmp_path):
    clean = clean_training_file(tmp_path / "clean.pt")
    result = cli("check", clean, "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert set(out) == {"path", "findings", "tensors_scanned", "bytes_scanned", "seconds"}
    assert out["findings"] == [] and out["tensors_scanned"] > 0
    sd = planted_state()
    bad = builders.save(sd, tmp_path / "bad.pt")
    result = cli("check", bad, "--json")
    assert result.returncode == 1
    findings = json.loads(result.stdout)["findings"]
    assert {(f["key"], f["kind"]) for f in findings} == EXPECTED
    assert all(set(f) == {"key", "severity", "kind", "message"} for f in findings)
    text = cli("check", bad)
    assert text.returncode == 1 and "nan.weight" in text.stdout
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"PK\x03\x04 nothing")
    result = cli("check", str(garbage))
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1


def test_hostile_key_is_escaped_in_text_output(tmp_path):
    path = builders.save({"evil\x1b[2J\nkey": torch.zeros(4, 4)}, tmp_path / "h.pt")
    result = cli("check", path)
    assert "\x1b" not in result.stdout and "\\x1b" in result.stdout
    assert len(result.stdout.splitlines()) == 2


def test_permuted_copies_cost_one_comparison_per_tensor_not_per_pair(tmp_path, monkeypatch):
    """Row permutations of one weight share dtype, shape, extremes, word sum and xor: they
    all fell into one bucket and were compared pair by pair (> 82 s at scale)."""
    torch.manual_seed(5)
    weight = torch.randn(64, 64)
    sd = {f"p{i}.weight": weight[torch.randperm(64)] for i in range(40)}
    sd["copy.weight"] = sd["p7.weight"].clone()
    compared = []
    same_bits = check_module.same_bits
    monkeypatch.setattr(
        check_module, "same_bits", lambda a, b, chunk: compared.append(1) or same_bits(a, b, chunk)
    )
    hashed = []
    fingerprint = check_module._fingerprint
    monkeypatch.setattr(check_module, "_fingerprint", lambda t: hashed.append(1) or fingerprint(t))
    _, found = findings_of(builders.save(sd, tmp_path / "p.pt"))
    assert {f for f in found if f[1] == "duplicate"} == {("copy.weight", "duplicate")}
    assert len(hashed) == len(sd) and len(compared) <= 1  # was 41 * 40 / 2 comparisons


def _mapped_rss_kb(address: int) -> int:
    """Resident kB of the mapping holding this address (/proc/self/smaps)."""
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and ":" not in head:
                low, high = (int(x, 16) for x in head.split("-"))
                inside = low <= address < high
            elif inside and head == "Rss:":
                return int(line.split()[1])
    raise AssertionError("no mapping holds the address")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_a_segment_is_mapped_once_and_its_scanned_pages_let_go(tmp_path):
    """A segment is one mapping; the pages of the chunks scanned leave the process (its memory
    stays a chunk per worker) while the values stay readable from the page cache."""
    import numpy as np

    from ckpt_viewer.core.values.storage import StorageReader

    values = torch.arange(1 << 20, dtype=torch.float32)
    path = builders.save({"t": values}, tmp_path / "t.pt")
    _, tensor, _ = open_checkpoint(path).tensors()[0]
    segment = StorageReader(tensor.storage).mapped(0, tensor.numel, np.dtype("<f4"))
    # every page faulted in; float64 sums of these integers are exact on any machine
    assert segment.sum(dtype=np.float64) == values.double().sum().item()
    resident = _mapped_rss_kb(segment.ctypes.data)
    assert resident >= 4 * 1024 - 8
    check_module._letting_go(segment)(segment.size // 2)
    assert _mapped_rss_kb(segment.ctypes.data) <= resident // 2 + 8
    assert np.array_equal(segment, values.numpy())  # read again from the page cache
    check_module._letting_go(values.numpy())(values.numel())  # not mapped: nothing to do
