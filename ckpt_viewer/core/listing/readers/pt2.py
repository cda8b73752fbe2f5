"""torch.export archives (`.pt2`, written by torch.export.save).

Layout (torch 2.13, torch/export/pt2_archive/_package.py): under one top-level folder,
`archive_format` holds "pt2"; `models/<name>.json` is the serialized program;
`data/weights/<name>_weights_config.json` and `data/constants/<name>_constants_config.json` map
each FQN to a record (`weight_N`, `tensor_N`) of raw storage bytes plus the tensor's dtype, sizes,
strides, storage offset and device; records are shared between views of one storage. Tensor
subclasses are stored as small torch.save archives (`use_pickle`), script objects and opaque
objects as pickles, sample inputs (`data/sample_inputs/<name>.pt`) as a torch.save archive:
torch.export.load unpickles all of these (torch.load(weights_only=False), pickle.loads). Each
goes through our unpickler instead, its globals triaged under the record's name; nothing is
run."""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any, cast

from ckpt_viewer.core import CheckpointError, StructureError
from ckpt_viewer.core.listing.model import (
    DTYPE_SIZES,
    FLOAT_DTYPES,
    Checkpoint,
    Node,
    Storage,
    TensorInfo,
    ZipMember,
    iter_nodes,
)
from ckpt_viewer.core.listing.readers import MAX_PICKLE_BYTES, torch_load_pickles
from ckpt_viewer.core.listing.readers.safetensors import flat_tree
from ckpt_viewer.core.listing.readers.zip_directory import read_directory, read_member
from ckpt_viewer.core.listing.remote import getsize
from ckpt_viewer.core.listing.safe_pickle import PickleReport, merge_report

MAX_JSON_BYTES = 256 * 1024 * 1024

# torch/_export/serde/schema.py ScalarType -> torch dtype name
SCALAR_TYPES = {
    1: "uint8",
    2: "int8",
    3: "int16",
    4: "int32",
    5: "int64",
    6: "float16",
    7: "float32",
    8: "float64",
    9: "complex32",
    10: "complex64",
    11: "complex128",
    12: "bool",
    13: "bfloat16",
    28: "uint16",
    29: "float8_e4m3fn",
    30: "float8_e5m2",
    31: "float8_e4m3fnuz",
    32: "float8_e5m2fnuz",
    33: "float8_e8m0fnu",
    34: "uint32",
    35: "uint64",
}
STRIDED = 7  # schema Layout.Strided


def archive_root(names: list[str]) -> str:
    """The top-level folder every record sits in (torch looks records up under the first's)."""
    duplicates = [n for n, c in Counter(names).items() if c > 1]
    if duplicates:
        raise CheckpointError(
            f"archive holds two entries named {duplicates[0]!r} "
            "(torch would read the first, other tools the last)"
        )
    if not names or "/" not in names[0]:
        raise CheckpointError("pt2 archive has no top-level folder")
    root = names[0].split("/", 1)[0] + "/"
    strays = [n for n in names if not n.startswith(root)]
    if strays:
        raise CheckpointError(
            f"archive mixes top-level folders ({root!r} and {strays[0]!r:.60}); "
            "torch reads only the first"
        )
    return root


def torch_can_require_grad(dtype: str) -> bool:
    return dtype in FLOAT_DTYPES or dtype.startswith("complex")


def is_pt2(path: str, head: bytes = b"") -> bool:
    """A zip whose first record's folder holds `archive_format` (torch's is_pt2_package).
    torch.save writes data.pkl first: seen in `head`, the directory need not be read."""
    name_length = int.from_bytes(head[26:28], "little") if len(head) >= 30 else 0
    if head[30 : 30 + name_length].endswith(b"/data.pkl"):
        return False
    try:
        names = [m.name for m in read_directory(path)]
    except CheckpointError:
        return False
    if not names or "/" not in names[0]:
        return False
    return names[0].split("/", 1)[0] + "/archive_format" in names


