"""A copy of a checkpoint that plain `torch.load(path, weights_only=True)` loads, no allowlist.

What the file's pickle built (plain data, tensor records and inert placeholders; nothing was
run) is turned into plain Python: `data` objects become what they hold (Namespace -> dict, numpy
array -> tensor, Path -> str...), nn.Module placeholders their state_dict, other classes their
state as a dict, and `code` is dropped. Every change is one line of the summary. The tensors'
storage records are copied as export copies them (streaming, bit for bit, shared storages kept)
and data.pkl is written opcode by opcode naming only torch's allowlisted globals. Sources that
hold no pickle (safetensors, sharded, DCP) become a flat state_dict.
"""

from __future__ import annotations

import os
from collections import Counter, OrderedDict
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.listing.globals import triage
from ckpt_viewer.core.listing.model import DTYPE_SIZES, Checkpoint, Storage, TensorInfo
from ckpt_viewer.core.listing.objects import Described, describe_object, numpy_dtype_name
from ckpt_viewer.core.listing.readers import MAX_PICKLE_BYTES
from ckpt_viewer.core.listing.safe_pickle import (
    GlobalRef,
    Layout,
    NumpyDtype,
    Placeholder,
    TorchDtype,
)
from ckpt_viewer.core.listing.text import plural
from ckpt_viewer.core.listing.tree import (
    Child,
    _module_children,
    _object_children,
    _script_module_children,
    is_module,
    is_script_module,
)
from ckpt_viewer.core.writing.destination import Staged, check_file
from ckpt_viewer.core.writing.export import (
    Item,
    _check_records,
    _Record,
    _records,
    geometry,
    quantizer_entries,
    quantizer_stored,
    write_torch_archive,
    written_storages,
)
from ckpt_viewer.core.writing.torch_pickle import (
    PickleWriter,
    TensorEntry,
    TorchGlobal,
    int_fits,
    quantizer_params,
)

PLAIN = (bool, int, float, str, type(None))


@dataclass
class SanitizeSummary:
    path: str
    tensors: int
    bytes: int
    changes: list[str] = field(default_factory=list)  # one line per conversion or drop


class _Drop:
    """Marks a value left out of the copy."""


DROP = _Drop()
Clean = TypeVar("Clean")  # what a value from the file becomes in the copy


@dataclass
class Plan:
    """The clean object to pickle, its tensors (entry -> source record) and the change lines."""

    root: object
    tensors: list[tuple[TensorEntry, TensorInfo]]  # each tensor once
    changes: list[str]


def _join(key: str, name: object) -> str:
    return f"{key}.{name}" if key else str(name)


def _where(key: str) -> str:
    return key or "(root)"


