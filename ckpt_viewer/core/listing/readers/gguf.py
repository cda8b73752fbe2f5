"""GGUF (llama.cpp) files: a little-endian header, then tensor data at aligned offsets.

Header layout (GGUF v2/v3): magic "GGUF", u32 version, u64 tensor count, u64 key-value count,
the key-values (string key, u32 value type, value), then per tensor its name, u32 dimension
count, u64 dimensions (ne[0] first: the fastest-varying one), u32 ggml type and u64 offset from
the data section, which starts at the next multiple of `general.alignment` (32 by default).

The header is parsed here, without numpy (listing imports neither numpy nor torch); values of
quantized tensors are decoded with the `gguf` package's dequantizers (values.py).

Shapes are given in PyTorch / numpy order, i.e. GGUF's ne list reversed (GGUFReader's
`tensor.shape` is ne order, its `tensor.data.shape` this order): a `blk.0.attn_q.weight`
of ne [4096, 11008] is listed as (11008, 4096), the shape the tensor had in PyTorch."""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterable
from typing import Any

from ckpt_viewer.core import CheckpointError, StructureError
from ckpt_viewer.core.listing import remote
from ckpt_viewer.core.listing.model import (
    Checkpoint,
    FileSpan,
    Storage,
    TensorInfo,
    contiguous_strides,
)
from ckpt_viewer.core.listing.readers.safetensors import flat_tree

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_ARRAY_DEPTH = 8
MAX_SHOWN_ITEMS = 16  # an array value (a vocabulary...) is shown by its first items
MAX_STRING_BYTES = 64 << 20  # a chat template or a token is far smaller
MAX_DIMS = 8  # GGML_MAX_DIMS is 4; a little slack for newer files

# ggml type id -> (name, elements per block, bytes per block): the GGUF spec's type table
GGML_TYPES = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
    40: ("NVFP4", 64, 36),
    41: ("Q1_0", 128, 18),
}
# plain element types are shown and read as the torch dtype they hold
PLAIN_TYPES = {
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F64": "float64",
    "I8": "int8",
    "I16": "int16",
    "I32": "int32",
    "I64": "int64",
}

# the types GGUFReader maps onto a numpy dtype; it reads the others as rows of bytes
NUMPY_READ_TYPES = {"F32", "F16", "F64", "I8", "I16", "I32", "I64"}

# value type id -> struct format of a fixed-size value (8: string, 9: array)
VALUE_FORMATS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
STRING, ARRAY = 8, 9
UINT32 = 4
# GGUFReader files the header's own fields under these names first: a key-value with one of
# them is a duplicate key to it
READER_FIELDS = ("GGUF.version", "GGUF.tensor_count", "GGUF.kv_count")


