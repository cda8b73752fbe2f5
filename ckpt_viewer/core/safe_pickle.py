"""A restricted unpickler that imports no torch and calls no function named by the file.

torch's tensor and storage rebuild globals become TensorInfo records; plain containers are built
as data; every other global becomes an inert Placeholder class that records its qualified name
and the arguments and state the file gives it. The only callables the pickle machine can reach
are the ones defined here.
"""

from __future__ import annotations

import io
import operator
import pickle
from collections import OrderedDict

from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.model import DTYPE_SIZES, STORAGE_DTYPES, Storage, TensorInfo
from ckpt_viewer.core.pickle_scan import pickle_end


class Placeholder:
    """An instance of a class the file names; holds what the file gave it, runs nothing."""

    qualname = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args, obj.kwargs, obj.state = args, kwargs, None
        obj.items, obj.list_items = {}, []
        return obj

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    @classmethod
    def _new(cls):
        return cls.__new__(cls)

    def __setstate__(self, state):
        self.state = state

    def __setitem__(self, key, value):
        self.items[key] = value

    def append(self, value):
        self.list_items.append(value)

    def extend(self, values):
        self.list_items.extend(values)

    def add(self, value):
        self.list_items.append(value)

    def __reduce__(self):
        raise TypeError("placeholders cannot be pickled")

    def __repr__(self):
        return f"<{self.qualname}>"

    @property
    def fields(self) -> dict:
        """The object's attributes as the file recorded them."""
        state = self.state
        if isinstance(state, tuple) and len(state) == 2:   # (dict state, slot state)
            merged = {}
            for part in state:
                if isinstance(part, dict):
                    merged.update(part)
            return merged
        return state if isinstance(state, dict) else {}


class GlobalRef:
    """A global used as a value (not called): e.g. a class object stored in a config."""

    def __init__(self, qualname):
        self.qualname = qualname

    def __repr__(self):
        return self.qualname


class TorchDtype(str):
    """`torch.float32` etc. as stored in a pickle."""


class Layout(str):
    pass


# --- the allowlisted globals, implemented here as pure data builders --------------------------

def _storage_class(name):
    return GlobalRef("torch." + name)


def dtype_of_storage(storage_type) -> str:
    name = getattr(storage_type, "qualname", "").rsplit(".", 1)[-1]
    if name not in STORAGE_DTYPES:
        raise CheckpointError(f"unknown storage type {getattr(storage_type, 'qualname', storage_type)!r}")
    return STORAGE_DTYPES[name]


def _as_ints(value, what) -> tuple:
    try:
        ints = tuple(map(operator.index, value))
    except TypeError:
        raise CheckpointError(f"tensor {what} is not a tuple of integers: {value!r:.80}") from None
    if what == "shape" and ints and min(ints) < 0:
        raise CheckpointError(f"tensor has a negative size: {value!r:.80}")
    return ints


def _check_storage(storage, what="tensor"):
    if not isinstance(storage, Storage):
        raise CheckpointError(f"{what} data is not a storage record")
    return storage


def rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, hooks=None,
                   metadata=None, dtype=None):
    storage = _check_storage(storage)
    shape = _as_ints(size, "shape")
    stride = _as_ints(stride, "stride")
    if len(shape) != len(stride) or type(storage_offset) is not int or storage_offset < 0:
        raise CheckpointError(f"tensor geometry is inconsistent: size {shape}, stride {stride}")
    info = TensorInfo(dtype=str(dtype) if dtype else storage.dtype, shape=shape, stride=stride,
                      offset=storage_offset, storage=storage, requires_grad=bool(requires_grad))
    if info.dtype not in DTYPE_SIZES:
        raise CheckpointError(f"tensor has an unknown dtype {info.dtype!r:.40}")
    return info


def rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, hooks, dtype,
                      metadata=None):
    return rebuild_tensor(storage, storage_offset, size, stride, requires_grad, hooks, metadata,
                          dtype)


def rebuild_tensor_v1(storage, storage_offset, size, stride):
    return rebuild_tensor(storage, storage_offset, size, stride)


def rebuild_parameter(data, requires_grad=True, hooks=None, state=None):
    if not isinstance(data, TensorInfo):
        raise CheckpointError("parameter data is not a tensor")
    data.is_parameter = True
    data.requires_grad = bool(requires_grad)
    return data