class _Converter:
    def __init__(self, checkpoint: Checkpoint) -> None:
        uses = triage(checkpoint, max_keys=0)
        self.category = {u.name: u.category for u in uses}
        self.changes: list[str] = []
        self.tensors: list[tuple[TensorEntry, TensorInfo]] = []
        self.done: dict[int, object] = {}
        self.alive: list[object] = []  # sources whose ids key `done`

    def note(self, key: str, text: str) -> None:
        self.changes.append(f"{_where(key)}: {text}")

    def convert(self, value: object, key: str) -> object:
        if isinstance(value, TorchDtype):
            return TorchGlobal(value)
        if isinstance(value, Layout):
            self.note(key, f"torch.{value} -> its name")
            return str(value)
        if type(value) is int and not int_fits(value):
            self.note(
                key,
                f"an integer of {value.bit_length()} bits (more than weights_only "
                "reads) -> hexadecimal text",
            )
            return hex(value)
        if value is None or type(value) in (bool, int, float, str, bytes, bytearray, complex):
            return value
        plain_types: tuple[type, ...] = (bool, int, float, str, bytes)
        for kind in plain_types:  # subclasses the unpickler made
            if isinstance(value, kind):
                return kind(value)
        if id(value) in self.done:
            return self.done[id(value)]
        self.alive.append(value)
        if isinstance(value, TensorInfo):
            return self._remember(value, self._tensor(value, key))
        if isinstance(value, dict) and type(value) in (dict, OrderedDict, Counter):
            return self._mapping(value, key, type(value)())
        if isinstance(value, dict):
            self.note(key, f"{type(value).__name__} -> dict")
            return self._mapping(value, key, {})
        if isinstance(value, list):
            return self._sequence(value, key, [])
        if isinstance(value, tuple):
            items = [self.convert(v, _join(key, i)) for i, v in enumerate(value)]
            return self._remember(value, tuple(self._dropped_in_sequence(items, key)))
        if isinstance(value, (set, frozenset)):
            return self._set(value, key)
        if isinstance(value, slice):
            self.note(key, "slice -> (start, stop, step)")
            return self._remember(
                value, tuple(self.convert(v, key) for v in (value.start, value.stop, value.step))
            )
        if isinstance(value, Storage):
            self.note(key, "dropped a bare storage (not inside a tensor)")
            return DROP
        if isinstance(value, NumpyDtype):
            self.note(key, "numpy.dtype -> its name")
            return numpy_dtype_name(value)
        if (
            isinstance(value, GlobalRef)
            or isinstance(value, type)
            and issubclass(value, Placeholder)
        ):
            return self._global_ref(value.qualname, key)
        if isinstance(value, Placeholder):
            return self._object(value, key)
        self.note(key, f"dropped a {type(value).__name__} value")
        return DROP

    def _remember(self, source: object, clean: Clean) -> Clean:
        self.done[id(source)] = clean
        return clean

    # --- containers --------------------------------------------------------------------------

    def _mapping(self, value: dict[Any, Any], key: str, clean: dict[Any, Any]) -> dict[Any, Any]:
        self._remember(value, clean)
        for name, item in value.items():
            segment = name if isinstance(name, str) else str(name)
            new_key = (
                self.convert(name, _join(key, segment)) if not isinstance(name, PLAIN) else name
            )
            new_value = self.convert(item, _join(key, segment))
            if new_key is DROP or new_value is DROP:
                continue
            try:
                clean[new_key] = new_value
            except TypeError:  # a key that became a dict or list
                self.note(_join(key, segment), "dropped: its key is not hashable once converted")
        return clean

    def _sequence(self, value: Iterable[object], key: str, clean: list[object]) -> list[object]:
        self._remember(value, clean)
        items = [self.convert(v, _join(key, i)) for i, v in enumerate(value)]
        clean.extend(self._dropped_in_sequence(items, key))
        return clean

    def _dropped_in_sequence(self, items: list[object], key: str) -> list[object]:
        # a dropped item becomes None: the indices (keys) of the others stay as they were
        return [None if item is DROP else item for item in items]

    def _set(self, value: set[object] | frozenset[object], key: str) -> object:
        items = [self.convert(v, key) for v in value]
        items = [v for v in items if v is not DROP]
        if isinstance(value, frozenset):
            self.note(key, "frozenset -> tuple (weights_only has no frozenset)")
            return self._remember(value, tuple(items))
        try:
            return self._remember(value, set(items))
        except TypeError:
            self.note(key, "set -> list (its items are not hashable once converted)")
            return self._remember(value, items)

    # --- tensors -----------------------------------------------------------------------------

    def _tensor(
        self, info: TensorInfo, key: str, as_state: bool = False, note: str = ""
    ) -> TensorEntry | _Drop:
        why = None
        if info.layout not in ("strided", "quantized") or info.parts:
            why = f"a {info.layout} tensor"
        elif info.layout == "quantized" and not quantizer_stored(info):
            why = "a quantized tensor without its quantizer's tensors"
        elif info.storage is None and not info.chunks:
            why = "a tensor without stored data"
        if why:
            self.note(key, f"dropped {why} (sanitize copies dense tensors)")
            return DROP
        if note:
            self.note(key, note)
        if info.subclass:
            self.note(key, f"tensor subclass {info.subclass} -> plain tensor")
        if info.attrs:
            self.note(
                key, f"dropped the attributes set on the tensor ({', '.join(map(str, info.attrs))})"
            )
        parameter = info.is_parameter and not as_state
        entry = TensorEntry(
            key,
            "",
            info.dtype,
            0,
            0,
            tuple(info.shape),
            (),
            location=info.device if info.storage is not None else "cpu",
            requires_grad=info.requires_grad and not as_state,
            parameter=parameter,
            quantizer=quantizer_params(info),
        )
        self.tensors.append((entry, info))
        return entry

    # --- objects -----------------------------------------------------------------------------

    def _global_ref(self, qualname: str, key: str) -> str | _Drop:
        if self.category.get(qualname) == "code":
            self.note(key, f"dropped code: a reference to {qualname}")
            return DROP
        self.note(key, f"the global {qualname} -> its name")
        return qualname

    def _kind(self, obj: Placeholder) -> str:
        return self.category.get(obj.qualname, "class")

    def _object(self, obj: Placeholder, key: str) -> object:
        name = obj.qualname
        described = describe_object(obj)
        if (
            described is not None
            and described.kind == "scalar"
            and isinstance(described.value, PLAIN)
        ):
            scalar = described.value
            self.note(key, f"{name} -> {type(scalar).__name__}")
            return self._remember(obj, scalar)
        if self._kind(obj) == "code":
            calls = f"{name}({', '.join(map(repr, obj.args))[:200]})" if obj.args else name
            self.note(key, f"dropped code: {calls}")
            return self._remember(obj, DROP)
        if is_module(obj):
            self.note(key, f"module {name} -> its state_dict")
            return self._remember(obj, self._state_dict(obj, key))
        if described is not None:
            return self._described(obj, described, key)
        if is_script_module(obj):
            self.note(key, f"TorchScript module {name} -> its state_dict")
            return self._remember(obj, self._state_dict(obj, key))
        if name == "collections.deque" and obj.args and isinstance(obj.args[0], list):
            self.note(key, "collections.deque -> list")
            return self._sequence(obj.args[0], key, self._remember(obj, []))
        if name == "collections.defaultdict":
            self.note(key, "collections.defaultdict -> dict")
            return self._mapping(obj.items, key, self._remember(obj, {}))
        plain_call = (
            obj.state is None
            and not obj.items
            and not obj.list_items
            and not obj.kwargs
            and len(obj.args) == 1
            and isinstance(obj.args[0], PLAIN)
        )
        if plain_call:  # an enum member by value: Color(1)
            value = self.convert(obj.args[0], key)
            self.note(key, f"{name}({obj.args[0]!r:.60}) -> its value")
            return self._remember(obj, value)
        if self._kind(obj) == "data":
            self.note(key, f"{name} -> dict")
        else:
            self.note(key, f"class {name} reduced to its state (dict)")
        children = {child: value for child, value, _ in _object_children(obj)}
        return self._mapping_of(obj, key, children)

    def _mapping_of(self, obj: Placeholder, key: str, children: dict[str, object]) -> object:
        clean: dict[str, object] = self._remember(obj, {})
        for child, value in children.items():
            converted = self.convert(value, _join(key, child))
            if converted is not DROP:
                clean[child] = converted
        return clean

    def _described(self, obj: Placeholder, described: Described, key: str) -> object:
        name = obj.qualname
        if described.kind == "tensor" and described.tensor is not None:
            note = (
                "numpy array -> tensor"
                if described.type_name == "ndarray"
                else f"{described.type_name} -> plain tensor"
            )
            return self._remember(obj, self._tensor(described.tensor, key, note=note))
        if described.kind == "list":
            self.note(key, f"{described.note or name} -> list")
            values = [value for _, value, _ in described.children]
            return self._sequence(values, key, self._remember(obj, []))
        if described.kind == "module":
            self.note(key, f"module {name} -> its state_dict")
            clean: OrderedDict[str, Any] = self._remember(obj, OrderedDict())
            self._flatten(described.children, key, "", clean)
            return clean
        if described.kind in ("object", "dict"):
            self.note(key, f"{name} reduced to its state (dict)")
            return self._mapping_of(obj, key, {c: v for c, v, _ in described.children})
        self.note(key, f"dropped {name}: {described.value or described.note}"[:300])
        return self._remember(obj, DROP)

    def _state_dict(self, module: Placeholder, key: str) -> OrderedDict[str, Any]:
        clean: OrderedDict[str, Any] = OrderedDict()
        self._flatten(_children(module), key, "", clean)
        return clean

    def _flatten(
        self, children: Iterable[Child], key: str, prefix: str, clean: OrderedDict[str, Any]
    ) -> None:
        """torch's state_dict: parameters and buffers (detached) by dotted names, submodules
        flattened into the same OrderedDict."""
        for name, value, _ in children:
            dotted = prefix + name
            if isinstance(value, Placeholder) and (is_module(value) or is_script_module(value)):
                self._flatten(_children(value), key, dotted + ".", clean)
                continue
            if isinstance(value, Placeholder):
                described = describe_object(value)
                if described is not None and described.kind == "module":
                    self._flatten(described.children, key, dotted + ".", clean)
                    continue
            if isinstance(value, TensorInfo):
                converted = self.done.get(id(value))
                if converted is None:  # state_dict() detaches: plain tensors, no grad
                    self.alive.append(value)
                    converted = self._remember(
                        value, self._tensor(value, _join(key, dotted), as_state=True)
                    )
            else:
                converted = self.convert(value, _join(key, dotted))
            if converted is not DROP:
                clean[dotted] = converted


