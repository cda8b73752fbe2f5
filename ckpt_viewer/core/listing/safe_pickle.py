"""A restricted unpickler that imports no torch and calls no function named by the file.

torch's tensor and storage rebuild globals become TensorInfo records; plain containers are built
as data; every other global becomes an inert Placeholder class that records its qualified name
and the arguments and state the file gives it. The only callables the pickle machine can reach
are the ones defined here.
"""

from __future__ import annotations

import _compat_pickle
import dataclasses
import io
import operator
import pickle
import threading
from collections import Counter, OrderedDict
from typing import Any, NoReturn

from ckpt_viewer.core import Ambiguous, CheckpointError
from ckpt_viewer.core.listing import model
from ckpt_viewer.core.listing.model import (
    DTYPE_SIZES,
    FLOAT_DTYPES,
    STORAGE_DTYPES,
    Checkpoint,
    Storage,
    TensorInfo,
    contiguous_strides,
    span_bytes,
)
from ckpt_viewer.core.listing.pickle_scan import (
    MAX_SIMULATED,
    pickle_end,
    setitem_on_non_dict,
    unsupported_by_torch,
)
from ckpt_viewer.core.listing.text import short_repr

# What a pickle passes to the callables below: anything the file holds, checked inside each.
FromPickle = Any


class Placeholder:
    """An instance of a class the file names; holds what the file gave it, runs nothing."""

    qualname = "?"
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    state: Any
    items: dict[Any, Any]
    list_items: list[Any]

    def __new__(cls, *args: FromPickle, **kwargs: FromPickle) -> Placeholder:
        obj = object.__new__(cls)
        obj.args, obj.kwargs, obj.state = args, kwargs, None
        obj.items, obj.list_items = {}, []
        return obj

    def __init__(self, *args: FromPickle, **kwargs: FromPickle) -> None:
        # only a REDUCE (a call of the global) runs __init__; NEWOBJ stops at __new__
        self.args, self.kwargs = args, kwargs
        current_report().note_call(self.qualname, args)

    @classmethod
    def _new(cls) -> Placeholder:
        return cls.__new__(cls)

    def __call__(self, *args: FromPickle, **kwargs: FromPickle) -> Placeholder:
        # the file calls what one of its calls returned (getattr(module, "system")(...)):
        # recorded as code, nothing run
        report = current_report()
        report.note_call(self.qualname, self.args, then=args)
        report.code.setdefault(self.qualname, "the file calls what this returned")
        return _record(self.qualname, args)

    def __setstate__(self, state: FromPickle) -> None:
        self.state = state

    def __setitem__(self, key: FromPickle, value: FromPickle) -> None:
        self.items[key] = value

    def append(self, value: FromPickle) -> None:
        self.list_items.append(value)

    def extend(self, values: FromPickle) -> None:
        self.list_items.extend(values)

    def add(self, value: FromPickle) -> None:
        self.list_items.append(value)

    def __reduce__(self) -> NoReturn:
        raise TypeError("placeholders cannot be pickled")

    def __repr__(self) -> str:
        return f"<{self.qualname}>"

    @property
    def fields(self) -> dict[Any, Any]:
        """The object's attributes as the file recorded them."""
        state = self.state
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            merged = {}
            for part in state:
                if isinstance(part, dict):
                    merged.update(part)
            return merged
        return state if isinstance(state, dict) else {}


class GlobalRef:
    """A global used as a value (not called): e.g. a class object stored in a config."""

    def __init__(self, qualname: str) -> None:
        self.qualname = qualname

    def __repr__(self) -> str:
        return self.qualname


class TorchDtype(str):
    """`torch.float32` etc. as stored in a pickle."""


class Layout(str):
    pass


# --- torch's weights_only allowlist, as names ------------------------------------------------

LEGACY_STORAGES = (
    "Double",
    "Float",
    "Half",
    "Long",
    "Int",
    "Short",
    "Char",
    "Byte",
    "Bool",
    "BFloat16",
    "ComplexDouble",
    "ComplexFloat",
)
QUANTIZED_STORAGES = ("QInt8", "QInt32", "QUInt8", "QUInt4x2", "QUInt2x4")
LEGACY_TENSORS = {
    "Double": "float64",
    "Float": "float32",
    "Half": "float16",
    "Long": "int64",
    "Int": "int32",
    "Short": "int16",
    "Char": "int8",
    "Byte": "uint8",
    "Bool": "bool",
    "BFloat16": "bfloat16",
}
TORCH_DTYPE_NAMES = set(DTYPE_SIZES) | {
    f"{kind}{bits}" for kind in ("int", "uint") for bits in range(1, 8)
}
TORCH_REBUILD_NAMES = (
    "_rebuild_parameter",
    "_rebuild_parameter_with_state",
    "_rebuild_qtensor",
    "_rebuild_tensor",
    "_rebuild_tensor_v2",
    "_rebuild_tensor_v3",
    "_rebuild_sparse_tensor",
    "_rebuild_meta_tensor_no_storage",
    "_rebuild_nested_tensor",
    "_rebuild_wrapper_subclass",
    "_rebuild_device_tensor_from_numpy",
    "_rebuild_device_tensor_from_cpu_tensor",
)
QSCHEMES = (
    "per_tensor_affine",
    "per_tensor_symmetric",
    "per_channel_affine",
    "per_channel_symmetric",
    "per_channel_affine_float_qparams",
)


