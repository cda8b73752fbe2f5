"""Hostile TensorFlow checkpoints: crafted index tables refused in one line, and fuzzing of
the TensorFlow-written fixtures (bytes flipped, cut, inserted) and of tables generated entry
by entry: every case opens, or is refused with a CheckpointError, and every tensor it lists
reads or is refused the same way: never a traceback, a hang or unbounded memory.

CI runs a few cases; the by-hand campaign:

    FUZZ_EXAMPLES=10000 FUZZ_LOG=/tmp/bundle.log python -m pytest -q \
        tests/hostile/test_fuzz_tensor_bundle.py -k fuzz

(`cut -f1 LOG | cut -d: -f1 | sort | uniq -c` counts the verdicts.)
"""

from __future__ import annotations

import math
import shutil
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_differential_fuzz import FUZZ, judge

from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.analysis.verify import verify
from ckpt_viewer.core.listing.open import open_checkpoint
from ckpt_viewer.core.progress import run
from ckpt_viewer.core.values.read import read_array

FIXTURES = Path(__file__).parent.parent / "fixtures" / "tf"
MAGIC = struct.pack("<Q", 0xDB4775248B80FB57)


# ---- crafting: the wire format and a one-block table -------------------------------------


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int64: ten bytes, as protobuf writes them
    out = bytearray()
    while True:
        out.append(n & 0x7F | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def number(field: int, value: int) -> bytes:
    return varint(field << 3) + varint(value)


def message(field: int, body: bytes) -> bytes:
    return varint(field << 3 | 2) + varint(len(body)) + body


def fixed32(field: int, value: int) -> bytes:
    return varint(field << 3 | 5) + struct.pack("<I", value)


def shape(*dims: int) -> bytes:
    return message(2, b"".join(message(2, number(1, d)) for d in dims))


def entry(dtype=1, dims=(2,), shard=0, offset=0, size=8, extra=b"") -> bytes:
    return (
        number(1, dtype)
        + shape(*dims)
        + number(3, shard)
        + number(4, offset)
        + number(5, size)
        + fixed32(6, 0)
        + extra
    )


HEADER = number(1, 1) + message(3, number(1, 1))


def block(entries: list[tuple[bytes, bytes]], compression: int = 0) -> bytes:
    body = b"".join(
        varint(0) + varint(len(key)) + varint(len(value)) + key + value for key, value in entries
    )
    body += struct.pack("<II", 0, 1)  # one restart point, at 0
    return body + bytes([compression]) + b"\0\0\0\0"


def table(entries: list[tuple[bytes, bytes]], compression: int = 0) -> bytes:
    data = block(entries, compression)
    handle = varint(0) + varint(len(data) - 5)
    index = block([(entries[-1][0] if entries else b"", handle)])
    index_handle = varint(len(data)) + varint(len(index) - 5)
    footer = (varint(0) + varint(0) + index_handle).ljust(40, b"\0") + MAGIC
    return data + index + footer


def write(folder: Path, entries, data: bytes = bytes(64), compression: int = 0) -> str:
    folder.mkdir(exist_ok=True)
    (folder / "t.index").write_bytes(table(entries, compression))
    (folder / "t.data-00000-of-00001").write_bytes(data)
    return str(folder / "t.index")


def test_a_crafted_table_reads():
    """The crafting itself is right: a well-formed table of our own opens."""
    with tempfile.TemporaryDirectory() as folder:
        data = struct.pack("<2f", 1.5, -2.0)
        path = write(Path(folder), [(b"", HEADER), (b"w", entry())], data)
        checkpoint = open_checkpoint(path)
        assert read_array(checkpoint.find("w").tensor).tolist() == [1.5, -2.0]


CRAFTED = {
    "offsets past the data file": [(b"", HEADER), (b"w", entry(offset=60))],
    "a negative offset": [(b"", HEADER), (b"w", entry(offset=-8))],
    "a huge shape": [(b"", HEADER), (b"w", entry(dims=(1 << 62, 1 << 62)))],
    "a negative dimension": [(b"", HEADER), (b"w", entry(dims=(-1,)))],
    # found by the fuzz: numpy cannot shape even an empty array so (torch neither)
    "an empty tensor too large to shape": [
        (b"", HEADER),
        (b"w", entry(dims=(1 << 55, 0, 1 << 55), size=0)),
    ],
    "a size that is not the shape's": [(b"", HEADER), (b"w", entry(size=12))],
    "a shard that does not exist": [(b"", HEADER), (b"w", entry(shard=3))],
    "a varint of eleven bytes": [(b"", HEADER), (b"w", b"\x08" + b"\xff" * 10 + b"\x01")],
    "a field running past its record": [(b"", HEADER), (b"w", b"\x12\x7f\x00")],
    "a protobuf group": [(b"", HEADER), (b"w", b"\x0b\x0c")],
    "no header": [(b"w", entry())],
    "zero data files": [(b"", number(1, 0)), (b"w", entry())],
    "keys out of order": [(b"", HEADER), (b"w", entry()), (b"a", entry())],
    "a missing slice": [
        (b"", HEADER),
        (b"w", number(1, 1) + shape(4) + message(7, message(1, number(1, 0) + number(2, 2)))),
    ],
    "a slice outside its variable": [
        (b"", HEADER),
        (b"w", number(1, 1) + shape(4) + message(7, message(1, number(1, 3) + number(2, 2)))),
    ],
    "a rank past TensorShape's": [(b"", HEADER), (b"w", entry(dims=(1,) * 300, size=4))],
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_tables_are_refused_in_one_line(tmp_path, case):
    path = write(tmp_path, CRAFTED[case])
    with pytest.raises(CheckpointError) as info:
        open_checkpoint(path)
    assert "\n" not in str(info.value) and len(str(info.value)) < 400


def test_compressed_blocks_and_damaged_footers_are_refused(tmp_path):
    path = write(tmp_path, [(b"", HEADER), (b"w", entry())], compression=1)
    with pytest.raises(CheckpointError, match="snappy"):
        open_checkpoint(path)
    raw = table([(b"", HEADER), (b"w", entry())])
    for cut in (1, 8, 20, len(raw) // 2):
        (tmp_path / "t.index").write_bytes(raw[:-cut])
        with pytest.raises(CheckpointError):
            open_checkpoint(path)


def test_prefix_compression_cannot_amplify_keys(tmp_path):
    """Each entry shares the whole key before it and adds a byte: rebuilding the keys would
    copy far more than the file holds (quadratic), so it is stopped."""
    key = 30_000
    body = bytearray(varint(0) + varint(0) + varint(len(HEADER)) + HEADER)
    body += varint(0) + varint(key) + varint(0) + b"k" * key
    for _ in range(200_000):
        body += varint(key) + b"\x01\x00k"
        key += 1
    body += struct.pack("<II", 0, 1)
    data = bytes(body) + b"\0" * 5
    index = block([(b"z", varint(0) + varint(len(body)))])
    footer = (b"\0\0" + varint(len(data)) + varint(len(index) - 5)).ljust(40, b"\0") + MAGIC
    (tmp_path / "t.index").write_bytes(data + index + footer)
    (tmp_path / "t.data-00000-of-00001").write_bytes(b"")
    with pytest.raises(CheckpointError, match="keys too long"):
        open_checkpoint(str(tmp_path / "t.index"))


def test_overlapping_slices_are_refused(tmp_path):
    """Two slices of [0:2] and [1:3] plus nothing for [3] add up to the variable's size; they
    still do not tile it (slice keys as TensorFlow encodes them: test_tensor_bundle checks)."""
    from ckpt_viewer.core.listing.readers.tensor_bundle import slice_key

    def extent(start, length):
        return message(1, number(1, start) + number(2, length))

    rows = {
        b"": HEADER,
        b"w": number(1, 1) + shape(4) + message(7, extent(0, 2)) + message(7, extent(1, 2)),
        slice_key(b"w", (0,), (2,)): entry(dims=(2,)),
        slice_key(b"w", (1,), (2,)): entry(dims=(2,), offset=8),
    }
    with pytest.raises(CheckpointError, match="do not cover it exactly once"):
        open_checkpoint(write(tmp_path, sorted(rows.items())))


def graph(nodes: list[bytes]) -> bytes:
    """A TrackableObjectGraph as a string scalar's bytes in the data file."""
    proto = b"".join(message(1, n) for n in nodes)
    return varint(len(proto)) + b"\0\0\0\0" + proto


def child(node: int, name: bytes) -> bytes:
    return message(1, number(1, node) + message(2, name))


def attribute(full: bytes, key: bytes) -> bytes:
    return message(2, message(1, b"VARIABLE_VALUE") + message(2, full) + message(3, key))


def test_a_cyclic_object_graph_is_walked_once(tmp_path):
    key = b"a/w/.ATTRIBUTES/VARIABLE_VALUE"
    nodes = [
        child(1, b"a"),
        child(0, b"up") + child(2, b"w"),
        child(1, b"back") + attribute(b"", key),
    ]
    strings = graph(nodes)
    values = struct.pack("<2f", 1.0, 2.0)
    entries = [
        (b"", HEADER),
        (b"_CHECKPOINTABLE_OBJECT_GRAPH", entry(7, (), 0, 8, len(strings))),
        (key, entry()),
    ]
    checkpoint = open_checkpoint(write(tmp_path, entries, values + strings))
    assert checkpoint.find("a.w").note.endswith("TF key a/w/.ATTRIBUTES/VARIABLE_VALUE")


def test_a_damaged_object_graph_leaves_the_raw_keys(tmp_path):
    strings = varint(4) + b"\0\0\0\0" + b"\x0a\xff\xff\x01"  # a node longer than the graph
    entries = [
        (b"", HEADER),
        (b"_CHECKPOINTABLE_OBJECT_GRAPH", entry(7, (), 0, 8, len(strings))),
        (b"m/w/.ATTRIBUTES/VARIABLE_VALUE", entry()),
    ]
    checkpoint = open_checkpoint(write(tmp_path, entries, bytes(8) + strings))
    assert checkpoint.find("m.w") is not None
    assert any("object graph is not read" in w for w in checkpoint.warnings)


# ---- fuzzing -----------------------------------------------------------------------------


def outcome(path: str) -> str:
    """Open, read every tensor, verify: 'opened ...' or 'refused ...' (a CheckpointError from
    a read is a refusal too); anything else propagates to judge() as a crash."""
    try:
        checkpoint = open_checkpoint(path)
    except CheckpointError as exc:
        assert "\n" not in str(exc)
        return f"refused: {exc}"
    read = refused = 0
    for _, tensor, _ in checkpoint.tensors():
        try:
            read_array(tensor, max_elements=1 << 20)
            read += 1
        except CheckpointError:
            refused += 1
    report = run(verify(path))
    return f"opened: {read} read, {refused} refused, intact {report.ok}"


FIXTURE_INDEXES = ["slots/ckpt.index", "keras/ckpt-1.index", "sharded/ckpt.index"]


@FUZZ
@given(
    which=st.sampled_from(FIXTURE_INDEXES),
    edits=st.lists(
        st.tuples(
            st.sampled_from(["flip", "cut", "insert", "set"]),
            st.integers(0, 1 << 16),
            st.integers(0, 255),
        ),
        min_size=1,
        max_size=4,
    ),
    in_data=st.booleans(),
)
def test_fuzz_fixture_bytes(which, edits, in_data):
    source = FIXTURES / which
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / "c"
        shutil.copytree(source.parent, copy)
        index = copy / source.name
        target = index
        if in_data:
            target = sorted(copy.glob(source.name[: -len(".index")] + ".data-*"))[0]
        raw = bytearray(target.read_bytes())
        for kind, where, value in edits:
            at = where % max(1, len(raw))
            if not raw and kind != "insert":
                continue
            if kind == "flip":
                raw[at] ^= 1 << (value % 8)
            elif kind == "cut":
                del raw[at:]
            elif kind == "insert":
                raw[at:at] = bytes([value])
            else:
                raw[at] = value
        target.write_bytes(bytes(raw))
        judge(lambda: outcome(str(index)), f"{which} {'data' if in_data else 'index'} {edits}")


dims = st.lists(st.one_of(st.integers(0, 4), st.integers(-2, 1 << 63)), max_size=3)
SIZES = {1: 4, 2: 8, 3: 4, 9: 8, 10: 1, 14: 2, 19: 2}
entries = st.lists(
    st.tuples(
        st.sampled_from(
            [b"w", b"b", b"m/x/.OPTIMIZER_SLOT/o/m/.ATTRIBUTES/VARIABLE_VALUE", b"\x00x"]
        ),
        st.sampled_from([1, 2, 3, 7, 9, 10, 14, 19, 21, 99]),
        dims,
        st.just(0) | st.integers(-1, 3),
        st.integers(-9, 80),
        st.none() | st.integers(-1, 80),  # None: the size the shape needs
        st.just(b"") | st.binary(max_size=6),
    ),
    max_size=5,
)


@FUZZ
@given(
    entries=entries,
    header=st.sampled_from([HEADER, HEADER, HEADER, b""]) | st.binary(max_size=8),
    data=st.binary(min_size=96, max_size=96) | st.binary(max_size=96),
)
def test_fuzz_generated_tables(entries, header, data):
    rows = {b"": header}
    for key, dtype, shape_, shard, offset, size, extra in entries:
        if size is None:
            size = math.prod(shape_) * SIZES.get(dtype, 1)
        rows[key] = entry(dtype, shape_, shard, offset, size, extra)
    with tempfile.TemporaryDirectory() as folder:
        path = write(Path(folder), sorted(rows.items()), data)
        judge(lambda: outcome(path), repr(sorted(rows.items())))
