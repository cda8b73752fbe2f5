"""TensorFlow checkpoints (TensorBundle): `prefix.index` and its `prefix.data-K-of-N` shards,
as tf.train.Checkpoint, the V2 Saver and a SavedModel's `variables/` write them.

No light library reads them without TensorFlow, so this one is ours. The index is a
LevelDB-style table (blocks of prefix-compressed keys, a footer pointing at the block index);
its values are BundleEntryProto messages (the "" key: BundleHeaderProto), decoded here from
the protobuf wire format. Every length, offset and shape is bounded by the sizes of the files
before anything is allocated. Tensor bytes are read by range from the shards. TF2 object-based
keys are listed under readable names from the object graph the checkpoint stores
(`_CHECKPOINTABLE_OBJECT_GRAPH`), the raw key kept as the tensor's note."""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.listing import remote
from ckpt_viewer.core.listing.model import (
    DTYPE_SIZES,
    Checkpoint,
    FileSpan,
    Node,
    Storage,
    TensorInfo,
    contiguous_strides,
)
from ckpt_viewer.core.listing.readers.dcp import RawChunk
from ckpt_viewer.core.listing.readers.safetensors import flat_tree
from ckpt_viewer.core.listing.text import safe_text

MAGIC = 0xDB4775248B80FB57  # the table footer's last 8 bytes (LevelDB's magic number)
FOOTER = 48
MAX_INDEX_BYTES = 256 << 20
MAX_ENTRIES = 2_000_000
MAX_KEY_BYTES = 64 << 10
MAX_RANK = 254  # TensorShape's limit
MAX_SLICES = 1000
MAX_ELEMENTS = 1 << 59  # numpy's limit on elements times bytes per element (16 at most)
MAX_GRAPH_BYTES = 64 << 20
GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
ATTRIBUTES = "/.ATTRIBUTES/"
SLOT = "/.OPTIMIZER_SLOT/"
DATA_NAME = re.compile(r"\.data-\d{5}-of-\d{5}")
STATE_PATH = re.compile(r'^model_checkpoint_path:\s*"((?:[^"\\\n]|\\.)*)"', re.MULTILINE)

# tensorflow DataType -> torch dtype name; the others (quantized, 4-bit, resource...) are
# listed but not read
DTYPES = {
    1: "float32",
    2: "float64",
    3: "int32",
    4: "uint8",
    5: "int16",
    6: "int8",
    8: "complex64",
    9: "int64",
    10: "bool",
    14: "bfloat16",
    17: "uint16",
    18: "complex128",
    19: "float16",
    22: "uint32",
    23: "uint64",
    24: "float8_e5m2",
    25: "float8_e4m3fn",
    26: "float8_e4m3fnuz",
    28: "float8_e5m2fnuz",
}
OTHER_DTYPES = {
    7: "string",
    11: "qint8",
    12: "quint8",
    13: "qint32",
    15: "qint16",
    16: "quint16",
    20: "resource",
    21: "variant",
    27: "float8_e4m3b11fnuz",
    29: "int4",
    30: "uint4",
}


