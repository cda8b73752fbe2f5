"""Globals are triaged by what they resolve to, every pickle a reference loader unpickles is read
by ours first (DCP bytes items, .pt2 pickled parts, training-folder files), and verify keeps
integrity apart from loadability. Payloads would `touch` a canary: it must never appear."""

from __future__ import annotations

import argparse
import copyreg
import functools
import json
import operator
import os
import pickle
import subprocess
import sys
import types

import pytest
import torch

import builders
from ckpt_viewer.core.listing.globals import category, report_dict, text_lines, triage
from ckpt_viewer.core.listing.open import open_checkpoint


def named(module: str, name: str):
    """A stand-in function the gadget pickler writes as GLOBAL `module` `name`, whatever that
    resolves to (pickle resolves a dotted name attribute by attribute)."""

    def marker():
        pass

    marker.named = (module, name)
    return marker


class _GadgetPickler(pickle._Pickler):
    def _save_named(self, obj, name=None):
        if hasattr(obj, "named"):
            module, qualname = obj.named
            self.write(pickle.GLOBAL + f"{module}\n{qualname}\n".encode())
        else:
            pickle._Pickler.save_global(self, obj, name)

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[types.FunctionType] = _save_named


GADGET_PICKLE = types.SimpleNamespace(
    Pickler=_GadgetPickler, Unpickler=pickle.Unpickler, __name__="gadget_pickle"
)


def gadget_save(obj, path) -> str:
    torch.save(obj, path, pickle_module=GADGET_PICKLE, pickle_protocol=4)
    return str(path)


def cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "ckpt_viewer", *map(str, args)], capture_output=True, text=True
    )


def canary_command(tmp_path) -> tuple[str, str]:
    canary = tmp_path / "CANARY"
    return str(canary), f"touch {canary}"


def assert_code_and_never_run(path, canary, where=None):
    """The payload is `code` (named at `where`) in globals, inspect and verify, and opening,
    listing, verifying and exporting the file never runs it."""
    checkpoint = open_checkpoint(path)
    code = [u for u in triage(checkpoint) if u.category == "code"]
    assert code, [(u.name, u.category) for u in triage(checkpoint)]
    if where is not None:
        assert any(where in u.keys for u in code), [(u.name, u.keys) for u in code]
    result = cli("globals", "--json", path)
    assert result.returncode == 0, result.stderr
    assert any(g["category"] == "code" for g in json.loads(result.stdout)["globals"])
    inspect = json.loads(cli("inspect", "--json", path).stdout)
    assert any(g["category"] == "code" for g in inspect["globals"])
    assert set(u.name for u in code) <= set(inspect["unsafe_globals"])
    assert "code" in cli("verify", path).stdout
    cli(
        "export",
        path,
        "-o",
        os.path.join(os.path.dirname(canary), "out.safetensors"),
        "--format",
        "safetensors",
    )
    assert not os.path.exists(canary)


# --- triage by resolution ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "module, name",
    [
        ("torch.distributed.checkpoint.filesystem", "os.system"),
        ("torch.serialization", "os.system"),
        ("numpy", "ctypeslib.os.system"),
        ("omegaconf.base", "os.system"),
        ("torch", "hub.sys.modules"),
        ("torch.nn.modules.linear", "math.sqrt.__self__"),
    ],
)
def test_dotted_names_are_what_they_resolve_to(tmp_path, module, name):
    canary, command = canary_command(tmp_path)
    path = gadget_save(
        {"w": torch.ones(2), "hook": builders.Call(named(module, name), command)}, tmp_path / "g.pt"
    )
    assert category(f"{module}.{name}", called=True, module=module) == "code"
    assert_code_and_never_run(path, canary, "hook")


SERIALIZATION = named("torch", "serialization")  # a module, as pickle resolves it


class Result(builders.Call):
    """A call whose result the pickle then calls (pickle wants the stand-in callable)."""

    def __call__(self, *args):
        raise AssertionError("never called")