def rebuild_qtensor(storage, storage_offset, size, stride, quantizer_params, requires_grad=False,
                    hooks=None):
    info = rebuild_tensor(storage, storage_offset, size, stride, requires_grad)
    info.layout = "quantized"
    if isinstance(quantizer_params, tuple) and quantizer_params:
        scheme = str(quantizer_params[0])
        info.quantizer = {"qscheme": scheme}
        if scheme == "per_tensor_affine" and len(quantizer_params) >= 3:
            info.quantizer.update(scale=quantizer_params[1], zero_point=quantizer_params[2])
        elif len(quantizer_params) >= 4:
            info.quantizer.update(scales=quantizer_params[1], zero_points=quantizer_params[2],
                                  axis=quantizer_params[3])
    return info


def rebuild_sparse_tensor(layout, data):
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
    return TensorInfo(dtype=parts["values"].dtype, shape=_as_ints(size, "shape"), layout=layout,
                      parts=parts)


def rebuild_sparse_csr_tensor(layout, data):
    return rebuild_sparse_tensor(layout, data)


def rebuild_meta_tensor_no_storage(dtype, size, stride, requires_grad=False):
    return TensorInfo(dtype=str(dtype), shape=_as_ints(size, "shape"),
                      stride=_as_ints(stride, "stride"), requires_grad=bool(requires_grad))


def rebuild_from_type_v2(func, new_type, args, state):
    if not callable(func) or not isinstance(args, tuple):
        raise CheckpointError("tensor subclass record is malformed")
    result = func(*args)   # func is one of ours or a Placeholder class: see find_class
    if isinstance(result, TensorInfo) and isinstance(new_type, type) and \
            issubclass(new_type, Placeholder) and new_type.qualname == "torch.nn.parameter.Parameter":
        result.is_parameter = True
    return result


def rebuild_device_tensor_from_numpy(data, dtype, device, requires_grad):
    return TensorInfo(dtype=str(dtype), shape=(), requires_grad=bool(requires_grad))


def make_device(kind, index=None):
    if not isinstance(kind, str):
        raise CheckpointError("torch.device record is malformed")
    return kind if index is None or ":" in kind else f"{kind}:{index}"


def make_ordered_dict(*args):
    return OrderedDict(*args)


def make_size(dims=()):
    return tuple(dims)


def codecs_encode(text, encoding="latin1"):
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise CheckpointError("bytes record is malformed")
    return text.encode(encoding)


def make_bytearray(data=b"", encoding="latin1"):
    if isinstance(data, str):
        data = codecs_encode(data, encoding)
    if not isinstance(data, (bytes, bytearray)):
        raise CheckpointError("bytearray record is malformed")
    return bytearray(data)


def get_layout(name):
    return Layout(str(name).replace("torch.", ""))


def reconstructor(cls, base, state=None):
    """copyreg._reconstructor: `cls` is a Placeholder class or a builtin container we allow."""
    if isinstance(cls, type) and issubclass(cls, Placeholder):
        return cls._new()
    if cls in (dict, list, OrderedDict, set, tuple, object):
        return cls()
    raise CheckpointError("object reconstruction names a class outside the allowlist")


def numpy_dtype(spec, align=False, copy=False):
    obj = NumpyDtype()
    obj.spec = str(spec)
    return obj


class NumpyDtype(Placeholder):
    qualname = "numpy.dtype"
    spec = "?"


def numpy_scalar(dtype, data=None):
    """numpy scalars (a loss saved as np.float64): decoded by numpy from their raw bytes."""
    if isinstance(dtype, NumpyDtype) and isinstance(data, bytes) and len(data) <= 16:
        import numpy as np
        byteorder = ">" if isinstance(dtype.state, tuple) and len(dtype.state) > 1 and \
            dtype.state[1] == ">" else "<"
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
    "_rebuild_parameter_with_state": rebuild_parameter,
    "_rebuild_qtensor": rebuild_qtensor,
    "_rebuild_sparse_tensor": rebuild_sparse_tensor,
    "_rebuild_sparse_csr_tensor": rebuild_sparse_csr_tensor,
    "_rebuild_meta_tensor_no_storage": rebuild_meta_tensor_no_storage,
    "_rebuild_from_type_v2": rebuild_from_type_v2,
    "_rebuild_device_tensor_from_numpy": rebuild_device_tensor_from_numpy,
}

