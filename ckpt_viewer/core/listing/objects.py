"""Objects of known classes decoded from their pickled state and shown as what they are.

Everything here reads what the unpickler recorded on a Placeholder (its arguments and state);
nothing is imported from the file's libraries and nothing the file names is called. Only the
standard library's own value types (datetime, timedelta) are built, from checked numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ckpt_viewer.core.listing.model import InlineBytes, Storage, TensorInfo, contiguous_strides
from ckpt_viewer.core.listing.safe_pickle import (
    TORCH_REBUILDS,
    GlobalRef,
    NumpyDtype,
    Placeholder,
    rebuild_wrapper_subclass,
)
from ckpt_viewer.core.listing.text import short_repr

if TYPE_CHECKING:
    import datetime

# What the file built (arguments, state, fields): decoders read it duck-typed, and
# describe_object turns a wrong guess (TypeError, KeyError...) into "not this class".
FromFile = Any


@dataclass
class Described:
    kind: str  # tensor | scalar | opaque | object | module | list | dict
    type_name: str = ""
    tensor: TensorInfo | None = None
    value: object = None
    children: list[tuple[str, FromFile, str]] = field(default_factory=list)  # like tree's
    note: str = ""


Decoder = Callable[[Placeholder], "Described | None"]


def describe_object(obj: FromFile) -> Described | None:
    """How a placeholder of a known class is shown, or None to show it generically."""
    if isinstance(obj, NumpyDtype):
        return Described("scalar", "numpy.dtype", value=numpy_dtype_name(obj))
    decoder = DECODERS.get(obj.qualname) or _decoder_by_name(obj.qualname)
    try:
        return decoder(obj) if decoder else None
    except (TypeError, ValueError, AttributeError, KeyError, IndexError, OverflowError):
        return None  # a hostile or unfamiliar layout: shown generically instead


def _decoder_by_name(qualname: str) -> Decoder | None:
    module, _, name = qualname.rpartition(".")
    if module in ("pathlib", "pathlib._local") and name.endswith("Path"):
        return _path
    if module.startswith("torch.ao.nn.") and ".quantized" in module and "Conv" in name:
        return _quantized_conv
    return None


def _short(qualname: str) -> str:
    return qualname.rsplit(".", 1)[-1]


def _name_of(value: FromFile) -> str:
    if (
        isinstance(value, (GlobalRef, Placeholder))
        or isinstance(value, type)
        and issubclass(value, Placeholder)
    ):
        return value.qualname
    return short_repr(value, 200)


def _shape_text(shape: FromFile) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def _ints(values: FromFile) -> tuple[int, ...]:
    if not isinstance(values, (tuple, list)) or not all(type(v) is int and v >= 0 for v in values):
        raise ValueError("not a shape")
    return tuple(values)


# --- numpy ------------------------------------------------------------------------------------

NUMPY_KINDS = {"f": "float", "i": "int", "u": "uint", "c": "complex"}


def _dtype_parts(dtype: NumpyDtype) -> tuple[str, int, str, bool]:
    """(kind letter, item size, byte order '<' '>' '|', structured?) from a pickled np.dtype."""
    spec = dtype.spec
    kind, size = spec[:1], spec[1:]
    state = dtype.state if isinstance(dtype.state, tuple) else ()
    order = state[1] if len(state) > 1 and state[1] in ("<", ">", "|", "=") else "<"
    structured = len(state) > 3 and state[3] is not None
    itemsize = int(size) if size.isdigit() else 0
    return kind, itemsize * 4 if kind == "U" else itemsize, order, structured  # U<n>: n UCS-4 chars


def numpy_dtype_name(dtype: NumpyDtype) -> str:
    """numpy's own name: float32, int64, bool, <U3 ..."""
    try:
        kind, size, _, structured = _dtype_parts(dtype)
    except (TypeError, ValueError):
        return "?"
    if structured:
        return "structured"
    if kind == "b" and size == 1:
        return "bool"
    if kind in NUMPY_KINDS and size:
        return f"{NUMPY_KINDS[kind]}{size * 8}"
    if kind == "O":
        return "object"
    if kind == "U" and size:
        return f"<U{size // 4}"
    return dtype.spec