@pytest.mark.parametrize(
    "gadget",
    [
        lambda c: builders.Call(Result(getattr, Result(getattr, SERIALIZATION, "os"), "system"), c),
        lambda c: builders.Call(Result(operator.attrgetter("os.system"), SERIALIZATION), c),
        lambda c: builders.Call(functools.reduce, os.system, [c]),
        lambda c: builders.Call(functools.partial(os.system, c)),
        lambda c: builders.Call(functools.partial, os.system, c),
        lambda c: builders.Call(
            named("torch.serialization", "pickle.loads"), pickle.dumps(builders.Call(os.system, c))
        ),
    ],
)
def test_every_gadget_form_is_code(tmp_path, gadget):
    canary, command = canary_command(tmp_path)
    path = gadget_save({"w": torch.ones(2), "x": gadget(command)}, tmp_path / "g.pt")
    assert_code_and_never_run(path, canary)


class _Runs:
    """A class whose __init__ would run the command: copyreg._reconstructor calls it."""

    def __init__(self, command):
        os.system(command)


def test_reconstructor_with_a_code_class_is_code(tmp_path):
    canary, command = canary_command(tmp_path)
    gadget = builders.Call(copyreg._reconstructor, _Runs, _Runs, command)
    path = builders.save({"w": torch.ones(2), "x": gadget}, tmp_path / "r.pt")
    uses = {u.name: u.category for u in triage(open_checkpoint(path))}
    assert uses["copyreg._reconstructor"] == "code"
    popen = builders.Call(
        copyreg._reconstructor, subprocess.Popen, subprocess.Popen, ["touch", canary]
    )
    path = builders.save({"w": torch.ones(2), "x": popen}, tmp_path / "p.pt")
    uses = {u.name: u.category for u in triage(open_checkpoint(path))}
    assert uses["copyreg._reconstructor"] == "code" and uses["subprocess.Popen"] == "code"
    assert not os.path.exists(canary)


def test_a_dotted_name_of_an_allowlisted_global_reads_as_torch_reads_it(tmp_path):
    """torch's weights_only unpickler looks up module + "." + name: `torch` +
    `_utils._rebuild_tensor_v2` is the rebuild function, for torch and for us."""
    import collections

    from ckpt_viewer.core.values.torch_bridge import read_tensor

    class Dotted:
        def __reduce__(self):
            return (
                named("torch", "_utils._rebuild_tensor_v2"),
                (
                    torch.tensor([1.5, -2.0]).storage(),
                    0,
                    (2,),
                    (1,),
                    False,
                    collections.OrderedDict(),
                ),
            )

    path = tmp_path / "dotted.pt"
    torch.save({"w": Dotted()}, path, pickle_module=GADGET_PICKLE, pickle_protocol=2)
    expected = torch.load(path, weights_only=True)["w"]
    checkpoint = open_checkpoint(str(path))
    assert not checkpoint.refusals
    assert {u.category for u in triage(checkpoint)} == {"torch"}
    ((key, info, _),) = checkpoint.tensors()
    assert key == "w" and torch.equal(read_tensor(info), expected)


def test_plain_data_globals_are_still_data():
    for name in (
        "torch.distributed.checkpoint.metadata.Metadata",
        "numpy.dtypes.Float32DType",
        "omegaconf.dictconfig.DictConfig",
        "argparse.Namespace",
        "_io.BytesIO",
    ):
        assert category(name) == "data"
    # exact names only: nothing under those modules is data by prefix
    assert category("torch.distributed.checkpoint.filesystem.Evil") == "class"
    assert category("omegaconf.base.helper", called=True) == "code"


def test_dcp_metadata_gadget_and_no_weights_only_claim(tmp_path):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader

    canary, command = canary_command(tmp_path)
    folder = tmp_path / "dcp"
    dcp.save({"w": torch.ones(3)}, checkpoint_id=str(folder))
    metadata = FileSystemReader(str(folder)).read_metadata()
    metadata.planner_data = builders.Call(
        named("torch.distributed.checkpoint.filesystem", "os.system"), command
    )
    with open(folder / ".metadata", "wb") as f:
        _GadgetPickler(f, protocol=4).dump(metadata)
    checkpoint = open_checkpoint(str(folder))
    uses = {u.name: u.category for u in triage(checkpoint)}
    assert uses["torch.distributed.checkpoint.filesystem.os.system"] == "code"
    assert uses["torch.distributed.checkpoint.metadata.Metadata"] == "data"
    text = "\n".join(text_lines(checkpoint))
    assert "weights_only=True) loads" not in text and "plain pickle" in text
    assert report_dict(checkpoint)["loads_with_weights_only"] is False
    assert not os.path.exists(canary)


