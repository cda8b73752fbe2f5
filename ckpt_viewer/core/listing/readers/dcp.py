"""torch.distributed.checkpoint directories.

torch's FileSystemReader.read_metadata() runs a plain `pickle.load` on `.metadata`, which would
execute whatever the file names; we parse the same pickle with our restricted unpickler and
read torch's metadata dataclasses (Metadata, TensorStorageMetadata, ChunkStorageMetadata,
MetadataIndex, _StorageInfo) as the inert records they become."""

from __future__ import annotations

import io
import json
import math
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from ckpt_viewer.core import CheckpointError, StructureError
from ckpt_viewer.core.listing import remote
from ckpt_viewer.core.listing.model import (
    DTYPE_SIZES,
    Checkpoint,
    FileSpan,
    Node,
    Storage,
    TensorInfo,
)
from ckpt_viewer.core.listing.readers import (
    MAX_PICKLE_BYTES,
    is_torch_save,
    safetensors,
    torch_load_pickles,
)
from ckpt_viewer.core.listing.safe_pickle import PickleReport, Placeholder, merge_report, safe_load
from ckpt_viewer.core.listing.tree import SCALAR_TYPES

MAX_METADATA_BYTES = 512 * 1024 * 1024
MAX_INLINE_OBJECT = 1024 * 1024  # small pickled non-tensor items are decoded for display
MAX_OVERLAP_CHECKS = 1_000_000  # chunk pairs compared per folder: a bound for hostile metadata
HF_SHARDING_KEY = "DCP_SHARDING_INFO"  # torch/distributed/checkpoint/_hf_utils.py

# (offsets, sizes, span) of one stored chunk of a tensor
Chunk = tuple[tuple[int, ...], tuple[int, ...], FileSpan]
# (fqn, chunk offsets or None) -> the span, or the error looking it up raises
Spans = dict[tuple[Any, ...], FileSpan | CheckpointError]


@dataclass(eq=False)
class RawChunk(FileSpan):
    """A chunk stored as a raw safetensors tensor (HuggingFaceStorageWriter), not as a
    torch.save archive: the span covers its bytes, `tensor` describes them."""

    tensor: TensorInfo


def _fields(obj: Any, what: str) -> dict[Any, Any]:
    if not isinstance(obj, Placeholder):
        raise CheckpointError(f"DCP metadata: {what} is not a record")
    return obj.fields


def _tensor_dtype(properties: Any) -> str:
    state = properties.state if isinstance(properties, Placeholder) else None
    dtype = (
        state[0]
        if isinstance(state, tuple) and state
        else _fields(properties, "properties").get("dtype")
    )
    if str(dtype) not in DTYPE_SIZES:
        raise CheckpointError(f"DCP metadata: unknown tensor dtype {dtype!r:.40}")
    return str(dtype)


def read(folder: str) -> Checkpoint:
    meta_path = remote.join(folder, ".metadata")
    if remote.getsize(meta_path) > MAX_METADATA_BYTES:
        raise CheckpointError("DCP .metadata is larger than 512 MB")
    with remote.open_source(meta_path) as f:
        report = PickleReport()
        metadata, _ = safe_load(f.read(), report=report)
    fields = _fields(metadata, "Metadata")
    entries = fields.get("state_dict_metadata")
    storage_data = fields.get("storage_data") or {}
    if not isinstance(entries, dict) or not isinstance(storage_data, dict):
        raise CheckpointError("DCP metadata has no state_dict_metadata")
    spans = _storage_spans(folder, storage_data, set(entries))
    data_files = {span.path for span in spans.values() if isinstance(span, FileSpan)} | {meta_path}
    tensors: dict[str, TensorInfo] = {}
    others: dict[str, object] = {}
    items: list[tuple[str, PickleReport]] = []
    budget = [MAX_OVERLAP_CHECKS]
    warnings: list[str] = []
    for fqn, entry in entries.items():
        if not isinstance(fqn, str):
            raise CheckpointError("DCP metadata has a non-text key")
        if type(entry).__name__ == "TensorStorageMetadata":
            tensors[fqn] = _tensor(fqn, _fields(entry, fqn), spans, budget)
        else:
            others[fqn] = _bytes_item(fqn, _span(spans, (fqn, None)), items, warnings)
    root = safetensors.flat_tree(tensors)
    for fqn, value in others.items():
        kind = "scalar" if isinstance(value, SCALAR_TYPES) else "opaque"
        root.children.append(
            Node(
                name=fqn,
                kind=kind,
                key=fqn,
                value=value,
                type_name=type(value).__name__ if kind == "scalar" else "object",
            )
        )
    if remote.is_remote(folder):  # the files it names, not a listing of the folder
        total = sum(remote.getsize(path) for path in data_files)
    else:
        total = sum(
            remote.getsize(remote.join(folder, n))
            for n in remote.files(folder)
            if remote.isfile(remote.join(folder, n))
        )
    version = fields.get("version")
    # every global is reported and triaged (DCP's own dataclasses are `data`, by exact name);
    # torch's DCP reader unpickles .metadata with plain pickle and each bytes item with
    # torch.load(weights_only=False): weights_only and its refusals do not apply
    checkpoint = Checkpoint(
        path=folder,
        format="dcp",
        file_bytes=total,
        root=root,
        unsafe_globals=[],
        warnings=warnings,
        metadata={"DCP version": version} if isinstance(version, str) else {},
    )
    merge_report(checkpoint, report)
    for fqn, item_report in items:
        merge_report(checkpoint, item_report, fqn)
    return checkpoint


