"""torch.distributed.checkpoint directories.

torch's FileSystemReader.read_metadata() runs a plain `pickle.load` on `.metadata`, which would
execute whatever the file names; we parse the same pickle with our restricted unpickler and
read torch's metadata dataclasses (Metadata, TensorStorageMetadata, ChunkStorageMetadata,
MetadataIndex, _StorageInfo) as the inert records they become."""

from __future__ import annotations

import io
import math
import os
import zipfile

from ckpt_viewer.core import CheckpointError, remote
from ckpt_viewer.core.model import DTYPE_SIZES, Checkpoint, FileSpan, Node, TensorInfo
from ckpt_viewer.core.readers import MAX_PICKLE_BYTES, safetensors, torch_load_pickles
from ckpt_viewer.core.safe_pickle import PickleReport, Placeholder, merge_report, safe_load
from ckpt_viewer.core.tree import SCALAR_TYPES

MAX_METADATA_BYTES = 512 * 1024 * 1024
MAX_INLINE_OBJECT = 1024 * 1024    # small pickled non-tensor items are decoded for display


def _fields(obj, what) -> dict:
    if not isinstance(obj, Placeholder):
        raise CheckpointError(f"DCP metadata: {what} is not a record")
    return obj.fields


def _tensor_dtype(properties) -> str:
    state = properties.state if isinstance(properties, Placeholder) else None
    dtype = state[0] if isinstance(state, tuple) and state else _fields(properties, "properties").get("dtype")
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
    spans = _storage_spans(folder, storage_data)
    data_files = {span.path for span in spans.values()} | {meta_path}
    tensors, others, items = {}, {}, []
    warnings: list[str] = []
    for fqn, entry in entries.items():
        if not isinstance(fqn, str):
            raise CheckpointError("DCP metadata has a non-text key")
        if type(entry).__name__ == "TensorStorageMetadata":
            tensors[fqn] = _tensor(fqn, _fields(entry, fqn), spans)
        else:
            others[fqn] = _bytes_item(fqn, spans.get((fqn, None)), items, warnings)
    root = safetensors.flat_tree(tensors)
    for fqn, value in others.items():
        kind = "scalar" if isinstance(value, SCALAR_TYPES) else "opaque"
        root.children.append(Node(name=fqn, kind=kind, key=fqn, value=value,
                                  type_name=type(value).__name__ if kind == "scalar" else "object"))
    if remote.is_remote(folder):       # the files it names, not a listing of the folder
        total = sum(remote.getsize(path) for path in data_files)
    else:
        total = sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder)
                    if os.path.isfile(os.path.join(folder, n)))
    version = fields.get("version")
    # every global is reported and triaged (DCP's own dataclasses are `data`, by exact name);
    # torch's DCP reader unpickles .metadata with plain pickle and each bytes item with
    # torch.load(weights_only=False): weights_only and its refusals do not apply
    checkpoint = Checkpoint(path=folder, format="dcp", file_bytes=total, root=root,
                            unsafe_globals=[], warnings=warnings,
                            metadata={"DCP version": version} if isinstance(version, str) else {})
    merge_report(checkpoint, report)
    for fqn, item_report in items:
        merge_report(checkpoint, item_report, fqn)
    return checkpoint


def _storage_spans(folder, storage_data) -> dict:
    """{(fqn, chunk offset tuple or None): FileSpan}, every span checked against its file."""
    sizes, spans = {}, {}
    for index, info in storage_data.items():
        index_fields, info_fields = _fields(index, "MetadataIndex"), _fields(info, "_StorageInfo")
        name, offset, length = (info_fields.get("relative_path"), info_fields.get("offset"),
                                info_fields.get("length"))
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
            raise CheckpointError(f"DCP data file {name} is shorter than its metadata says "
                                  "(truncated?)")
        chunk = index_fields.get("offset")
        key = (index_fields.get("fqn"), tuple(chunk) if isinstance(chunk, (tuple, list)) else None)
        spans[key] = FileSpan(remote.join(folder, name), offset, length)
    return spans


def _tensor(fqn, entry, spans) -> TensorInfo:
    size = entry.get("size")
    if not isinstance(size, tuple) or not all(type(d) is int and d >= 0 for d in size):
        raise CheckpointError(f"DCP tensor {fqn!r} has a malformed size")
    info = TensorInfo(dtype=_tensor_dtype(entry.get("properties")), shape=size)
    chunks = []
    for chunk in entry.get("chunks") or []:
        chunk_fields = _fields(chunk, "ChunkStorageMetadata")
        offsets, sizes = tuple(chunk_fields.get("offsets", ())), tuple(chunk_fields.get("sizes", ()))
        span = spans.get((fqn, offsets))
        if span is None:
            raise CheckpointError(f"DCP tensor {fqn!r} has a chunk with no stored data")
        chunks.append((offsets, sizes, span))
    if sum(math.prod(s) for _, s, _ in chunks) < math.prod(size):
        raise CheckpointError(f"DCP tensor {fqn!r} is not fully covered by its chunks")
    info.chunks = chunks
    return info


