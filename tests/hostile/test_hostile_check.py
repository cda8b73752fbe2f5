"""check and layers over every corpus file that opens, and over every dtype and container:
no exception, no hang, no code run; unreadable data is a finding, never a crash."""

import signal

import pytest

import builders
from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.analysis.check import check
from ckpt_viewer.core.analysis.layers import layer_metrics
from ckpt_viewer.core.listing.open import open_checkpoint
from ckpt_viewer.core.progress import run
from corpus import CORPUS

TIME_LIMIT = 20


@pytest.mark.parametrize(
    "name", sorted(n for n, (_, expect) in CORPUS.items() if expect == "opens")
)
def test_check_and_layers_on_hostile_files(tmp_path, name):
    builder, _ = CORPUS[name]
    sentinel = tmp_path / "SENTINEL"
    folder = tmp_path / "files"
    folder.mkdir()
    path = builder(folder, sentinel)
    try:
        checkpoint = open_checkpoint(path)
    except CheckpointError:
        pytest.skip("does not open here")
    builders.alarm(TIME_LIMIT)
    try:
        report = run(check(checkpoint))
        run(layer_metrics(checkpoint))
    finally:
        signal.alarm(0)
    for finding in report.findings:
        assert finding.severity in ("error", "warning", "info")
        assert "\n" not in finding.message
    assert not sentinel.exists(), "code from the file ran"


@pytest.mark.parametrize("kind", ["dtypes", "hf", "dcp", "legacy", "whole_model", "torchscript"])
def test_check_reads_every_dtype_and_container(tmp_path, kind):
    path = {
        "dtypes": lambda: builders.save(builders.every_dtype(), tmp_path / "d.pt"),
        "hf": lambda: builders.hf_directory(tmp_path / "hf", "bin"),
        "dcp": lambda: builders.dcp_directory(tmp_path / "dcp")[0],
        "legacy": lambda: builders.training_checkpoint(tmp_path / "l.pt", legacy=True),
        "whole_model": lambda: builders.whole_model_file(tmp_path / "w.pt"),
        "torchscript": lambda: builders.torchscript_file(tmp_path / "t.pt"),
    }[kind]()
    checkpoint = open_checkpoint(path)
    report = run(check(checkpoint))
    assert not [f for f in report.findings if f.kind == "unreadable"], report.findings
    assert report.tensors_scanned == len(checkpoint.tensors())
