"""torch.export archives (.pt2): every weight and constant against torch.export.load."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pytest
import torch

from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.listing.open import open_checkpoint, sniff
from ckpt_viewer.core.values.read import read_array
from ckpt_viewer.core.values.torch_bridge import read_tensor, to_numpy


class Exported(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)
        self.bn = torch.nn.BatchNorm1d(3)
        self.register_buffer("scratch", torch.arange(6.0).reshape(2, 3), persistent=False)
        self.register_buffer("transposed", torch.randn(4, 3).t())
        self.register_buffer("bf16", torch.randn(3, dtype=torch.bfloat16))
        self.register_buffer("mask", torch.tensor([True, False, True]))
        self.register_buffer("codes", torch.randint(-100, 100, (3,), dtype=torch.int8))
        self.register_buffer("empty", torch.zeros(0, 3))
        base = torch.randn(6, dtype=torch.float64)
        self.register_buffer("full", base)
        self.register_buffer("tail", base[2:5])  # shares full's storage
        self.scale = torch.tensor([1.0, 2.0, 3.0])  # a lifted tensor constant

    def forward(self, x):
        y = self.bn(self.lin(x)) + self.scratch.sum() + self.scale + self.transposed.sum(1)[:3]
        y = y + self.bf16.float() + self.mask.float() + self.codes.float() + self.empty.sum()
        return y + self.full.sum().float() + self.tail.sum().float()


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("pt2") / "program.pt2"
    program = torch.export.export(Exported().eval(), (torch.randn(2, 4),))
    with warnings.catch_warnings():  # torch notes that `tail` is a partial view of a storage
        warnings.simplefilter("ignore", UserWarning)
        torch.export.save(program, str(path))
    return str(path)


def bits(tensor: torch.Tensor) -> bytes:
    return tensor.detach().contiguous().flatten().view(torch.uint8).numpy().tobytes()


def test_every_weight_and_constant_matches_torch_export_load(archive):
    program = torch.export.load(archive)
    reference = {**program.state_dict, **program.constants}
    checkpoint = open_checkpoint(archive)
    assert checkpoint.format == "pt2" and checkpoint.unsafe_globals == []
    tensors = {key: info for key, info, _ in checkpoint.tensors()}
    assert set(tensors) == set(reference)
    for key, expected in reference.items():
        info = tensors[key]
        assert (info.dtype, info.shape, info.device) == (
            str(expected.dtype).removeprefix("torch."),
            tuple(expected.shape),
            "cpu",
        ), key
        assert info.nbytes == expected.numel() * expected.element_size()
        value = read_tensor(info)
        assert value.dtype == expected.dtype and value.shape == expected.shape, key
        assert bits(value) == bits(expected), key
        assert value.stride() == expected.stride(), key
        np.testing.assert_array_equal(read_array(info), to_numpy(expected.detach()))


def test_roles_sharing_and_metadata(archive):
    checkpoint = open_checkpoint(archive)
    assert checkpoint.find("lin.weight").role == "parameter"
    assert checkpoint.find("lin.weight").tensor.is_parameter
    assert checkpoint.find("bn.running_mean").role == "buffer"
    assert checkpoint.find("scratch").note == "non-persistent buffer"
    assert checkpoint.find("scale").note == "lifted tensor constant"
    assert checkpoint.find("tail").shared_with == "full"
    assert checkpoint.metadata["torch version"] == torch.__version__
    assert checkpoint.metadata["models"] == "model"


def test_sniffed_by_layout_not_name(archive, tmp_path):
    assert sniff(archive) == "pt2"
    plain = tmp_path / "plain.pt2"
    torch.save({"w": torch.ones(2)}, plain)
    assert sniff(str(plain)) == "torch_zip"


def test_listing_imports_no_torch(archive):
    code = (
        "import sys; from ckpt_viewer.core.listing.open import open_checkpoint; "
        f"c = open_checkpoint({archive!r}); assert len(c.tensors()) == 16; "
        "assert 'torch' not in sys.modules and 'numpy' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def rewrite(src: str, dst, change):
    """Copy a pt2 archive, letting change(name, data) edit or drop (None) records, or add
    records under the name "+NAME"."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        root = zin.namelist()[0].split("/")[0]
        for name in zin.namelist():
            data = change(name[len(root) + 1 :], zin.read(name))
            if data is not None:
                zout.writestr(name, data)
        for name, data in (change("+", None) or {}).items():
            zout.writestr(f"{root}/{name}", data)
    return str(dst)


