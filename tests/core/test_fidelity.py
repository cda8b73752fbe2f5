"""torch is the reference: every file here is built with torch (or crafted from a torch file),
loaded with torch.load(weights_only=True) and with ckpt-viewer, and compared tensor by tensor,
bit for bit (tests/oracle.py). Crafted archives must be read as torch reads them, or refused
as ambiguous where torch and a plain zip reader could disagree."""

from __future__ import annotations

import io
import pickle
import struct
import zlib

import pytest
import torch
from oracle import differential, torch_load
from zipcraft import Entry, central_directory, end_record, entries_of, make_zip, zip64_records

import builders
from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.listing.open import open_checkpoint
from ckpt_viewer.core.listing.readers.zip_directory import AmbiguousArchive
from ckpt_viewer.core.listing.safe_pickle import TORCH_ALLOWED


def _tensor_with_attribute():
    t = torch.arange(4.0)
    t.note = "kept by torch as a Python attribute"
    return t


def _parameter_with_state():
    p = torch.nn.Parameter(torch.randn(3))
    p.tag = 7
    return p


REAL_FILES = {
    "training": lambda: builders.trained()[0].state_dict(),
    "every_dtype": builders.every_dtype,
    "neg_and_conj_views": lambda: {
        "conj": torch.randn(3, 2, dtype=torch.cfloat).conj(),
        "neg": torch._neg_view(torch.randn(5)),
        "neg_bf16": torch._neg_view(torch.randn(4).bfloat16()),
        "neg_conj": torch._neg_view(torch.randn(3, dtype=torch.cdouble).conj()),
        "neg_int": torch._neg_view(torch.arange(4)),
        "neg_transposed": torch._neg_view(torch.randn(3, 4)).t(),
    },
    "parameters": lambda: {
        "p": torch.nn.Parameter(torch.randn(2, 2)),
        "frozen": torch.nn.Parameter(torch.randn(2), requires_grad=False),
        "stateful": _parameter_with_state(),
    },
    "tensor_with_attribute": lambda: {"t": _tensor_with_attribute()},
    "views_of_one_storage": lambda: (
        lambda base: {"a": base, "b": base[1:, 2:], "c": base.t(), "d": base.view(-1)[3:9]}
    )(torch.randn(4, 5)),
    "untyped_v3_dtypes": lambda: {
        "u16": torch.tensor([1, 2, 65535], dtype=torch.uint16),
        "u32": torch.tensor([1, 2, 2**32 - 1], dtype=torch.uint32),
        "e8m0": torch.ones(3, dtype=torch.float8_e8m0fnu),
    },
    "nested_containers": lambda: {
        "list": [torch.ones(2), (torch.zeros(1), {"x": torch.eye(2)})],
        "scalars": {"epoch": 3, "loss": float("nan")},
    },
    "cuda_tagged": None,  # built below: storages tagged cuda:1 on a CPU machine
}


def _save(obj, path, **kwargs):
    torch.save(obj, path, **kwargs)
    return str(path)


@pytest.mark.parametrize("name", [n for n, make in REAL_FILES.items() if make])
@pytest.mark.parametrize("legacy", [False, True])
def test_real_files_match_torch(tmp_path, name, legacy):
    torch.manual_seed(0)
    path = _save(REAL_FILES[name](), tmp_path / "f.pt", _use_new_zipfile_serialization=not legacy)
    verdict = differential(path)
    if legacy and name in ("every_dtype", "untyped_v3_dtypes"):
        # torch's legacy writer saves float8/uint16 tensors with an untyped storage that its
        # legacy loader cannot read back
        assert verdict.startswith("both refuse"), verdict
    else:
        assert verdict == "same", verdict


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("legacy", [False, True])
def test_every_pickle_protocol(tmp_path, protocol, legacy):
    """Protocols 4 and 5 use opcodes torch's weights_only unpickler lacks: torch refuses the
    file, we show it and say why (a legacy file used to open as a bare pickle with 0 tensors)."""
    path = _save(
        {"w": torch.arange(6.0).reshape(2, 3), "step": 5},
        tmp_path / "p.pt",
        pickle_protocol=protocol,
        _use_new_zipfile_serialization=not legacy,
    )
    verdict = differential(path)
    assert not verdict.startswith("MISMATCH"), verdict
    checkpoint = open_checkpoint(path)
    assert checkpoint.format == ("torch-legacy" if legacy else "torch-zip")
    assert [key for key, _, _ in checkpoint.tensors()] == ["w"]
    assert bool(checkpoint.refusals) == (protocol >= 4)