# --- every pickle a loader unpickles ------------------------------------------------------------


def test_dcp_bytes_item_payload(tmp_path):
    import torch.distributed.checkpoint as dcp

    canary, command = canary_command(tmp_path)
    folder = tmp_path / "dcp"
    dcp.save(
        {"w": torch.ones(3), "step": 4, "x": builders.Call(os.system, command)},
        checkpoint_id=str(folder),
    )
    assert_code_and_never_run(str(folder), canary, "x")
    assert open_checkpoint(str(folder)).scalars()["step"] == 4


def _raw_pickle_dcp(folder, command) -> str:
    """A DCP folder whose bytes item `x` holds a plain pickle (not a torch.save archive)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.filesystem import _StorageInfo

    dcp.save({"w": torch.ones(3), "x": b"harmless"}, checkpoint_id=str(folder))
    metadata = FileSystemReader(str(folder)).read_metadata()
    index = next(i for i in metadata.storage_data if i.fqn == "x")
    info = metadata.storage_data[index]
    data_file = folder / info.relative_path
    payload = pickle.dumps(builders.Call(os.system, command))
    offset = data_file.stat().st_size
    with open(data_file, "ab") as f:
        f.write(payload)
    metadata.storage_data[index] = _StorageInfo(info.relative_path, offset, len(payload))
    with open(folder / ".metadata", "wb") as f:
        pickle.dump(metadata, f)
    return str(folder)


def test_dcp_plain_bytes_items_are_not_code(tmp_path):
    import io

    import torch.distributed.checkpoint as dcp

    folder = tmp_path / "dcp"
    dcp.save(
        {
            "w": torch.ones(3),
            "b": b"abc",
            "bio": io.BytesIO(b"raw"),
            "step": 3,
            "args": argparse.Namespace(lr=0.1),
        },
        checkpoint_id=str(folder),
    )
    uses = {u.name: u.category for u in triage(open_checkpoint(str(folder)))}
    assert "code" not in uses.values() and "class" not in uses.values(), uses


def test_dcp_raw_pickle_record_payload(tmp_path):
    """torch.load(weights_only=False) runs a plain pickle as the first pickle of a legacy
    stream: torch's own DCP reader runs this payload (the oracle), ours names it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    canary, command = canary_command(tmp_path)
    path = _raw_pickle_dcp(tmp_path / "dcp", command)
    assert_code_and_never_run(path, canary, "x")
    oracle = tmp_path / "ORACLE"
    oracle_path = _raw_pickle_dcp(tmp_path / "oracle", f"touch {oracle}")
    try:
        dcp.load({"w": torch.zeros(3), "x": b""}, checkpoint_id=oracle_path)
    except CheckpointException:  # torch: "Invalid magic number", after running it
        pass
    assert oracle.exists()


# --- verify: integrity apart from loadability --------------------------------------------------


def test_verify_intact_file_that_weights_only_refuses(tmp_path):
    path = builders.save(
        {"w": torch.ones(2), "args": argparse.Namespace(lr=0.1)}, tmp_path / "ns.pt"
    )
    result = cli("verify", path)
    assert result.returncode == 0, result.stdout
    assert result.stdout.startswith("intact: ")
    assert "torch.load(weights_only=True) refuses it: argparse.Namespace" in result.stdout
    assert "see `ckpt-viewer globals`" in result.stdout
    report = json.loads(cli("verify", "--json", path).stdout)
    assert report["intact"] is True and report["loads_with_weights_only"] is False
    assert report["damage"] == [] and report["refusals"]
    assert set(report) == {"path", "intact", "loads_with_weights_only", "refusals", "damage"}


