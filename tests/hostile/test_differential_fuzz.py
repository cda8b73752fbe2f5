"""Differential fuzzing with generated structure: zip archives edited record by record, pickles
written from an opcode grammar (zip and legacy containers), safetensors headers built field by
field. torch (and the safetensors library) are the oracle: tests/oracle.py's `differential()`.

CI runs a few cases of each; the by-hand campaign (one format after another):

    FUZZ_EXAMPLES=10000 FUZZ_LOG=/tmp/zip.log python -m pytest -q \
        tests/hostile/test_differential_fuzz.py -k zip_archives

With FUZZ_LOG set every verdict is appended to that file and the test does not stop at the
first MISMATCH/CRASH/HANG, so the log counts them all (`cut -d: -f1 LOG | sort | uniq -c`).
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import struct
import time

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oracle import differential, safetensors_differential
from zipcraft import Entry, entries_of, make_zip

from ckpt_viewer.core import CheckpointError

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", 60))
LOG = os.environ.get("FUZZ_LOG")
HANG_SECONDS = 10.0
# mismatches found by the campaign and not fixed yet (reproducers: tests/core/test_fidelity.py,
# marked xfail); CI tolerates them so that it stops only on new ones
# Disagreements found and not fixed (tests/core/test_fidelity.py holds a reproducer): the
# safetensors dtypes F4/F6 (sub-byte floats) that we do not read.
KNOWN_GAPS = ("unknown dtype 'F4'", "unknown dtype 'F6")
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)


def judge(make_verdict, case: str) -> None:
    """Run one comparison; record it (campaign) or fail on it (CI)."""
    started = time.monotonic()
    try:
        verdict = make_verdict()
    except CheckpointError as exc:  # refusing while reading values torch returned
        verdict = f"MISMATCH: we fail reading values: {exc}"
    except Exception as exc:  # noqa: BLE001 - anything else from our side is a crash
        verdict = f"CRASH: {type(exc).__name__}: {exc}"
    elapsed = time.monotonic() - started
    if elapsed > HANG_SECONDS:
        verdict = f"HANG: {elapsed:.1f}s; {verdict}"
    verdict = verdict.replace("\n", " ")
    if LOG:
        with open(LOG, "a", encoding="utf-8") as log:
            log.write(f"{verdict[:300]}\t{case[:600]}\n")
        return
    if verdict.startswith(("MISMATCH", "CRASH")) and any(gap in verdict for gap in KNOWN_GAPS):
        return
    assert not verdict.startswith(("MISMATCH", "CRASH", "HANG")), f"{verdict}\n{case}"


# --- 1. zip archives ----------------------------------------------------------------------


def _seed_objects():
    torch.manual_seed(0)
    base = torch.randn(3, 4)
    return [
        {"w": torch.arange(4.0), "b": torch.ones(2, dtype=torch.int64)},
        {
            "a": base,
            "view": base[1:, 2:],
            "t": base.t(),
            "nested": {"h": torch.tensor([1, 2], dtype=torch.float16), "step": 3},
        },
        {
            "x": torch.tensor([True, False]),
            "bf": torch.ones(3, dtype=torch.bfloat16),
            "list": [torch.zeros(1, dtype=torch.uint8), (torch.eye(2, dtype=torch.float64),)],
        },
    ]


SEED_ARCHIVES = []


def seed_archives() -> list[bytes]:
    if not SEED_ARCHIVES:
        for obj in _seed_objects():
            buffer = io.BytesIO()
            torch.save(obj, buffer)
            SEED_ARCHIVES.append(buffer.getvalue())
    return SEED_ARCHIVES


NAME_EDITS = ["upper", "lower", "flip_one", "nul", "cp437", "utf8", "other_folder", "no_folder"]
names = st.sampled_from(["version", "byteorder", "data.pkl", "data/0", "data/1", "any"])
zip_edit = st.one_of(
    st.tuples(st.just("rename"), names, st.sampled_from(NAME_EDITS)),
    st.tuples(st.just("duplicate"), names, st.sampled_from(["same", "zeros", "upper"])),
    st.tuples(st.just("drop"), names),
    st.tuples(st.just("move"), names, st.integers(0, 10)),
    st.tuples(
        st.just("add"),
        st.sampled_from(
            [
                b"archive/extra",
                b"archive/data/9",
                b"other/x",
                b"archive/.data/serialization_id",
                b"x",
                b"",
            ]
        ),
        st.binary(max_size=8),
    ),
    st.tuples(
        st.just("text"),
        st.sampled_from(["version", "byteorder"]),
        st.sampled_from(
            [
                b"3",
                b"2",
                b"1",
                b"0",
                b"4",
                b"11",
                b"3\n",
                b" 3",
                b"3x",
                b"-1",
                b"",
                b"little",
                b"big",
                b"little\n",
                b"LITTLE",
                b"\xff",
            ]
        ),
    ),
    st.tuples(st.just("resize"), names, st.integers(-9, 9)),
    st.tuples(st.just("deflate"), names),
    st.tuples(st.just("local_name"), names, st.sampled_from(["junk", "other", "case"])),
)
archive_edit = st.fixed_dictionaries(
    {
        "comment": st.sampled_from([b"", b"hi", b"PK\x05\x06"]),
        "prepend": st.sampled_from([b"", b"\0", b"junk" * 4, b"PK\x03\x04"]),
        "append": st.sampled_from([b"", b"\0", b"junk" * 4]),
        "zip64": st.sampled_from([None, "agree", "count", "offset", "size"]),
    }
)


def _picks(entries, which: str):
    if which == "any":
        return entries[:1]
    return [e for e in entries if e.name.endswith(b"/" + which.encode())]


def _renamed(name: bytes, how: str) -> bytes:
    folder, _, rest = name.partition(b"/")
    return {
        "upper": lambda: name.upper(),
        "lower": lambda: name.lower(),
        "flip_one": lambda: name[:-1] + name[-1:].swapcase(),
        "nul": lambda: name + b"\0",
        "cp437": lambda: folder + b"\x82/" + rest,
        "utf8": lambda: folder + "\u00e9".encode() + b"/" + rest,
        "other_folder": lambda: b"other/" + rest,
        "no_folder": lambda: rest,
    }[how]()


def apply_zip_edits(entries: list[Entry], edits) -> list[Entry]:
    entries = [Entry(e.name, e.data) for e in entries]
    for edit in edits:
        op = edit[0]
        if op == "add":
            entries.append(Entry(edit[1], edit[2]))
            continue
        if op == "text":
            for e in _picks(entries, edit[1]):
                e.data = edit[2]
            continue
        for e in _picks(entries, edit[1]):
            if op == "rename":
                e.name = _renamed(e.name, edit[2])
                if edit[2] == "utf8":
                    e.flags = 0x800
            elif op == "duplicate":
                data = bytes(len(e.data)) if edit[2] == "zeros" else e.data
                name = e.name.upper() if edit[2] == "upper" else e.name
                entries.append(Entry(name, data))
            elif op == "drop":
                entries.remove(e)
            elif op == "move":
                entries.remove(e)
                entries.insert(min(edit[2], len(entries)), e)
            elif op == "resize":
                e.data = e.data[: edit[2]] if edit[2] < 0 else e.data + bytes(edit[2])
            elif op == "deflate":
                e.deflate = True
            elif op == "local_name":
                e.local_name = {
                    "junk": b"j" * len(e.name),
                    "other": b"archive/data.pkl",
                    "case": e.name.swapcase(),
                }[edit[2]]
    return entries


def with_archive_edits(raw: bytes, count: int, how: dict) -> bytes:
    if how["zip64"]:
        end = raw.rindex(b"PK\x05\x06")
        _, _, _, _, total, cd_size, cd_offset, _ = struct.unpack("<4s4H2LH", raw[end : end + 22])
        total += how["zip64"] == "count"
        cd_offset += 16 * (how["zip64"] == "offset")
        cd_size += 3 * (how["zip64"] == "size")
        record = struct.pack(
            "<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, total, total, cd_size, cd_offset
        )
        locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, end, 1)
        raw = raw[:end] + record + locator + raw[end:]
    if how["comment"]:
        raw = raw[:-2] + struct.pack("<H", len(how["comment"])) + how["comment"]
    return how["prepend"] + raw + how["append"]


@FUZZ
@given(seed=st.integers(0, 2), edits=st.lists(zip_edit, max_size=4), how=archive_edit)
def test_zip_archives(tmp_path_factory, seed, edits, how):
    entries = apply_zip_edits(entries_of(seed_archives()[seed]), edits)
    raw = with_archive_edits(make_zip(entries), len(entries), how)
    path = tmp_path_factory.mktemp("zip") / "f.pt"
    path.write_bytes(raw)
    judge(lambda: differential(str(path)), f"zip seed={seed} edits={edits} how={how}")


# --- 2. pickles from an opcode grammar -----------------------------------------------------

STORAGE_TYPES = {  # class name -> element size
    "FloatStorage": 4,
    "DoubleStorage": 8,
    "HalfStorage": 2,
    "BFloat16Storage": 2,
    "LongStorage": 8,
    "IntStorage": 4,
    "ByteStorage": 1,
    "BoolStorage": 1,
    "ComplexFloatStorage": 8,
    "UntypedStorage": 1,
    "NoSuchStorage": 4,
}
DTYPES = ["float32", "float64", "float16", "int64", "uint8", "bool", "complex64", "int8"]


class Emitter:
    """Writes opcodes for one pickle and keeps the storages its tensors name."""

    def __init__(self, protocol: int, legacy: bool):
        self.protocol, self.legacy = protocol, legacy
        self.out = bytearray(b"\x80" + bytes([protocol]))
        self.memo = 0
        self.storages = {}  # key -> (type name, numel)

    def op(self, data: bytes):
        self.out += data

    def text(self, s: str):
        raw = s.encode("utf-8", "surrogatepass")
        if self.protocol >= 4 and len(raw) < 256:
            self.op(b"\x8c" + bytes([len(raw)]) + raw)  # SHORT_BINUNICODE
        else:
            self.op(b"X" + struct.pack("<I", len(raw)) + raw)

    def int(self, n: int):
        if 0 <= n < 256:
            self.op(b"K" + bytes([n]))
        elif -(2**31) <= n < 2**31:
            self.op(b"J" + struct.pack("<i", n))
        else:
            raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
            self.op(b"\x8a" + bytes([len(raw)]) + raw)

    def glob(self, module: str, name: str):
        if self.protocol >= 4:
            self.text(module)
            self.text(name)
            self.op(b"\x93")  # STACK_GLOBAL
        else:
            self.op(b"c" + module.encode() + b"\n" + name.encode() + b"\n")

    def put(self) -> int:
        if self.protocol >= 4:
            self.op(b"\x94")  # MEMOIZE
        else:
            self.op(
                b"q" + bytes([self.memo % 256])
                if self.memo < 256
                else b"r" + struct.pack("<I", self.memo)
            )
        self.memo += 1
        return self.memo - 1

    def get(self, index: int):
        self.op(b"h" + bytes([index]) if index < 256 else b"j" + struct.pack("<I", index))


def tuple_of(em: Emitter, items):
    em.op(b"(")
    for item in items:
        em.int(item)
    em.op(b"t")


@st.composite
def tensor_node(draw, em: Emitter):
    kind = draw(st.sampled_from(["v2", "v2", "v3", "param", "param_state", "from_type"]))
    if kind == "param" or kind == "param_state":
        em.glob(
            "torch._utils",
            "_rebuild_parameter" if kind == "param" else "_rebuild_parameter_with_state",
        )
        em.op(b"(")
        draw(tensor_node(em))
        em.op(b"\x88" if draw(st.booleans()) else b"\x89")
        em.glob("collections", "OrderedDict")
        em.op(b")R")
        if kind == "param_state":
            em.op(b"}")
            if draw(st.booleans()):
                em.text("tag")
                em.int(draw(st.integers(0, 9)))
                em.op(b"s")
        em.op(b"tR")
        return
    if kind == "from_type":
        em.glob("torch._tensor", "_rebuild_from_type_v2")
        em.op(b"(")
        em.glob("torch._utils", "_rebuild_tensor_v2")
        em.glob(
            *draw(
                st.sampled_from(
                    [
                        ("torch", "Tensor"),
                        ("torch.nn.parameter", "Parameter"),
                        ("torch", "FloatTensor"),
                    ]
                )
            )
        )
        em.op(b"(")
        tensor_args(draw, em, v3=False)
        em.op(b"t")
        em.op(b"}" if draw(st.booleans()) else b"N")
        em.op(b"tR")
        return
    em.glob("torch._utils", "_rebuild_tensor_v3" if kind == "v3" else "_rebuild_tensor_v2")
    em.op(b"(")
    tensor_args(draw, em, v3=kind == "v3")
    em.op(b"tR")
    if draw(st.integers(0, 5)) == 0:  # BUILD with set_'s arguments
        em.op(b"(")
        persistent_id(draw, em)
        em.int(draw(st.integers(0, 6)))
        tuple_of(em, draw(st.lists(st.integers(0, 4), max_size=2)))
        tuple_of(em, draw(st.lists(st.integers(0, 3), max_size=2)))
        em.op(b"tb")


def persistent_id(draw, em: Emitter):
    key = draw(st.sampled_from(["0", "1", "2"]))
    if key in em.storages and draw(st.integers(0, 3)):
        type_name, numel = em.storages[key]
    else:
        type_name = draw(st.sampled_from(sorted(STORAGE_TYPES)))
        numel = draw(st.integers(0, 12))
        em.storages.setdefault(key, (type_name, numel))
    em.op(b"(")
    em.text("storage")
    em.glob("torch.storage" if type_name == "UntypedStorage" else "torch", type_name)
    em.text(key)
    em.text(draw(st.sampled_from(["cpu", "cpu", "cuda:0", "meta", "cpu\n"])))
    em.int(numel)
    if em.legacy:
        em.op(b"N")
    em.op(b"tQ")  # BINPERSID


def tensor_args(draw, em: Emitter, v3: bool):
    persistent_id(draw, em)
    em.int(draw(st.integers(0, 8)))
    rank = draw(st.integers(0, 3))
    size = draw(st.lists(st.integers(0, 4), min_size=rank, max_size=rank))
    stride = draw(
        st.one_of(
            st.just([math.prod(size[i + 1 :]) for i in range(rank)]),
            st.lists(st.integers(0, 5), min_size=rank, max_size=rank),
            st.lists(st.integers(0, 5), max_size=3),
        )
    )
    tuple_of(em, size)
    tuple_of(em, stride)
    em.op(b"\x88" if draw(st.booleans()) else b"\x89")
    em.glob("collections", "OrderedDict")
    em.op(b")R")
    if v3:
        em.glob("torch", draw(st.sampled_from(DTYPES)))
    meta = draw(
        st.sampled_from(
            [
                None,
                "none",
                {"neg": True},
                {"conj": True},
                {"neg": True, "conj": True},
                {"neg": False},
                {"other": True},
            ]
        )
    )
    if meta == "none":
        return
    if meta is None:
        em.op(b"N")
        return
    em.op(b"}(")
    for k, v in meta.items():
        em.text(k)
        em.op(b"\x88" if v else b"\x89")
    em.op(b"u")


@st.composite
def value_node(draw, em: Emitter, depth: int, memoized: list):
    kinds = ["int", "float", "str", "const", "tensor", "tensor"]
    if depth < 3:
        kinds += ["list", "tuple", "dict", "odict"]
        if LOG:  # a known gap (report, test_fidelity xfail): kept out of CI runs
            kinds.append("list_setitem")
    if memoized:
        kinds.append("get")
    if draw(st.integers(0, 15)) == 0:
        kinds.append("foreign")
    kind = draw(st.sampled_from(kinds))
    if kind == "get":
        em.get(draw(st.sampled_from(memoized)))
        return
    if kind == "int":
        em.int(draw(st.integers(-(2**40), 2**40)))
    elif kind == "float":
        em.op(b"G" + struct.pack(">d", draw(st.floats(allow_nan=True))))
    elif kind == "str":
        em.text(draw(st.text(max_size=6)))
    elif kind == "const":
        em.op(draw(st.sampled_from([b"N", b"\x88", b"\x89"])))
    elif kind == "tensor":
        draw(tensor_node(em))
    elif kind == "foreign":
        em.glob(
            *draw(
                st.sampled_from(
                    [
                        ("builtins", "print"),
                        ("os", "system"),
                        ("torch", "load"),
                        ("collections", "Counter"),
                        ("builtins", "set"),
                        ("__main__", "Thing"),
                    ]
                )
            )
        )
        em.op(b"(")
        em.text("x")
        em.op(b"tR")
    elif kind in ("list", "tuple"):
        em.op(b"]" if kind == "list" else b"")
        em.op(b"(")
        for _ in range(draw(st.integers(0, 3))):
            draw(value_node(em, depth + 1, memoized))
        em.op(b"e" if kind == "list" else b"t")
    elif kind == "list_setitem":
        em.op(b"](")
        count = draw(st.integers(1, 3))
        for _ in range(count):
            draw(value_node(em, depth + 1, memoized))
        em.op(b"e")
        em.int(draw(st.integers(0, count)))
        draw(value_node(em, depth + 1, memoized))
        em.op(b"s")
    else:
        if kind == "odict":
            em.glob("collections", "OrderedDict")
            em.op(b")R")
        else:
            em.op(b"}")
        em.op(b"(")
        for i in range(draw(st.integers(0, 3))):
            em.text(draw(st.sampled_from(["w", "b", "k", "w"])) + str(i))
            draw(value_node(em, depth + 1, memoized))
        em.op(b"u")
    if draw(st.integers(0, 3)) == 0:
        memoized.append(em.put())


@st.composite
def pickle_program(draw, legacy: bool):
    em = Emitter(draw(st.sampled_from([2, 4])), legacy)
    em.op(b"}(")  # the root: a dict of values
    memoized: list = []
    for i in range(draw(st.integers(1, 4))):
        em.text(f"k{i}")
        draw(value_node(em, 1, memoized))
    em.op(b"u.")
    records = {}
    for key, (type_name, numel) in em.storages.items():
        size = numel * STORAGE_TYPES[type_name]
        size = draw(st.sampled_from([size, size, size, max(size - 1, 0), size + 4]))
        records[key] = (type_name, draw(st.binary(min_size=size, max_size=size)))
    return bytes(em.out), records


def zip_container(pkl: bytes, records: dict) -> bytes:
    entries = [Entry(b"archive/data.pkl", pkl), Entry(b"archive/byteorder", b"little")]
    entries += [Entry(f"archive/data/{key}".encode(), data) for key, (_, data) in records.items()]
    entries.append(Entry(b"archive/version", b"3"))
    return make_zip(entries)


LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def legacy_container(pkl: bytes, records: dict) -> bytes:
    """torch's pre-1.6 layout: magic, protocol 1001, sys_info, the object pickle, the list of
    storage keys, then each storage as its element count and its bytes."""
    sys_info = {
        "protocol_version": 1001,
        "little_endian": True,
        "type_sizes": {"short": 2, "int": 4, "long": 4},
    }
    out = bytearray()
    for header in (LEGACY_MAGIC, 1001, sys_info):
        out += pickle.dumps(header, protocol=2)
    out += pkl
    keys = sorted(records)
    out += pickle.dumps(keys, protocol=2)
    for key in keys:
        type_name, data = records[key]
        out += struct.pack("<q", len(data) // STORAGE_TYPES[type_name]) + data
    return bytes(out)


@FUZZ
@given(program=pickle_program(legacy=False))
def test_pickles_in_zip(tmp_path_factory, program):
    path = tmp_path_factory.mktemp("pkl") / "p.pt"
    path.write_bytes(zip_container(*program))
    judge(lambda: differential(str(path)), f"zip pickle={program[0]!r} records={program[1]!r}")


@FUZZ
@given(program=pickle_program(legacy=True))
def test_pickles_in_legacy_files(tmp_path_factory, program):
    path = tmp_path_factory.mktemp("legacy") / "l.pt"
    path.write_bytes(legacy_container(*program))
    judge(lambda: differential(str(path)), f"legacy pickle={program[0]!r} records={program[1]!r}")


# --- 3. safetensors headers ----------------------------------------------------------------

ST_DTYPES = {
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "F64": 8,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "U16": 2,
    "U32": 4,
    "U64": 8,
    "C64": 8,
    "F4": 1,
    "XX": 4,
}


@st.composite
def safetensors_file(draw) -> bytes:
    entries, cursor = [], 0
    for i in range(draw(st.integers(0, 4))):
        dtype = draw(st.sampled_from(sorted(ST_DTYPES)))
        shape = draw(st.lists(st.integers(0, 4), max_size=3))
        nbytes = math.prod(shape) * ST_DTYPES[dtype]
        start = draw(st.sampled_from([cursor, cursor, cursor, 0, cursor + 2, max(cursor - 2, 0)]))
        end = start + draw(
            st.sampled_from([nbytes, nbytes, nbytes, nbytes + 1, max(nbytes - 1, 0)])
        )
        if draw(st.integers(0, 10)) == 0:
            start, end = end, start
        cursor = max(cursor, end)
        name = draw(st.sampled_from([f"t{i}", f"t{i}", "t0", "a.b", "__metadata__x", ""]))
        entries.append((name, {"dtype": dtype, "shape": shape, "data_offsets": [start, end]}))
    if draw(st.booleans()):
        meta = draw(st.sampled_from([{"format": "pt"}, {"k": 1}, {}, "x", {"a": None}]))
        entries.insert(draw(st.integers(0, len(entries))), ("__metadata__", meta))
    data_len = cursor + draw(st.sampled_from([0, 0, 0, 1, -1, 8]))
    parts = [json.dumps(k) + ":" + json.dumps(v) for k, v in entries]
    header = ("{" + ",".join(parts) + "}").encode()
    twist = draw(
        st.sampled_from(
            [None] * 6
            + [
                "nan",
                "inf",
                "latin1",
                "space",
                "bom",
                "trail",
                "dupe_field",
                "float_shape",
                "neg_offset",
            ]
        )
    )
    if twist == "nan" and b"[" in header:
        header = header.replace(b"[", b"[NaN,", 1)
    elif twist == "inf" and b'data_offsets": [' in header:
        header = header.replace(b'data_offsets": [', b'data_offsets": [Infinity, ', 1)
    elif twist == "latin1":
        header = header.replace(b"{", b'{"\xe9": 1,', 1) if len(header) > 2 else header
    elif twist == "space":
        header += b" " * draw(st.integers(1, 9))
    elif twist == "bom":
        header = b"\xef\xbb\xbf" + header
    elif twist == "trail":
        header += b"x"
    elif twist == "dupe_field":
        header = header.replace(b'"dtype": ', b'"dtype": "I8", "dtype": ', 1)
    elif twist == "float_shape":
        header = header.replace(b'"shape": [', b'"shape": [1.0, ', 1)
    elif twist == "neg_offset":
        header = header.replace(b'"data_offsets": [', b'"data_offsets": [-1, ', 1)
    declared = len(header) + draw(st.sampled_from([0] * 8 + [1, -1, 10**9]))
    body = draw(st.binary(min_size=max(data_len, 0), max_size=max(data_len, 0)))
    return struct.pack("<Q", max(declared, 0)) + header + body


@FUZZ
@given(raw=safetensors_file())
def test_safetensors_headers(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("st") / "s.safetensors"
    path.write_bytes(raw)
    judge(lambda: safetensors_differential(str(path)), f"safetensors raw={raw[:400]!r}")


def test_legacy_writer_matches_torchs_own_layout(tmp_path):
    """The test's legacy writer is trusted only because torch loads what it writes."""
    em = Emitter(2, legacy=True)
    em.op(b"}(")
    em.text("w")
    em.glob("torch._utils", "_rebuild_tensor_v2")
    em.op(b"(")
    em.storages["0"] = ("FloatStorage", 3)
    em.op(b"(")
    em.text("storage")
    em.glob("torch", "FloatStorage")
    em.text("0")
    em.text("cpu")
    em.int(3)
    em.op(b"NtQ")
    em.int(0)
    tuple_of(em, [3])
    tuple_of(em, [1])
    em.op(b"\x89")
    em.glob("collections", "OrderedDict")
    em.op(b")RtRu.")
    path = tmp_path / "l.pt"
    path.write_bytes(
        legacy_container(bytes(em.out), {"0": ("FloatStorage", struct.pack("<3f", 1, 2, 3))})
    )
    assert torch.load(path, weights_only=True)["w"].tolist() == [1.0, 2.0, 3.0]
    assert differential(str(path)) == "same"