def hf_shards(folder: str) -> list[str]:
    """The files torch's HuggingFaceStorageReader reads as one checkpoint (every *.safetensors
    file of the folder), when one of them carries DCP sharding info in its header: a folder
    HuggingFaceStorageWriter(save_distributed=True) wrote, with no .metadata and no index."""
    names = sorted(n for n in remote.listdir(folder) if n.endswith(".safetensors"))
    for name in names:
        try:
            _, metadata, _ = safetensors.tensor_infos(remote.join(folder, name))
        except (CheckpointError, OSError):
            continue
        if HF_SHARDING_KEY in metadata:
            return names
    return []


def read_hf(folder: str) -> Checkpoint:
    """A Hugging Face storage DCP folder, as HuggingFaceStorageReader.read_metadata reads it:
    each safetensors tensor is a chunk at the `saved_offsets` its file's DCP_SHARDING_INFO
    gives (zeros without it), and a tensor's size reaches the furthest chunk."""
    pieces: dict[str, list[tuple[tuple[int, ...], tuple[int, ...], RawChunk]]] = {}
    warnings: list[str] = []
    total = 0
    for name in hf_shards(folder):
        path = remote.join(folder, name)
        total += remote.getsize(path)
        tensors, metadata, file_warnings = safetensors.tensor_infos(path)
        warnings += [f"{name}: {w}" for w in file_warnings]
        sharding = metadata.get(HF_SHARDING_KEY) or None  # torch ignores an empty one
        try:
            sharding = json.loads(sharding) if isinstance(sharding, str) else sharding
        except (ValueError, RecursionError):
            sharding = "not JSON"
        if sharding is not None and not isinstance(sharding, dict):
            raise StructureError(f"{name}: its {HF_SHARDING_KEY} is not a JSON object", record=name)
        for key, tensor in tensors.items():
            entry = (sharding or {}).get(key)
            offsets = (
                entry.get("saved_offsets")
                if isinstance(entry, dict)
                else None
                if sharding
                else [0] * len(tensor.shape)
            )
            if (
                not isinstance(offsets, list)
                or len(offsets) != len(tensor.shape)
                or not all(type(o) is int and o >= 0 for o in offsets)
            ):
                raise StructureError(
                    f"{name}: its {HF_SHARDING_KEY} gives tensor {key!r} no "
                    "saved_offsets of its rank",
                    key,
                    name,
                )
            # safetensors.tensor_infos gives every tensor a storage spanning the file
            source = cast(FileSpan, cast(Storage, tensor.storage).source)
            span = RawChunk(source.path, source.offset, source.nbytes, tensor)
            pieces.setdefault(key, []).append((tuple(offsets), tensor.shape, span))
    if not pieces:
        raise CheckpointError("folder holds no safetensors file with DCP sharding info")
    tensors, budget = {}, [MAX_OVERLAP_CHECKS]
    for key, chunks in pieces.items():
        first = chunks[0][2].tensor
        for offsets, shape, span in chunks:
            if span.tensor.dtype != first.dtype or len(shape) != len(first.shape):
                raise StructureError(
                    f"DCP tensor {key!r}: its chunk at {list(offsets)} in "
                    f"{remote.basename(span.path)} is {span.tensor.dtype} {list(shape)}, another "
                    f"{first.dtype} {list(first.shape)}",
                    key,
                    remote.basename(span.path),
                )
        size = tuple(max(o[d] + s[d] for o, s, _ in chunks) for d in range(len(first.shape)))
        _check_tiling(key, size, chunks, budget)
        tensors[key] = TensorInfo(dtype=first.dtype, shape=size, chunks=chunks)
    return Checkpoint(
        path=folder,
        format="dcp",
        file_bytes=total,
        root=safetensors.flat_tree(tensors),
        warnings=warnings,
        metadata={"DCP storage": "Hugging Face safetensors shards"},
    )