def _bytes_item(fqn, span, items: list, warnings: list):
    """A non-tensor item (step, epoch, bytes, any object): torch's reader hands its bytes to
    torch.load(weights_only=False), so every pickle in them goes through our unpickler; what
    each names is appended to `items` as (fqn, PickleReport)."""
    if span is None:
        return "(object)"
    if span.nbytes > MAX_PICKLE_BYTES:
        warnings.append(f"{fqn}: a bytes item of {span.nbytes:,} bytes, which torch.load "
                        "unpickles with weights_only=False; too large to check here")
        return "(object)"
    with remote.open_source(span.path) as f:
        f.seek(span.offset)
        raw = f.read(span.nbytes)
    report = PickleReport()
    items.append((fqn, report))
    try:
        value = torch_load_pickles(raw, report)
    except CheckpointError as exc:
        warnings.append(f"{fqn}: its bytes item, which torch.load unpickles with "
                        f"weights_only=False, cannot be decoded ({exc})")
        return "(object)"
    return value if isinstance(value, SCALAR_TYPES) else "(object)"


class _Window(io.RawIOBase):
    """Bytes [start, start+length) of an open file, as a file of their own."""

    def __init__(self, f, start: int, length: int):
        self.f, self.start, self.length, self.position = f, start, length, 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self.position

    def seek(self, position, whence=0):
        base = {0: 0, 1: self.position, 2: self.length}[whence]
        self.position = max(0, base + position)
        return self.position

    def readinto(self, buffer):
        count = min(len(buffer), self.length - self.position)
        if count <= 0:
            return 0
        self.f.seek(self.start + self.position)
        data = self.f.read(count)
        buffer[:len(data)] = data
        self.position += len(data)
        return len(data)


def chunk_tensor(span: FileSpan) -> TensorInfo:
    """The tensor one DCP chunk holds (the chunk is a small torch.save archive at `span`), its
    storage pointing at the raw record inside the data file: nothing is read but data.pkl."""
    from ckpt_viewer.core.safe_pickle import dtype_of_storage

    try:
        with remote.open_source(span.path) as f:
            window = _Window(f, span.offset, span.nbytes)
            with zipfile.ZipFile(window) as zf:
                infos = zf.infolist()
                prefix = infos[0].filename.split("/")[0] + "/" if infos else ""
                records = {i.filename[len(prefix):]: i for i in infos}
                pickle_info = records.get("data.pkl")
                if pickle_info is None or pickle_info.file_size > MAX_INLINE_OBJECT:
                    raise CheckpointError("DCP chunk has no (small) data.pkl")
                data = zf.read(pickle_info)
                byteorder = zf.read(records["byteorder"]).decode() \
                    if "byteorder" in records else "little"

                def storage_factory(pid):
                    from ckpt_viewer.core.model import Storage
                    from ckpt_viewer.core.readers import storage_pid

                    storage_type, key, location, numel = storage_pid(pid)
                    info = records.get(f"data/{key}")
                    dtype = dtype_of_storage(storage_type)
                    if info is None or info.compress_type != zipfile.ZIP_STORED or \
                            info.file_size != numel * DTYPE_SIZES[dtype]:
                        raise CheckpointError(f"DCP chunk record data/{key} is missing, "
                                              "compressed or of the wrong size")
                    window.seek(info.header_offset)
                    local = window.read(30)
                    start = info.header_offset + 30 + int.from_bytes(local[26:28], "little") \
                        + int.from_bytes(local[28:30], "little")
                    if start + info.file_size > span.nbytes:
                        raise CheckpointError("DCP chunk record runs past its span")
                    return Storage(str(key), dtype, numel, location,
                                   FileSpan(span.path, span.offset + start, info.file_size),
                                   byteorder)

                tensor, _ = safe_load(data, storage_factory)
    except (zipfile.BadZipFile, KeyError, ValueError, UnicodeError) as exc:
        raise CheckpointError(f"DCP chunk of {span.path} cannot be read ({exc})") from None
    if not isinstance(tensor, TensorInfo) or tensor.storage is None or tensor.layout != "strided":
        raise CheckpointError(f"DCP chunk of {span.path} does not hold a plain tensor")
    if tensor.numel and (min(tensor.stride, default=0) < 0 or tensor.element_span()[1]
                         * DTYPE_SIZES[tensor.dtype] > tensor.storage.nbytes):
        raise CheckpointError(f"DCP chunk of {span.path} reaches past its storage")
    return tensor
