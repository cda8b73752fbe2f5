"""Flax `flax.serialization.to_bytes` / `msgpack_serialize` files (`flax_model.msgpack`).

msgpack holding nested maps whose leaves are ext types: 1 an ndarray, 3 a numpy scalar (each a
msgpack array [shape, dtype name, raw C-order bytes]), 2 a Python complex. Parsed here, with
every length checked against the file before it is used, so each array's bytes are located
without reading them; arrays larger than 1 GB, which flax splits into
`{"__msgpack_chunked_array__": true, "shape": ..., "chunks": {...}}`, are listed by their
chunks (each its own tensor)."""

from __future__ import annotations

import math
import struct
from typing import Any

from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.listing import remote
from ckpt_viewer.core.listing.model import (
    DTYPE_SIZES,
    Checkpoint,
    FileSpan,
    Node,
    Storage,
    TensorInfo,
)
from ckpt_viewer.core.listing.readers.numpy_files import strides
from ckpt_viewer.core.listing.remote import getsize, open_source
from ckpt_viewer.core.listing.text import safe_text

MAX_DEPTH = 512
MAX_ITEMS = 10_000_000
NDARRAY, COMPLEX, NPSCALAR = 1, 2, 3

# numpy dtype names flax writes -> torch dtype names (flax maps bfloat16 itself)
DTYPES = {
    "float16": "float16",
    "float32": "float32",
    "float64": "float64",
    "bfloat16": "bfloat16",
    "complex64": "complex64",
    "complex128": "complex128",
    "int8": "int8",
    "int16": "int16",
    "int32": "int32",
    "int64": "int64",
    "uint8": "uint8",
    "uint16": "uint16",
    "uint32": "uint32",
    "uint64": "uint64",
    "bool": "bool",
    "float8_e4m3fn": "float8_e4m3fn",
    "float8_e5m2": "float8_e5m2",
}


class _Cursor:
    """Reads msgpack values from a file, never past `end`."""

    def __init__(self, f: remote.SizedFile, end: int) -> None:
        self.f, self.end, self.position, self.items = f, end, 0, 0

    def take(self, n: int) -> bytes:
        if self.position + n > self.end:
            raise CheckpointError(
                f"msgpack data runs past the end of the file (at byte {self.position:,})"
            )
        data = self.f.read(n)
        if len(data) != n:
            raise CheckpointError("the file ended while it was read (truncated?)")
        self.position += n
        return data

    def skip(self, n: int) -> None:
        if self.position + n > self.end:
            raise CheckpointError(
                f"msgpack data runs past the end of the file (at byte {self.position:,})"
            )
        self.position += n
        self.f.seek(self.position)

    def number(self, fmt: str) -> Any:
        return struct.unpack(">" + fmt, self.take(struct.calcsize(fmt)))[0]


class Ext:
    def __init__(self, code: int, start: int, length: int) -> None:
        self.code, self.start, self.length = code, start, length


class Bin:
    def __init__(self, start: int, length: int) -> None:
        self.start, self.length = start, length


def _head(c: _Cursor) -> tuple[str, Any]:
    """The next value's kind and what it holds: ("map"/"array", count), ("bin", Bin),
    ("ext", Ext) or ("value", a str/int/float/bool/None)."""
    c.items += 1
    if c.items > MAX_ITEMS:
        raise CheckpointError(f"the msgpack data hold more than {MAX_ITEMS:,} items")
    b = c.take(1)[0]
    if b <= 0x7F:
        return "value", b
    if b >= 0xE0:
        return "value", b - 0x100
    if 0x80 <= b <= 0x8F:
        return "map", b & 0x0F
    if 0x90 <= b <= 0x9F:
        return "array", b & 0x0F
    if 0xA0 <= b <= 0xBF:
        return "value", c.take(b & 0x1F).decode("utf8", "replace")
    simple = {0xC0: None, 0xC2: False, 0xC3: True}
    if b in simple:
        return "value", simple[b]
    sizes = {0xC4: "B", 0xC5: "H", 0xC6: "I"}
    if b in sizes:
        n = c.number(sizes[b])
        start = c.position
        c.skip(n)
        return "bin", Bin(start, n)
    ext = {0xC7: "B", 0xC8: "H", 0xC9: "I"}
    fixext = {0xD4: 1, 0xD5: 2, 0xD6: 4, 0xD7: 8, 0xD8: 16}
    if b in ext or b in fixext:
        n = c.number(ext[b]) if b in ext else fixext[b]
        code = c.number("b")
        start = c.position
        c.skip(n)
        return "ext", Ext(code, start, n)
    numbers = {0xCA: "f", 0xCB: "d", 0xCC: "B", 0xCD: "H", 0xCE: "I", 0xCF: "Q"}
    numbers |= {0xD0: "b", 0xD1: "h", 0xD2: "i", 0xD3: "q"}
    if b in numbers:
        return "value", c.number(numbers[b])
    strings = {0xD9: "B", 0xDA: "H", 0xDB: "I"}
    if b in strings:
        return "value", c.take(c.number(strings[b])).decode("utf8", "replace")
    if b in (0xDC, 0xDD):
        return "array", c.number("H" if b == 0xDC else "I")
    if b in (0xDE, 0xDF):
        return "map", c.number("H" if b == 0xDE else "I")
    raise CheckpointError(f"byte 0x{b:02x} at {c.position - 1:,} is not msgpack")