def _children(module: Placeholder) -> list[Child]:
    """A module's state_dict entries and submodules, as the tree lists them."""
    if is_script_module(module):
        return list(_script_module_children(module))
    return list(_module_children(module))


def plan_sanitize(checkpoint: Checkpoint) -> Plan:
    """What the copy will hold; raises CheckpointError when there is nothing to copy."""
    if checkpoint.root_object is None:  # safetensors, sharded, DCP: a flat state_dict
        converter = _Converter(checkpoint)
        flat: OrderedDict[str, Any] = OrderedDict()
        for key, info, _ in checkpoint.tensors():
            entry = converter._tensor(info, key, as_state=True)
            if entry is not DROP:
                flat[key] = entry
        if checkpoint.format not in ("torch-zip", "torch-legacy"):
            converter.changes.insert(
                0, f"(root): a {checkpoint.format} source -> a flat state_dict of its tensors"
            )
        return Plan(flat, converter.tensors, converter.changes)
    converter = _Converter(checkpoint)
    try:
        root = converter.convert(checkpoint.root_object, "")
    except RecursionError:
        raise CheckpointError("the file's structure is nested too deeply to sanitize") from None
    if root is DROP:
        root = None
    scalars = sum(
        uses
        for name, uses in checkpoint.globals_named.items()
        if name.endswith("multiarray.scalar")
    )
    if scalars:  # decoded to numbers while unpickling: no key of their own to name
        converter.changes.append(f"(file): {plural(scalars, 'numpy scalar')} -> Python numbers")
    return Plan(root, converter.tensors, converter.changes)


