"""NumPy `.npy` arrays and `.npz` archives (`numpy.save` / `numpy.savez[_compressed]`).

Parsed here, as numpy.load(allow_pickle=False) reads them: the npy header is a Python dict
literal (read with ast.literal_eval, which evaluates no code), the npz a zip of npy records
read through our zip directory. An object array would need unpickling: it is listed as
refused, never read."""

from __future__ import annotations

import ast
import math
import struct
import zlib
from collections.abc import Callable
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
    ZipMember,
)
from ckpt_viewer.core.listing.readers.safetensors import flat_tree
from ckpt_viewer.core.listing.readers.zip_directory import data_offset, read_directory
from ckpt_viewer.core.listing.remote import basename, getsize, open_source
from ckpt_viewer.core.listing.text import safe_text

MAGIC = b"\x93NUMPY"
MAX_HEADER_BYTES = 10000  # numpy.load's default max_header_size
HEAD_BYTES = 12 + MAX_HEADER_BYTES

# numpy's (kind, itemsize) -> torch dtype name
KINDS = {
    ("f", 2): "float16",
    ("f", 4): "float32",
    ("f", 8): "float64",
    ("c", 8): "complex64",
    ("c", 16): "complex128",
    ("i", 1): "int8",
    ("i", 2): "int16",
    ("i", 4): "int32",
    ("i", 8): "int64",
    ("u", 1): "uint8",
    ("u", 2): "uint16",
    ("u", 4): "uint32",
    ("u", 8): "uint64",
    ("b", 1): "bool",
}


# (data start, data bytes, item size) -> (a Storage's source, element offset, storage numel)
SourceOf = Callable[[int, int, int], tuple[FileSpan | ZipMember, int, int]]


class Refused(Exception):
    """An array numpy.load(allow_pickle=False) would not give, or that has no torch dtype."""


def parse_header(head: bytes, what: str) -> tuple[str, str, tuple[int, ...], bool, int]:
    """(dtype, byteorder, shape, fortran_order, data start) of an npy header."""
    if not head.startswith(MAGIC) or len(head) < 10:
        raise CheckpointError(f"{what} is not an npy array (no \\x93NUMPY magic)")
    major = head[6]
    if major == 1:
        (length,), start = struct.unpack("<H", head[8:10]), 10
    elif major in (2, 3) and len(head) >= 12:
        (length,), start = struct.unpack("<I", head[8:12]), 12
    else:
        raise CheckpointError(f"{what} has npy format version {major}.{head[7]}, unknown")
    if length > MAX_HEADER_BYTES:
        raise CheckpointError(f"{what} has a {length:,}-byte npy header (numpy reads <= 10,000)")
    raw = head[start : start + length]
    if len(raw) < length:
        raise CheckpointError(f"{what} ends inside its npy header")
    try:
        header = ast.literal_eval(raw.decode("utf8" if major == 3 else "latin1"))
    except (ValueError, SyntaxError, UnicodeError, MemoryError, RecursionError, TypeError):
        raise CheckpointError(f"{what} has an npy header that is not a dict literal") from None
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        raise CheckpointError(f"{what} has an npy header without exactly descr/fortran_order/shape")
    shape, fortran, descr = header["shape"], header["fortran_order"], header["descr"]
    if not isinstance(shape, tuple) or not all(type(d) is int and d >= 0 for d in shape):
        raise CheckpointError(f"{what} has an npy shape that is not a tuple of sizes")
    if not isinstance(fortran, bool):
        raise CheckpointError(f"{what} has an npy fortran_order that is not a bool")
    dtype, order = _dtype(descr)
    return dtype, order, shape, fortran, start + length


def _dtype(descr: Any) -> tuple[str, str]:
    if not isinstance(descr, str):
        text = safe_text(repr(descr)[:60])
        if "O" in repr(descr):
            raise Refused(f"structured dtype {text} holds objects: needs allow_pickle")
        raise Refused(f"structured dtype {text} has no torch dtype")
    order, code = (descr[0], descr[1:]) if descr[:1] in "<>|=" else ("=", descr)
    if code[:1] == "O":
        raise Refused("object array: numpy.load needs allow_pickle=True to unpickle it")
    kind, size = code[:1], code[1:]
    dtype = KINDS.get((kind, int(size))) if size.isdigit() else None
    if dtype is None:
        raise Refused(f"dtype {safe_text(descr[:40])!r} has no torch dtype")
    return dtype, "big" if order == ">" else "little"


def strides(shape: tuple[int, ...], fortran: bool) -> tuple[int, ...]:
    out, step = [], 1
    for dim in shape if fortran else reversed(shape):
        out.append(step)
        step *= dim
    return tuple(out) if fortran else tuple(reversed(out))