def _storage_spans(folder: str, storage_data: dict[Any, Any], used: set[Any]) -> Spans:
    """{(fqn, chunk offset tuple or None): FileSpan, or the CheckpointError that span raises
    when it is looked up}: torch's reader reads only the spans its items ask for, so a bad span
    no item uses does not make the folder unreadable (`_span` raises for the ones used)."""
    sizes: dict[str, int] = {}
    spans: Spans = {}
    for index, info in storage_data.items():
        index_fields, info_fields = _fields(index, "MetadataIndex"), _fields(info, "_StorageInfo")
        fqn, chunk = index_fields.get("fqn"), index_fields.get("offset")
        if fqn not in used:
            continue
        key = (fqn, tuple(chunk) if isinstance(chunk, (tuple, list)) else None)
        try:
            spans[key] = _checked_span(folder, fqn, info_fields, sizes)
        except CheckpointError as exc:
            spans[key] = exc
    return spans


def _span(spans: Spans, key: tuple[Any, ...]) -> FileSpan | None:
    span = spans.get(key)
    if isinstance(span, CheckpointError):
        raise span
    return span


def _checked_span(
    folder: str, fqn: Any, info_fields: dict[Any, Any], sizes: dict[str, int]
) -> FileSpan:
    name, offset, length = (
        info_fields.get("relative_path"),
        info_fields.get("offset"),
        info_fields.get("length"),
    )
    if not isinstance(name, str) or os.path.basename(name) != name or name in ("", ".", ".."):
        raise CheckpointError(f"DCP metadata names a data file outside its folder: {name!r:.80}")
    if type(offset) is not int or type(length) is not int or offset < 0 or length < 0:
        raise CheckpointError(f"DCP metadata has a malformed span in {name}")
    if name not in sizes:
        path = remote.join(folder, name)
        remote.check_regular(path)
        if not remote.isfile(path):
            raise CheckpointError(f"DCP data file {name} is missing")
        sizes[name] = remote.getsize(path)
    if offset + length > sizes[name]:
        raise CheckpointError(
            f"DCP data file {name} is shorter than its metadata says (truncated?)"
        )
    transforms = info_fields.get("transform_descriptors")
    if transforms:
        # torch's reader pipes the bytes through each named extension (zstd is the one it
        # knows); raw spans of such data are not a torch.save archive
        names = [
            t.partition("/")[0] if isinstance(t, str) else repr(t)[:40]
            for t in (transforms if isinstance(transforms, (list, tuple)) else [transforms])
        ]
        unknown = [n for n in names if n != "stream.zstd"]
        why = (
            (f"through transform {unknown[0]!r:.60}, which torch's reader does not know either")
            if unknown
            else "zstd-compressed, which is not read here"
        )
        raise StructureError(
            f"DCP data of {fqn!r:.200} in {name} is stored {why}",
            fqn if isinstance(fqn, str) else "",
            name,
        )
    return FileSpan(remote.join(folder, name), offset, length)


def _tensor(fqn: str, entry: dict[Any, Any], spans: Spans, budget: list[int]) -> TensorInfo:
    size = entry.get("size")
    if not isinstance(size, tuple) or not all(type(d) is int and d >= 0 for d in size):
        raise CheckpointError(f"DCP tensor {fqn!r} has a malformed size")
    info = TensorInfo(dtype=_tensor_dtype(entry.get("properties")), shape=size)
    empty = not math.prod(size)  # torch's reader reads no chunk's data for an empty tensor
    chunks: list[Chunk] = []
    for chunk in entry.get("chunks") or []:
        chunk_fields = _fields(chunk, "ChunkStorageMetadata")
        offsets, sizes = (
            tuple(v) if isinstance(v, list) else v
            for v in (chunk_fields.get("offsets", ()), chunk_fields.get("sizes", ()))
        )
        if (
            not isinstance(offsets, tuple)
            or not isinstance(sizes, tuple)
            or not all(type(v) is int and v >= 0 for v in offsets + sizes)
        ):
            raise StructureError(
                f"DCP tensor {fqn!r} has a chunk with malformed offsets or sizes", fqn
            )
        if empty:
            continue
        span = _span(spans, (fqn, offsets))
        if span is None:
            raise StructureError(f"DCP tensor {fqn!r} has a chunk with no stored data", fqn)
        chunks.append((offsets, sizes, span))
    if empty:
        return info
    _check_tiling(fqn, size, chunks, budget)
    info.chunks = chunks
    return info