class _Header:
    """A cursor over the file that never reads past its end."""

    def __init__(self, f: io.BufferedReader[Any] | remote.SizedFile, size: int) -> None:
        self.f, self.size, self.position = f, size, 0
        self.order = "<"  # ">" once the version says the file is big-endian

    def take(self, n: int) -> bytes:
        if n < 0 or self.position + n > self.size:
            raise CheckpointError(
                f"GGUF header runs past the end of the file (at byte "
                f"{self.position:,}, {n:,} more bytes needed)"
            )
        data = self.f.read(n)
        if len(data) != n:
            raise CheckpointError("GGUF file ended while its header was read")
        self.position += n
        return data

    def skip(self, n: int) -> None:
        if n < 0 or self.position + n > self.size:
            raise CheckpointError("GGUF header runs past the end of the file")
        self.f.seek(n, os.SEEK_CUR)
        self.position += n

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(self.order + fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self, name: str = "", keep: bool = True) -> str:
        """A string value (undecodable bytes replaced), or the key or tensor name `name`
        says, which GGUFReader decodes strictly: one that is not UTF-8 is refused. An array
        item past the shown ones (`keep` false) is skipped, never read."""
        start = self.position
        length = self.unpack("Q")
        if length > MAX_STRING_BYTES:
            raise CheckpointError(
                f"GGUF header holds a string of {length:,} bytes; refusing "
                f"more than {MAX_STRING_BYTES:,}"
            )
        if not keep:
            self.skip(length)
            return ""
        data = self.take(length)
        if not name:
            return data.decode("utf-8", "replace")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise StructureError(
                f"GGUF {name} at byte {start:,} is not valid UTF-8 "
                f"({data[:40]!r}); GGUFReader refuses the file",
                record=f"{name} at byte {start:,}",
            ) from None

    def value(self, kind: int, depth: int = 0, keep: bool = True) -> Any:
        if kind in VALUE_FORMATS:
            return self.unpack(VALUE_FORMATS[kind])
        if kind == STRING:
            return self.string(keep=keep)
        if kind != ARRAY:
            raise CheckpointError(f"GGUF metadata has unknown value type {kind}")
        if depth >= MAX_ARRAY_DEPTH:
            raise CheckpointError("GGUF metadata nests arrays too deeply")
        item_kind, count = self.unpack("I"), self.unpack("Q")
        if item_kind in VALUE_FORMATS:  # read whole, keep the first few
            width = struct.calcsize(VALUE_FORMATS[item_kind])
            if count * width > self.size - self.position:
                raise CheckpointError("GGUF metadata array runs past the end of the file")
            shown = min(count, MAX_SHOWN_ITEMS)
            items = list(
                struct.unpack(
                    f"{self.order}{shown}{VALUE_FORMATS[item_kind]}", self.take(shown * width)
                )
            )
            self.skip(width * (count - shown))
            return GGUFArray(items, count)
        # a string item takes at least its 8-byte length, an array its type and count
        if count * (8 if item_kind == STRING else 12) > self.size - self.position:
            raise CheckpointError("GGUF metadata array runs past the end of the file")
        items = []
        for index in range(count):
            item = self.value(item_kind, depth + 1, keep and index < MAX_SHOWN_ITEMS)
            if index < MAX_SHOWN_ITEMS:
                items.append(item)
        return GGUFArray(items, count)


class GGUFArray(list[Any]):
    """An array value: its first items, and how many it has."""

    def __init__(self, items: Iterable[Any], count: int) -> None:
        super().__init__(items)
        self.total = count

    def __str__(self) -> str:
        more = f", ... ({self.total:,} items)" if self.total > len(self) else ""
        return "[" + ", ".join(repr(item) for item in self) + more + "]"