def torch_dtype_of(dtype: NumpyDtype) -> str | None:
    """The torch dtype with the same bytes (float16, int64, bool, complex64...), if any."""
    name = numpy_dtype_name(dtype)
    allowed = {
        "float16",
        "float32",
        "float64",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "bool",
        "complex64",
        "complex128",
    }
    return name if name in allowed else None


def _numpy_array(obj: Placeholder) -> Described | None:
    """numpy's ndarray.__reduce__: _reconstruct(ndarray, (0,), b'b') then BUILD with
    (version, shape, dtype, is_fortran, raw bytes | list of objects)."""
    state = obj.state
    if not (isinstance(state, tuple) and len(state) == 5):
        return None
    _, shape, dtype, fortran, raw = state
    return _array(_ints(shape), dtype, bool(fortran), raw)


def _numpy_frombuffer(obj: Placeholder) -> Described | None:
    """Protocol 5: numpy.core.numeric._frombuffer(buffer, dtype, shape, order)."""
    raw, dtype, shape, order = obj.args
    return _array(_ints(shape), dtype, order == "F", raw)


def _array(
    shape: tuple[int, ...], dtype: FromFile, fortran: bool, raw: FromFile
) -> Described | None:
    if not isinstance(dtype, NumpyDtype):
        return None
    name = numpy_dtype_name(dtype)
    what = f"numpy array {_shape_text(shape)} {name}"
    if isinstance(raw, list):  # dtype object: the elements
        return Described(
            "list", "ndarray", children=[(str(i), v, "") for i, v in enumerate(raw)], note=what
        )
    if isinstance(raw, Placeholder) and raw.qualname == "builtins.bytes" and not raw.args:
        raw = b""  # protocol 2 writes empty bytes as a call of bytes()
    if not isinstance(raw, (bytes, bytearray)):
        return None
    kind, itemsize, order, _ = _dtype_parts(dtype)
    count = math.prod(shape)
    if len(raw) != count * itemsize:
        return Described(
            "opaque",
            "ndarray",
            value=f"{what}: holds {len(raw)} bytes, its shape needs {count * itemsize}",
        )
    torch_dtype = torch_dtype_of(dtype)
    if torch_dtype is None:
        if kind in ("U", "S") and count <= MAX_TEXT_ELEMENTS:
            return Described(
                "list",
                "ndarray",
                note=what,
                children=[
                    (str(i), v, "") for i, v in enumerate(_texts(raw, kind, itemsize, order))
                ],
            )
        return Described("opaque", "ndarray", value=f"{what} ({len(raw)} bytes)")
    storage = Storage(
        key="numpy array",
        dtype=torch_dtype,
        numel=count,
        location="cpu",
        source=InlineBytes(bytes(raw)),
        byteorder="big" if order == ">" else "little",
    )
    info = TensorInfo(
        dtype=torch_dtype,
        shape=shape,
        stride=contiguous_strides(shape[::-1])[::-1] if fortran else contiguous_strides(shape),
        storage=storage,
    )
    return Described("tensor", "ndarray", tensor=info, note="numpy array")


MAX_TEXT_ELEMENTS = 1024


def _texts(
    raw: bytes | bytearray, kind: str, itemsize: int, order: str
) -> list[str | bytes | bytearray]:
    if not itemsize:
        return []
    cells = [raw[i : i + itemsize] for i in range(0, len(raw), itemsize)]
    if kind == "S":
        return [c.rstrip(b"\0") for c in cells]
    codec = "utf-32-be" if order == ">" else "utf-32-le"
    return [c.decode(codec, "replace").rstrip("\0") for c in cells]


# --- tensor subclasses (DTensor, torchao) -----------------------------------------------------