def torch_allowed_globals() -> frozenset[str]:
    """Every global torch.load(weights_only=True) accepts without an allowlist (torch 2.13)."""
    names = {
        "collections.OrderedDict",
        "collections.Counter",
        "torch.nn.parameter.Parameter",
        "torch.serialization._get_layout",
        "torch.Size",
        "torch.Tensor",
        "torch.device",
        "_codecs.encode",
        "builtins.bytearray",
        "builtins.set",
        "builtins.complex",
        "torch.storage.TypedStorage",
        "torch.storage.UntypedStorage",
        "torch._tensor._rebuild_from_type_v2",
    }
    names |= {f"torch.{d}" for d in TORCH_DTYPE_NAMES}
    names |= {f"torch.{q}" for q in QSCHEMES}
    names |= {f"torch._utils.{f}" for f in TORCH_REBUILD_NAMES}
    for kind in LEGACY_STORAGES:
        names |= {f"torch.{kind}Storage", f"torch.cuda.{kind}Storage"}
    names |= {f"torch.{kind}Storage" for kind in QUANTIZED_STORAGES}
    for kind in LEGACY_TENSORS:
        names |= {f"torch.{kind}Tensor", f"torch.cuda.{kind}Tensor"}
        if kind != "Bool":
            names |= {f"torch.sparse.{kind}Tensor", f"torch.cuda.sparse.{kind}Tensor"}
    return frozenset(names)


TORCH_ALLOWED = torch_allowed_globals()


# --- the allowlisted globals, implemented here as pure data builders --------------------------


def _storage_class(name: str) -> GlobalRef:
    return GlobalRef("torch." + name)


def dtype_of_storage(storage_type: FromPickle, untyped_ok: bool = True) -> str:
    """The element type a persistent id's storage type names. torch's legacy loader asks every
    storage type for its dtype, which UntypedStorage lacks (it refuses such files, its own
    legacy saves of float8 or uint16 tensors included)."""
    name = getattr(storage_type, "qualname", "")
    short = name.rsplit(".", 1)[-1]
    if name not in TORCH_ALLOWED or short not in STORAGE_DTYPES:
        raise CheckpointError(
            f"unknown storage type {getattr(storage_type, 'qualname', storage_type)!r:.60}"
        )
    if short == "UntypedStorage" and not untyped_ok:
        raise CheckpointError(
            "a legacy-format file with an untyped storage (float8, uint16... "
            "saved with _use_new_zipfile_serialization=False): torch cannot "
            "load it either"
        )
    return STORAGE_DTYPES[short]


def _as_ints(value: FromPickle, what: str) -> tuple[int, ...]:
    try:
        ints = tuple(map(operator.index, value))
    except TypeError:
        raise CheckpointError(f"tensor {what} is not a tuple of integers: {value!r:.80}") from None
    if what == "shape" and ints and min(ints) < 0:
        raise CheckpointError(f"tensor has a negative size: {value!r:.80}")
    return ints


def _check_storage(storage: FromPickle, what: str = "tensor") -> Storage:
    if not isinstance(storage, Storage):
        raise CheckpointError(f"{what} data is not a storage record")
    return storage


def set_geometry(
    info: TensorInfo,
    storage: FromPickle,
    offset: FromPickle,
    size: FromPickle,
    stride: FromPickle = None,
) -> TensorInfo:
    """Tensor.set_(storage, offset, size, stride) with torch's checks: the view must lie inside
    the storage (counted in bytes: a v3 tensor's dtype may differ from its storage's)."""
    shape, stride = _checked_geometry(info.dtype, storage, offset, size, stride)
    info.storage, info.offset, info.shape, info.stride = storage, offset, shape, stride
    return info