def _check_tiling(
    fqn: str, size: tuple[int, ...], chunks: Sequence[Chunk], budget: list[int]
) -> None:
    """The chunks must tile the tensor: each inside it, no two overlapping, none left out —
    what torch's save planner checks before it writes. Its reader checks none of it: a chunk
    past the edge is clipped, overlapping chunks are copied in an order it does not define,
    and a hole is left as whatever memory held (dcp_to_torch_save) or as the target's old
    values (dcp.load)."""
    for offsets, sizes, span in chunks:
        where = f"DCP tensor {fqn!r}: its chunk at {list(offsets)}"
        record = f"{remote.basename(span.path)} at offset {span.offset:,}"
        if len(offsets) != len(size) or len(sizes) != len(size):
            raise StructureError(
                f"{where} has {len(offsets)} offsets and {len(sizes)} sizes for "
                f"{len(size)} dimensions",
                fqn,
                record,
            )
        if any(o + n > d for o, n, d in zip(offsets, sizes, size)):
            raise StructureError(
                f"{where} of size {list(sizes)} reaches past the tensor's size {list(size)}",
                fqn,
                record,
            )
    # a sweep along the dimension the chunks split most: only chunks that span the sweep
    # position can overlap, and in a real layout they are few
    dim = max(range(len(size)), key=lambda d: len({c[0][d] for c in chunks}), default=None)
    solid = sorted(
        (c for c in chunks if math.prod(c[1])), key=lambda c: c[0][dim] if dim is not None else 0
    )
    active: list[tuple[Any, ...]] = []
    for offsets, sizes, span in solid:
        start = offsets[dim] if dim is not None else 0
        active = [c for c in active if (c[0][dim] + c[1][dim] if dim is not None else 1) > start]
        for other, other_sizes, _ in active:
            if all(
                a < b + m and b < a + n for a, n, b, m in zip(offsets, sizes, other, other_sizes)
            ):
                raise StructureError(
                    f"DCP tensor {fqn!r} is ambiguous: its chunks at {list(other)} and "
                    f"{list(offsets)} overlap, and torch's reader loads whichever it copies "
                    "last, in an order it does not define",
                    fqn,
                    f"{remote.basename(span.path)} at offset {span.offset:,}",
                )
        budget[0] -= len(active) + 1
        if budget[0] < 0:
            raise StructureError(
                f"DCP tensor {fqn!r} has too many interleaved chunks to check "
                "that they do not overlap",
                fqn,
            )
        active.append((offsets, sizes, span))
    if sum(math.prod(s) for _, s, _ in solid) != math.prod(size):
        raise StructureError(
            f"DCP tensor {fqn!r} has holes: its chunks cover "
            f"{sum(math.prod(s) for _, s, _ in solid):,} of its "
            f"{math.prod(size):,} elements, and torch's reader leaves the rest "
            "as whatever memory held",
            fqn,
        )


def _bytes_item(
    fqn: str, span: FileSpan | None, items: list[tuple[str, PickleReport]], warnings: list[str]
) -> object:
    """A non-tensor item (step, epoch, bytes, any object): torch's reader hands its bytes to
    torch.load(weights_only=False), so every pickle in them goes through our unpickler; what
    each names is appended to `items` as (fqn, PickleReport)."""
    if span is None:
        raise StructureError(
            f"DCP item {fqn!r} has no stored data; torch's reader refuses the folder", fqn
        )
    if span.nbytes > MAX_PICKLE_BYTES:
        warnings.append(
            f"{fqn}: a bytes item of {span.nbytes:,} bytes, which torch.load "
            "unpickles with weights_only=False; too large to check here"
        )
        return "(object)"
    with remote.open_source(span.path) as f:
        f.seek(span.offset)
        raw = f.read(span.nbytes)
    report = PickleReport()
    items.append((fqn, report))
    try:
        value = torch_load_pickles(raw, report)
    except CheckpointError as exc:
        warnings.append(
            f"{fqn}: its bytes item, which torch.load unpickles with "
            f"weights_only=False, cannot be decoded ({exc})"
        )
        return "(object)"
    if not is_torch_save(raw):
        warnings.append(
            f"{fqn}: its bytes item is not a torch.save archive: torch's reader "
            "unpickles it, then refuses the folder (invalid magic number)"
        )
    return value if isinstance(value, SCALAR_TYPES) else "(object)"