def _from_type_v2(obj: Placeholder) -> Described | None:
    """torch._tensor._rebuild_from_type_v2(func, new_type, args, state), kept as a record."""
    func, new_type, args, state = obj.args
    if (
        func is rebuild_wrapper_subclass
        or isinstance(func, type)
        and issubclass(func, Placeholder)
        and func.qualname == "torch._utils._rebuild_wrapper_subclass"
    ):
        return _wrapper_subclass(args, state)
    if func in TORCH_REBUILDS.values() and isinstance(args, tuple):
        tensor = func(*args)  # one of our own record builders, not the file's
        if isinstance(tensor, TensorInfo):
            children = [(str(k), v, "") for k, v in _state_fields(state).items()]
            return Described(
                "tensor",
                _name_of(new_type),
                tensor=tensor,
                children=children,
                note=f"tensor subclass {_short(_name_of(new_type))}",
            )
    return None


def _wrapper_placeholder(obj: Placeholder) -> Described | None:
    """torch._utils._rebuild_wrapper_subclass(...) called directly, state set on the result."""
    return _wrapper_subclass(obj.args, obj.state)


def _state_fields(state: FromFile) -> dict[str, FromFile]:
    if isinstance(state, dict):
        return state
    if isinstance(state, tuple):  # (dict state, slot state)
        merged = {}
        for part in state:
            if isinstance(part, dict):
                merged.update(part)
        return merged
    return {}


def _wrapper_subclass(args: FromFile, state: FromFile) -> Described | None:
    cls, dtype, size, stride, _offset, _layout, device, grad = args[:8]
    qualname, shape = _name_of(cls), _ints(size)
    fields = _state_fields(state)
    if _short(qualname) == "DTensor" and isinstance(fields.get("_local_tensor"), TensorInfo):
        return _dtensor(qualname, dtype, shape, _ints(stride), grad is True, fields)
    note = f"{_short(qualname)}: logical shape {_shape_text(shape)} {dtype} on {device}"
    blocks = _affine_blocks(shape, dtype, fields)
    if blocks is not None:
        parts = {
            k: fields[k]
            for k in ("qdata", "scale", "zero_point")
            if isinstance(fields.get(k), TensorInfo)
        }
        inner = ", ".join(f"{k} {_shape_text(v.shape)} {v.dtype}" for k, v in parts.items())
        tensor = TensorInfo(
            dtype=dtype,
            shape=shape,
            stride=contiguous_strides(shape),
            layout="torchao",
            parts=parts,
            requires_grad=grad is True,
            subclass=qualname,
            quantizer={"block_size": blocks},
        )
        return Described(
            "tensor",
            qualname,
            tensor=tensor,
            note=f"{note}; {inner}, block size {_shape_text(blocks)}",
        )
    children = [(str(k), v, "") for k, v in fields.items()]
    return Described("object", qualname, children=children, note=note)


AFFINE_QDATA = {"int8", "uint8", "float8_e4m3fn", "float8_e5m2"}