def _checked_geometry(
    dtype: str, storage: FromPickle, offset: FromPickle, size: FromPickle, stride: FromPickle
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(shape, stride) of a view of storage, checked as Tensor.set_ checks it."""
    _check_storage(storage)
    try:  # the common case in one step; _as_ints says what is wrong otherwise
        shape = tuple(map(operator.index, size))
        stride = tuple(map(operator.index, stride)) if stride is not None else ()
    except TypeError:
        shape, stride = _as_ints(size, "shape"), _as_ints(stride, "stride")
    if shape and min(shape) < 0:
        _as_ints(size, "shape")  # raises: a negative size
    if not stride and shape:
        stride = contiguous_strides(shape)  # set_ with no stride: contiguous, as in torch
    if len(shape) != len(stride) or type(offset) is not int or offset < 0:
        raise CheckpointError(f"tensor geometry is inconsistent: size {shape}, stride {stride}")
    if stride and min(stride) < 0:
        raise CheckpointError("tensor has a negative stride (torch refuses it)")
    if 0 not in shape:
        # strides are >= 0: the last element is offset + sum((size - 1) * stride)
        last = offset + sum(map(operator.mul, shape, stride)) - sum(stride)
        end = span_bytes(dtype, last + 1)
        storage_bytes = storage.nbytes
        if end > storage_bytes and storage.resizable:
            raise Ambiguous(
                f"a tensor reaches past the end of legacy storage {storage.key!r}, "
                "which torch grows to fit: those values would be uninitialized "
                "memory"
            )
        if end > storage_bytes:
            raise CheckpointError(
                f"tensor reaches byte {end:,} of storage {storage.key!r}, "
                f"which holds {storage_bytes:,}"
            )
    return shape, stride


def _note_requires_grad(info: TensorInfo, requires_grad: FromPickle) -> None:
    info.requires_grad = bool(requires_grad)
    if (
        info.requires_grad
        and info.dtype not in FLOAT_DTYPES
        and not info.dtype.startswith("complex")
    ):
        current_report().refuse(
            f"an {info.dtype} tensor is marked requires_grad (torch refuses: "
            "only floating point and complex tensors can require gradients)"
        )


def rebuild_tensor(
    storage: FromPickle,
    storage_offset: FromPickle,
    size: FromPickle,
    stride: FromPickle,
    requires_grad: bool = False,
    hooks: FromPickle = None,
    metadata: FromPickle = None,
    dtype: FromPickle = None,
) -> TensorInfo:
    storage = _check_storage(storage)
    dtype = str(dtype) if dtype is not None else storage.dtype
    if dtype not in DTYPE_SIZES:
        raise CheckpointError(f"tensor has an unknown dtype {dtype!r:.40}")
    shape, stride = _checked_geometry(dtype, storage, storage_offset, size, stride)
    info = TensorInfo(dtype, shape, stride, storage_offset, storage)
    if requires_grad:
        _note_requires_grad(info, requires_grad)
    if metadata:
        if not isinstance(metadata, dict):
            raise CheckpointError("tensor metadata is not a dict")
        # torch's _set_tensor_metadata sets a bit whenever its key is present, even as False
        info.neg, info.conj = "neg" in metadata, "conj" in metadata
        if info.conj and not dtype.startswith("complex"):
            current_report().refuse(
                "a real tensor carries the conjugate bit (torch fails an internal check loading it)"
            )
        if info.neg and dtype == "bool":
            info.neg = False  # torch loads it but cannot compute -x of bools: shown as stored
    return info


def rebuild_tensor_v3(
    storage: FromPickle,
    storage_offset: FromPickle,
    size: FromPickle,
    stride: FromPickle,
    requires_grad: FromPickle,
    hooks: FromPickle,
    dtype: FromPickle,
    metadata: FromPickle = None,
) -> TensorInfo:
    if requires_grad:
        current_report().refuse(
            "a v3 tensor record asks for requires_grad (torch then set_s a "
            "leaf that requires grad in place, and refuses)"
        )
    return rebuild_tensor(
        storage, storage_offset, size, stride, requires_grad, hooks, metadata, dtype
    )


def rebuild_tensor_v1(
    storage: FromPickle, storage_offset: FromPickle, size: FromPickle, stride: FromPickle
) -> TensorInfo:
    return rebuild_tensor(storage, storage_offset, size, stride)


def _tensor_copy(data: FromPickle, what: str = "parameter data") -> TensorInfo:
    """A new tensor object over the same storage (torch's Parameter(data) and as_subclass)."""
    if not isinstance(data, TensorInfo):
        raise CheckpointError(f"{what} is not a tensor")
    return dataclasses.replace(data)


def rebuild_parameter(
    data: FromPickle, requires_grad: bool = True, hooks: FromPickle = None
) -> TensorInfo:
    param = _tensor_copy(data)
    param.is_parameter = True
    _note_requires_grad(param, requires_grad)
    return param


def rebuild_parameter_with_state(
    data: FromPickle, requires_grad: FromPickle, hooks: FromPickle, state: FromPickle
) -> TensorInfo:
    return set_object_state(rebuild_parameter(data, requires_grad), state)


def set_object_state(info: TensorInfo, state: FromPickle) -> TensorInfo:
    """torch._utils._set_obj_state on a tensor: attributes set one by one; `data` replaces the
    tensor's contents, `requires_grad` its flag; anything else is a Python attribute."""
    if isinstance(state, tuple):
        if len(state) != 2:
            raise CheckpointError("tensor state is malformed")
        parts: tuple[Any, ...] = state
    else:
        parts = (state,)
    for part in parts:
        if not part:
            continue
        if not isinstance(part, dict):
            raise CheckpointError("tensor state is not a dict")
        for name, value in part.items():
            if not isinstance(name, str):
                raise CheckpointError("tensor attribute name is not text")
            if name == "data":
                source = _tensor_copy(value, "a tensor's replacement data")
                for slot in (
                    "dtype",
                    "shape",
                    "stride",
                    "offset",
                    "storage",
                    "layout",
                    "parts",
                    "quantizer",
                    "neg",
                    "conj",
                    "chunks",
                ):
                    setattr(info, slot, getattr(source, slot))
            elif name == "requires_grad":
                _note_requires_grad(info, value)
            else:
                info.attrs = {**info.attrs, name: value}
    return info


def build_tensor(info: TensorInfo, state: FromPickle) -> None:
    """BUILD on a tensor, as torch's weights_only unpickler does it: a Parameter takes
    Tensor.__setstate__ (4 items: set_; 5: legacy Variable; 3: requires_grad and hooks), a
    plain tensor `set_(*state)`."""
    if not isinstance(state, tuple):
        raise CheckpointError("tensor state is malformed (BUILD with a non-tuple)")
    if info.subclass:
        info.attrs = {**info.attrs, "state": state}
        return
    if info.is_parameter and len(state) in (3, 5):
        if len(state) == 5:
            set_object_state(info, {"data": state[0]})
            state = (state[3], state[4], state[2])
        _note_requires_grad(info, state[0])
        return
    if not state:
        info.storage, info.shape, info.stride, info.offset = None, (0,), (1,), 0
    elif isinstance(state[0], TensorInfo) and len(state) == 1:
        set_object_state(info, {"data": state[0]})
    elif 1 <= len(state) <= 4:
        storage = _check_storage(state[0])
        if info.requires_grad:
            current_report().refuse(
                "a BUILD re-points a tensor that requires grad (torch "
                "refuses this in-place change of a leaf)"
            )
        if storage.dtype != info.dtype:
            current_report().refuse(
                f"a BUILD points a {info.dtype} tensor at a {storage.dtype} "
                "storage (torch expects a storage of the tensor's type)"
            )
        if len(state) == 1:
            state = (storage, 0, (storage.nbytes // DTYPE_SIZES.get(info.dtype, 1),))
        set_geometry(info, *state)
    else:
        raise CheckpointError(f"tensor state has {len(state)} items; torch's set_ takes at most 4")


model.TENSOR_BUILD = build_tensor


def rebuild_qtensor(
    storage: FromPickle,
    storage_offset: FromPickle,
    size: FromPickle,
    stride: FromPickle,
    quantizer_params: FromPickle,
    requires_grad: bool = False,
    hooks: FromPickle = None,
) -> TensorInfo:
    info = rebuild_tensor(storage, storage_offset, size, stride, requires_grad)
    info.layout = "quantized"
    if isinstance(quantizer_params, tuple) and quantizer_params:
        scheme = str(quantizer_params[0])
        info.quantizer = {"qscheme": scheme}
        if scheme == "per_tensor_affine" and len(quantizer_params) >= 3:
            info.quantizer.update(scale=quantizer_params[1], zero_point=quantizer_params[2])
        elif len(quantizer_params) >= 4:
            info.quantizer.update(
                scales=quantizer_params[1],
                zero_points=quantizer_params[2],
                axis=quantizer_params[3],
            )
    return info


def rebuild_sparse_tensor(layout: FromPickle, data: FromPickle) -> TensorInfo:
    layout = str(layout).replace("torch.", "")
    if not isinstance(data, tuple):
        raise CheckpointError("sparse tensor data is not a tuple")
    if layout == "sparse_coo" and len(data) >= 3:
        indices, values, size = data[:3]
        parts = {"indices": indices, "values": values}
    elif len(data) >= 4:
        compressed, plain, values, size = data[:4]
        parts = {"compressed_indices": compressed, "plain_indices": plain, "values": values}
    else:
        raise CheckpointError(f"sparse tensor of layout {layout} has unexpected data")
    if not all(isinstance(p, TensorInfo) for p in parts.values()):
        raise CheckpointError("sparse tensor parts are not tensors")
    return TensorInfo(
        dtype=parts["values"].dtype, shape=_as_ints(size, "shape"), layout=layout, parts=parts
    )


def rebuild_meta_tensor_no_storage(
    dtype: FromPickle, size: FromPickle, stride: FromPickle, requires_grad: bool = False
) -> TensorInfo:
    return TensorInfo(
        dtype=str(dtype),
        shape=_as_ints(size, "shape"),
        stride=_as_ints(stride, "stride"),
        requires_grad=bool(requires_grad),
    )


def _record(qualname: str, args: tuple[Any, ...]) -> Placeholder:
    """A call kept as data for objects.py to decode (its BUILD state lands in `.state`)."""
    cls: type[Placeholder] = type(
        qualname.rsplit(".", 1)[-1], (Placeholder,), {"qualname": qualname}
    )
    obj = cls._new()
    obj.args = args
    return obj


def rebuild_wrapper_subclass(*args: FromPickle) -> Placeholder:
    """A wrapper tensor subclass (DTensor, torchao weights): no storage of its own; what it
    holds arrives as state. Kept as a record and decoded in objects.py."""
    if len(args) < 8:
        raise CheckpointError("wrapper tensor subclass record is malformed")
    return _record("torch._utils._rebuild_wrapper_subclass", args)


def rebuild_nested_tensor(
    buffer: FromPickle, sizes: FromPickle, strides: FromPickle, storage_offsets: FromPickle
) -> TensorInfo:
    info = _tensor_copy(buffer, "nested tensor buffer")
    info.layout = "nested"
    return info


def rebuild_device_tensor_from_cpu_tensor(
    data: FromPickle, dtype: FromPickle, device: FromPickle, requires_grad: FromPickle
) -> TensorInfo:
    info = _tensor_copy(data, "tensor data")
    if str(dtype) != info.dtype:
        raise CheckpointError("a device tensor record casts its data; not supported")
    info.location = str(device)
    _note_requires_grad(info, requires_grad)
    return info


def rebuild_from_type_v2(
    func: FromPickle, new_type: FromPickle, args: FromPickle, state: FromPickle
) -> object:  # a TensorInfo, or what func built (a Placeholder record)
    if not callable(func) or not isinstance(args, tuple):
        current_report().refuse("a tensor subclass record is malformed (torch cannot rebuild it)")
        return _record("torch._tensor._rebuild_from_type_v2", (func, new_type, args, state))
    if isinstance(new_type, type) and issubclass(new_type, Placeholder):
        # a tensor subclass torch would need to import: kept as a record for objects.py
        return _record("torch._tensor._rebuild_from_type_v2", (func, new_type, args, state))
    result = func(*args)  # func is one of ours or a Placeholder class: see find_class
    if not isinstance(result, TensorInfo):
        if isinstance(result, Placeholder) and state:
            result.state = state
        return result
    result = _tensor_copy(result)
    if new_type is ParameterType:
        result.is_parameter = True
    elif new_type is not TensorType:
        raise CheckpointError("tensor subclass record names something that is not a class")
    return set_object_state(result, state)


def rebuild_device_tensor_from_numpy(
    data: FromPickle, dtype: FromPickle, device: FromPickle, requires_grad: FromPickle
) -> TensorInfo:
    return TensorInfo(dtype=str(dtype), shape=(), requires_grad=bool(requires_grad))


class TensorType:
    """torch.Tensor as a global: `torch.Tensor()` is an empty float32 tensor."""

    # the unpickler calls the class (REDUCE) or its __new__ (NEWOBJ): it answers with the record
    def __new__(cls, *args: FromPickle) -> TensorInfo:  # type: ignore[misc]
        if args:
            raise CheckpointError("torch.Tensor(...) with data is not supported in a pickle")
        return TensorInfo(dtype=cls.dtype, shape=(0,), stride=(1,))

    dtype = "float32"


class ParameterType:
    """torch.nn.Parameter as a global: Parameter(data, requires_grad)."""

    def __new__(  # type: ignore[misc]  # as TensorType's: the record, not an instance
        cls, data: FromPickle = None, requires_grad: bool = True
    ) -> TensorInfo:
        if data is None:
            data = TensorInfo(dtype="float32", shape=(0,), stride=(1,))
        return rebuild_parameter(data, requires_grad)


def legacy_tensor_class(qualname: str) -> type:
    """torch.FloatTensor & co.: an empty tensor that a BUILD then points at a storage."""
    short = qualname.rsplit(".", 1)[-1][: -len("Tensor")]
    return type(short + "Tensor", (TensorType,), {"dtype": LEGACY_TENSORS[short]})


def make_device(kind: FromPickle, index: FromPickle = None) -> str:
    if not isinstance(kind, str):
        raise CheckpointError("torch.device record is malformed")
    return kind if index is None or ":" in kind else f"{kind}:{index}"


def make_ordered_dict(*args: FromPickle) -> OrderedDict[Any, Any]:
    return OrderedDict(*args)


def make_size(dims: FromPickle = ()) -> tuple[Any, ...]:
    return tuple(dims)


def codecs_encode(text: FromPickle, encoding: str = "latin1") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise CheckpointError("bytes record is malformed")
    return text.encode(encoding)


def make_bytearray(data: bytes = b"", encoding: str = "latin1") -> bytearray:
    if isinstance(data, str):
        data = codecs_encode(data, encoding)
    if not isinstance(data, (bytes, bytearray)):
        raise CheckpointError("bytearray record is malformed")
    return bytearray(data)


def get_layout(name: FromPickle) -> Layout:
    return Layout(str(name).replace("torch.", ""))


def reconstructor(cls: FromPickle, base: FromPickle, state: FromPickle = None) -> Any:
    """copyreg._reconstructor: `cls` is a Placeholder class or a builtin container we allow.
    Unless `base` is object or a builtin type, pickle would call base.__new__ and base.__init__
    with the file's state: the file picks the code that runs."""
    base_name = getattr(base, "qualname", "")
    if base_name not in PLAIN_BASES:
        current_report().code.setdefault(
            "copyreg._reconstructor",
            f"calls {base_name or type(base).__name__}.__init__ with the file's state",
        )
    if isinstance(cls, type) and issubclass(cls, Placeholder):
        return cls._new()
    if cls in (dict, list, OrderedDict, set, tuple, object):
        return cls()
    raise CheckpointError("object reconstruction names a class outside the allowlist")


PLAIN_BASES = {
    f"builtins.{name}"
    for name in (
        "object",
        "dict",
        "list",
        "tuple",
        "set",
        "frozenset",
        "str",
        "bytes",
        "bytearray",
        "int",
        "float",
        "complex",
        "bool",
    )
}


def numpy_dtype(spec: FromPickle, align: bool = False, copy: bool = False) -> NumpyDtype:
    current_report().note_call("numpy.dtype", (str(spec),), limit=64)
    obj = NumpyDtype()
    obj.spec = str(spec)
    return obj


class NumpyDtype(Placeholder):
    qualname = "numpy.dtype"
    spec = "?"


def numpy_scalar(dtype: FromPickle, data: FromPickle = None) -> Any:
    """numpy scalars (a loss saved as np.float64): decoded by numpy from their raw bytes."""
    if isinstance(dtype, NumpyDtype) and isinstance(data, bytes) and len(data) <= 16:
        import numpy as np

        byteorder = (
            ">"
            if isinstance(dtype.state, tuple) and len(dtype.state) > 1 and dtype.state[1] == ">"
            else "<"
        )
        try:
            return np.frombuffer(data, dtype=np.dtype(byteorder + dtype.spec))[0].item()
        except (TypeError, ValueError):
            pass
    return Placeholder()


TORCH_REBUILDS = {
    "_rebuild_tensor": rebuild_tensor_v1,
    "_rebuild_tensor_v2": rebuild_tensor,
    "_rebuild_tensor_v3": rebuild_tensor_v3,
    "_rebuild_parameter": rebuild_parameter,
    "_rebuild_parameter_with_state": rebuild_parameter_with_state,
    "_rebuild_qtensor": rebuild_qtensor,
    "_rebuild_sparse_tensor": rebuild_sparse_tensor,
    "_rebuild_sparse_csr_tensor": rebuild_sparse_tensor,
    "_rebuild_meta_tensor_no_storage": rebuild_meta_tensor_no_storage,
    "_rebuild_wrapper_subclass": rebuild_wrapper_subclass,
    "_rebuild_nested_tensor": rebuild_nested_tensor,
    "_rebuild_device_tensor_from_cpu_tensor": rebuild_device_tensor_from_cpu_tensor,
    "_rebuild_device_tensor_from_numpy": rebuild_device_tensor_from_numpy,
}

ALLOWED = {
    ("collections", "OrderedDict"): make_ordered_dict,
    ("collections", "Counter"): Counter,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("builtins", "bytearray"): make_bytearray,
    ("_codecs", "encode"): codecs_encode,
    ("copyreg", "_reconstructor"): reconstructor,
    ("torch", "device"): make_device,
    ("torch", "Size"): make_size,
    ("torch", "Tensor"): TensorType,
    ("torch.nn.parameter", "Parameter"): ParameterType,
    ("torch._tensor", "_rebuild_from_type_v2"): rebuild_from_type_v2,
    ("torch.serialization", "_get_layout"): get_layout,
    ("numpy", "dtype"): numpy_dtype,
    ("numpy.core.multiarray", "scalar"): numpy_scalar,
    ("numpy._core.multiarray", "scalar"): numpy_scalar,
}


class PickleReport:
    """What one unpickling saw: every global named, and why torch's weights_only unpickler
    would refuse the stream (unsupported opcodes, globals outside its allowlist, ...)."""

    def __init__(self) -> None:
        self.globals: dict[str, int] = {}  # qualname -> times named
        self.other_refusals: list[str] = []
        self.calls: dict[str, list[str]] = {}  # qualname -> the arguments of its calls
        self.paths: dict[str, str] = {}  # qualname named as module + "a.b" -> module
        self.code: dict[str, str] = {}  # qualname -> why this use of it runs code

    def note_call(
        self,
        qualname: str,
        args: tuple[Any, ...],
        limit: int = 8,
        then: tuple[Any, ...] | None = None,
    ) -> None:
        """A call of `qualname` with `args` (and, with `then`, a call of what it returned)."""
        calls = self.calls.setdefault(qualname, [])
        if len(calls) < limit:
            text = ", ".join(short_repr(a) for a in args[:6])
            if then is not None:
                text += ")(" + ", ".join(short_repr(a) for a in then[:6])
            calls.append(text[:300])

    def refuse(self, why: str) -> None:
        if why not in self.other_refusals:
            self.other_refusals.append(why)

    @property
    def refusals(self) -> list[str]:
        """Why torch.load(weights_only=True) would refuse, one line each, globals first."""
        outside = [g for g in self.globals if g not in TORCH_ALLOWED]
        if not outside:
            return list(self.other_refusals)
        more = f" and {len(outside) - 6} more" if len(outside) > 6 else ""
        names = ", ".join(outside[:6]) + more
        return [
            f"it names {len(outside)} global{'s' * (len(outside) != 1)} outside torch's "
            f"weights_only allowlist ({names})"
        ] + self.other_refusals

    @property
    def unsafe_globals(self) -> list[str]:
        return [g for g in self.globals if g not in TORCH_ALLOWED]


_current = threading.local()


def current_report() -> PickleReport:
    """The report of the unpickling running on this thread (builders note refusals in it)."""
    report = getattr(_current, "report", None)
    return report if report is not None else PickleReport()


class SafeUnpickler(pickle.Unpickler):
    """Unpickle `data.pkl`-like streams into plain data; see the module docstring."""

    def __init__(
        self,
        file: FromPickle,
        storage_factory: FromPickle = None,
        encoding: str = "utf-8",
        report: FromPickle = None,
    ) -> None:
        if storage_factory is not None:
            # before __init__, which caches it: one Python call per storage, not two
            self.persistent_load = storage_factory  # type: ignore[method-assign]
        super().__init__(file, encoding=encoding)
        self.report = report if report is not None else PickleReport()
        self._placeholders: dict[str, type] = {}

    @property
    def unsafe_globals(self) -> list[str]:
        return self.report.unsafe_globals

    def find_class(self, module: str, name: str) -> Any:
        if not isinstance(module, str) or not isinstance(name, str):
            raise CheckpointError("pickle names a global that is not text")
        if (module, name) in _compat_pickle.NAME_MAPPING:  # Python 2 spellings, as torch
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        qualname = f"{module}.{name}"
        self.report.globals[qualname] = self.report.globals.get(qualname, 0) + 1
        if "." in name:  # pickle resolves it by getattr, one attribute at a time
            self.report.paths[qualname] = module
            if qualname in TORCH_ALLOWED:  # torch looks up the joined name: the same object
                module, name = qualname.rsplit(".", 1)
        return self._resolve(module, name, qualname)

    def _resolve(self, module: str, name: str, qualname: str) -> Any:
        allowed = ALLOWED.get((module, name))
        if allowed is not None:
            return allowed
        if module == "torch._utils" and name in TORCH_REBUILDS:
            return TORCH_REBUILDS[name]
        if qualname in TORCH_ALLOWED:
            if name.endswith("Storage"):
                return _storage_class(qualname[len("torch.") :])
            if name.endswith("Tensor"):
                return legacy_tensor_class(qualname)
            if module == "torch" and name in QSCHEMES:
                return Layout(name)
            if module == "torch":
                return TorchDtype(name)
        return self._placeholder(qualname)

    def _placeholder(self, qualname: str) -> type[Placeholder]:
        cls = self._placeholders.get(qualname)
        if cls is None:
            cls = type(qualname.rsplit(".", 1)[-1], (Placeholder,), {"qualname": qualname})
            self._placeholders[qualname] = cls
        return cls

    def persistent_load(self, pid: FromPickle) -> Any:
        raise CheckpointError("pickle refers to external data but this container has none")


def describe_pickle_error(exc: BaseException) -> str:
    if isinstance(exc, CheckpointError):
        return str(exc)
    if isinstance(exc, (EOFError,)):
        return "pickle data ends early (file truncated?)"
    if isinstance(exc, RecursionError):
        return "pickle nesting is too deep"
    if isinstance(exc, MemoryError):
        return "pickle data needs more memory than is available"
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"pickle data is malformed ({text[:120]})"


def merge_report(checkpoint: Checkpoint, report: PickleReport, record: str = "") -> None:
    """Add what one more pickle named to a checkpoint's globals; `record` names where it sits
    when that is not the checkpoint's main pickle."""
    _merge(checkpoint, report.globals, report.calls, report.paths, report.code, record)


def merge_part(checkpoint: Checkpoint, part: Checkpoint, record: str) -> None:
    """Add the globals of a part (a shard, a file of a training folder) to its folder's."""
    named = part.globals_named or {g: 1 for g in part.unsafe_globals}
    _merge(checkpoint, named, part.global_calls, part.global_paths, part.global_code, record)
    for name, records in part.global_records.items():
        where = checkpoint.global_records.setdefault(name, [])
        where += [f"{record}: {r}" for r in records if f"{record}: {r}" not in where]
    checkpoint.refusals += [f"{record}: {why}" for why in part.refusals]


def _merge(
    checkpoint: Checkpoint,
    named: dict[str, int],
    calls: dict[str, list[str]],
    paths: dict[str, str],
    code: dict[str, str],
    record: str,
) -> None:
    for name, uses in named.items():
        checkpoint.globals_named[name] = checkpoint.globals_named.get(name, 0) + uses
        if name not in TORCH_ALLOWED and name not in checkpoint.unsafe_globals:
            checkpoint.unsafe_globals.append(name)
        if record and record not in checkpoint.global_records.setdefault(name, []):
            checkpoint.global_records[name].append(record)
    for name, texts in calls.items():
        checkpoint.global_calls.setdefault(name, []).extend(texts[:8])
    checkpoint.global_paths.update(paths)
    for name, why in code.items():
        checkpoint.global_code.setdefault(name, why)


def safe_load(
    data: bytes,
    storage_factory: FromPickle = None,
    encoding: str = "utf-8",
    report: FromPickle = None,
) -> tuple[Any, list[str]]:
    """Unpickle one object; returns (object, unsafe_globals). Raises CheckpointError only.
    The opcodes are walked first (pickle_scan): the C unpickler trusts memo indices.
    `report` (a PickleReport) collects every global and what torch would refuse."""
    report = report if report is not None else PickleReport()
    seen = bytearray(256)
    pickle_end(data, 0, seen)
    unsupported = unsupported_by_torch(seen)
    if unsupported:
        report.refuse(
            f"its pickle uses opcode(s) {', '.join(unsupported)} that torch's "
            "weights_only unpickler does not implement (saved with pickle protocol "
            "0, 1, 4 or 5?)"
        )
    elif len(data) <= MAX_SIMULATED and setitem_on_non_dict(data):
        report.refuse(
            "its pickle sets an item on something other than a dict (torch's "
            "weights_only unpickler allows dict, OrderedDict and Counter only)"
        )
    unpickler = SafeUnpickler(io.BytesIO(data), storage_factory, encoding=encoding, report=report)
    _current.report = report
    try:
        obj = unpickler.load()
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure in hostile data is a read error
        raise CheckpointError(describe_pickle_error(exc)) from None
    finally:
        _current.report = None
    return obj, report.unsafe_globals