class _Window(io.RawIOBase):
    """Bytes [start, start+length) of an open file, as a file of their own."""

    def __init__(self, f: remote.SizedFile, start: int, length: int) -> None:
        self.f, self.start, self.length, self.position = f, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, position: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.position, 2: self.length}[whence]
        self.position = max(0, base + position)
        return self.position

    def readinto(self, buffer: Any) -> int:
        count = min(len(buffer), self.length - self.position)
        if count <= 0:
            return 0
        self.f.seek(self.start + self.position)
        data = self.f.read(count)
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)


def chunk_tensor(span: FileSpan) -> TensorInfo:
    """The tensor one DCP chunk holds (the chunk is a small torch.save archive at `span`), its
    storage pointing at the raw record inside the data file: nothing is read but data.pkl."""
    from ckpt_viewer.core.listing.safe_pickle import dtype_of_storage

    if isinstance(span, RawChunk):
        return span.tensor
    try:
        with remote.open_source(span.path) as f:
            window = _Window(f, span.offset, span.nbytes)
            with zipfile.ZipFile(window) as zf:
                infos = zf.infolist()
                prefix = infos[0].filename.split("/")[0] + "/" if infos else ""
                records = {i.filename[len(prefix) :]: i for i in infos}
                pickle_info = records.get("data.pkl")
                if pickle_info is None or pickle_info.file_size > MAX_INLINE_OBJECT:
                    raise CheckpointError("DCP chunk has no (small) data.pkl")
                data = zf.read(pickle_info)
                byteorder = (
                    zf.read(records["byteorder"]).decode() if "byteorder" in records else "little"
                )

                def storage_factory(pid: Any) -> Storage:
                    from ckpt_viewer.core.listing.model import Storage
                    from ckpt_viewer.core.listing.readers import storage_pid

                    storage_type, key, location, numel = storage_pid(pid)
                    info = records.get(f"data/{key}")
                    dtype = dtype_of_storage(storage_type)
                    if (
                        info is None
                        or info.compress_type != zipfile.ZIP_STORED
                        or info.file_size != numel * DTYPE_SIZES[dtype]
                    ):
                        raise CheckpointError(
                            f"DCP chunk record data/{key} is missing, "
                            "compressed or of the wrong size"
                        )
                    window.seek(info.header_offset)
                    local = window.read(30)
                    start = (
                        info.header_offset
                        + 30
                        + int.from_bytes(local[26:28], "little")
                        + int.from_bytes(local[28:30], "little")
                    )
                    if start + info.file_size > span.nbytes:
                        raise CheckpointError("DCP chunk record runs past its span")
                    return Storage(
                        str(key),
                        dtype,
                        numel,
                        location,
                        FileSpan(span.path, span.offset + start, info.file_size),
                        byteorder,
                    )

                tensor, _ = safe_load(data, storage_factory)
    except (zipfile.BadZipFile, KeyError, ValueError, UnicodeError) as exc:
        raise CheckpointError(f"DCP chunk of {span.path} cannot be read ({exc})") from None
    if not isinstance(tensor, TensorInfo) or tensor.storage is None or tensor.layout != "strided":
        raise CheckpointError(f"DCP chunk of {span.path} does not hold a plain tensor")
    if tensor.numel and (
        min(tensor.stride, default=0) < 0
        or tensor.element_span()[1] * DTYPE_SIZES[tensor.dtype] > tensor.storage.nbytes
    ):
        raise CheckpointError(f"DCP chunk of {span.path} reaches past its storage")
    return tensor


def stored_chunk(
    tensor: TensorInfo,
    offsets: tuple[int, ...],
    sizes: tuple[int, ...],
    span: FileSpan,
    key: str = "",
) -> TensorInfo:
    """The tensor a chunk stores, once it is known to be the one the metadata describes.
    torch's reader refuses a smaller one, but narrows a larger one to its first elements and
    casts another dtype without a word; torch's writer never writes either, nor a chunk
    stored as an expanded view (whose few stored elements would be read as many)."""
    chunk = chunk_tensor(span)
    where = (
        f"DCP tensor {key!r}: its chunk at {list(offsets)}"
        if key
        else f"DCP chunk at {list(offsets)}"
    )
    record = f"{remote.basename(span.path)} at offset {span.offset:,}"
    if chunk.dtype != tensor.dtype or tuple(chunk.shape) != tuple(sizes):
        raise StructureError(
            f"{where} in {record} stores {chunk.dtype} {list(chunk.shape)} where "
            f"the metadata says {tensor.dtype} {list(sizes)}",
            key,
            record,
        )
    if chunk.storage is not None and chunk.numel > chunk.storage.numel:
        raise StructureError(
            f"{where} in {record} stores {chunk.storage.numel:,} elements for "
            f"its {chunk.numel:,} (an expanded view)",
            key,
            record,
        )
    return chunk
