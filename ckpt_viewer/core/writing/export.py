"""Cut a flat state_dict out of a checkpoint and write it, streaming, atomically.

torch.save and safetensors' save_file both need every tensor in memory at once (5.3 GB for the
5.4 GB benchmark sub-dict), so both formats are written here record by record: a torch zip
archive whose data.pkl names only torch's own rebuild functions (loadable with
`torch.load(weights_only=True)`), or a safetensors file. Storage location tags are whatever the
user asks (`cuda:0`...), with or without a GPU here. The file is written to a temporary name in
the destination folder, fsynced while it is reopened and checked, then renamed into place.
"""

from __future__ import annotations

import contextlib
import functools
import json
import mmap
import os
import re
import struct
import zipfile
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np

from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.listing import remote
from ckpt_viewer.core.listing.crc import (
    CRC_SPLIT,
    CRC_WORKERS,
    CrcPiece,
    crc32,
    crc_joined,
    crc_pieces,
)
from ckpt_viewer.core.listing.keys import map_keys
from ckpt_viewer.core.listing.model import (
    DTYPE_SIZES,
    FLOAT_DTYPES,
    PACKED_VALUES,
    Checkpoint,
    Storage,
    TensorInfo,
    ZipMember,
    contiguous_strides,
    span_bytes,
)
from ckpt_viewer.core.listing.readers.safetensors import TORCH_TO_SAFETENSORS, safetensors_shape
from ckpt_viewer.core.listing.readers.zip_directory import data_offset, read_directory
from ckpt_viewer.core.values.dcp import dcp_slabs
from ckpt_viewer.core.values.decode import apply_view_bits, as_little_endian
from ckpt_viewer.core.values.storage import StorageReader
from ckpt_viewer.core.values.strided import iter_raw_chunks
from ckpt_viewer.core.values.torch_bridge import read_tensor
from ckpt_viewer.core.writing.destination import (
    INDEX_NAMES,
    SHARD_STEMS,
    Cancelled,
    Staged,
    check_file,
    check_folder,
    remove_quietly,
    start_writeback,
)
from ckpt_viewer.core.writing.torch_pickle import TensorEntry, quantizer_params, state_dict_pickle

Span = tuple[StorageReader, int, int]  # (reader, first byte, byte count): copied file to file

CAST_TARGETS = ("keep", "float32", "float16", "bfloat16")
COPY_CHUNK = 16 << 20  # bytes per read/write step: bounded memory whatever the size
WRITEBACK_WINDOW = 64 << 20  # bytes of the file the disk is set to write at a time
CRC_LAG = 256 << 20  # bytes copied whose CRC-32 may still be computing
ALIGNMENT = 64  # torch aligns storage records to 64 bytes (mmap friendly)


@dataclass
class ExportPlan:
    root: str = ""  # take this subtree; keys are relative to it
    include: list[str] = field(default_factory=list)  # globs on the relative key; empty = all
    exclude: list[str] = field(default_factory=list)
    keys: list[str] | None = None  # an explicit selection of full keys (GUI check boxes)
    strip_prefix: str = ""
    add_prefix: str = ""
    dtype: str = "keep"
    device: str = "cpu"  # cpu | cuda | cuda:N
    format: str = "pth"  # pth | safetensors
    max_shard_size: int = 0  # > 0: write HF-style shards + index into a folder


@dataclass
class Item:
    source_key: str
    key: str
    tensor: TensorInfo
    dtype: str  # dtype written
    dequantize: bool = False  # a quantized weight written as its values (--dtype given)


@dataclass
class ExportSummary:
    path: str
    tensors: int
    bytes: int
    format: str
    device: str
    verified: bool
    files: int = 1


def location(device: str) -> str:
    device = device.strip().lower()
    if device == "cpu":
        return "cpu"
    if device == "cuda":
        return "cuda:0"
    if device.startswith("cuda:") and device[5:].isdigit():
        return device
    raise CheckpointError(f"device must be cpu, cuda or cuda:N, not {device!r}")


def plan_items(checkpoint: Checkpoint, plan: ExportPlan) -> list[Item]:
    """What would be written: (source key -> new key, dtype), in file order. Shared by the
    command line and the dialog's live preview."""
    if plan.dtype not in CAST_TARGETS:
        raise CheckpointError(f"dtype must be one of {', '.join(CAST_TARGETS)}")
    items: list[Item] = []
    for key, new_key, tensor in map_keys(
        checkpoint,
        plan.root,
        plan.strip_prefix,
        plan.add_prefix,
        plan.include,
        plan.exclude,
        plan.keys,
    ):
        cast = plan.dtype != "keep" and tensor.dtype in FLOAT_DTYPES
        items.append(
            Item(
                key,
                new_key,
                tensor,
                plan.dtype if cast else tensor.dtype,
                dequantize=cast and tensor.layout == "torchao",
            )
        )
    return items


def quantizer_stored(t: TensorInfo) -> bool:
    """A quantized tensor's quantizer can be written: per tensor, or per channel with its
    scales and zero points stored as tensors."""
    return "scale" in t.quantizer or all(
        isinstance(t.quantizer.get(k), TensorInfo) and t.quantizer[k].storage is not None
        for k in ("scales", "zero_points")
    )