def _affine_blocks(
    shape: tuple[int, ...], dtype: str, fields: dict[str, FromFile]
) -> tuple[int, ...] | None:
    """torchao's affine-quantized weights (Int8Tensor, Float8Tensor, IntxUnpackedToInt8Tensor):
    qdata of the logical shape, one scale (and zero_point) per block of `block_size`; their
    value is (qdata - zero_point) * scale. The block size, when the file's layout is exactly
    that; None for anything else."""
    qdata, scale, zero_point = (fields.get(k) for k in ("qdata", "scale", "zero_point"))
    blocks = fields.get("block_size")
    if not (
        isinstance(qdata, TensorInfo)
        and isinstance(scale, TensorInfo)
        and isinstance(blocks, (tuple, list))
        and len(blocks) == len(shape)
        and all(type(b) is int and b > 0 and size % b == 0 for b, size in zip(blocks, shape))
        and dtype in ("float32", "float16", "bfloat16")
        and qdata.dtype in AFFINE_QDATA
        and tuple(qdata.shape) == shape
        and scale.dtype in ("float32", "float16", "bfloat16")
    ):
        return None
    scales = tuple(size // b for size, b in zip(shape, blocks))
    if (
        math.prod(scale.shape) != math.prod(scales)
        or zero_point is not None
        and not (
            isinstance(zero_point, TensorInfo)
            and math.prod(zero_point.shape) == math.prod(scales)
            and zero_point.dtype in ("int8", "uint8", "int32", "float32", "float16", "bfloat16")
            and not qdata.dtype.startswith("float8")
        )
    ):
        return None
    return tuple(blocks)


def _dtensor(
    qualname: str,
    dtype: str,
    shape: tuple[int, ...],
    stride: tuple[int, ...],
    requires_grad: bool,
    fields: dict[str, FromFile],
) -> Described:
    """A DTensor is the tensor at its key, of its global shape. When this file holds all of it
    (local shard of the global shape, nothing pending a cross-rank sum: Replicate, or a 1-rank
    mesh) it reads as that shard; otherwise it holds a part, read nowhere but named."""
    local = fields["_local_tensor"]
    spec = fields.get("_spec")
    spec_fields = spec.fields if isinstance(spec, Placeholder) else {}
    placements = spec_fields.get("placements")
    placements = placements if isinstance(placements, tuple) else ()
    mesh = spec_fields.get("mesh")
    sizes = _mesh_shape(mesh)
    note = (
        f"DTensor: global shape {_shape_text(shape)} {dtype}, placements "
        f"({', '.join(_placement_text(p) for p in placements)}), mesh {_mesh_text(mesh)}"
    )
    partial = any(
        _short(getattr(p, "qualname", "")) == "Partial"
        and (sizes is None or i >= len(sizes) or sizes[i] != 1)
        for i, p in enumerate(placements)
    )
    if tuple(local.shape) == shape and local.dtype == dtype and not partial:
        tensor = replace(local, requires_grad=requires_grad, subclass=qualname)
        return Described(
            "tensor", qualname, tensor=tensor, note=note + "; this file holds all of it"
        )
    held = _held_part(local, shape, placements, sizes, mesh)
    tensor = TensorInfo(
        dtype=dtype,
        shape=shape,
        stride=stride,
        layout="dtensor",
        parts={"local": local},
        requires_grad=requires_grad,
        subclass=qualname,
    )
    tensor.attrs = {"held": held}
    return Described("tensor", qualname, tensor=tensor, note=f"{note}; {held}")


def _held_part(
    local: TensorInfo,
    shape: tuple[int, ...],
    placements: FromFile,
    sizes: list[int] | None,
    mesh: FromFile,
) -> str:
    """Which part of the global tensor this rank's file holds, as torch shards it: a Shard(d)
    over a mesh dimension of n ranks gives coordinate c rows [c*k, c*k + k), k = ceil(size/n)."""
    fields = mesh.fields if isinstance(mesh, Placeholder) else {}
    coordinate, rank = fields.get("_coordinate_on_dim"), fields.get("_rank")
    who = f"rank {rank}" if type(rank) is int else "this rank"
    text = f"{who} holds its local shard {_shape_text(local.shape)} {local.dtype}"
    if not (
        isinstance(coordinate, tuple)
        and sizes is not None
        and len(coordinate) == len(sizes) == len(placements)
        and all(type(c) is int for c in coordinate)
    ):
        return text
    start, extent = [0] * len(shape), list(shape)
    for c, n, placement in zip(coordinate, sizes, placements):
        name = _short(getattr(placement, "qualname", ""))
        if name == "Partial":
            text += " (a partial sum: the global values add every rank's)"
        if name != "Shard":
            continue
        dim = {**dict(zip(("dim",), placement.args)), **placement.fields}.get("dim")
        if type(dim) is not int or not 0 <= dim < len(shape) or n <= 0:
            return text
        chunk = -(-extent[dim] // n)
        first = min(c * chunk, extent[dim])
        start[dim] += first
        extent[dim] = min(chunk, extent[dim] - first)
    if tuple(extent) != tuple(local.shape):
        return text
    ranges = [
        f"[{a}:{a + e}] of {n} along dim {d}"
        for d, (a, e, n) in enumerate(zip(start, extent, shape))
        if e != n
    ]
    return text + (": " + ", ".join(ranges) if ranges else "")


def _placement_text(placement: FromFile) -> str:
    if not isinstance(placement, Placeholder):
        return "?"
    values = {**dict(zip(("dim",), placement.args)), **placement.fields}
    name = _short(placement.qualname)
    if name == "Partial":
        return f"Partial({values.get('reduce_op', '?')})"
    if name == "_StridedShard":
        return f"_StridedShard(dim={values.get('dim', '?')}, sf={values.get('split_factor', '?')})"
    if name == "Shard":
        return f"Shard(dim={values.get('dim', '?')})"
    parts = [f"{k}={v!r}" for k, v in values.items() if isinstance(v, (int, str, float))]
    return f"{name}({', '.join(parts)})"


def _mesh_shape(mesh: FromFile) -> list[int] | None:
    """DeviceMesh sizes per dimension, from its layout (torch >= 2.9) or its mesh tensor."""
    fields = mesh.fields if isinstance(mesh, Placeholder) else {}
    layout = fields.get("_layout")
    if isinstance(layout, Placeholder) and isinstance(layout.fields.get("axes"), tuple):
        shape = []
        for axis in layout.fields["axes"]:
            sizes = axis.fields.get("shape") if isinstance(axis, Placeholder) else None
            sizes = sizes if isinstance(sizes, tuple) else (sizes,) if type(sizes) is int else ()
            shape.append(math.prod(s for s in sizes if type(s) is int))
        return shape
    if isinstance(fields.get("mesh"), TensorInfo):
        return list(fields["mesh"].shape)
    return None


def _mesh_text(mesh: FromFile) -> str:
    if not isinstance(mesh, Placeholder):
        return "?"
    fields = mesh.fields
    device = fields.get("_device_type") or fields.get("device_type") or "?"
    shape = _mesh_shape(mesh)
    names = fields.get("_mesh_dim_names") or fields.get("mesh_dim_names")
    text = _shape_text(shape) if shape is not None else "?"
    if isinstance(names, tuple) and names:
        text += " (" + ", ".join(map(str, names)) + ")"
    return f"{text} {device}"


# --- torch.ao quantized modules ---------------------------------------------------------------


def _script_object(obj: Placeholder) -> Described | None:
    """A TorchScript custom class (quantized packed params): state is (payload, class name)."""
    payload, class_name = obj.state
    if not isinstance(class_name, str):
        return None
    items = payload if isinstance(payload, (tuple, list)) else (payload,)
    return Described(
        "object",
        class_name.replace("__torch__.torch.classes.", ""),
        children=[(str(i), v, "") for i, v in enumerate(items)],
    )


def _script_payload(value: FromFile) -> FromFile:
    if (
        isinstance(value, Placeholder)
        and value.qualname == "torch.ScriptObject"
        and isinstance(value.state, tuple)
        and len(value.state) == 2
    ):
        return value.state[0]
    return None


CONV_FIELDS = (
    "in_channels",
    "out_channels",
    "kernel_size",
    "stride",
    "padding",
    "dilation",
    "transposed",
    "output_padding",
    "groups",
    "padding_mode",
)


def _quantized_conv(obj: Placeholder) -> Described | None:
    """torch.ao quantized Conv*d pickle a tuple (its __getstate__); torch's state_dict names
    the packed weight and bias `weight` and `bias`, then scale and zero_point."""
    state = obj.state
    if not (
        obj.qualname.startswith("torch.ao.nn.") and isinstance(state, tuple) and len(state) == 15
    ):
        return None
    note = ", ".join(f"{k}={v!r}" for k, v in zip(CONV_FIELDS, state) if k != "transposed" or v)
    weight, bias, scale, zero_point = state[10:14]
    children = [
        ("weight", weight, "parameter"),
        ("bias", bias, "parameter"),
        ("scale", scale, ""),
        ("zero_point", zero_point, ""),
    ]
    return Described(
        "module",
        obj.qualname,
        note=note,
        children=[c for c in children if c[1] is not None or c[0] == "bias"],
    )


def module_state_extras(obj: Placeholder) -> list[tuple[str, FromFile, str]]:
    """state_dict entries a module writes itself (torch.ao quantized modules' _save_to_state_dict),
    placed after its parameters and buffers like torch does: (name, value, role)."""
    qualname, fields = obj.qualname, obj.fields
    if not qualname.startswith("torch.ao.nn."):
        return []
    extras = []
    payload = _script_payload(fields.get("_packed_params"))
    if payload is not None:  # LinearPackedParams: dtype, (weight, bias)
        extras += [("dtype", fields.get("dtype"), ""), ("_packed_params", payload, "")]
    payload = _script_payload(fields.get("_packed_weight"))
    if (
        qualname.endswith(".EmbeddingPackedParams")
        and isinstance(payload, tuple)
        and len(payload) > 1
        and isinstance(payload[1], list)
        and payload[1]
        and isinstance(payload[1][0], TensorInfo)
    ):  # (version, [weight], [...], [bit rate])
        extras += [("dtype", fields.get("dtype"), ""), ("_packed_weight", payload[1][0], "")]
    modules = fields.get("_modules") or {}
    packed = modules.get("_packed_params") if isinstance(modules, dict) else None
    writes_scale = _script_payload(
        getattr(packed, "fields", {}).get("_packed_params")
    ) is not None or qualname.endswith("QFunctional")
    if writes_scale and "scale" in fields and "zero_point" in fields:
        extras += [("scale", fields["scale"], ""), ("zero_point", fields["zero_point"], "")]
    return extras


# --- torch.compile ----------------------------------------------------------------------------


def _optimized_module(obj: Placeholder) -> Described | None:
    """torch.compile's wrapper pickles as OptimizedModule(orig_mod, dynamo_ctx); its
    state_dict keeps the `_orig_mod.` prefix."""
    if not obj.args:
        return None
    return Described(
        "module",
        obj.qualname,
        note="torch.compile wrapper",
        children=[("_orig_mod", obj.args[0], "")],
    )


# --- standard library values ------------------------------------------------------------------


def _path(obj: Placeholder) -> Described | None:
    parts = obj.args
    if not all(isinstance(p, str) for p in parts) or obj.state is not None:
        return None
    windows = "Windows" in obj.qualname
    sep = "\\" if windows else "/"
    if not parts:
        text = "."
    elif parts[0].endswith(sep) or windows and parts[0].endswith(":"):
        text = parts[0] + sep.join(parts[1:])
    else:
        text = sep.join(parts)
    return Described("scalar", _short(obj.qualname), value=text)


def _partial(obj: Placeholder) -> Described | None:
    state = obj.state
    if not (isinstance(state, tuple) and len(state) >= 3):
        return None
    func, args, keywords = state[:3]
    args = args if isinstance(args, tuple) else ()
    keywords = keywords if isinstance(keywords, dict) else {}
    shown = [_brief(a) for a in args] + [f"{k}={_brief(v)}" for k, v in keywords.items()]
    note = f"partial({_name_of(func)}{''.join(', ' + s for s in shown)})"
    return Described(
        "object",
        obj.qualname,
        note=note[:300],
        children=[("func", func, ""), ("args", args, ""), ("keywords", keywords, "")],
    )


def _brief(value: FromFile) -> str:
    if isinstance(value, (bool, int, float, str, type(None))):
        text = short_repr(value, 41)
        return text if len(text) <= 40 else text[:37] + "..."
    return f"<{type(value).__name__ if not isinstance(value, Placeholder) else _short(value.qualname)}>"


def python_datetime(
    obj: FromFile,
) -> datetime.date | datetime.time | datetime.timedelta | datetime.tzinfo | None:
    """A datetime/date/time/timedelta/timezone built from its pickled fields, or None."""
    import datetime  # only for a file that holds one

    if not isinstance(obj, Placeholder):
        return None
    name, args = obj.qualname, obj.args
    if name == "datetime.timedelta":
        return datetime.timedelta(*[a for a in args if type(a) is int][:3])
    if name == "datetime.timezone" and args:
        offset = python_datetime(args[0])
        return (
            datetime.timezone(offset, *[a for a in args[1:2] if isinstance(a, str)])
            if isinstance(offset, datetime.timedelta)
            else None
        )
    if not args or not isinstance(args[0], (bytes, bytearray)):
        return None
    b = bytes(args[0])
    tz = python_datetime(args[1]) if len(args) > 1 else None
    tz = tz if isinstance(tz, datetime.tzinfo) else None
    if name == "datetime.date" and len(b) == 4:
        return datetime.date(b[0] * 256 + b[1], b[2], b[3])
    if name == "datetime.datetime" and len(b) == 10:
        return datetime.datetime(
            b[0] * 256 + b[1],
            b[2] & 0x7F,
            b[3],
            b[4],
            b[5],
            b[6],
            (b[7] << 16) | (b[8] << 8) | b[9],
            tz,
            fold=b[2] >> 7,
        )
    if name == "datetime.time" and len(b) == 6:
        return datetime.time(
            b[0] & 0x7F, b[1], b[2], (b[3] << 16) | (b[4] << 8) | b[5], tz, fold=b[0] >> 7
        )
    return None


def _datetime(obj: Placeholder) -> Described | None:
    value = python_datetime(obj)
    if value is None:
        return None
    import datetime  # imported by python_datetime: a dictionary look-up here

    if isinstance(value, (datetime.date, datetime.time)):
        text = value.isoformat()
    else:
        text = str(value)  # timedelta: "1 day, 0:00:05"; timezone: "UTC"
    return Described("scalar", _short(obj.qualname), value=text)


def _enum_by_name(obj: Placeholder) -> Described | None:
    """Enum members pickled by name: getattr(EnumClass, 'NAME') (Python's global enums)."""
    if (
        len(obj.args) == 2
        and isinstance(obj.args[1], str)
        and obj.args[1].isidentifier()
        and isinstance(obj.args[0], type)
        and issubclass(obj.args[0], Placeholder)
    ):
        owner, name = obj.args[0].qualname, obj.args[1]
        return Described(
            "scalar", owner, value=f"{_short(owner)}.{name}", note=f"getattr({owner}, {name!r})"
        )  # the call stays visible
    return None


DECODERS: dict[str, Decoder] = {
    "numpy.core.multiarray._reconstruct": _numpy_array,
    "numpy._core.multiarray._reconstruct": _numpy_array,
    "numpy.core.numeric._frombuffer": _numpy_frombuffer,
    "numpy._core.numeric._frombuffer": _numpy_frombuffer,
    "torch._tensor._rebuild_from_type_v2": _from_type_v2,
    "torch._utils._rebuild_wrapper_subclass": _wrapper_placeholder,
    "torch.ScriptObject": _script_object,
    "torch._dynamo.eval_frame.OptimizedModule": _optimized_module,
    "functools.partial": _partial,
    "datetime.datetime": _datetime,
    "datetime.date": _datetime,
    "datetime.time": _datetime,
    "datetime.timedelta": _datetime,
    "datetime.timezone": _datetime,
    "builtins.getattr": _enum_by_name,
}


def call_note(obj: Placeholder) -> str:
    """`Color(1)`, `Point(1, 2)`: a class the file called with plain values only (an enum
    member by value, a namedtuple: their field names are not in the file)."""
    if obj.state is not None or obj.items or obj.list_items or not obj.args and not obj.kwargs:
        return ""
    values = list(obj.args) + list(obj.kwargs.values())
    if len(values) > 8 or not all(
        isinstance(v, (bool, int, float, str, type(None))) for v in values
    ):
        return ""
    shown = [_brief(a) for a in obj.args] + [f"{k}={_brief(v)}" for k, v in obj.kwargs.items()]
    return f"{_short(obj.qualname)}({', '.join(shown)})"