def _tensor(key: str, head: bytes, what: str, room: int, source: SourceOf) -> TensorInfo:
    """The tensor of an npy record whose data may take `room` bytes; `source(start, nbytes,
    itemsize)` gives its Storage's source, the element offset of its data and the storage's
    element count."""
    dtype, order, shape, fortran, start = parse_header(head, what)
    numel = math.prod(shape)
    itemsize = DTYPE_SIZES[dtype]
    if numel * itemsize > room - start:
        raise CheckpointError(
            f"{what} needs {numel * itemsize:,} bytes of data but holds {max(room - start, 0):,}"
        )
    span, offset, storage_numel = source(start, numel * itemsize, itemsize)
    storage = Storage(key, dtype, storage_numel, "cpu", span, byteorder=order)
    return TensorInfo(
        dtype=dtype, shape=shape, stride=strides(shape, fortran), offset=offset, storage=storage
    )


def _refused_node(key: str, why: str) -> Node:
    """Placed at the top of the tree, so named by its whole key."""
    return Node(name=key, kind="opaque", key=key, type_name="ndarray", value=f"not read: {why}")


def read_npy(path: str) -> Checkpoint:
    size = getsize(path)
    with open_source(path) as f:
        head = f.read(HEAD_BYTES)
    stem = basename(path)
    key = (stem[:-4] if stem.lower().endswith(".npy") else stem) or "array"
    root = Node(name="", kind="dict", type_name="dict")
    warnings: list[str] = []
    try:
        tensor = _tensor(
            key,
            head,
            "the file",
            size,
            lambda start, n, size: (FileSpan(path, start, n), 0, n // size),
        )
    except Refused as exc:
        warnings.append(f"{safe_text(key)}: not read: {exc}")
        root.children.append(_refused_node(key, str(exc)))
    else:
        root.children.append(
            Node(name=key, kind="tensor", key=key, tensor=tensor, type_name="ndarray")
        )
    return Checkpoint(path=path, format="npy", file_bytes=size, root=root, warnings=warnings)


def first_record_name(head: bytes) -> bytes:
    """The name of a zip's first local record, from the file's first bytes."""
    length = int.from_bytes(head[26:28], "little") if len(head) >= 30 else 0
    return head[30 : 30 + length]


def is_npz(path: str, head: bytes) -> bool:
    """A zip numpy.load would open as an npz (npy records, no pickle record as torch's): its
    first record, as numpy.savez writes it, is an .npy (torch.save's is data.pkl)."""
    if not first_record_name(head).endswith(b".npy"):
        return False
    try:
        names = [m.name for m in read_directory(path)]
    except CheckpointError:
        return False
    return not any(n.endswith(".pkl") for n in names)


def _member_head(member: ZipMember, f: remote.SizedFile) -> bytes:
    """The first bytes of a zip record (its npy header), inflating no more than needed."""
    f.seek(data_offset(member, f))
    if member.compress_type == 0:
        return f.read(min(member.compressed_size, HEAD_BYTES))
    if member.compress_type != 8:
        raise CheckpointError(f"{member.name} uses unsupported compression {member.compress_type}")
    inflater, out, left = zlib.decompressobj(-15), b"", member.compressed_size
    try:
        while len(out) < HEAD_BYTES and left > 0 and not inflater.eof:
            chunk = f.read(min(left, 1 << 16))
            if not chunk:
                break
            left -= len(chunk)
            out += inflater.decompress(chunk, HEAD_BYTES - len(out))
            while inflater.unconsumed_tail and len(out) < HEAD_BYTES:
                out += inflater.decompress(inflater.unconsumed_tail, HEAD_BYTES - len(out))
    except zlib.error as exc:
        raise CheckpointError(f"{member.name} cannot be inflated ({exc})") from None
    return out


def read_npz(path: str) -> Checkpoint:
    members = read_directory(path)
    tensors, refused, warnings = {}, {}, []
    with open_source(path) as f:
        for member in members:
            key = member.name[:-4] if member.name.endswith(".npy") else member.name
            what = f"record {safe_text(member.name)!r}"
            if not member.name.endswith(".npy"):
                refused[key] = "not an .npy record (numpy.load gives its raw bytes)"
                continue
            if member.flags & 0x1:
                raise CheckpointError(f"{what} is encrypted")
            head = _member_head(member, f)

            def source(
                start: int, nbytes: int, itemsize: int, member: ZipMember = member, f: Any = f
            ) -> tuple[FileSpan | ZipMember, int, int]:
                if member.compress_type == 0:
                    return (
                        FileSpan(path, data_offset(member, f) + start, nbytes),
                        0,
                        nbytes // itemsize,
                    )
                if start % itemsize:
                    raise Refused(f"its data starts at byte {start}, not a multiple of {itemsize}")
                # a compressed record is inflated whole when read; the data follow the header
                return member, start // itemsize, member.file_size // itemsize

            try:
                tensors[key] = _tensor(key, head, what, member.file_size, source)
            except Refused as exc:
                refused[key] = str(exc)
                warnings.append(f"{safe_text(key)}: not read: {exc}")
    root = flat_tree(tensors)
    for key, why in refused.items():
        root.children.append(_refused_node(key, why))
    return Checkpoint(
        path=path, format="npz", file_bytes=getsize(path), root=root, warnings=warnings
    )