def _check_exportable(items: list[Item], fmt: str) -> None:
    for item in items:
        t = item.tensor
        if t.layout == "dtensor":
            raise CheckpointError(
                f"{item.source_key!r} is a DTensor of which this file holds only "
                f"a part ({t.attrs.get('held', 'one shard')}); export it from a "
                "file that holds all of it (leave it out with --exclude)"
            )
        if t.layout == "torchao" and not item.dequantize:
            raise CheckpointError(
                f"{item.source_key!r} is a quantized {t.subclass.rsplit('.', 1)[-1]} "
                "(torchao); export it dequantized with --dtype float32, float16 "
                "or bfloat16, or leave it out with --exclude"
            )
        if t.layout == "torchao":
            continue
        if fmt == "safetensors" and item.dtype not in TORCH_TO_SAFETENSORS:
            raise CheckpointError(
                f"{item.source_key!r} has dtype {item.dtype}, which safetensors cannot store"
            )
        if t.layout == "quantized" and not quantizer_stored(t):
            raise CheckpointError(
                f"{item.source_key!r} is a {item.dtype} tensor whose "
                "quantizer has no stored scales and zero points"
            )
        if t.layout not in ("strided", "quantized") or t.parts:
            raise CheckpointError(
                f"{item.source_key!r} is a {t.layout} tensor; exporting those is "
                "not supported yet (leave it out with --exclude)"
            )
        if t.storage is None and not t.chunks:
            raise CheckpointError(f"{item.source_key!r} has no stored data to export")
        if fmt == "safetensors" and item.dtype == "float4_e2m1fn_x2" and not t.shape:
            raise CheckpointError(
                f"{item.source_key!r} is a 0-d float4_e2m1fn_x2 tensor, which "
                "safetensors cannot store (its F4 shape counts values in pairs)"
            )


# --- reading source values in bounded pieces ---------------------------------------------


def _torch_dtype(name: str) -> Any:  # a torch.dtype (torch is imported only here)
    import torch

    return getattr(torch, name)


NUMPY_FLOATS = {"float64": np.float64, "float32": np.float32, "float16": np.float16}


def _to_float32(raw: np.ndarray, dtype: str) -> np.ndarray | None:
    if dtype == "bfloat16":
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    return raw.view(NUMPY_FLOATS[dtype]) if dtype in NUMPY_FLOATS else None