def _storage_layout(plan: Plan) -> list[_Record]:
    """Group tensors into storage records as export does (one record per shared storage);
    fill each entry's record name, size, offset and stride."""
    items = [Item(entry.key, entry.key, info, info.dtype) for entry, info in plan.tensors]
    entries = {id(info): entry for entry, info in plan.tensors}
    records = _records(items, "pth")
    for record in records:
        only = record.items[0].tensor
        if not record.shared and not only.chunks:
            # copy the span it uses, strides kept: an expanded view stays small, as in torch
            first, end = only.element_span()
            record.first, record.count, record.shared = first, end - first, True
    parts = quantizer_entries(records)
    for record in records:
        if record.owner is not None:
            continue
        for item in record.items:
            entry, t = entries[id(item.tensor)], item.tensor
            entry.storage_key, entry.storage_numel = record.name, record.count
            entry.offset, entry.stride = geometry(t, record)
            if id(t) in parts:
                entry.quantizer = quantizer_params(t, parts[id(t)])
    return records


def _write(
    path: str, plan: Plan, records: list[_Record], cancelled: Callable[[], bool]
) -> Generator[int, None, None]:
    try:
        data = PickleWriter("cpu").dump(plan.root)
    except RecursionError:
        raise CheckpointError("the file's structure is nested too deeply to sanitize") from None
    if len(data) > MAX_PICKLE_BYTES:
        raise CheckpointError(
            f"the copy's data.pkl would take {len(data):,} bytes, more than "
            f"this viewer reads back ({MAX_PICKLE_BYTES:,})"
        )
    return write_torch_archive(path, data, records, "cpu", cancelled)


def _check_written(path: str, plan: Plan) -> None:
    """Reopen the copy: loadable with weights_only as it is, every tensor as meant."""
    from ckpt_viewer.core.listing.open import open_checkpoint

    written = open_checkpoint(path)
    if written.refusals or written.unsafe_globals:
        raise CheckpointError(
            "the written copy would still need an allowlist: "
            + "; ".join(written.refusals + written.unsafe_globals)
        )
    _check_records(written_storages(t for _, t, _ in written.tensors()))
    found = {key: (t.dtype, tuple(t.shape), quantizer_params(t)) for key, t, _ in written.tensors()}
    for entry, info in plan.tensors:
        meant = (info.dtype, tuple(info.shape), quantizer_params(info))
        if found.get(entry.key, meant) != meant:
            raise CheckpointError(f"written tensor {entry.key!r} differs from the source")
    if len(found) < len(plan.tensors):
        raise CheckpointError("the written copy holds fewer tensors than were meant")


def sanitize(
    checkpoint: Checkpoint,
    destination: str,
    force: bool = False,
    cancelled: Callable[[], bool] = lambda: False,
) -> Generator[float, None, SanitizeSummary]:
    """Generator: yields progress in [0, 1]; returns SanitizeSummary. Nothing is left at the
    destination unless the whole copy was written and checked."""
    plan = plan_sanitize(checkpoint)
    destination = check_file(checkpoint, destination, force)
    records = _storage_layout(plan)
    total = sum(r.count * DTYPE_SIZES[r.dtype] for r in records) or 1
    with Staged(destination, "sanitize") as staged:
        temp = staged.temp(destination)
        written = 0
        for nbytes in _write(temp, plan, records, cancelled):
            written += nbytes
            yield min(written / total, 1.0) * 0.95
        staged.sync(temp, lambda: _check_written(temp, plan))
        yield 1.0
        staged.commit()
    return SanitizeSummary(
        destination, len(plan.tensors), os.path.getsize(destination), plan.changes
    )