def test_cuda_tags_are_shown_and_values_match(tmp_path):
    path = _save({"w": torch.randn(3)}, tmp_path / "c.pt")
    entries = entries_of(open(path, "rb").read())
    for entry in entries:
        if entry.name.endswith(b"data.pkl"):
            entry.data = entry.data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:1")
    crafted = tmp_path / "cuda.pt"
    crafted.write_bytes(make_zip(entries))
    assert differential(str(crafted)) == "same"
    assert open_checkpoint(str(crafted)).tensors()[0][1].device == "cuda:1"


def test_our_allowlist_is_torchs():
    from torch._weights_only_unpickler import _get_allowed_globals

    assert TORCH_ALLOWED == set(_get_allowed_globals())


# --- crafted archives ---------------------------------------------------------------------


def _entries(value=1.0):
    buffer = io.BytesIO()
    torch.save({"w": torch.full((4,), value)}, buffer)
    return entries_of(buffer.getvalue())


def _renamed(entries, old: bytes, new: bytes):
    return [Entry(e.name.replace(old, new), e.data, e.deflate, e.flags) for e in entries]


def _with(entries, suffix: bytes, data: bytes):
    return [Entry(e.name, data if e.name.endswith(suffix) else e.data) for e in entries]


def _zip64_pointing_elsewhere():
    good, evil = _entries(1.0), _entries(7.0)
    out, offsets, payloads = bytearray(), [], []
    for entry in good + evil:
        offsets.append(len(out))
        payloads.append(entry.data)
        out += struct.pack(
            "<4s5H3L2H",
            b"PK\x03\x04",
            20,
            0,
            0,
            0,
            0,
            zlib.crc32(entry.data),
            len(entry.data),
            len(entry.data),
            len(entry.name),
            0,
        )
        out += entry.name + entry.data
    good_cd = central_directory(good, offsets[: len(good)], payloads[: len(good)])
    good_at = len(out)
    out += good_cd
    evil_cd = central_directory(evil, offsets[len(good) :], payloads[len(good) :])
    evil_at = len(out)
    out += evil_cd
    out += zip64_records(len(evil), len(evil_cd), evil_at, len(out))
    out += end_record(len(good), len(good_cd), good_at)
    return bytes(out)


CRAFTED = {
    # torch's lookup ignores ASCII case: these load, and must be read the same
    "upper_case_data_pkl": lambda: make_zip(_renamed(_entries(), b"data.pkl", b"DATA.PKL")),
    "upper_case_storage": lambda: make_zip(_renamed(_entries(), b"data/0", b"DATA/0")),
    "non_ascii_folder": lambda: make_zip(
        _renamed(_entries(), b"archive/", "arch\u00efve/".encode())
    ),
    "cp437_folder_bytes": lambda: make_zip(_renamed(_entries(), b"archive/", b"arch\x82ve/")),
    "deflated_records": lambda: make_zip([Entry(e.name, e.data, deflate=True) for e in _entries()]),
    "local_name_differs": lambda: make_zip(
        [Entry(e.name, e.data, local_name=b"x" * len(e.name)) for e in _entries()]
    ),
    "archive_comment": lambda: make_zip(_entries(), comment=b"a comment"),
    "version_with_junk": lambda: make_zip(_with(_entries(), b"/version", b" 3x")),
    "bad_crc_on_storage": lambda: make_zip([Entry(e.name, e.data) for e in _entries()]),
    # torch refuses these: so must we
    "version_too_new": lambda: make_zip(_with(_entries(), b"/version", b"11")),
    "version_zero": lambda: make_zip(_with(_entries(), b"/version", b"0")),
    "byteorder_with_newline": lambda: make_zip(_with(_entries(), b"byteorder", b"little\n")),
    "file_outside_folder": lambda: make_zip(_entries() + [Entry(b"other/x", b"1")]),
    "storage_record_too_long": lambda: make_zip(_with(_entries(), b"data/0", bytes(24))),
    "storage_record_too_short": lambda: make_zip(_with(_entries(), b"data/0", bytes(12))),
    "no_version_record": lambda: make_zip(
        [e for e in _entries() if not e.name.endswith(b"version")]
    ),
    # a plain zip reader and torch could read different records: refused as ambiguous
    "nul_in_name": lambda: make_zip(_entries() + [Entry(b"archive/data.pkl\0x", b"junk")]),
    "case_duplicate_pkl": lambda: make_zip(
        _entries() + [Entry(b"archive/DATA.pkl", _entries(7.0)[0].data)]
    ),
    "exact_duplicate_storage": lambda: make_zip(_entries() + [Entry(b"archive/data/0", bytes(16))]),
    "zip64_pointing_elsewhere": _zip64_pointing_elsewhere,
}
AMBIGUOUS = {
    "nul_in_name",
    "case_duplicate_pkl",
    "exact_duplicate_storage",
    "zip64_pointing_elsewhere",
}


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_crafted_archives_read_as_torch_reads_them(tmp_path, name):
    path = tmp_path / "crafted.pt"
    path.write_bytes(CRAFTED[name]())
    verdict = differential(str(path))
    assert not verdict.startswith("MISMATCH"), verdict
    if name in AMBIGUOUS:
        assert verdict.startswith("ambiguous"), verdict
        with pytest.raises(AmbiguousArchive) as refused:
            open_checkpoint(str(path))
        assert "\n" not in str(refused.value)