def _to_bfloat16(values: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits, rounding to nearest even as torch does; NaN stays NaN."""
    bits = values.astype(np.float32).view(np.uint32)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    rounded[np.isnan(values)] = 0x7FC0
    return rounded


def _numpy_cast(raw: np.ndarray, source: str, target: str) -> np.ndarray | None:
    """The common float casts without torch (importing it stalls a GUI)."""
    with np.errstate(all="ignore"):  # out-of-range values become +-inf
        return _numpy_cast_values(raw, source, target)


def _numpy_cast_values(raw: np.ndarray, source: str, target: str) -> np.ndarray | None:
    values = (
        _to_float32(raw, source)
        if source == "bfloat16"
        else raw.view(NUMPY_FLOATS[source])
        if source in NUMPY_FLOATS
        else None
    )
    if values is None:
        return None
    if target == "bfloat16":
        return _to_bfloat16(values).view(np.uint8)
    if target in NUMPY_FLOATS:
        return values.astype(NUMPY_FLOATS[target]).view(np.uint8)
    return None


def _cast_bytes(raw: np.ndarray, source_dtype: str, target: str, device: str) -> np.ndarray:
    """Elementwise cast of a piece of little-endian storage bytes (uint8 array) to `target`;
    returns a bytes-like array. float8 sources and GPU casts go through torch."""
    if source_dtype == target:
        return raw
    if not device.startswith("cuda"):
        cast = _numpy_cast(raw, source_dtype, target)
        if cast is not None:
            return cast
    import torch

    source = torch.from_numpy(raw if raw.flags.writeable else raw.copy())
    source = source.view(_torch_dtype(source_dtype))
    if device.startswith("cuda") and torch.cuda.is_available():
        source = source.to(device)  # cast on the GPU when there is one
    return source.to(_torch_dtype(target)).cpu().view(torch.uint8).numpy()


def _raw_dtype(tensor: TensorInfo) -> np.dtype:
    """Elements as opaque units of the right size (little-endian once as_little_endian ran)."""
    itemsize = DTYPE_SIZES[tensor.dtype]
    return np.dtype(f"<u{itemsize}") if itemsize in (1, 2, 4, 8) else np.dtype(f"V{itemsize}")


def _little_endian_bytes(raw: np.ndarray, tensor: TensorInfo) -> np.ndarray:
    assert tensor.storage is not None
    return apply_view_bits(as_little_endian(raw, tensor.storage), tensor).reshape(-1).view(np.uint8)


def _pieces(
    tensor: TensorInfo, first: int, count: int, target: str, device: str
) -> Iterator[np.ndarray]:
    """Storage elements [first, first+count) in the target dtype, a chunk at a time."""
    step = max(1, COPY_CHUNK // DTYPE_SIZES[tensor.dtype])
    assert tensor.storage is not None
    reader = StorageReader(tensor.storage)
    raw_dtype = _raw_dtype(tensor)
    for start in range(first, first + count, step):
        raw = reader.read(start, min(step, first + count - start), raw_dtype)
        yield _cast_bytes(_little_endian_bytes(raw, tensor), tensor.dtype, target, device)


def _dense_bytes(tensor: TensorInfo, target: str, device: str) -> Iterator[np.ndarray]:
    """A tensor's own elements, contiguous, in the target dtype (views written compactly)."""
    if tensor.layout == "torchao":  # dequantized whole: one weight matrix
        value = read_tensor(tensor).to(_torch_dtype(target)).contiguous()
        yield value.reshape(-1).view(_torch_dtype("uint8")).numpy()
    elif tensor.chunks:  # DCP: slabs of rows assembled from its chunks
        for slab in dcp_slabs(tensor, COPY_CHUNK):
            yield _cast_bytes(slab.view(np.uint8), tensor.dtype, target, device)
    elif tensor.is_contiguous:
        yield from _pieces(tensor, tensor.offset, tensor.numel, target, device)
    else:
        step = max(1, COPY_CHUNK // DTYPE_SIZES[tensor.dtype])
        for raw in iter_raw_chunks(tensor, _raw_dtype(tensor), step):
            yield _cast_bytes(_little_endian_bytes(raw, tensor), tensor.dtype, target, device)


# --- planning storages: shared storages stay shared in .pth ---------------------------------


@dataclass
class _Record:
    name: str
    items: list[Item]  # written from this record
    dtype: str
    first: int  # first source element, for shared spans
    count: int  # elements written
    shared: bool
    owner: Item | None = None  # the item whose per-channel scales or zero points these are


def _records(items: list[Item], fmt: str) -> list[_Record]:
    groups: dict[int, list[Item]] = {}
    order = []
    for item in items:
        sid = id(item.tensor.storage) if item.tensor.storage is not None else id(item)
        if sid not in groups:
            groups[sid] = []
            order.append(sid)
        groups[sid].append(item)
    records: list[_Record] = []
    for sid in order:
        group = groups[sid]
        same_dtype = (
            len({(i.tensor.dtype, i.dtype, i.tensor.neg, i.tensor.conj) for i in group}) == 1
        )
        dtype = group[0].dtype
        if fmt == "pth" and dtype in PACKED_VALUES:
            # values share bytes: the storage's bytes up to the last one used, views kept
            end = max(i.tensor.element_span()[1] for i in group)
            records.append(
                _Record(str(len(records)), group, dtype, 0, span_bytes(dtype, end), True)
            )
        elif fmt == "pth" and len(group) > 1 and same_dtype and not group[0].tensor.chunks:
            spans = [i.tensor.element_span() for i in group]
            first, end = min(s[0] for s in spans), max(s[1] for s in spans)
            records.append(_Record(str(len(records)), group, dtype, first, end - first, True))
        else:
            for item in group:
                records.append(
                    _Record(str(len(records)), [item], item.dtype, 0, item.tensor.numel, False)
                )
    return _with_quantizer_records(records) if fmt == "pth" else records


def _with_quantizer_records(records: list[_Record]) -> list[_Record]:
    """A tensor quantized per channel has its scales and zero points in tensors of their own
    (as torch.save writes them): two more records right after its own."""
    out = []
    for record in records:
        out.append(record)
        for item in record.items:
            q = item.tensor.quantizer
            if item.tensor.layout == "quantized" and "scales" in q:
                out += [
                    _Record(
                        "",
                        [Item(item.source_key, item.key, p, p.dtype)],
                        p.dtype,
                        0,
                        p.numel,
                        False,
                        owner=item,
                    )
                    for p in (q["scales"], q["zero_points"])
                ]
    for number, record in enumerate(out):
        record.name = str(number)
    return out


def geometry(tensor: TensorInfo, record: _Record) -> tuple[int, tuple[int, ...]]:
    """(offset, stride) of a tensor in the record written for it: as in the source within a
    shared span, contiguous otherwise."""
    if record.shared:
        return tensor.offset - record.first, tuple(tensor.stride)
    return 0, contiguous_strides(tensor.shape)


def quantizer_entries(records: list[_Record]) -> dict[int, list[TensorEntry]]:
    """{id(tensor): [scales entry, zero points entry]} for the tensors quantized per channel."""
    parts: dict[int, list[TensorEntry]] = {}
    for record in records:
        if record.owner is not None:
            t = record.items[0].tensor
            offset, stride = geometry(t, record)
            parts.setdefault(id(record.owner.tensor), []).append(
                TensorEntry(
                    "", record.name, record.dtype, record.count, offset, tuple(t.shape), stride
                )
            )
    return parts


# --- unchanged bytes: copied by the kernel ------------------------------------------------


def _raw_span(tensor: TensorInfo, target: str, first: int, count: int) -> Span | None:
    """(reader, first byte, byte count) when the tensor's elements [first, first+count) are to
    be written exactly as stored (no cast, no neg/conj bit, little-endian, an uncompressed
    record or a file span), so they can be copied file to file; None otherwise. Counted in
    bytes: a uint16 or float8 tensor's storage is untyped (bytes), not of its dtype."""
    if (
        tensor.chunks
        or tensor.storage is None
        or target != tensor.dtype
        or tensor.neg
        or tensor.conj
        or tensor.storage.byteorder != "little"
        or not count
    ):
        return None
    reader = StorageReader(tensor.storage)
    if reader.inflated is not None or remote.is_remote(reader.path):
        return None  # a URL is read by ranges, never copied file to file
    itemsize = DTYPE_SIZES[tensor.dtype]
    return reader, first * itemsize, count * itemsize


def _item_spans(item: Item) -> list[Span] | None:
    """The raw spans whose bytes, one after the other, are the item's bytes; or None."""
    t = item.tensor
    if t.chunks:
        return _dcp_spans(t, item.dtype)
    span = _raw_span(t, item.dtype, t.offset, t.numel) if t.is_contiguous else None
    return None if span is None else [span]


def _record_spans(record: _Record) -> list[Span] | None:
    item = record.items[0]
    if record.shared:
        span = _raw_span(item.tensor, record.dtype, record.first, record.count)
        return None if span is None else [span]
    return _item_spans(item)


def _dcp_spans(tensor: TensorInfo, target: str) -> list[Span] | None:
    """A DCP tensor sharded by whole rows (FSDP, or not sharded at all; a 0-d one is its one
    chunk): its chunks' records in row order are its bytes, so they can be copied as they are."""
    from ckpt_viewer.core.listing.readers.dcp import chunk_tensor

    if target != tensor.dtype or not tensor.numel:
        return None
    spans: list[Span] = []
    rank, rows = len(tensor.shape), 0
    for offsets, sizes, span in sorted(tensor.chunks, key=lambda c: tuple(c[0])):
        if (
            len(sizes) != rank
            or tuple(offsets) != (rows,)[:rank] + (0,) * (rank - 1)
            or tuple(sizes[1:]) != tuple(tensor.shape[1:])
        ):
            return None
        chunk = chunk_tensor(span)
        if chunk.dtype != tensor.dtype or tuple(chunk.shape) != tuple(sizes):
            return None
        if chunk.numel:
            raw = (
                _raw_span(chunk, target, chunk.offset, chunk.numel) if chunk.is_contiguous else None
            )
            if raw is None:
                return None
            spans.append(raw)
        rows += sizes[0] if rank else 1
    return spans if rows == (tensor.shape[0] if rank else 1) else None


class Writeback:
    """Starts the disk writing a file that is written front to back (Linux's
    sync_file_range, on a thread of its own so a busy disk holds up neither the copy nor the
    checksums): in whole WRITEBACK_WINDOW windows of the file, in order, each once the bytes
    before its end are written. Windows of the file rather than of each record: a small
    record is then no write of its own, and no page is written twice where records meet.
    Used as a context manager, which waits for the starts before the file is closed."""

    def __init__(self, fd: int):
        self.fd, self.started = fd, 0
        self.pool = ThreadPoolExecutor(1)

    def written(self, end: int) -> None:
        """The file's bytes before `end` are written."""
        while end - self.started >= WRITEBACK_WINDOW:
            self.pool.submit(start_writeback, self.fd, self.started, WRITEBACK_WINDOW)
            self.started += WRITEBACK_WINDOW

    def __enter__(self) -> Writeback:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        self.pool.shutdown(wait=True, cancel_futures=kind is not None)


class Sources:
    """The files a write copies from, each opened once for the whole write (not once per
    record: a DCP folder's thousand chunks lie in a few files) and closed at its end."""

    def __init__(self) -> None:
        self.stack = contextlib.ExitStack()
        self.files: dict[str, remote.SizedFile] = {}

    def get(self, path: str) -> remote.SizedFile:
        if path not in self.files:
            self.files[path] = remote.open_source(path)
            self.stack.callback(self.files[path].close)
        return self.files[path]

    def __enter__(self) -> Sources:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.close()


@dataclass
class RunningCrc:
    """The CRC-32 of the bytes copied so far: the last step's pieces may still be computing
    on the pool while the next step is copied."""

    value: int = 0
    pending: deque[list[CrcPiece]] = field(default_factory=deque)

    def add(self, pieces: list[CrcPiece]) -> None:
        self.pending.append(pieces)
        while len(self.pending) > 1:  # at most a step behind the copy
            self.value = crc_joined(self.value, self.pending.popleft())

    def ready(self) -> bool:
        """Every piece computed: result() would not wait."""
        return all(f is None or f.done() for pieces in self.pending for f, _, _ in pieces)

    def result(self) -> int:
        while self.pending:
            self.value = crc_joined(self.value, self.pending.popleft())
        return self.value


def _copy_spans(
    spans: list[Span],
    out: IO[bytes],
    cancelled: Callable[[], bool],
    writeback: Writeback,
    sources: Sources,
    crc: RunningCrc | None = None,
    pool: ThreadPoolExecutor | None = None,
) -> int:
    """Copies the spans one after the other at out's position, adding the CRC-32 of the
    bytes written to `crc` when given; returns where they begin."""
    out.flush()
    start = out.tell()
    for span in spans:
        _copy_span(span, out, cancelled, writeback, sources, crc, pool)
    return start


def _copy_span(
    span: Span,
    out: IO[bytes],
    cancelled: Callable[[], bool],
    writeback: Writeback,
    sources: Sources,
    crc: RunningCrc | None = None,
    pool: ThreadPoolExecutor | None = None,
) -> None:
    """Copies the span's bytes to the buffered file `out` (open for reading too) at its
    position, by os.copy_file_range (no trip through user space) where the kernel can, else
    from mapped pages, telling `writeback` as each step is written; adds to `crc` the
    CRC-32 of each step computed on the written pages of `out` as the copy has just put them
    into the page cache (the bytes the record holds, not those of the source), on the
    `pool`'s threads while the next step is copied when one is given."""
    reader, first, nbytes = span
    assert reader.path is not None  # a span is of a file (_raw_span)
    source_start = reader.offset + first
    unit = np.dtype("u1")
    out.flush()
    position, done = out.tell(), 0
    kernel = hasattr(os, "copy_file_range")
    source = sources.get(reader.path)  # a local, regular file (_raw_span)
    if source.size < source_start + nbytes:
        raise reader._ended()
    while done < nbytes:
        step = min(COPY_CHUNK * 4, nbytes - done)
        if kernel:
            try:
                copied = _kernel_copy(
                    source.fileno(), out.fileno(), source_start + done, position + done, step
                )
            except OSError:  # another file system, an old kernel: plain writes
                kernel = False
                copied = 0
            if kernel and copied != step:
                raise reader._ended()
        if not kernel:
            view, at = reader.mapped(first + done, step, unit).data, position + done
            while len(view):
                written = os.pwrite(out.fileno(), view, at)
                view, at = view[written:], at + written
            del view
        writeback.written(position + done + step)
        if crc is not None:
            crc.add(_written_crc_pieces(pool, out.fileno(), position + done, step))
        done += step
        if cancelled():
            raise Cancelled()
    out.seek(position + nbytes)


def _written_crc_pieces(
    pool: ThreadPoolExecutor | None, fd: int, at: int, count: int
) -> list[CrcPiece]:
    """The CRC-32 of count bytes of the file from `at` as they lie in the page cache, cut in
    CRC_WORKERS pieces computed on the pool (each mapped and unmapped there too, so the
    copying thread spends nothing on a large step's pages)."""
    if pool is None:
        return [(None, _written_crc(fd, at, count), count)]
    if count < CRC_SPLIT:  # a small record's too: the copy goes on meanwhile
        return [(pool.submit(_written_crc, fd, at, count), 0, count)]
    step = -(-count // CRC_WORKERS)
    return [
        (pool.submit(_written_crc, fd, at + k, min(step, count - k)), 0, min(step, count - k))
        for k in range(0, count, step)
    ]


def _written_crc(fd: int, at: int, count: int) -> int:
    aligned = at - at % mmap.ALLOCATIONGRANULARITY
    # not MAP_POPULATE: CPython holds the GIL through mmap(), which would stall the copying
    # thread while the pages are mapped; faulted in by the CRC-32, they are not
    pages = mmap.mmap(fd, at + count - aligned, offset=aligned, access=mmap.ACCESS_READ)
    with pages, memoryview(pages) as view:
        return crc32(view[at - aligned :])


def _kernel_copy(source: int, target: int, source_at: int, target_at: int, count: int) -> int:
    done = 0
    while done < count:
        copied = os.copy_file_range(
            source, target, count - done, source_at + done, target_at + done
        )
        if copied == 0:
            break
        done += copied
    return done


def _record_bytes(record: _Record, device: str) -> Iterator[np.ndarray]:
    item = record.items[0]
    if record.shared:
        yield from _pieces(item.tensor, record.first, record.count, record.dtype, device)
    else:
        yield from _dense_bytes(item.tensor, record.dtype, device)


# --- the .pth writer ------------------------------------------------------------------------


def _data_pkl(records: list[_Record], where: str) -> bytes:
    entries, parts = [], quantizer_entries(records)
    for record in records:
        if record.owner is not None:
            continue
        for item in record.items:
            t = item.tensor
            offset, stride = geometry(t, record)
            entries.append(
                TensorEntry(
                    item.key,
                    record.name,
                    record.dtype,
                    record.count,
                    offset,
                    tuple(t.shape),
                    stride,
                    quantizer=quantizer_params(t, parts.get(id(t))),
                )
            )
    return state_dict_pickle(entries, where)


def _aligned_info(zf: zipfile.ZipFile, name: str, zip64: bool) -> zipfile.ZipInfo:
    """A ZipInfo whose padding puts the record's first byte on a 64-byte boundary."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    header = 30 + len(name.encode()) + (20 if zip64 else 0)
    assert zf.fp is not None  # the archive is open for writing
    offset = zf.fp.tell() + header + 4
    pad = (-offset) % ALIGNMENT
    info.extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad  # the "FB" id torch uses
    return info


def _write_pth(
    path: str,
    records: list[_Record],
    where: str,
    device: str,
    cancelled: Callable[[], bool],
    copied: dict[str, tuple[int, int, int]] | None = None,
) -> Generator[int, None, None]:
    data_pkl = _data_pkl(records, where)
    return write_torch_archive(path, data_pkl, records, device, cancelled, copied)


def _ahead(
    pool: ThreadPoolExecutor, function: Callable[[Any], Any], items: Iterable[Any], depth: int = 32
) -> Iterator[Any]:
    """function(item) for each item, in order, computed up to `depth` items ahead on the pool
    (at most `depth` calls are left running when the caller stops early)."""
    running: deque[Future[Any]] = deque()
    for item in items:
        running.append(pool.submit(function, item))
        if len(running) > depth:
            yield running.popleft().result()
    while running:
        yield running.popleft().result()


@dataclass
class _Copied:
    """A record copied file to file, its CRC-32 perhaps still being computed."""

    info: zipfile.ZipInfo
    start: int  # where its bytes begin
    nbytes: int
    crc: RunningCrc

    def settle(self, fp: IO[bytes], copied: dict[str, tuple[int, int, int]] | None) -> None:
        """Its CRC-32 into its local header (zipfile wrote 0 there) and into the central
        directory's entry, written from `info` when the archive closes; noted in `copied`."""
        value = self.crc.result()
        self.info.CRC = value
        fp.flush()  # zipfile's own header write is in the file before this one
        os.pwrite(fp.fileno(), struct.pack("<I", value), self.info.header_offset + 14)
        if copied is not None:
            copied[self.info.filename] = (self.start, self.nbytes, value)


def write_torch_archive(
    path: str,
    data_pkl: bytes,
    records: list[_Record],
    device: str,
    cancelled: Callable[[], bool],
    copied: dict[str, tuple[int, int, int]] | None = None,
) -> Generator[int, None, None]:
    """The one torch zip archive writer (export, DCP consolidation and sanitize): data.pkl,
    byteorder, the storage records 64-byte aligned as torch.save puts them, version. A record
    whose bytes are stored as they are to be written is copied file to file, and noted in
    `copied` (name: where its bytes begin, byte count, their CRC-32 as written); yields each
    record's byte count once it is written."""
    archive = "archive"
    stamp = (1980, 1, 1, 0, 0, 0)
    with (
        zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf,
        ThreadPoolExecutor(CRC_WORKERS) as pool,
        ThreadPoolExecutor(1) as planner,
    ):
        assert zf.fp is not None  # the archive is open for writing
        fp = zf.fp
        zf.writestr(zipfile.ZipInfo(f"{archive}/data.pkl", stamp), data_pkl)
        zf.writestr(zipfile.ZipInfo(f"{archive}/byteorder", stamp), b"little")
        # copied records whose CRC-32 is still being computed: each goes into its record's
        # header once computed, so the copy waits for a checksum only when CRC_LAG behind
        behind: deque[_Copied] = deque()
        lag = 0  # their bytes
        with Writeback(fp.fileno()) as writeback, Sources() as sources:
            # where each record's bytes lie (a DCP chunk's own small archive parsed, a
            # record's local header read) is found ahead on the planner while the kernel copies
            for record, spans in zip(records, _ahead(planner, _record_spans, records)):
                nbytes = record.count * DTYPE_SIZES[record.dtype]
                zip64 = nbytes > 0x7FFFFFFF
                info = _aligned_info(zf, f"{archive}/data/{record.name}", zip64)
                now: _Copied | None = None
                with zf.open(info, "w", force_zip64=zip64) as out:
                    if spans is not None and hasattr(out, "_crc") and hasattr(out, "_file_size"):
                        # zipfile's record writer puts the size into the header when it closes
                        crc = RunningCrc()
                        start = _copy_spans(spans, fp, cancelled, writeback, sources, crc, pool)
                        out._crc, out._file_size = 0, nbytes
                        now = _Copied(info, start, nbytes, crc)
                    else:
                        for piece in _record_bytes(record, device):
                            out.write(piece.data)
                            fp.flush()
                            writeback.written(fp.tell())
                            if cancelled():
                                raise Cancelled()
                if now is not None:
                    behind.append(now)
                    lag += now.nbytes
                while behind and (behind[0].crc.ready() or lag > CRC_LAG):
                    lag -= behind[0].nbytes
                    behind.popleft().settle(fp, copied)
                yield nbytes
            while behind:
                behind.popleft().settle(fp, copied)
        zf.writestr(zipfile.ZipInfo(f"{archive}/version", stamp), b"3\n")


def written_payload(items: list[Item], fmt: str) -> tuple[list[Item], dict[str, str], int]:
    """(the tensors written, {tied name: the name written}, bytes of tensor data) of an export
    of `items` in `fmt`, as the writers lay them out: a .pth writes a shared storage once, a
    .safetensors writes tied names once and notes the others in its metadata."""
    aliases: dict[str, str] = {}
    if fmt == "safetensors":
        items, aliases = drop_aliases(items)
        return items, aliases, sum(span_bytes(i.dtype, i.tensor.numel) for i in items)
    records = _records(items, fmt)  # a packed record counts bytes already
    return (
        items,
        aliases,
        sum(r.count if r.dtype in PACKED_VALUES else span_bytes(r.dtype, r.count) for r in records),
    )


# --- the .safetensors writer -------------------------------------------------------------------


def _alias_key(item: Item) -> tuple[Any, ...]:
    t = item.tensor
    return (
        id(t.storage),
        t.offset,
        tuple(t.shape),
        tuple(t.stride),
        t.dtype,
        item.dtype,
        t.neg,
        t.conj,
    )


def drop_aliases(items: list[Item]) -> tuple[list[Item], dict[str, str]]:
    """(items to write, {dropped name: kept name}): names that are the very same tensor (tied
    weights) are written once, as safetensors cannot share bytes between names. As in
    safetensors.torch.save_model the dropped names go into the metadata; the name kept is
    the first in file order (the module that owns a tied weight usually comes first, e.g.
    GPT-2's transformer.wte.weight before lm_head.weight, which transformers re-ties).
    Other views of one storage (a row of a matrix...) are written as copies."""
    kept: list[Item] = []
    aliases: dict[str, str] = {}
    owner: dict[tuple[Any, ...], Item] = {}
    for item in items:
        if item.tensor.storage is None:
            kept.append(item)
            continue
        first = owner.setdefault(_alias_key(item), item)
        if first is item:
            kept.append(item)
        else:
            aliases[item.key] = first.key
    return kept, aliases


def _write_safetensors(
    path: str,
    items: list[Item],
    device: str,
    cancelled: Callable[[], bool],
    metadata: dict[str, str],
) -> Iterator[int]:
    header: dict[str, object] = {}
    offset = 0
    if metadata:
        header["__metadata__"] = metadata
    for item in items:
        nbytes = item.tensor.numel * DTYPE_SIZES[item.dtype]
        header[item.key] = {
            "dtype": TORCH_TO_SAFETENSORS[item.dtype],
            "shape": safetensors_shape(item.dtype, item.tensor.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((-len(text)) % 8)  # the data section starts 8-byte aligned
    with open(path, "r+b") as f, Writeback(f.fileno()) as writeback, Sources() as sources:
        f.write(struct.pack("<Q", len(text)) + text)
        for item in items:
            spans = _item_spans(item)
            if spans is not None:
                _copy_spans(spans, f, cancelled, writeback, sources)
            else:
                for piece in _dense_bytes(item.tensor, item.dtype, device):
                    f.write(piece.data)
                    f.flush()
                    writeback.written(f.tell())
                    if cancelled():
                        raise Cancelled()
            yield item.tensor.numel * DTYPE_SIZES[item.dtype]


# --- verification and the public entry point -----------------------------------------------


def written_storages(tensors: Iterable[TensorInfo]) -> list[Storage]:
    """The storages of these tensors and of their per-channel quantizers, each once."""
    found = {}
    for t in tensors:
        parts = [t.quantizer[k] for k in ("scales", "zero_points") if k in t.quantizer]
        for storage in [t.storage] + [p.storage for p in parts if isinstance(p, TensorInfo)]:
            if storage is not None:
                found[id(storage)] = storage
    return list(found.values())


def _check_records(
    storages: Iterable[Storage], copied: dict[str, tuple[int, int, int]] | None = None
) -> None:
    """Each storage record read where torch's reader finds it (after its local header), as
    many bytes as torch reads (the persistent id's count x its storage type's element size,
    checked on opening) must be the bytes whose CRC-32 the archive recorded: a record
    written shorter or longer than its header says fails here. A record noted in `copied`
    (write_torch_archive) is not read again when it lies exactly where its bytes were written
    and checksummed, with that CRC-32 in its header, and the archive's parts do not overlap
    (nothing written later can have changed those bytes)."""
    unit = np.dtype("u1")
    storages = list(storages)
    if copied and storages:
        assert isinstance(storages[0].source, ZipMember)  # read back from the archive written
        _check_layout(storages[0].source)
    with ThreadPoolExecutor(CRC_WORKERS) as pool:
        for storage in storages:
            member = storage.source
            assert isinstance(member, ZipMember)  # read back from the archive just written
            reader, value = StorageReader(storage), 0
            if copied and member.compressed_size == storage.nbytes:
                if copied.get(member.name) == (reader.offset, storage.nbytes, member.crc):
                    continue
            try:
                for at in range(0, storage.nbytes, COPY_CHUNK * 4):
                    pages = reader.mapped(at, min(COPY_CHUNK * 4, storage.nbytes - at), unit)
                    value = crc_joined(value, crc_pieces(pool, pages.data))
            except CheckpointError:  # the file ends inside the record
                value = -1  # no CRC-32
            if value != member.crc:
                raise CheckpointError(
                    f"written storage record data/{storage.key} does not hold "
                    "the bytes its header describes"
                )


def _check_layout(member: ZipMember) -> None:
    """The records of the archive holding `member`, and its central directory, follow each
    other without overlapping."""
    with zipfile.ZipFile(member.path) as zf, remote.open_source(member.path) as f:
        records = sorted(
            (m.header_offset, data_offset(m, f) + m.compressed_size, m.name)
            for m in read_directory(member.path)
        )
        directory = zf.start_dir
    for (_, end, name), (header, _, _) in zip(records, records[1:] + [(directory, 0, "")]):
        if end > header:
            raise CheckpointError(
                f"written record {name} does not hold the bytes its header describes "
                "(the next part of the archive begins inside it)"
            )


def verify_written(
    path: str,
    fmt: str,
    items: list[Item],
    copied: dict[str, tuple[int, int, int]] | None = None,
) -> None:
    """Reopen what was written; every tensor's key, dtype, shape and size as intended; the
    records copied file to file (`copied`, write_torch_archive's notes) where they were
    written."""
    from ckpt_viewer.core.listing.open import open_checkpoint

    written = {key: t for key, t, _ in open_checkpoint(path).tensors()}
    if set(written) != {i.key for i in items}:
        raise CheckpointError("the written file does not hold the keys that were meant")
    for item in items:
        t = written[item.key]
        if (
            t.dtype != item.dtype
            or tuple(t.shape) != tuple(item.tensor.shape)
            or t.numel * DTYPE_SIZES[t.dtype] != item.tensor.numel * DTYPE_SIZES[item.dtype]
        ):
            raise CheckpointError(f"written tensor {item.key!r} differs from what was meant")
        if quantizer_params(t) != quantizer_params(item.tensor):
            raise CheckpointError(f"written tensor {item.key!r} is quantized otherwise than meant")
    if fmt == "pth":
        _check_records(written_storages(written.values()), copied)
    if fmt == "safetensors":
        from safetensors import safe_open

        with safe_open(path, framework="numpy") as f:
            if set(f.keys()) != set(written):
                raise CheckpointError("the safetensors library reads other keys than were written")


def export(
    checkpoint: Checkpoint,
    plan: ExportPlan,
    destination: str,
    force: bool = False,
    verify: bool = True,
    cancelled: Callable[[], bool] = lambda: False,
) -> Generator[float, None, ExportSummary]:
    """Generator: yields progress in [0, 1]; returns ExportSummary. Nothing is left at the
    destination unless the whole file was written and checked."""
    fmt = plan.format
    if fmt not in ("pth", "safetensors"):
        raise CheckpointError("format must be pth or safetensors")
    where = location(plan.device)
    items = plan_items(checkpoint, plan)
    if not items:
        raise CheckpointError("nothing to export: no tensor matches the selection")
    _check_exportable(items, fmt)
    destination = os.path.abspath(destination)
    folder = destination if plan.max_shard_size else os.path.dirname(destination)
    aliases: dict[str, str] = {}
    if fmt == "safetensors":
        items, aliases = drop_aliases(items)
    units: list[Any] = _records(items, fmt) if fmt == "pth" else items  # records or items
    shards = _shards(units, fmt, plan.max_shard_size) if plan.max_shard_size else [units]
    names = (
        _shard_names(fmt, len(shards)) if plan.max_shard_size else [os.path.basename(destination)]
    )
    index_path = None
    if plan.max_shard_size and len(shards) > 1:
        index_path = os.path.join(folder, INDEX_NAMES[fmt])
    stale = []
    if plan.max_shard_size:  # the destination is a folder, made if needed
        stale = check_folder(
            checkpoint, destination, force, names + ([INDEX_NAMES[fmt]] if index_path else [])
        )
        os.makedirs(destination, exist_ok=True)
    else:
        check_file(checkpoint, destination, force)
    targets = [os.path.join(folder, name) for name in names] + ([index_path] if index_path else [])
    total = sum(i.tensor.numel * DTYPE_SIZES[i.dtype] for i in items) or 1
    with Staged(destination, "export") as staged:
        written = 0
        for target, shard in zip(targets, shards):
            temp = staged.temp(target)
            steps: Iterator[int]
            copied: dict[str, tuple[int, int, int]] = {}
            if fmt == "pth":
                steps = _write_pth(temp, shard, where, plan.device, cancelled, copied)
            else:
                metadata = {**aliases, "format": "pt"}
                steps = _write_safetensors(temp, shard, plan.device, cancelled, metadata)
            for nbytes in steps:
                written += nbytes
                yield min(written / total, 1.0) * (0.95 if verify else 1.0)
            staged.sync(
                temp,
                functools.partial(verify_written, temp, fmt, _shard_items(shard, fmt), copied)
                if verify
                else None,
            )
        if index_path:
            with open(staged.temp(index_path), "w") as f:
                json.dump(_index(fmt, names, shards, aliases), f, indent=2)
        if verify:
            yield 1.0
        staged.commit()
        for name in stale:  # the rest of the earlier export it replaces
            remove_quietly(os.path.join(folder, name))
    size = sum(os.path.getsize(t) for t in targets)
    return ExportSummary(destination, len(items), size, fmt, where, verify, files=len(shards))


SIZE_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_size(text: str) -> int:
    """'2GB' -> 2_000_000_000, '500MiB' -> 524_288_000 (units as transformers reads them)."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).upper() if match else ""
    if not match or unit not in SIZE_UNITS or float(match.group(1)) <= 0:
        raise CheckpointError(f"not a size: {text!r:.40} (use e.g. 2GB, 500MB, 50KB)")
    return max(1, int(float(match.group(1)) * SIZE_UNITS[unit]))


def _unit_bytes(unit: _Record | Item, fmt: str) -> int:
    if isinstance(unit, _Record):  # the .pth writer's unit
        return unit.count * DTYPE_SIZES[unit.dtype]
    return unit.tensor.numel * DTYPE_SIZES[unit.dtype]


def _shards(units: Sequence[_Record | Item], fmt: str, limit: int) -> list[list[Any]]:
    """Units (records or items) in order, a new shard whenever the next would pass the limit;
    one larger than the limit gets a shard of its own (as transformers does)."""
    shards: list[list[Any]] = [[]]
    size = 0
    for unit in units:
        nbytes = _unit_bytes(unit, fmt)
        if shards[-1] and size + nbytes > limit and getattr(unit, "owner", None) is None:
            shards.append([])
            size = 0
        shards[-1].append(unit)
        size += nbytes
    return shards


def _shard_names(fmt: str, count: int) -> list[str]:
    stem, ext = SHARD_STEMS[fmt]
    if count == 1:
        return [f"{stem}.{ext}"]
    return [f"{stem}-{n:05d}-of-{count:05d}.{ext}" for n in range(1, count + 1)]


def _shard_items(shard: list[Any], fmt: str) -> list[Item]:
    return (
        [i for record in shard if record.owner is None for i in record.items]
        if fmt == "pth"
        else shard
    )


def _index(
    fmt: str, names: list[str], shards: list[list[Any]], aliases: dict[str, str]
) -> dict[str, Any]:
    weight_map = {}
    for name, shard in zip(names, shards):
        for item in _shard_items(shard, fmt):
            weight_map[item.key] = name
    total = sum(_unit_bytes(unit, fmt) for shard in shards for unit in shard)
    return {"metadata": {"total_size": total}, "weight_map": weight_map}