def read_header(
    path: str,
) -> tuple[int, dict[str, Any], list[tuple[str, list[int], int, int]], int, str]:
    """(version, metadata key-values, [(name, ne dims, type id, offset)], data start,
    byte order)."""
    with remote.open_source(path) as source:
        # the header is read a few bytes at a time: buffered, a URL's block cache is asked
        # once per 64 KiB, not once per field
        remote_file = isinstance(source, remote.RemoteFile)
        f = io.BufferedReader(source, 1 << 16) if remote_file else source
        header = _Header(f, source.size)
        if header.take(4) != MAGIC:
            raise CheckpointError("not a GGUF file (no GGUF magic)")
        version = header.unpack("I")
        if version & 0xFFFF == 0:  # GGUFReader's test: the other byte order (big-endian)
            header.order = ">"
            version = int.from_bytes(version.to_bytes(4, "little"), "big")
        if version not in (2, 3):
            raise CheckpointError(f"GGUF version {version} is not supported (2 and 3 are)")
        tensor_count, kv_count = header.unpack("Q"), header.unpack("Q")
        if tensor_count > header.size or kv_count > header.size:
            raise CheckpointError("GGUF header claims more entries than the file could hold")
        metadata, kinds = {}, {}
        for _ in range(kv_count):
            start = header.position
            key = header.string("metadata key")
            if key in metadata or key in READER_FIELDS:
                raise StructureError(
                    f"GGUF metadata key {key!r:.200} appears twice (again at "
                    f"byte {start:,}); GGUFReader refuses the file",
                    record=f"metadata key {key!r:.200}",
                )
            kinds[key] = header.unpack("I")
            metadata[key] = header.value(kinds[key])
        infos = []
        for _ in range(tensor_count):
            name = header.string("tensor name")
            n_dims = header.unpack("I")
            if n_dims > MAX_DIMS:
                raise CheckpointError(f"GGUF tensor {name!r} has {n_dims} dimensions")
            dims = [header.unpack("Q") for _ in range(n_dims)]
            infos.append((name, dims, header.unpack("I"), header.unpack("Q")))
        alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if kinds.get("general.alignment", UINT32) != UINT32:
            raise StructureError(
                f"GGUF general.alignment is of value type "
                f"{kinds['general.alignment']}, not UINT32; GGUFReader refuses "
                "the file",
                record="metadata key 'general.alignment'",
            )
        if type(alignment) is not int or alignment <= 0 or alignment & (alignment - 1):
            raise CheckpointError(f"GGUF general.alignment {alignment!r:.20} is not a power of 2")
        data_start = -(-header.position // alignment) * alignment
        return version, metadata, infos, data_start, "big" if header.order == ">" else "little"


def _tensor(
    path: str,
    name: str,
    dims: list[int],
    type_id: int,
    offset: int,
    data_start: int,
    file_size: int,
    byteorder: str = "little",
) -> TensorInfo:
    if type_id not in GGML_TYPES:
        raise CheckpointError(f"GGUF tensor {name!r} has unknown ggml type {type_id}")
    type_name, block, type_size = GGML_TYPES[type_id]
    shape = tuple(reversed(dims))
    numel = 1
    for dim in dims:
        numel *= dim
    if not dims and type_name not in NUMPY_READ_TYPES:
        raise StructureError(
            f"GGUF tensor {name!r} of type {type_name} has no dimensions; "
            "GGUFReader reads such a tensor by its rows and fails",
            name,
        )
    if dims and dims[0] % block:
        raise CheckpointError(
            f"GGUF tensor {name!r}: rows of {dims[0]} elements are not whole "
            f"{type_name} blocks of {block}"
        )
    nbytes = numel // block * type_size
    start = data_start + offset
    if nbytes and start + nbytes > file_size:  # an empty tensor reads nothing, anywhere
        raise CheckpointError(
            f"GGUF tensor {name!r} reaches byte {start + nbytes:,} but the "
            f"file has {file_size:,} (truncated?)"
        )
    span = FileSpan(path, start, nbytes)
    plain = PLAIN_TYPES.get(type_name)
    if plain:
        return TensorInfo(
            dtype=plain,
            shape=shape,
            stride=contiguous_strides(shape),
            storage=Storage(name, plain, numel, "cpu", span, byteorder),
            quantizer={"ggml_type": type_name},
        )
    return TensorInfo(
        dtype=type_name,
        shape=shape,
        stride=contiguous_strides(shape),
        layout="ggml",
        storage=Storage(name, "uint8", nbytes, "cpu", span),
        quantizer={"ggml_type": type_name, "block": block, "type_size": type_size},
    )


def read(path: str) -> Checkpoint:
    version, metadata, infos, data_start, byteorder = read_header(path)
    file_size = remote.getsize(path)
    tensors, warnings = {}, []
    for name, dims, type_id, offset in infos:
        if name in tensors:
            raise StructureError(
                f"GGUF file names tensor {name!r} twice; GGUFReader refuses it",
                name,
                f"tensor info {name!r}",
            )
        tensors[name] = _tensor(path, name, dims, type_id, offset, data_start, file_size, byteorder)
        if offset % metadata.get("general.alignment", DEFAULT_ALIGNMENT):
            warnings.append(f"GGUF tensor {name!r} is not aligned as the file says")
    shown = {
        key: str(value) if isinstance(value, GGUFArray) else value
        for key, value in metadata.items()
    }
    shown["GGUF version"] = version
    if byteorder == "big":  # GGUFReader swaps plain values; quantized blocks stay raw bytes
        warnings.append(
            "a big-endian GGUF file: plain values are byte-swapped when read, "
            "quantized blocks are read as stored"
        )
    return Checkpoint(
        path=path,
        format="gguf",
        file_bytes=file_size,
        root=flat_tree(tensors),
        warnings=warnings,
        metadata=shown,
    )