def test_opaque_object_is_decoded_not_run(archive, tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            import os

            return os.system, (f"touch {marker}",)

    def change(name, data):
        if name == "+":
            return {"data/constants/opaque_obj_0": pickle.dumps(Payload())}
        if name.endswith("_constants_config.json"):
            config = json.loads(data)
            config["config"]["evil"] = {
                "path_name": "opaque_obj_0",
                "is_param": False,
                "use_pickle": True,
                "tensor_meta": None,
            }
            return json.dumps(config).encode()
        return data

    path = rewrite(archive, tmp_path / "evil.pt2", change)
    checkpoint = open_checkpoint(path)
    assert any(g.endswith(".system") for g in checkpoint.unsafe_globals)
    assert any("pickle.loads" in w for w in checkpoint.warnings)
    assert checkpoint.find("evil").kind == "opaque"
    assert not marker.exists()


def _torch_save_bytes(obj) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


PARTS = {
    "sample_inputs": "data/sample_inputs/model.pt",
    "pickled_weight": "evil",
    "pickled_constant": "evil",
    "legacy_weights": "data/weights/model.pt",
    "subclass_beside_decoy": "evil",
}


def _payload_archive(archive, dst, part: str, marker) -> str:
    """`archive` with a payload (touch marker) in one record kind torch.export.load unpickles."""
    import os

    import builders

    payload = _torch_save_bytes({"x": builders.Call(os.system, f"touch {marker}")})
    decoy = _torch_save_bytes(torch.ones(2))

    def change(name, data):
        if name == "+":
            if part == "legacy_weights":
                return {"data/weights/model.pt": payload}
            if part == "subclass_beside_decoy":
                return {"data/weights/weight_97": decoy, "data/weights/weight_98": payload}
            folder = "weights/weight_99" if part == "pickled_weight" else "constants/tensor_99"
            return {f"data/{folder}": payload} if part != "sample_inputs" else {}
        if name == "data/sample_inputs/model.pt" and part == "sample_inputs":
            return payload
        config_name = (
            "_constants_config.json" if part == "pickled_constant" else "_weights_config.json"
        )
        if name.endswith(config_name) and part not in ("sample_inputs", "legacy_weights"):
            config = json.loads(data)
            entries = {"evil": "tensor_99" if part == "pickled_constant" else "weight_99"}
            if part == "subclass_beside_decoy":
                entries = {"decoy": "weight_97", "evil": "weight_98"}
            for fqn, record in entries.items():
                config["config"][fqn] = {
                    "path_name": record,
                    "is_param": False,
                    "use_pickle": True,
                    "tensor_meta": None,
                }
            return json.dumps(config).encode()
        return data

    return rewrite(archive, dst, change)


@pytest.mark.parametrize("part", sorted(PARTS))
def test_every_pickled_part_is_triaged_and_never_run(archive, tmp_path, part):
    """Each record torch.export.load unpickles (torch.load(weights_only=False), or its
    fallback to it) is read by our unpickler: its payload is `code`, named by the record.
    The oracle: torch.export.load runs the same payload."""
    import logging

    from ckpt_viewer.core.listing.globals import triage

    marker = tmp_path / "ran"
    path = _payload_archive(archive, tmp_path / "evil.pt2", part, marker)
    checkpoint = open_checkpoint(path)
    code = [u for u in triage(checkpoint) if u.category == "code"]
    assert code and any(PARTS[part] in u.keys for u in code), [(u.name, u.keys) for u in code]
    assert "posix.system" in checkpoint.unsafe_globals
    result = subprocess.run(
        [sys.executable, "-m", "ckpt_viewer", "inspect", "--json", path],
        capture_output=True,
        text=True,
    )
    assert any(g["category"] == "code" for g in json.loads(result.stdout)["globals"])
    verify = subprocess.run(
        [sys.executable, "-m", "ckpt_viewer", "verify", path], capture_output=True, text=True
    )
    assert "posix.system" in verify.stdout
    assert not marker.exists()
    oracle = tmp_path / "oracle-ran"
    oracle_path = _payload_archive(archive, tmp_path / "oracle.pt2", part, oracle)
    logging.disable(logging.WARNING)  # torch logs its fallback to weights_only=False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.export.load(oracle_path)
    except Exception:  # noqa: BLE001 - the payload stands where a tensor was expected
        pass
    finally:
        logging.disable(logging.NOTSET)
    assert oracle.exists()


@pytest.mark.parametrize(
    "damage, message",
    [
        ("outside", "outside"),
        ("missing", "missing"),
        ("symbolic", "plain integer"),
        ("not_pt2", "archive_format"),
        ("short", "multiple"),
    ],
)
def test_damaged_archives_are_one_line_errors(archive, tmp_path, damage, message):
    def change(name, data):
        if name == "+":
            return None
        if name.endswith("_weights_config.json"):
            config = json.loads(data)
            entry = config["config"]["lin.weight"]
            if damage == "outside":
                entry["path_name"] = "../models/model.json"
            elif damage == "symbolic":
                entry["tensor_meta"]["sizes"][0] = {"as_expr": {"expr_str": "s0"}}
            return json.dumps(config).encode()
        if damage == "missing" and name == "data/weights/weight_0":
            return None
        if damage == "short" and name == "data/weights/weight_0":
            return data[:-1]
        if damage == "not_pt2" and name == "archive_format":
            return b"zip"
        return data

    path = rewrite(archive, tmp_path / "bad.pt2", change)
    with pytest.raises(CheckpointError, match=message) as info:
        open_checkpoint(path)
    assert "\n" not in str(info.value)


def test_cli_inspect_json(archive):
    out = subprocess.run(
        [sys.executable, "-m", "ckpt_viewer", "inspect", archive, "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    report = json.loads(out)
    assert report["format"] == "pt2"
    assert {t["key"] for t in report["tensors"]} >= {"lin.weight", "scale", "scratch"}


def test_verify_checks_every_record(archive, tmp_path):
    from ckpt_viewer.core.analysis.verify import verify

    def run(path):
        steps = verify(path)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value

    report = run(archive)
    assert report.ok and report.records > 10
    from ckpt_viewer.core.listing.readers.zip_directory import data_offset, read_directory

    record = next(m for m in read_directory(archive) if m.name.endswith("weights/weight_0"))
    flipped = bytearray(open(archive, "rb").read())
    flipped[data_offset(record)] ^= 1
    damaged = tmp_path / "flipped.pt2"
    damaged.write_bytes(bytes(flipped))
    report = run(str(damaged))
    assert not report.ok and "CRC" in report.problem