def _value(c: _Cursor) -> Any:
    """A whole value; maps and arrays as dicts and lists (iteratively, depth-bounded)."""
    kind, held = _head(c)
    if kind not in ("map", "array"):
        return held
    root: dict[Any, Any] | list[Any] = {} if kind == "map" else []
    stack: list[tuple[Any, int, Any]] = [(root, held, None)]  # container, left, pending key
    while stack:
        container, left, key = stack[-1]
        if left == 0:
            stack.pop()
            continue
        kind, held = _head(c)
        if kind in ("map", "array"):
            if len(stack) >= MAX_DEPTH:
                raise CheckpointError(f"the msgpack data nest deeper than {MAX_DEPTH} levels")
            child: dict[Any, Any] | list[Any] | None = {} if kind == "map" else []
            value = child
        else:
            child, value = None, held
        if isinstance(container, list):
            container.append(value)
            stack[-1] = (container, left - 1, None)
        elif key is None:
            if child is not None or isinstance(value, (Bin, Ext)):
                raise CheckpointError("a msgpack map key that is not a string or number")
            stack[-1] = (container, left, (value,))
        else:
            container[str(key[0])] = value
            stack[-1] = (container, left - 1, None)
        if child is not None:
            stack.append((child, held, None))
    return root


def _array(path: str, f: remote.SizedFile, ext: Ext, key: str) -> TensorInfo:
    """The tensor an ndarray / npscalar ext describes: [shape, dtype name, bytes]."""
    parts = _inner(f, ext)
    if not isinstance(parts, list) or len(parts) != 3:
        raise CheckpointError(
            f"{safe_text(key)!r}: an ndarray record that is not [shape, dtype, data]"
        )
    shape, name, data = parts
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise CheckpointError(f"{safe_text(key)!r}: an ndarray shape that is not a list of sizes")
    if not isinstance(name, str) or name not in DTYPES:
        raise CheckpointError(
            f"{safe_text(key)!r}: dtype {safe_text(str(name))[:40]!r} is not read"
        )
    if not isinstance(data, Bin):
        raise CheckpointError(f"{safe_text(key)!r}: ndarray data that are not bytes")
    numel = math.prod(shape)
    if numel * DTYPE_SIZES[DTYPES[name]] != data.length:
        raise CheckpointError(
            f"{safe_text(key)!r} holds {data.length:,} bytes; its shape {shape} of {name} needs "
            f"{numel * DTYPE_SIZES[DTYPES[name]]:,}"
        )
    dtype = DTYPES[name]
    storage = Storage(key, dtype, numel, "cpu", FileSpan(path, data.start, data.length))
    return TensorInfo(
        dtype=dtype, shape=tuple(shape), stride=strides(tuple(shape), False), storage=storage
    )


def _inner(f: remote.SizedFile, ext: Ext) -> Any:
    """The msgpack value an ext's payload holds."""
    f.seek(ext.start)
    inner = _Cursor(f, ext.start + ext.length)
    inner.position = ext.start
    return _value(inner)


def _leaf(path: str, f: remote.SizedFile, name: str, key: str, item: Any) -> Node:
    if isinstance(item, Ext) and item.code in (NDARRAY, NPSCALAR):
        tensor = _array(path, f, item, key)
        return Node(name=name, kind="tensor", key=key, tensor=tensor, type_name="ndarray")
    if isinstance(item, Ext) and item.code == COMPLEX:
        pair = _inner(f, item)
        ok = isinstance(pair, list) and len(pair) == 2
        ok = ok and all(isinstance(x, (int, float)) for x in pair)
        value: object = complex(*pair) if ok else None
    elif isinstance(item, (Ext, Bin)):
        value = f"<{item.length:,} bytes>"
    else:
        value = item
    return Node(name=name, kind="scalar", key=key, value=value)


def read(path: str) -> Checkpoint:
    size = getsize(path)
    root = Node(name="", kind="dict", type_name="dict")
    with open_source(path) as f:
        c = _Cursor(f, size)
        state = _value(c)
        if c.position != size:
            raise CheckpointError(f"{size - c.position:,} bytes follow the msgpack data")
        stack = [(root, state)]
        while stack:
            node, item = stack.pop()
            entries = item.items() if isinstance(item, dict) else enumerate(item)
            for name, child in entries:
                key = f"{node.key}.{name}" if node.key else str(name)
                if isinstance(child, (dict, list)):
                    kind = "dict" if isinstance(child, dict) else "list"
                    group = Node(name=str(name), kind=kind, key=key, type_name=kind)
                    node.children.append(group)
                    stack.append((group, child))
                else:
                    node.children.append(_leaf(path, f, str(name), key, child))
        if not isinstance(state, (dict, list)):
            root.children.append(_leaf(path, f, "value", "value", state))
    return Checkpoint(path=path, format="flax-msgpack", file_bytes=size, root=root)


def looks_like_flax(path: str, head: bytes) -> bool:
    """A msgpack map first (flax state dicts are maps), named so or holding ndarray exts."""
    if not head or not (0x80 <= head[0] <= 0x8F or head[0] in (0xDE, 0xDF)):
        return False
    return path.lower().endswith(".msgpack") or b"\xc7" in head or b"\xc8" in head