def _json(member: ZipMember, what: str) -> Any:
    try:
        return json.loads(read_member(member, MAX_JSON_BYTES).decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{what} is not valid JSON ({str(exc)[:80]})") from None


def _int(value: Any, what: str) -> int:
    """A serialized SymInt: {"as_int": n}; symbolic sizes cannot describe stored data."""
    number = value.get("as_int") if isinstance(value, dict) else None
    if type(number) is not int:
        raise CheckpointError(f"{what} is not a plain integer ({value!r:.60})")
    return number


def _location(device: Any) -> str:
    if not isinstance(device, dict) or not isinstance(device.get("type"), str):
        return "cpu"
    index = device.get("index")
    return f"{device['type']}:{index}" if type(index) is int else device["type"]


class _Archive:
    def __init__(self, path: str) -> None:
        self.path = path
        directory = read_directory(path)
        self.root = archive_root([m.name for m in directory])
        self.members = {m.name: m for m in directory}
        self.warnings: list[str] = []
        self.pickles: list[tuple[str, PickleReport]] = []  # (where, what it names)
        self.zeros: dict[int, int] = {}  # id(Storage) -> elements torch gives it

    def member(self, name: str) -> ZipMember | None:
        return self.members.get(self.root + name)

    def text(self, name: str) -> str | None:
        member = self.member(name)
        return (
            None if member is None else read_member(member, 64).decode("ascii", "replace").strip()
        )

    def payloads(self, folder: str, config_name: str, what: str) -> dict[str, TensorInfo | str]:
        """{fqn: TensorInfo or a note string} of one payload config."""
        member = self.member(config_name)
        if member is None:
            return {}
        config = _json(member, config_name)
        entries = config.get("config") if isinstance(config, dict) else None
        if not isinstance(entries, dict):
            raise CheckpointError(f"{config_name} has no config of {what}")
        storages: dict[str, Storage] = {}
        out: dict[str, Any] = {}
        for fqn, meta in entries.items():
            if not isinstance(meta, dict) or not isinstance(meta.get("path_name"), str):
                raise CheckpointError(f"{config_name}: entry {fqn!r:.80} is malformed")
            name = meta["path_name"]
            if "/" in name or name in ("", ".", ".."):
                raise CheckpointError(f"{config_name}: {fqn!r:.80} names a record outside {folder}")
            record = self.member(folder + name)
            if record is None:
                raise CheckpointError(f"record {folder}{name} of {fqn!r:.80} is missing")
            if folder.startswith("data/constants") and not name.startswith("tensor_"):
                out[fqn] = self._object(fqn, name, record)
            elif meta.get("use_pickle"):
                out[fqn] = self._pickled(fqn, name, record, meta.get("tensor_meta"))
            else:
                out[fqn] = self._raw(fqn, name, record, meta, storages)
        return out

    def _raw(
        self,
        fqn: str,
        name: str,
        record: ZipMember,
        meta: dict[str, Any],
        storages: dict[str, Storage],
    ) -> TensorInfo:
        tensor_meta = meta.get("tensor_meta")
        if not isinstance(tensor_meta, dict):
            raise CheckpointError(f"{fqn!r:.80} has no tensor metadata")
        code = tensor_meta.get("dtype")
        dtype = SCALAR_TYPES.get(code) if isinstance(code, int) else None
        if dtype is None and name not in storages:  # a later entry's dtype is never read
            raise CheckpointError(
                f"{fqn!r:.80} has unknown dtype code {tensor_meta.get('dtype')!r:.20}"
            )
        if tensor_meta.get("layout", STRIDED) != STRIDED:
            raise CheckpointError(
                f"{fqn!r:.80} is not a strided tensor (layout {tensor_meta.get('layout')!r:.20})"
            )
        sizes, strides = tensor_meta.get("sizes"), tensor_meta.get("strides")
        if (
            not isinstance(sizes, list)
            or not isinstance(strides, list)
            or len(sizes) != len(strides)
        ):
            raise CheckpointError(f"{fqn!r:.80} has malformed sizes or strides")
        shape = tuple(_int(s, f"a size of {fqn!r:.80}") for s in sizes)
        stride = tuple(_int(s, f"a stride of {fqn!r:.80}") for s in strides)
        offset = _int(tensor_meta.get("storage_offset", {"as_int": 0}), f"offset of {fqn!r:.80}")
        if min(shape, default=0) < 0 or offset < 0:
            raise CheckpointError(f"{fqn!r:.80} has a negative size or offset")
        # torch makes one flat tensor per record, typed by the first entry naming it, and every
        # entry is an as_strided view of it (so a later entry's own dtype is not used)
        storage = storages.get(name)
        if storage is None:
            assert dtype is not None  # checked above for a record no entry named before
            itemsize = DTYPE_SIZES[dtype]
            if record.file_size % itemsize:
                raise CheckpointError(
                    f"record {name} holds {record.file_size:,} bytes, not a "
                    f"multiple of {dtype}'s {itemsize}"
                )
            storage = Storage(
                name,
                dtype,
                record.file_size // itemsize,
                _location(tensor_meta.get("device")),
                record,
            )
            storages[name] = storage
            # an empty record becomes torch.zeros of the first entry's sizes
            self.zeros[id(storage)] = math.prod(shape)
        info = TensorInfo(
            dtype=storage.dtype,
            shape=shape,
            stride=stride,
            offset=offset,
            storage=storage,
            requires_grad=bool(tensor_meta.get("requires_grad")),
            is_parameter=bool(meta.get("is_param")),
        )
        if info.requires_grad and not torch_can_require_grad(storage.dtype):
            raise StructureError(
                f"{fqn!r:.80} asks for gradients on a {storage.dtype} tensor; "
                "torch.export.load refuses it (only floating point and complex "
                "tensors can require gradients)",
                fqn,
                name,
            )
        # torch.export.load makes each entry with torch.as_strided, which refuses these
        if min(stride, default=0) < 0:
            raise StructureError(
                f"{fqn!r:.80} is a view with a negative stride {list(stride)} "
                f"into record {name}; torch.export.load refuses it",
                fqn,
                name,
            )
        elements = storage.numel or self.zeros[id(storage)]
        if info.numel and info.element_span()[1] > elements:
            raise StructureError(
                f"{fqn!r:.80} is a view reaching element "
                f"{info.element_span()[1]:,} of record {name}, which holds "
                f"{elements:,}; torch.export.load refuses it",
                fqn,
                name,
            )
        if storage.numel == 0 and info.numel:
            self.warnings.append(
                f"{fqn}: its record {name} is empty; torch.export.load gives zeros in its place"
            )
            info.storage = None
        return info

    def _pickled(self, fqn: str, name: str, record: ZipMember, tensor_meta: Any) -> str:
        """A tensor subclass saved with torch.save: torch.export.load would unpickle it with
        weights_only=False. Its globals are listed; its values are not read."""
        self.warnings.append(
            f"{fqn}: stored as a pickled tensor subclass ({name}), which "
            "torch.export.load unpickles with weights_only=False; not read here"
        )
        self.scan(record, fqn)
        return f"pickled tensor subclass in {name}"

    def _object(self, fqn: str, name: str, record: ZipMember) -> str:
        if name.startswith("opaque_obj_"):
            self.warnings.append(
                f"{fqn}: an opaque object ({name}) that torch.export.load "
                "restores with pickle.loads, i.e. runs whatever it names"
            )
            self.scan(record, fqn)
            return f"opaque object in {name}"
        if name.startswith("custom_obj_"):
            self.warnings.append(
                f"{fqn}: a TorchScript object ({name}), restored by torch's "
                "own unpickler; not read here"
            )
            self.scan(record, fqn)
            return f"script object in {name}"
        self.warnings.append(
            f"{fqn}: constant record {name} is of no kind torch.export.load "
            "reads (it refuses the archive)"
        )
        return f"unknown record {name}"

    def scan(self, record: ZipMember, where: str) -> None:
        """Every pickle of a record that torch.export.load unpickles, through ours."""
        report = PickleReport()
        self.pickles.append((where, report))
        try:
            torch_load_pickles(read_member(record, MAX_PICKLE_BYTES), report)
        except CheckpointError as exc:
            self.warnings.append(f"{record.name}: cannot be decoded ({str(exc)[:80]})")


def _signature_notes(program: Any) -> dict[str, str]:
    """{fqn: note} from the program's graph signature (buffers, lifted constants)."""
    notes: dict[str, str] = {}
    graph = program.get("graph_module") if isinstance(program, dict) else None
    signature = graph.get("signature") if isinstance(graph, dict) else None
    specs = signature.get("input_specs") if isinstance(signature, dict) else None
    for spec in specs if isinstance(specs, list) else []:
        if not isinstance(spec, dict):
            continue
        buffer = spec.get("buffer")
        if isinstance(buffer, dict) and isinstance(buffer.get("buffer_name"), str):
            if buffer.get("persistent") is False:
                notes[buffer["buffer_name"]] = "non-persistent buffer"
        constant = spec.get("tensor_constant")
        if isinstance(constant, dict) and isinstance(constant.get("tensor_constant_name"), str):
            notes[constant["tensor_constant_name"]] = "lifted tensor constant"
    return notes


def read(path: str) -> Checkpoint:
    archive = _Archive(path)
    if archive.text("archive_format") != "pt2":
        raise CheckpointError(
            "zip archive is neither a torch.save file (no data.pkl) nor a "
            "torch.export archive (archive_format is not 'pt2')"
        )
    models = sorted(
        n[len(archive.root + "models/") : -len(".json")]
        for n in archive.members
        if n.startswith(archive.root + "models/") and n.endswith(".json") and n.count("/") == 2
    )
    if not models:
        raise CheckpointError(
            "pt2 archive holds no exported program (models/*.json); "
            "AOTInductor-only packages are not supported"
        )
    entries, notes, metadata, graphs = {}, {}, {}, {}
    for model in models:
        prefix = "" if len(models) == 1 else model + "."
        for legacy in (f"data/weights/{model}.pt", f"data/constants/{model}.pt"):
            if (member := archive.member(legacy)) is not None:
                archive.warnings.append(f"{legacy}: the pre-2.8 single-file layout is not read")
                archive.scan(member, legacy)
        sample_inputs = f"data/sample_inputs/{model}.pt"
        if (member := archive.member(sample_inputs)) is not None:
            archive.scan(member, sample_inputs)
        # models lists only records of the archive
        program_member = cast(ZipMember, archive.member(f"models/{model}.json"))
        program = (
            _json(program_member, f"models/{model}.json")
            if program_member.file_size <= MAX_JSON_BYTES
            else {}
        )
        if isinstance(program, dict):
            if isinstance(program.get("graph_module"), dict):
                graphs[model] = program["graph_module"]
            if isinstance(program.get("torch_version"), str):
                metadata["torch version"] = program["torch_version"]
            schema = program.get("schema_version")
            if isinstance(schema, dict):
                metadata["schema version"] = f"{schema.get('major')}.{schema.get('minor')}"
        notes.update({prefix + k: v for k, v in _signature_notes(program).items()})
        weights = archive.payloads(
            "data/weights/", f"data/weights/{model}_weights_config.json", "weights"
        )
        constants = archive.payloads(
            "data/constants/", f"data/constants/{model}_constants_config.json", "constants"
        )
        for fqn, value in weights.items():
            entries[prefix + fqn] = (value, "weight")
        for fqn, value in constants.items():
            key = prefix + fqn
            if key in entries:
                archive.warnings.append(
                    f"constant {fqn!r} has the name of a weight; shown as constants.{fqn}"
                )
                key = f"{prefix}constants.{fqn}"
            entries[key] = (value, "constant")
    root = flat_tree({k: v for k, (v, _) in entries.items() if isinstance(v, TensorInfo)})
    for key, (value, _) in entries.items():
        if not isinstance(value, TensorInfo):
            root.children.append(
                Node(name=key, kind="opaque", key=key, value=value, type_name="object")
            )
    _mark_roles(root, entries, notes)
    version = archive.text("archive_version")
    if version is not None:
        metadata["archive version"] = version
    metadata["models"] = ", ".join(models)
    byteorder = archive.text("byteorder")
    if byteorder not in (None, "little"):
        archive.warnings.append(
            f"archive says byteorder {byteorder[:20]!r}; torch.export.load "
            "reads the raw records in this machine's order"
        )
    checkpoint = Checkpoint(
        path=path,
        format="pt2",
        file_bytes=getsize(path),
        root=root,
        warnings=archive.warnings,
        metadata=metadata,
        graphs=graphs,
    )
    for where, report in archive.pickles:
        merge_report(checkpoint, report, where)
    return checkpoint


def _mark_roles(
    root: Node, entries: dict[str, tuple[TensorInfo | str, str]], notes: dict[str, str]
) -> None:
    first_of_storage: dict[int, str] = {}
    for node in iter_nodes(root):
        tensor = node.tensor
        if node.kind != "tensor" or tensor is None:
            continue
        _, kind = entries[node.key]
        node.type_name = "Parameter" if tensor.is_parameter else "Tensor"
        node.role = "parameter" if tensor.is_parameter else "buffer" if kind == "weight" else ""
        node.note = notes.get(node.key, "constant" if kind == "constant" else "")
        if node.note == "non-persistent buffer":
            node.role = "buffer"
        if tensor.storage is not None:
            first = first_of_storage.setdefault(id(tensor.storage), node.key)
            if first != node.key:
                node.shared_with = first
