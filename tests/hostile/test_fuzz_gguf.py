"""Differential fuzzing of GGUF headers built field by field, with the `gguf` package's own
reader as the oracle: what GGUFReader reads we list and read bit for bit; what it refuses we
refuse in one line (or open, saying why, never silently different).

CI runs a few cases; the by-hand campaign:

    FUZZ_EXAMPLES=10000 FUZZ_LOG=/tmp/gguf.log python -m pytest -q tests/hostile/test_fuzz_gguf.py

With FUZZ_LOG set every verdict is appended to that file (`cut -f1 LOG | cut -d: -f1 | sort |
uniq -c` counts them) and the test does not stop at the first MISMATCH/CRASH/HANG.
"""

from __future__ import annotations

import struct
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_differential_fuzz import FUZZ, judge

from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.listing.open import open_checkpoint
from ckpt_viewer.core.values.read import read_array

gguf = pytest.importorskip("gguf")

# value type ids of the GGUF spec (8 string, 9 array)
FIXED = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
PLAIN_GGML = {
    0: (np.float32, 4),
    1: (np.float16, 2),
    24: (np.int8, 1),
    26: (np.int32, 4),
    28: (np.float64, 8),
    30: (None, 2),
}


def _string(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


def _value(kind: int, value) -> bytes:
    if kind in FIXED:
        return struct.pack("<" + FIXED[kind], value)
    if kind == 8:
        return _string(value)
    item_kind, items = value
    return struct.pack("<IQ", item_kind, len(items)) + b"".join(_value(item_kind, i) for i in items)


def fixed_value(kind: int):
    fmt = FIXED[kind]
    if fmt == "f":
        return st.floats(width=32, allow_nan=False)
    if fmt == "d":
        return st.floats(allow_nan=False)
    if fmt == "?":
        return st.booleans()
    bits = struct.calcsize(fmt) * 8
    low, high = (0, 2**bits - 1) if fmt.isupper() else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return st.integers(low, high)


keys = st.sampled_from(
    [
        b"general.architecture",
        b"general.name",
        b"general.alignment",
        b"llama.block_count",
        b"x",
        b"",
        b"\xff\xfe",
        b"general.alignment",
    ]
)
plain_kv = st.sampled_from(sorted(FIXED)).flatmap(
    lambda kind: st.tuples(keys, st.just(kind), fixed_value(kind))
)
string_kv = st.tuples(keys, st.just(8), st.binary(max_size=12))
array_kv = st.sampled_from([4, 8]).flatmap(
    lambda item: st.tuples(
        keys,
        st.just(9),
        st.tuples(
            st.just(item),
            st.lists(st.binary(max_size=4) if item == 8 else fixed_value(item), max_size=5),
        ),
    )
)
alignment_kv = st.tuples(
    st.just(b"general.alignment"),
    st.sampled_from([4, 5, 10, 6]),
    st.sampled_from([0, 1, 3, 8, 16, 32, 64, 48]),
)
kv = st.one_of(plain_kv, string_kv, array_kv, alignment_kv)

tensor = st.fixed_dictionaries(
    {
        "name": st.sampled_from([b"a.weight", b"b.bias", b"a.weight", b"blk.0.x", b"", b"\xc3("]),
        "type": st.sampled_from([0, 0, 1, 24, 26, 28, 30, 8, 2, 99, 4]),
        "dims": st.lists(st.sampled_from([0, 1, 2, 3, 4, 32, 64]), min_size=0, max_size=4),
        "offset": st.one_of(st.just(None), st.integers(0, 300)),
    }
)
gguf_case = st.fixed_dictionaries(
    {
        "version": st.sampled_from([3] * 8 + [2, 2, 1, 4, 0x03000000]),
        "kvs": st.lists(kv, max_size=5),
        "tensors": st.lists(tensor, max_size=4),
        "count_delta": st.sampled_from([(0, 0)] * 8 + [(1, 0), (0, 1), (-1, 0), (2**40, 0)]),
        "data": st.sampled_from(["exact"] * 4 + ["short", "long", "none"]),
        "seed": st.integers(0, 2**16),
    }
)


def build_gguf(case) -> bytes:
    kvs = case["kvs"]
    alignment = 32
    for key, kind, value in kvs:
        if key == b"general.alignment" and kind in (4, 5, 10, 6):
            alignment = value
    body = b"".join(_string(k) + struct.pack("<I", kind) + _value(kind, v) for k, kind, v in kvs)
    rng = np.random.default_rng(case["seed"])
    blobs, offset = [], 0
    infos = b""
    # the data is laid at the declared alignment when it is a plausible one (a generated
    # 2**33 would pad the file to gigabytes); the file then says one thing and does another
    step = alignment if isinstance(alignment, int) and 0 < alignment <= 4096 else 32
    for t in case["tensors"]:
        numel = int(np.prod(t["dims"])) if t["dims"] else 1
        width = {0: 4, 1: 2, 24: 1, 26: 4, 28: 8, 30: 2, 8: 34 / 32, 2: 18 / 32, 4: 4}.get(
            t["type"], 4
        )
        nbytes = int(numel * width)
        own = offset if t["offset"] is None else t["offset"]
        infos += (
            _string(t["name"])
            + struct.pack("<I", len(t["dims"]))
            + b"".join(struct.pack("<Q", d) for d in t["dims"])
            + struct.pack("<IQ", t["type"], own)
        )
        blobs.append((own, rng.integers(0, 256, nbytes, dtype=np.uint8).tobytes()))
        offset = -(-(own + nbytes) // step) * step
    n_tensors = len(case["tensors"]) + case["count_delta"][0]
    n_kvs = len(kvs) + case["count_delta"][1]
    head = (
        b"GGUF"
        + struct.pack("<I", case["version"])
        + struct.pack("<QQ", max(n_tensors, 0), max(n_kvs, 0))
        + body
        + infos
    )
    start = -(-len(head) // step) * step
    data = bytearray(max([o + len(b) for o, b in blobs], default=0))
    for own, blob in blobs:
        data[own : own + len(blob)] = blob
    tail = {
        "exact": bytes(data),
        "short": bytes(data[: len(data) // 2]),
        "long": bytes(data) + b"\0" * 40,
        "none": b"",
    }[case["data"]]
    return head + b"\0" * (start - len(head)) + tail


def _values(t):
    if t.tensor_type.name in ("F32", "F16", "F64", "I8", "I16", "I32", "I64"):
        return t.data  # as stored (gguf has no dequantizer for F64)
    try:
        return gguf.quants.dequantize(t.data, t.tensor_type)
    except Exception:  # noqa: BLE001 - its dequantizer fails on shapes it reads (0-dim BF16)
        return None


def oracle(path):
    """(name -> (ne dims, type id, values as bytes), None) as gguf reads it, else (None, error)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reader = gguf.GGUFReader(str(path))
            return {
                t.name: ([int(d) for d in t.shape], int(t.tensor_type), _values(t))
                for t in reader.tensors
            }, None
    except Exception as exc:  # noqa: BLE001 - any refusal is an answer
        return None, f"{type(exc).__name__}: {exc}"


def gguf_differential(path) -> str:
    reference, error = oracle(path)
    try:
        checkpoint = open_checkpoint(str(path))
    except CheckpointError as exc:
        if error:
            return f"both refuse: {exc}"
        if not reference:
            return f"gguf reads no tensor, we refuse: {exc}"
        return f"MISMATCH: gguf reads it, we refuse: {exc}"
    if error:
        if checkpoint.warnings:
            return f"gguf refuses, we open it and say why: {checkpoint.warnings[0]}"
        return f"MISMATCH: gguf refuses ({error}), we open it with no warning"
    ours = {key: t for key, t, _ in checkpoint.tensors()}
    if list(ours) != list(reference):
        return f"MISMATCH: keys {list(ours)} vs {list(reference)}"
    for name, (ne, _, values) in reference.items():
        mine = ours[name]
        if list(mine.shape) != ne[::-1]:
            return f"MISMATCH: {name} shape {list(mine.shape)} vs ne {ne}"
        if values is None:
            continue
        got = read_array(mine)
        if got.dtype != values.dtype:
            got = got.astype(values.dtype)
        if got.tobytes() != np.ascontiguousarray(values).tobytes():
            return f"MISMATCH: {name} values differ"
    return "same"


@FUZZ
@given(case=gguf_case)
def test_gguf_headers(tmp_path_factory, case):
    path = tmp_path_factory.mktemp("gguf") / "f.gguf"
    path.write_bytes(build_gguf(case))
    judge(lambda: gguf_differential(path), repr(case))


@pytest.mark.parametrize(
    "ggml_type, verdict", [(0, "same"), (30, "both refuse"), (8, "both refuse")]
)
def test_a_tensor_with_no_dimensions(tmp_path, ggml_type, verdict):
    """GGUFReader reads a 0-d F32 tensor but fails on a 0-d BF16 or quantized one (it reads
    those by rows of bytes): found by the campaign."""
    case = {
        "version": 3,
        "kvs": [],
        "count_delta": (0, 0),
        "data": "exact",
        "seed": 0,
        "tensors": [{"name": b"s", "type": ggml_type, "dims": [], "offset": None}],
    }
    path = tmp_path / "f.gguf"
    path.write_bytes(build_gguf(case))
    assert gguf_differential(path).startswith(verdict)