def test_zip64_record_wins_as_in_torch(tmp_path):
    """The case where a viewer that only read the end record showed 1s while torch loads 7s."""
    path = tmp_path / "z64.pt"
    path.write_bytes(_zip64_pointing_elsewhere())
    loaded, _ = torch_load(str(path))
    assert torch.equal(loaded["w"], torch.full((4,), 7.0))
    with pytest.raises(AmbiguousArchive, match="zip64"):
        open_checkpoint(str(path))


def test_crc_failure_is_a_warning_as_torch_does_not_check(tmp_path):
    entries = _entries()
    raw = bytearray(make_zip(entries))
    storage = next(e for e in entries if e.name.endswith(b"data/0"))
    at = raw.index(storage.name + storage.data) + len(storage.name)
    raw[at] ^= 0xFF  # one byte of the tensor; its CRC no longer holds
    path = tmp_path / "crc.pt"
    path.write_bytes(bytes(raw))
    assert differential(str(path)) == "same"


# --- the pickle layer ---------------------------------------------------------------------


def _zip_with_pickle(tmp_path, pkl: bytes, storages: dict) -> str:
    entries = [Entry(b"archive/data.pkl", pkl), Entry(b"archive/version", b"3")]
    entries += [Entry(f"archive/data/{k}".encode(), v) for k, v in storages.items()]
    path = tmp_path / "p.pt"
    path.write_bytes(make_zip(entries))
    return str(path)


def _tensor_pickle(extra_ops: bytes = b"") -> bytes:
    """{'w': _rebuild_tensor_v2(storage 0 (4 floats), 0, (4,), (1,), False, OrderedDict())}
    followed by `extra_ops` run with the tensor on top of the stack."""
    return (
        b"\x80\x02}q\x00X\x01\x00\x00\x00wq\x01ctorch._utils\n_rebuild_tensor_v2\nq\x02("
        b"(X\x07\x00\x00\x00storageq\x03ctorch\nFloatStorage\nq\x04X\x01\x00\x00\x000q\x05"
        b"X\x03\x00\x00\x00cpuq\x06K\x04tq\x07QK\x00K\x04\x85K\x01\x85\x89ccollections\n"
        b"OrderedDict\n)Rq\x08tRq\x09" + extra_ops + b"s."
    )


def test_build_on_a_tensor_repoints_it_as_torch_does(tmp_path):
    """torch's weights_only unpickler runs Tensor.set_(*state) on BUILD: the tensor now views
    2 elements from offset 1. The record's bounds are checked again for the new geometry."""
    build = b"((h\x03h\x04h\x05h\x06K\x04tQK\x01K\x02\x85K\x01\x85tb"
    values = struct.pack("<4f", 1, 2, 3, 4)
    path = _zip_with_pickle(tmp_path, _tensor_pickle(build), {"0": values})
    loaded, error = torch_load(path)
    assert error is None and loaded["w"].tolist() == [2.0, 3.0]
    assert differential(path) == "same"
    outside = b"((h\x03h\x04h\x05h\x06K\x04tQK\x03K\x02\x85K\x01\x85tb"
    bad = _zip_with_pickle(tmp_path, _tensor_pickle(outside), {"0": values})
    assert torch_load(bad)[1] is not None
    with pytest.raises(CheckpointError, match="reaches byte"):
        open_checkpoint(bad)