TORCH_SCALARS = {
    "per_tensor_affine", "per_channel_affine", "per_tensor_symmetric", "per_channel_symmetric",
    "per_channel_affine_float_qparams",
}

ALLOWED = {
    ("collections", "OrderedDict"): make_ordered_dict,
    ("builtins", "set"): set, ("__builtin__", "set"): set,
    ("builtins", "frozenset"): frozenset, ("__builtin__", "frozenset"): frozenset,
    ("builtins", "slice"): slice, ("__builtin__", "slice"): slice,
    ("builtins", "complex"): complex, ("__builtin__", "complex"): complex,
    ("builtins", "bytearray"): make_bytearray, ("__builtin__", "bytearray"): make_bytearray,
    ("_codecs", "encode"): codecs_encode,
    ("copy_reg", "_reconstructor"): reconstructor, ("copyreg", "_reconstructor"): reconstructor,
    ("torch", "device"): make_device,
    ("torch", "Size"): make_size,
    ("torch.serialization", "_get_layout"): get_layout,
    ("numpy", "dtype"): numpy_dtype,
    ("numpy.core.multiarray", "scalar"): numpy_scalar,
    ("numpy._core.multiarray", "scalar"): numpy_scalar,
}


PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}   # protocol-2 spellings


class SafeUnpickler(pickle.Unpickler):
    """Unpickle `data.pkl`-like streams into plain data; see the module docstring."""

    def __init__(self, file, storage_factory=None, encoding="utf-8"):
        if storage_factory is not None:
            # before __init__, which caches it: one Python call per storage, not two
            self.persistent_load = storage_factory
        super().__init__(file, encoding=encoding)
        self.unsafe_globals: list[str] = []
        self._placeholders: dict[str, type] = {}

    def find_class(self, module, name):
        if not isinstance(module, str) or not isinstance(name, str):
            raise CheckpointError("pickle names a global that is not text")
        allowed = ALLOWED.get((module, name))
        if allowed is not None:
            return allowed
        if module == "torch._utils" and name in TORCH_REBUILDS:
            return TORCH_REBUILDS[name]
        if module == "torch" and (name in STORAGE_DTYPES or name.endswith("Storage")):
            return _storage_class(name)
        if module == "torch.storage" and name in ("UntypedStorage", "TypedStorage"):
            return _storage_class(name)
        if module == "torch" and (name in DTYPE_SIZES or name in ("cfloat", "cdouble")):
            return TorchDtype(name)
        if module == "torch" and name in TORCH_SCALARS:
            return Layout(name)
        if module == "torch" and name.startswith("sparse_") or (module, name) == ("torch", "strided"):
            return Layout(name)
        return self._placeholder(f"{module}.{name}")

    def _placeholder(self, qualname):
        module, _, name = qualname.rpartition(".")
        qualname = f"{PY2_MODULES.get(module, module)}.{name}"
        cls = self._placeholders.get(qualname)
        if cls is None:
            if qualname not in self.unsafe_globals:
                self.unsafe_globals.append(qualname)
            cls = type(qualname.rsplit(".", 1)[-1], (Placeholder,), {"qualname": qualname})
            self._placeholders[qualname] = cls
        return cls

    def persistent_load(self, pid):
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


def safe_load(data: bytes, storage_factory=None, encoding="utf-8"):
    """Unpickle one object; returns (object, unsafe_globals). Raises CheckpointError only.
    The opcodes are walked first (pickle_scan): the C unpickler trusts memo indices."""
    pickle_end(data)
    unpickler = SafeUnpickler(io.BytesIO(data), storage_factory, encoding=encoding)
    try:
        obj = unpickler.load()
    except CheckpointError:
        raise
    except Exception as exc:   # noqa: BLE001 - any failure in hostile data is a read error
        raise CheckpointError(describe_pickle_error(exc)) from None
    except RecursionError as exc:
        raise CheckpointError(describe_pickle_error(exc)) from None
    return obj, unpickler.unsafe_globals