@dataclass(eq=False)
class Entry:
    """One tensor of the bundle, as its index describes it (bounds checked)."""

    key: str
    dtype: int
    shape: tuple[int, ...]
    shard: str  # the data file's path
    offset: int
    size: int
    crc32c: int  # masked, as the writer stores it
    raw: bytes = b""  # the key as stored
    # a partitioned variable's slices: (starts, lengths), a length -1 for a whole dimension;
    # each slice is an entry of its own, under slice_key()
    slices: list[tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def type_name(self) -> str:
        return DTYPES.get(self.dtype) or OTHER_DTYPES.get(self.dtype, f"DataType {self.dtype}")


def _fail(what: str) -> CheckpointError:
    return CheckpointError(f"TensorFlow index: {what}")


# ---- protobuf wire format --------------------------------------------------------------


def _varint(buf: bytes | memoryview, pos: int, limit: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= limit:
            raise _fail("a number runs past the end of its record (truncated?)")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            break
        shift += 7
        if shift >= 70:
            raise _fail("a number is longer than 10 bytes")
    if result >= 1 << 64:
        raise _fail("a number overflows 64 bits")
    return result, pos


Fields = dict[int, list[int | memoryview]]


def _fields(buf: memoryview, what: str) -> Fields:
    """A message's fields: number -> values in order (ints for numbers, views for bytes)."""
    fields: Fields = {}
    pos, limit = 0, len(buf)
    while pos < limit:
        tag, pos = _varint(buf, pos, limit)
        number, wire = tag >> 3, tag & 7
        value: int | memoryview
        if wire == 0:
            value, pos = _varint(buf, pos, limit)
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            if pos + width > limit:
                raise _fail(f"{what}: a field runs past the end of its record")
            value = int.from_bytes(buf[pos : pos + width], "little")
            pos += width
        elif wire == 2:
            length, pos = _varint(buf, pos, limit)
            if length > limit - pos:
                raise _fail(f"{what}: a field runs past the end of its record")
            value = buf[pos : pos + length]
            pos += length
        else:
            raise _fail(f"{what}: unsupported protobuf wire type {wire}")
        if number == 0:
            raise _fail(f"{what}: a field numbered 0")
        fields.setdefault(number, []).append(value)
    return fields


def _number(fields: Fields, number: int, what: str, signed: bool = False) -> int:
    values = fields.get(number)
    if not values:
        return 0
    value = values[-1]  # protobuf: the last one wins
    if not isinstance(value, int):
        raise _fail(f"{what}: field {number} has the wrong wire type")
    if signed and value >= 1 << 63:
        value -= 1 << 64
    return value


def _messages(fields: Fields, number: int, what: str) -> list[memoryview]:
    values = [v for v in fields.get(number, []) if isinstance(v, memoryview)]
    if len(values) != len(fields.get(number, [])):
        raise _fail(f"{what}: field {number} has the wrong wire type")
    return values


def _text(fields: Fields, number: int, what: str) -> str:
    values = _messages(fields, number, what)
    return bytes(values[-1]).decode("utf8", "replace") if values else ""


# ---- the table ---------------------------------------------------------------------------


def _block(data: bytes, handle: memoryview | bytes, what: str) -> memoryview:
    """The contents of the block a handle (varint offset, varint size) points at."""
    offset, pos = _varint(handle, 0, len(handle))
    size, _ = _varint(handle, pos, len(handle))
    if offset + size + 5 > len(data) - FOOTER:
        raise _fail(f"{what} reaches past the end of the file (truncated?)")
    kind = data[offset + size]
    if kind == 1:
        raise _fail(f"{what} is snappy-compressed, which is not supported")
    if kind != 0:
        raise _fail(f"{what} has unknown compression type {kind}")
    return memoryview(data)[offset : offset + size]


def _block_entries(block: memoryview, what: str) -> Iterator[tuple[bytes, memoryview]]:
    """(key, value) of each entry of a block: keys share a prefix with the one before."""
    if len(block) < 4:
        raise _fail(f"{what} is too short")
    restarts = int.from_bytes(block[-4:], "little")
    limit = len(block) - 4 - 4 * restarts
    if limit < 0:
        raise _fail(f"{what} declares {restarts:,} restart points, more than it holds")
    pos, key = 0, b""
    while pos < limit:
        shared, pos = _varint(block, pos, limit)
        unshared, pos = _varint(block, pos, limit)
        length, pos = _varint(block, pos, limit)
        if shared > len(key) or unshared + length > limit - pos:
            raise _fail(f"{what}: an entry runs past the end of its block")
        if shared + unshared > MAX_KEY_BYTES:
            raise _fail(f"{what}: a key longer than {MAX_KEY_BYTES:,} bytes")
        key = key[:shared] + bytes(block[pos : pos + unshared])
        pos += unshared
        yield key, block[pos : pos + length]
        pos += length


def _table(data: bytes) -> Iterator[tuple[bytes, memoryview]]:
    """Every (key, value) of the table, keys strictly increasing (a repeat is refused, which
    also stops a crafted index from pointing at one block again and again)."""
    if len(data) < FOOTER or int.from_bytes(data[-8:], "little") != MAGIC:
        raise _fail("no table footer (not a TensorFlow checkpoint index, or truncated)")
    footer = memoryview(data)[-FOOTER:-8]
    _, pos = _varint(footer, 0, len(footer))  # the metaindex block: unused
    _, pos = _varint(footer, pos, len(footer))
    index = _block(data, footer[pos:], "the block index")
    last: bytes | None = None
    read = count = keys = 0
    for _, handle in _block_entries(index, "the block index"):
        block = _block(data, handle, "a data block")
        read += len(block)
        if read > len(data):  # blocks of a table do not overlap
            raise _fail("its data blocks overlap")
        for key, value in _block_entries(block, "a data block"):
            if last is not None and key <= last:
                raise _fail(f"key {safe_text(key.decode('utf8', 'replace'))!r} is out of order")
            count += 1
            keys += len(key)  # prefix compression: a bound on the bytes keys expand to
            if count > MAX_ENTRIES or keys > 32 * len(data) + (1 << 20):
                raise _fail(f"more than {MAX_ENTRIES:,} entries, or keys too long for its size")
            last = key
            yield key, value


# ---- the bundle --------------------------------------------------------------------------


def _shape(buf: memoryview, what: str) -> tuple[int, ...]:
    fields = _fields(buf, what)
    if _number(fields, 3, what):
        raise _fail(f"{what} has an unknown rank")
    dims = _messages(fields, 2, what)
    if len(dims) > MAX_RANK:
        raise _fail(f"{what} has {len(dims):,} dimensions")
    shape = tuple(_number(_fields(d, what), 1, what, signed=True) for d in dims)
    if any(d < 0 for d in shape):
        raise _fail(f"{what} has an unknown or negative dimension")
    # even an empty tensor's other dimensions must multiply to a size an array can have
    if math.prod(d for d in shape if d) > MAX_ELEMENTS:
        raise _fail(f"{what} {list(shape)} has more elements than an array can hold")
    return shape


def _slice(
    buf: memoryview, shape: tuple[int, ...], what: str
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """TensorSliceProto -> (starts, lengths), within `shape`; -1: the whole dimension."""
    extents = _messages(_fields(buf, what), 1, what)
    if len(extents) != len(shape):
        raise _fail(f"{what} has a slice of rank {len(extents)} for its shape {list(shape)}")
    starts, lengths = [], []
    for extent, size in zip(extents, shape):
        fields = _fields(extent, what)
        start = _number(fields, 1, what, signed=True)
        length = _number(fields, 2, what, signed=True) if 2 in fields else -1
        if start < 0 or length < -1 or start + max(length, 0) > size or length == -1 and start:
            raise _fail(f"{what} has a slice outside its shape {list(shape)}")
        starts.append(start)
        lengths.append(length)
    return tuple(starts), tuple(lengths)


HEADER_BITS = [(0, 0), (0x80, 0), (0xC0, 0), (0xE0, 0), (0xF0, 0), (0xF8, 0), (0xFC, 0)]
HEADER_BITS += [(0xFE, 0), (0xFF, 0), (0xFF, 0x80), (0xFF, 0xC0)]


def _signed_increasing(value: int) -> bytes:
    """tensorflow::strings::OrderedCode::WriteSignedNumIncreasing."""
    x = ~value if value < 0 else value
    if x < 64:
        return bytes([(0x80 ^ value) & 0xFF])
    length = x.bit_length() // 7 + 1
    out = bytearray((value & ((1 << 80) - 1)).to_bytes(10, "big")[10 - length :])
    out[0] ^= HEADER_BITS[length][0]
    out[1] ^= HEADER_BITS[length][1]
    return bytes(out)


def slice_key(name: bytes, starts: tuple[int, ...], lengths: tuple[int, ...]) -> bytes:
    """The key a slice of a partitioned variable is stored under (EncodeTensorNameSlice:
    OrderedCode of 0, the name, the rank, then each dimension's start and length)."""
    escaped = re.sub(
        rb"[\x00\xff]", lambda m: m[0] + (b"\xff" if m[0] == b"\x00" else b"\x00"), name
    )
    rank = len(starts).to_bytes((len(starts).bit_length() + 7) // 8, "big")
    key = b"\x00" + escaped + b"\x00\x01" + bytes([len(rank)]) + rank
    for start, length in zip(starts, lengths):
        key += _signed_increasing(start) + _signed_increasing(length)
    return key


def read_entries(path: str) -> tuple[dict[str, int | str], list[Entry]]:
    """(header fields, entries) of an index file, every entry's bytes within its shard."""
    size = remote.getsize(path)
    if size > MAX_INDEX_BYTES:
        raise _fail(f"the index is {size:,} bytes, more than the {MAX_INDEX_BYTES >> 20} MiB read")
    with remote.open_source(path) as f:
        data = f.read(size)
    if len(data) != size:
        raise _fail("the file ended while it was read")
    prefix = path[: -len(".index")]
    header: dict[str, int | str] | None = None
    entries: list[Entry] = []
    shard_sizes: dict[int, tuple[str, int]] = {}
    for raw_key, value in _table(data):
        key = raw_key.decode("utf8", "replace")
        if raw_key[:1] == b"\x00":  # a slice: named after its variable in messages
            variable = raw_key[1:].partition(b"\x00\x01")[0].replace(b"\x00\xff", b"\x00")
            key = variable.replace(b"\xff\x00", b"\xff").decode("utf8", "replace") + " (a slice)"
        if not raw_key:
            fields = _fields(value, "the header")
            version = _messages(fields, 3, "the header")
            header = {
                "shards": _number(fields, 1, "the header", signed=True),
                "endianness": "big" if _number(fields, 2, "the header") == 1 else "little",
                "producer": _number(_fields(version[-1], "the header"), 1, "the header")
                if version
                else 0,
            }
            if not 0 < int(header["shards"]) <= 100_000:
                raise _fail(f"the header declares {header['shards']} data files")
            continue
        what = f"entry {safe_text(key)!r}"
        if header is None:
            raise _fail("no header record before the entries")
        fields = _fields(value, what)
        shapes = _messages(fields, 2, what)
        shape = _shape(shapes[-1], f"{what}'s shape") if shapes else ()
        if _messages(fields, 7, what):
            slices = [_slice(s, shape, what) for s in _messages(fields, 7, what)]
            entry = Entry(key, _number(fields, 1, what), shape, "", 0, 0, 0, raw_key, slices)
            entries.append(entry)
            continue
        shard = _number(fields, 3, what, signed=True)
        offset = _number(fields, 4, what, signed=True)
        nbytes = _number(fields, 5, what, signed=True)
        if not 0 <= shard < int(header["shards"]):
            raise _fail(f"{what} names data file {shard} of {header['shards']}")
        if shard not in shard_sizes:
            name = f"{prefix}.data-{shard:05d}-of-{int(header['shards']):05d}"
            if not remote.isfile(name):
                raise CheckpointError(f"data file {safe_text(remote.basename(name))} is missing")
            shard_sizes[shard] = (name, remote.getsize(name))
        name, limit = shard_sizes[shard]
        if offset < 0 or nbytes < 0 or offset + nbytes > limit:
            raise CheckpointError(
                f"{what} reaches past the end of {safe_text(remote.basename(name))} "
                "(truncated file?)"
            )
        crc = _number(fields, 6, what)
        entry = Entry(key, _number(fields, 1, what), shape, name, offset, nbytes, crc, raw_key)
        dtype = DTYPES.get(entry.dtype)
        if dtype is not None and math.prod(shape) * DTYPE_SIZES[dtype] != nbytes:
            raise CheckpointError(
                f"{what} holds {nbytes:,} bytes; its shape {list(shape)} of {dtype} needs "
                f"{math.prod(shape) * DTYPE_SIZES[dtype]:,}"
            )
        entries.append(entry)
    if header is None:
        raise _fail("no header record")
    return header, entries


def string_values(entry: Entry, limit: int = MAX_GRAPH_BYTES) -> list[bytes]:
    """The strings of a string tensor: each one's length (varints), a checksum of them,
    then the bytes of each."""
    count = math.prod(entry.shape)
    if entry.size > limit or count > entry.size:
        raise _fail(f"string tensor {safe_text(entry.key)!r} is too large to read")
    with remote.open_source(entry.shard) as f:
        f.seek(entry.offset)
        data = f.read(entry.size)
    if len(data) != entry.size:
        raise _fail(f"{safe_text(entry.key)!r}: the data file ended while it was read")
    lengths, pos = [], 0
    for _ in range(count):
        length, pos = _varint(data, pos, len(data))
        lengths.append(length)
    pos += 4
    if pos + sum(lengths) != len(data):
        raise _fail(f"string tensor {safe_text(entry.key)!r} does not hold what it declares")
    values = []
    for length in lengths:
        values.append(data[pos : pos + length])
        pos += length
    return values


def masked(crc: int) -> int:
    """A CRC32C as TensorFlow stores it (crc32c::Mask)."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def checksummed(
    entry: Entry, f: remote.SizedFile, block: int = 8 << 20
) -> Iterator[tuple[bytes, int]]:
    """(bytes, file bytes they stand for) that an entry's CRC32C covers, in order, read from
    its open shard: the stored bytes, except that a string tensor's lengths count as
    4-byte numbers (the writer's checksum of them, then the strings, as stored)."""
    f.seek(entry.offset)
    remaining = entry.size
    if entry.dtype == 7:
        count = math.prod(entry.shape)
        if count > entry.size:
            raise _fail(f"string tensor {safe_text(entry.key)!r} holds fewer bytes than strings")
        head = f.read(min(entry.size, count * 10))
        lengths, pos = bytearray(), 0
        for _ in range(count):
            length, pos = _varint(head, pos, len(head))
            lengths += length.to_bytes(4 if length <= 0xFFFFFFFF else 8, "little")
        yield bytes(lengths), pos
        f.seek(entry.offset + pos)
        remaining -= pos
    while remaining:
        data = f.read(min(block, remaining))
        if not data:
            raise CheckpointError(
                f"{safe_text(remote.basename(entry.shard))}: ends inside "
                f"{safe_text(entry.key)!r} (truncated)"
            )
        remaining -= len(data)
        yield data, len(data)


# ---- names from the object graph ---------------------------------------------------------


def _object_graph(
    data: bytes,
) -> tuple[
    list[list[tuple[int, str]]], list[list[tuple[str, str, str]]], list[list[tuple[int, str, int]]]
]:
    """TrackableObjectGraph: per node, its children (node, local name), its attributes (name,
    full name, checkpoint key) and slot variables (original node, slot name, slot node)."""
    what = "the object graph"
    nodes = _messages(_fields(memoryview(data), what), 1, what)
    children, attributes, slots = [], [], []
    for node in nodes:
        fields = _fields(node, what)
        kids = []
        for child in _messages(fields, 1, what):
            f = _fields(child, what)
            kids.append((_number(f, 1, what, signed=True), _text(f, 2, what)))
        children.append(kids)
        attrs = []
        for attribute in _messages(fields, 2, what):
            f = _fields(attribute, what)
            attrs.append((_text(f, 1, what), _text(f, 2, what), _text(f, 3, what)))
        attributes.append(attrs)
        refs = []
        for slot in _messages(fields, 3, what):
            f = _fields(slot, what)
            refs.append(
                (_number(f, 1, what, signed=True), _text(f, 2, what), _number(f, 3, what, True))
            )
        slots.append(refs)
    return children, attributes, slots


def _paths(children: list[list[tuple[int, str]]], skip: set[int]) -> dict[int, str]:
    """Breadth-first from the root (node 0), as TensorFlow names objects: node -> path of
    local names. Nodes in `skip` are not entered; a cycle is walked once."""
    paths: dict[int, str] = {0: ""} if children else {}
    queue = deque([0] if children else [])
    while queue:
        node = queue.popleft()
        for child, name in children[node]:
            if 0 <= child < len(children) and child not in paths and child not in skip:
                paths[child] = f"{paths[node]}/{name}" if paths[node] else name
                queue.append(child)
    return paths


def graph_names(data: bytes) -> dict[str, tuple[str, str]]:
    """checkpoint key -> (readable name, optimizer note or "") from a serialized object graph.
    The readable name is each variable's own full name where those are all set and distinct
    (Keras: `sequential/dense/kernel`), else its path through the graph avoiding
    optimizers (`model/w`); an optimizer's slot is named after its variable."""
    children, attributes, slots = _object_graph(data)
    count = len(children)
    optimizers = {n for n in range(count) if slots[n]}
    optimizers |= {
        n for n in range(count) if any(k in ("_iterations", "iter") for _, k in children[n])
    }
    if count:
        optimizers |= {c for c, name in children[0] if name == "optimizer" and 0 <= c < count}
    model_paths = _paths(children, optimizers - {0})
    all_paths = _paths(children, set())
    full_names = [full for attrs in attributes for _, full, _ in attrs]
    use_full = bool(full_names) and all(full_names) and len(set(full_names)) == len(full_names)
    slot_of = {
        slot: (n, original, name)
        for n in optimizers
        for original, name, slot in slots[n]
        if 0 <= original < count
    }
    names: dict[str, tuple[str, str]] = {}
    for node, attrs in enumerate(attributes):
        for attribute, full, key in attrs:
            path = model_paths.get(node, all_paths.get(node, key))
            if attribute != "VARIABLE_VALUE":
                path = f"{path}/{attribute}"
            note = ""
            if node in slot_of:
                optimizer, original, slot = slot_of[node]
                variable = model_paths.get(original) or all_paths.get(original, "?")
                note = f"optimizer slot {safe_text(slot)} of {safe_text(variable)}"
                path = f"{all_paths.get(optimizer, 'optimizer')}/{variable}/{slot}"
            elif node not in model_paths:
                note = "optimizer state"
            names[key] = (full if use_full else path, note)
    return names


def _readable(key: str) -> tuple[str, str]:
    """A raw key without an object graph: `a/b/.ATTRIBUTES/VARIABLE_VALUE` -> `a/b`; an
    `.OPTIMIZER_SLOT/` key is marked as optimizer state."""
    name = key
    if name.endswith(ATTRIBUTES + "VARIABLE_VALUE"):
        name = name[: -len(ATTRIBUTES + "VARIABLE_VALUE")]
    if SLOT in name:
        variable, _, rest = name.partition(SLOT)
        optimizer, _, slot = rest.rpartition("/")
        note = f"optimizer slot {safe_text(slot)} of {safe_text(variable)}"
        return f"{optimizer}/{variable}/{slot}", note
    return name, ""


# ---- finding the index -------------------------------------------------------------------


def looks_like_bundle(path: str) -> bool:
    """An `.index` file ending in the table's magic number."""
    if not path.endswith(".index"):
        return False
    size = remote.getsize(path)
    if size < FOOTER:
        return False
    with remote.open_source(path) as f:
        f.seek(size - 8)
        return int.from_bytes(f.read(8), "little") == MAGIC


def prefix_index(path: str) -> str | None:
    """A checkpoint prefix (`ckpt-3`, which is no file) -> its `ckpt-3.index`."""
    index = f"{path}.index"
    try:
        if not remote.isfile(path) and not remote.isdir(path) and remote.isfile(index):
            return index
    except (OSError, CheckpointError):
        return None
    return None


def folder_index(folder: str) -> str | None:
    """The index in a folder: a SavedModel's `variables/variables.index`, the checkpoint a
    `checkpoint` state file names (looked for in the folder only), or the folder's only
    `.index` file."""
    names = remote.listdir(folder)
    if "saved_model.pb" in names and "variables" in names:
        index = remote.join(remote.join(folder, "variables"), "variables.index")
        return index if remote.isfile(index) else None
    if "checkpoint" in names and remote.isfile(remote.join(folder, "checkpoint")):
        with remote.open_source(remote.join(folder, "checkpoint")) as f:
            found = STATE_PATH.search(f.read(1 << 16).decode("utf8", "replace"))
        # the path it names may be absolute (where it was written): its file in this folder
        name = re.split(r"[/\\]", found.group(1))[-1] if found else ""
        index = remote.join(folder, name + ".index")
        if name not in ("", ".", "..") and remote.isfile(index):
            return index
    indexes = [n for n in names if n.endswith(".index") and not n.endswith(".json.index")]
    if len(indexes) == 1 and any(DATA_NAME.search(n) for n in names):
        return remote.join(folder, indexes[0])
    return None


# ---- the checkpoint ----------------------------------------------------------------------


def _tensor(entry: Entry, dtype: str, byteorder: str) -> TensorInfo:
    span = FileSpan(entry.shard, entry.offset, entry.size)
    storage = Storage(entry.key, dtype, math.prod(entry.shape), "cpu", span, byteorder=byteorder)
    return TensorInfo(
        dtype=dtype, shape=entry.shape, stride=contiguous_strides(entry.shape), storage=storage
    )


def _chunks(
    entry: Entry, dtype: str, stored: dict[bytes, Entry], byteorder: str
) -> list[tuple[tuple[int, ...], tuple[int, ...], FileSpan]]:
    """A partitioned variable's slices as chunks (the same as a DCP tensor's), each stored as
    an entry of its own; together they must cover the variable once."""
    chunks: list[tuple[tuple[int, ...], tuple[int, ...], FileSpan]] = []
    what = f"partitioned tensor {safe_text(entry.key)!r}"
    if len(entry.slices) > MAX_SLICES:  # each pair is checked for overlap
        raise CheckpointError(f"{what} has {len(entry.slices):,} slices, more than are read")
    for starts, lengths in entry.slices:
        part = stored.get(slice_key(entry.raw, starts, lengths))
        sizes = tuple(n if n >= 0 else d for n, d in zip(lengths, entry.shape))
        if part is None or part.slices:
            raise CheckpointError(f"{what}: its slice at {list(starts)} is missing")
        if part.dtype != entry.dtype or part.shape != sizes:
            raise CheckpointError(
                f"{what}: its slice at {list(starts)} stores {part.type_name} "
                f"{list(part.shape)}, not {dtype} {list(sizes)}"
            )
        tensor = _tensor(part, dtype, byteorder)
        chunks.append((starts, sizes, RawChunk(part.shard, part.offset, part.size, tensor)))
    if sum(math.prod(sizes) for _, sizes, _ in chunks) != math.prod(entry.shape) or any(
        all(a < b + m and b < a + n for a, n, b, m in zip(s1, z1, s2, z2))
        for i, (s1, z1, _) in enumerate(chunks)
        for s2, z2, _ in chunks[i + 1 :]
    ):
        raise CheckpointError(f"{what}: its slices do not cover it exactly once")
    return chunks


def read(path: str) -> Checkpoint:
    header, entries = read_entries(path)
    names: dict[str, tuple[str, str]] = {}
    graph = next((e for e in entries if e.key == GRAPH_KEY and e.dtype == 7), None)
    warnings: list[str] = []
    if graph is not None and graph.shape == ():
        try:  # the tensors are listed under their raw keys without it
            names = graph_names(string_values(graph)[0])
        except CheckpointError as exc:
            warnings.append(f"the object graph is not read ({exc}); raw keys are shown")
    tensors: dict[str, TensorInfo] = {}
    others: list[Node] = []
    notes: dict[str, str] = {}
    taken: set[str] = set()
    stored = {e.raw: e for e in entries}
    for entry in entries:
        if entry.raw[:1] == b"\x00":
            continue  # a slice of a partitioned variable: listed as a chunk of it
        readable, note = names.get(entry.key) or _readable(entry.key)
        key = readable.replace("/", ".")
        if key in taken or not key:
            key = entry.key
        while key in taken:  # a crafted index: a raw key equal to another's readable name
            key += "~"
        taken.add(key)
        notes[key] = f"{note}; TF key {entry.key}" if note else f"TF key {entry.key}"
        dtype = DTYPES.get(entry.dtype)
        if dtype is None:
            value = f"not read: a {entry.type_name} tensor of shape {list(entry.shape)}"
            others.append(
                Node(name=key, kind="opaque", key=key, type_name=entry.type_name, value=value)
            )
            continue
        if entry.slices:
            chunks = _chunks(entry, dtype, stored, str(header["endianness"]))
            tensors[key] = TensorInfo(
                dtype=dtype,
                shape=entry.shape,
                stride=contiguous_strides(entry.shape),
                chunks=chunks,
            )
            continue
        tensors[key] = _tensor(entry, dtype, str(header["endianness"]))
    root = flat_tree(tensors)
    root.children.extend(others)
    shards = sorted({e.shard for e in entries if e.shard})
    metadata: dict[str, object] = {
        "data files": header["shards"],
        "object graph": "yes" if names else "no",
    }
    if header["producer"]:
        metadata["producer version"] = header["producer"]
    counter = stored.get(b"save_counter" + ATTRIBUTES.encode() + b"VARIABLE_VALUE")
    if counter is not None and counter.dtype == 9 and counter.shape == () and counter.size == 8:
        with remote.open_source(counter.shard) as f:  # tf.train.Checkpoint's save number
            f.seek(counter.offset)
            big = header["endianness"] == "big"
            metadata["save_counter"] = int.from_bytes(f.read(8), "big" if big else "little")
    checkpoint = Checkpoint(
        path=path,
        format="tensor_bundle",
        file_bytes=remote.getsize(path) + sum(remote.getsize(s) for s in shards),
        root=root,
        warnings=warnings,
        metadata=metadata,
        byteorder=str(header["endianness"]),
        optimizer_nodes=[],
    )
    for node in [n for _, _, n in checkpoint.tensors()] + others:
        node.note = notes[node.key]
    return checkpoint