def test_build_on_a_storage_is_refused(tmp_path):
    """A file cannot rewrite a storage record after its size was checked."""
    pkl = (
        b"\x80\x02}q\x00X\x01\x00\x00\x00sq\x01(X\x07\x00\x00\x00storageq\x03ctorch\n"
        b"FloatStorage\nq\x04X\x01\x00\x00\x000q\x05X\x03\x00\x00\x00cpuq\x06K\x04tq\x07Q"
        b"}X\x05\x00\x00\x00numelJ\x00\x00\x00\x01sbs."
    )
    path = _zip_with_pickle(tmp_path, pkl, {"0": bytes(16)})
    with pytest.raises(CheckpointError, match="rewrites storage record"):
        open_checkpoint(path)


def test_storage_typed_in_the_wrong_units_is_refused(tmp_path):
    """An UntypedStorage counts bytes: 4 'elements' of it are 4 bytes, not 16."""
    pkl = _tensor_pickle().replace(b"ctorch\nFloatStorage\n", b"ctorch.storage\nUntypedStorage\n")
    path = _zip_with_pickle(tmp_path, pkl, {"0": bytes(16)})
    assert torch_load(path)[1] is not None
    with pytest.raises(CheckpointError):
        open_checkpoint(path)


def test_globals_outside_the_allowlist_are_reported_not_run(tmp_path):
    class Loud:
        def __reduce__(self):
            return (print, ("never printed",))

    path = builders.save({"w": torch.ones(2), "x": Loud()}, tmp_path / "g.pt")
    verdict = differential(path)
    assert verdict.startswith("torch refuses, we show it and say why"), verdict
    assert "builtins.print" in open_checkpoint(path).refusals[0]


def test_legacy_sys_info_byte_order_is_ignored_as_torch_does(tmp_path):
    path = _save({"w": torch.arange(3.0)}, tmp_path / "l.pt", _use_new_zipfile_serialization=False)
    data = open(path, "rb").read()
    at = data.index(b"\x88", data.index(b"little_endian"))
    flipped = data[:at] + b"\x89" + data[at + 1 :]
    path2 = tmp_path / "big.pt"
    path2.write_bytes(flipped)
    assert differential(str(path2)) == "same"
    assert any("sys_info" in w for w in open_checkpoint(str(path2)).warnings)


def test_plain_pickle_is_not_taken_for_a_legacy_file(tmp_path):
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"a": 1, "b": [1.5]}, protocol=4))
    checkpoint = open_checkpoint(str(path))
    assert checkpoint.format == "pickle" and checkpoint.scalars()["a"] == 1


# --- found by tests/hostile/test_differential_fuzz.py -------------------------------------


def _with_args(old: bytes, new: bytes, extra_ops: bytes = b"") -> bytes:
    pkl = _tensor_pickle(extra_ops)
    assert old in pkl
    return pkl.replace(old, new, 1)


def test_metadata_key_sets_the_bit_even_when_false(tmp_path):
    """torch's _set_tensor_metadata sets neg/conj whenever the key is there: {'neg': False}
    loads as a negative view (we used to read the value and showed the numbers unnegated)."""
    pkl = _with_args(
        b"OrderedDict\n)Rq\x08tR", b"OrderedDict\n)Rq\x08}(X\x03\x00\x00\x00neg\x89utR"
    )
    path = _zip_with_pickle(tmp_path, pkl, {"0": struct.pack("<4f", 1, 2, 3, 4)})
    assert torch_load(path)[0]["w"].tolist() == [-1.0, -2.0, -3.0, -4.0]
    assert differential(path) == "same"