def test_verify_damage_is_still_damage(tmp_path):
    path = builders.save({"w": torch.arange(64, dtype=torch.float32)}, tmp_path / "d.pt")
    data = bytearray(open(path, "rb").read())
    at = data.find(torch.arange(64, dtype=torch.float32).numpy().tobytes()[40:48])
    data[at] ^= 0xFF
    open(path, "wb").write(bytes(data))
    result = cli("verify", "--json", path)
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["intact"] is False and report["damage"][0]["key"] == "w"
    assert "CRC" in report["damage"][0]["what"] and report["damage"][0]["record"]


def test_whole_model_of_torch_classes_gets_the_allowlist_that_loads_it(tmp_path):
    path = builders.save(
        torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU()), tmp_path / "m.pt"
    )
    checkpoint = open_checkpoint(path)
    report = report_dict(checkpoint)
    assert {g["category"] for g in report["globals"]} == {"class", "torch"}
    text = "\n".join(text_lines(checkpoint))
    assert "a class from the code that wrote the file" not in text
    assert report["snippet"]
    namespace = {}
    exec(report["snippet"], namespace)  # the oracle: torch loads it with that allowlist
    loaded = namespace["checkpoint"]
    assert isinstance(loaded, torch.nn.Sequential)
    assert cli("verify", path).returncode == 0


def test_huge_integer_in_a_call_is_listed(tmp_path):
    big = 10**5000 + 7

    class Big:
        def __reduce__(self):
            return argparse.Namespace, (), {"n": big}, None, None

    class Called:
        def __reduce__(self):
            return functools.partial, (print, big)

    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        optimizer = {"state": {}, "param_groups": [{"lr": 0.1, "params": [0], big: 1}]}
        path = builders.save(
            {"a": Big(), "b": Called(), big: 1, "opt": optimizer}, tmp_path / "big.pt"
        )
        result = cli("inspect", "--json", path)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["scalars"]["a.n"] == big
    finally:
        sys.set_int_max_str_digits(limit)
    text = cli("inspect", path)
    assert text.returncode == 0 and "5,001 digits" in text.stdout
    assert cli("globals", path).returncode == 0


def test_each_format_names_its_own_loader(tmp_path):
    """No report says a file loads with weights_only unless torch.load reads it that way."""
    import torch.distributed.checkpoint as dcp

    from ckpt_viewer.core.listing.globals import verdict

    cases = {
        builders.safetensors_file(tmp_path / "s.safetensors"): (False, "no pickle in it"),
        builders.hf_directory(tmp_path / "hf"): (False, "no pickle in it"),
        builders.hf_directory(tmp_path / "hfbin", shard_format="bin"): (
            True,
            "loads each of its pickled files",
        ),
        builders.save({"w": torch.ones(2)}, tmp_path / "w.pt"): (True, "loads this file as it is"),
    }
    dcp.save({"w": torch.ones(2)}, checkpoint_id=str(tmp_path / "dcp"))
    cases[str(tmp_path / "dcp")] = (False, "torch.load does not read a DCP folder")
    for path, (loads, words) in cases.items():
        checkpoint = open_checkpoint(path)
        assert report_dict(checkpoint)["loads_with_weights_only"] is loads, path
        assert words in verdict(checkpoint), (path, verdict(checkpoint))


def test_a_file_we_refuse_still_names_the_calls_before_the_failure(tmp_path):
    """torch.load(weights_only=False) runs a payload before it finds a record missing; our
    one-line error says so."""
    import zipfile

    canary, command = canary_command(tmp_path)
    source = builders.save(
        {"evil": builders.Call(os.system, command), "w": torch.ones(2)}, tmp_path / "full.pt"
    )
    path = tmp_path / "cut.pt"
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            if not info.filename.endswith("/data/0"):
                zout.writestr(info, zin.read(info))
    result = cli("globals", path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "posix.system" in result.stderr and "weights_only=False" in result.stderr
    assert not os.path.exists(canary)