FUZZ_GAPS = {  # classes the differential fuzzer found, each fixed
    # torch's SETITEM only writes into dict/OrderedDict/Counter; the C unpickler we drive
    # writes into a list too: pickle_scan simulates the stack's kinds to say torch refuses
    "setitem_on_a_list": lambda: (b"\x80\x02}(X\x02\x00\x00\x00k0](K\x00eK\x00K\x01su.", {}),
    # conj metadata on a real dtype: torch fails an internal assert; we show a conj view
    "conj_on_a_float_tensor": lambda: (
        _with_args(
            b"OrderedDict\n)Rq\x08tR", b"OrderedDict\n)Rq\x08}(X\x04\x00\x00\x00conj\x88utR"
        ),
        {"0": bytes(16)},
    ),
    # BUILD (Tensor.set_) on a tensor marked requires_grad: torch refuses the in-place op
    "build_on_a_requires_grad_tensor": lambda: (
        _with_args(
            b"\x85\x89cc", b"\x85\x88cc", b"((h\x03h\x04h\x05h\x06K\x04tQK\x01K\x02\x85K\x01\x85tb"
        ),
        {"0": bytes(16)},
    ),
    # a zero-element tensor whose stride tuple is shorter than its size: torch loads it
    "empty_tensor_with_short_stride": lambda: (
        _with_args(b"K\x04\x85K\x01\x85", b"K\x00K\x04K\x02\x87)"),
        {"0": bytes(16)},
    ),
    # v3 dtype wider than the storage's bytes: read_tensor raises ValueError (a crash)
    "v3_complex_on_two_bytes": lambda: (
        _tensor_pickle()
        .replace(b"_rebuild_tensor_v2", b"_rebuild_tensor_v3")
        .replace(b"FloatStorage", b"BFloat16Storage")
        .replace(b"K\x04tq\x07", b"K\x01tq\x07")
        .replace(b"K\x00K\x04\x85K\x01\x85", b"K\x03K\x00K\x00\x86K\x00K\x01\x86")
        .replace(b"OrderedDict\n)Rq\x08tR", b"OrderedDict\n)Rq\x08ctorch\ncomplex64\ntR"),
        {"0": bytes(2)},
    ),
}


@pytest.mark.parametrize("name", sorted(FUZZ_GAPS))
def test_fuzz_gaps_in_pickles(tmp_path, name):
    pkl, storages = FUZZ_GAPS[name]()
    try:
        verdict = differential(_zip_with_pickle(tmp_path, pkl, storages))
    except Exception as exc:  # noqa: BLE001 - a crash is one of the gaps
        verdict = f"CRASH: {exc}"
    assert not verdict.startswith(("MISMATCH", "CRASH")), verdict


def _safetensors(header: bytes, data: bytes) -> bytes:
    return struct.pack("<Q", len(header)) + header + data


SAFETENSORS_GAPS = {
    # safetensors needs the entries to tile the data section: each begins where the last ends
    "gap_between_tensors": lambda: _safetensors(
        b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
        b'"b":{"dtype":"U8","shape":[1],"data_offsets":[2,3]}}',
        bytes(3),
    ),
    "data_not_fully_covered": lambda: _safetensors(
        b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', bytes(2)
    ),
    # __metadata__ must map strings to strings
    "metadata_not_a_string_map": lambda: _safetensors(b'{"__metadata__":{"a":null}}', b""),
    # safetensors refuses a field given twice; we keep the last
    "duplicate_field": lambda: _safetensors(
        b'{"a":{"dtype":"I8","dtype":"U8","shape":[1],"data_offsets":[0,1]}}', bytes(1)
    ),
    # F4 (float4 pairs; the shape counts values): empty, odd count, odd last dimension; F6
    # is parsed by the library but never loaded
    "f4_dtype": lambda: _safetensors(b'{"a":{"dtype":"F4","shape":[0],"data_offsets":[0,0]}}', b""),
    "f4_pairs": lambda: _safetensors(
        b'{"a":{"dtype":"F4","shape":[3,2],"data_offsets":[0,3]}}', b"\x12\x34\x56"
    ),
    "f4_odd_count": lambda: _safetensors(
        b'{"a":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}}', bytes(2)
    ),
    "f4_odd_last_dim": lambda: _safetensors(
        b'{"a":{"dtype":"F4","shape":[2,3],"data_offsets":[0,3]}}', bytes(3)
    ),
    "f6_dtype": lambda: _safetensors(
        b'{"a":{"dtype":"F6_E2M3","shape":[4],"data_offsets":[0,3]}}', bytes(3)
    ),
    "f8_fnuz": lambda: _safetensors(
        b'{"a":{"dtype":"F8_E4M3FNUZ","shape":[2],"data_offsets":[0,2]},'
        b'"b":{"dtype":"F8_E5M2FNUZ","shape":[1],"data_offsets":[2,3]}}',
        b"\x80\x01\x7f",
    ),
}


@pytest.mark.parametrize("name", sorted(SAFETENSORS_GAPS))
def test_fuzz_gaps_in_safetensors(tmp_path, name):
    from oracle import safetensors_differential

    path = tmp_path / "g.safetensors"
    path.write_bytes(SAFETENSORS_GAPS[name]())
    assert not safetensors_differential(str(path)).startswith("MISMATCH")
