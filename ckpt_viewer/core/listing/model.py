"""The tree a checkpoint is shown as: plain data, no torch."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ckpt_viewer.core.listing.stats_cache import StatsCache

# Bytes per element, by torch's dtype name (without "torch.").
DTYPE_SIZES = {
    "float64": 8,
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "float8_e4m3fn": 1,
    "float8_e4m3fnuz": 1,
    "float8_e5m2": 1,
    "float8_e5m2fnuz": 1,
    "float8_e8m0fnu": 1,
    "float4_e2m1fn_x2": 1,
    "complex128": 16,
    "complex64": 8,
    "complex32": 4,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint64": 8,
    "uint32": 4,
    "uint16": 2,
    "uint8": 1,
    "bool": 1,
    "qint8": 1,
    "quint8": 1,
    "qint32": 4,
    "quint4x2": 1,
    "quint2x4": 1,
    "bits8": 1,
    "bits16": 2,
    "bits1x8": 1,
    "bits2x4": 1,
    "bits4x2": 1,
}

# Sub-byte quantized dtypes: torch calls their element size 1 but packs this many values in
# each byte of their storage, and bounds-checks a view by ceil(elements / values per byte).
PACKED_VALUES = {"quint4x2": 2, "quint2x4": 4}


def contiguous_strides(shape: Sequence[int]) -> tuple[int, ...]:
    """Row-major strides of `shape` in elements, as torch gives them (a size-0 dimension
    counts as 1, so torch.empty(2, 0, 3).stride() == (3, 3, 1))."""
    strides: list[int] = []
    step = 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def span_bytes(dtype: str, elements: int) -> int:
    """Storage bytes that the first `elements` elements of a dtype occupy (torch's setStorage)."""
    per_byte = PACKED_VALUES.get(dtype)
    return -(-elements // per_byte) if per_byte else elements * DTYPE_SIZES.get(dtype, 1)


FLOAT_DTYPES = {"float64", "float32", "float16", "bfloat16"} | {
    d for d in DTYPE_SIZES if d.startswith("float8") or d.startswith("float4")
}

# Legacy typed-storage class names -> dtype.
STORAGE_DTYPES = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "ComplexDoubleStorage": "complex128",
    "ComplexFloatStorage": "complex64",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "QInt8Storage": "qint8",
    "QUInt8Storage": "quint8",
    "QInt32Storage": "qint32",
    "QUInt4x2Storage": "quint4x2",
    "QUInt2x4Storage": "quint2x4",
    "UntypedStorage": "uint8",
}


@dataclass(eq=False, slots=True)  # slots: a checkpoint can hold 50,000 records
class ZipMember:
    """Bytes of one record of a zip archive (maybe compressed)."""

    path: str
    name: str
    header_offset: int
    compress_type: int
    compressed_size: int
    file_size: int
    crc: int
    raw_name: bytes = b""
    flags: int = 0


@dataclass(eq=False)
class FileSpan:
    """Bytes stored raw at an offset of a file."""

    path: str
    offset: int
    nbytes: int


@dataclass(eq=False)
class InlineBytes:
    """Bytes held inside the pickle itself (a numpy array's raw data)."""

    data: bytes

    @property
    def nbytes(self) -> int:
        return len(self.data)


@dataclass(eq=False)
class DecodedBytes:
    """Bytes only the format's library can produce (a chunked or compressed HDF5 dataset):
    `decode()` returns them, in the storage's byte order."""

    nbytes: int
    decode: Callable[[], bytes]


@dataclass(eq=False, slots=True)
class Storage:
    key: str
    dtype: str
    numel: int
    location: str
    source: ZipMember | FileSpan | InlineBytes | DecodedBytes | None = None
    byteorder: str = "little"
    resizable: bool = False  # legacy storages: torch's set_ grows them instead of refusing

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_SIZES.get(self.dtype, 1)

    def __setstate__(self, state: object) -> None:
        # torch would update a TypedStorage's attributes here; the sizes were checked already
        from ckpt_viewer.core import CheckpointError

        raise CheckpointError(
            f"the pickle rewrites storage record {self.key!r} after creating "
            "it (BUILD on a storage); refusing rather than guessing"
        )


TENSOR_BUILD: Callable[[TensorInfo, Any], None] | None = (
    None  # set by safe_pickle: a BUILD opcode on a tensor record
)


@dataclass(eq=False, slots=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    stride: tuple[int, ...] = ()
    offset: int = 0
    storage: Storage | None = None
    requires_grad: bool = False
    is_parameter: bool = False
    layout: str = "strided"  # strided | sparse_coo | sparse_csr | ggml | ...
    parts: dict[str, TensorInfo] = field(default_factory=dict)  # sparse: indices/values tensors
    quantizer: dict[str, Any] = field(default_factory=dict)
    chunks: Sequence[tuple[tuple[int, ...], tuple[int, ...], FileSpan]] = ()  # DCP: per chunk
    neg: bool = False  # torch's negative view bit: values are -stored
    conj: bool = False  # conjugate view bit: values are conj(stored)
    attrs: dict[str, Any] = field(
        default_factory=dict
    )  # Python attributes the file set on the tensor
    subclass: str = ""  # a tensor subclass torch would need (qualified name)
    location: str = ""  # where a storage-less tensor lives (wrapper subclasses)

    def __setstate__(self, state: object) -> None:
        """A BUILD on a tensor: torch re-points it (Tensor.set_ / Parameter.__setstate__);
        safe_pickle installs what that does (TENSOR_BUILD), so model imports nothing of it."""
        if TENSOR_BUILD is None:
            from ckpt_viewer.core import CheckpointError

            raise CheckpointError("a tensor record cannot be rebuilt here")
        TENSOR_BUILD(self, state)

    def __copy__(self) -> TensorInfo:  # not through __setstate__, which is the unpickler's BUILD
        return replace(self)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def device(self) -> str:
        if self.storage is not None:
            return self.storage.location
        for part in self.parts.values():
            return part.device
        if self.location:
            return self.location
        return "cpu" if self.chunks else "meta"

    @property
    def nbytes(self) -> int:
        if self.parts:
            return sum(p.nbytes for p in self.parts.values())
        if self.layout == "ggml" and self.storage is not None:  # GGUF blocks: the storage's
            return self.storage.nbytes
        return self.numel * DTYPE_SIZES.get(self.dtype, 1)

    @property
    def is_contiguous(self) -> bool:
        return not self.numel or all(
            size == 1 or stride == expected
            for size, stride, expected in zip(
                self.shape, self.stride, contiguous_strides(self.shape)
            )
        )

    def element_span(self) -> tuple[int, int]:
        """[first, last+1) storage elements this tensor touches (empty -> (offset, offset))."""
        first = last = self.offset
        for size, stride in zip(self.shape, self.stride):
            if size == 0:
                return self.offset, self.offset
            if stride > 0:
                last += (size - 1) * stride
            else:
                first += (size - 1) * stride
        return first, last + 1


@dataclass(eq=False, slots=True)
class Node:
    name: str
    kind: str  # dict | list | module | optimizer | object | tensor | scalar | ref | opaque
    key: str = ""
    children: list[Node] = field(default_factory=list)
    tensor: TensorInfo | None = None
    value: object = None  # scalar value, or the key a `ref` node points to
    type_name: str = ""  # class name for modules/objects; "dict", "list" ...
    role: str = ""  # parameter | buffer | "" (unknown)
    shared_with: str = ""  # first key of a tensor that shares this storage
    note: str = ""  # e.g. "state of fc.weight"


@dataclass(eq=False)
class Checkpoint:
    path: str
    format: str
    file_bytes: int
    root: Node
    unsafe_globals: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    refusals: list[str] = field(
        default_factory=list
    )  # why torch.load(weights_only=True) would not load it
    metadata: dict[str, Any] = field(default_factory=dict)  # torch version, safetensors metadata...
    optimizers: list[Any] = field(default_factory=list)  # optim.OptimizerInfo (imports model)
    optimizer_nodes: list[Node] | None = None  # found while building the tree (None: search it)
    byteorder: str = "little"
    globals_named: dict[str, int] = field(
        default_factory=dict
    )  # every global the pickles name -> uses
    global_calls: dict[str, list[str]] = field(
        default_factory=dict
    )  # global -> arguments it was called with
    global_paths: dict[str, str] = field(
        default_factory=dict
    )  # global reached attribute by attribute
    #                                                     (module + "a.b" name) -> its module
    global_code: dict[str, str] = field(default_factory=dict)  # global -> why its use runs code
    global_records: dict[str, list[str]] = field(
        default_factory=dict
    )  # global -> records other than the
    #                                                     main pickle that name it
    root_object: object = field(default=None, repr=False)  # what the pickle built (sanitize)
    graphs: dict[str, object] = field(
        default_factory=dict, repr=False
    )  # .pt2: model -> its graph_module
    _tensors: list[tuple[str, TensorInfo, Node]] | None = field(default=None, repr=False)
    _scalars: dict[str, object] | None = field(default=None, repr=False)
    _index: tuple[Node, dict[str, Node]] | None = field(
        default=None, repr=False
    )  # (root, {key: node}) for find
    # statistics computed about its tensors, reused by the views (cheap until filled)
    stats_cache: StatsCache = field(default_factory=StatsCache, repr=False)

    def tensors(self) -> list[tuple[str, TensorInfo, Node]]:
        """(key, TensorInfo, Node) for every tensor, in tree order (the tree never changes)."""
        if self._tensors is None:
            self._tensors = [
                (n.key, n.tensor, n)
                for n in iter_nodes(self.root)
                if n.kind == "tensor" and n.tensor is not None
            ]
        return self._tensors

    def scalars(self) -> dict[str, object]:
        if self._scalars is None:
            self._scalars = {n.key: n.value for n in iter_nodes(self.root) if n.kind == "scalar"}
        return self._scalars

    def find(self, key: str) -> Node | None:
        """The node at `key`; a tensor first where a group shares its key (bitsandbytes:
        `w` is a tensor and the prefix of `w.absmax`, `w.quant_state.*`)."""
        return self.key_index().get(key)

    def key_index(self) -> dict[str, Node]:
        """key -> node as `find` answers, built once: a selection or a comparison looks keys
        up in every open file, and a walk of a 50,000-key tree per lookup held the window."""
        if self._index is None or self._index[0] is not self.root:
            index: dict[str, Node] = {}
            for node in iter_nodes(self.root):
                seen = index.get(node.key)
                if seen is None or (node.kind == "tensor" and seen.kind != "tensor"):
                    index[node.key] = node
            self._index = (self.root, index)
        return self._index[1]


def iter_nodes(root: Node) -> Iterator[Node]:
    """Depth-first, pre-order, without recursion (trees can be very deep)."""
    stack = [root]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(node.children))


def format_bytes(n: int) -> str:
    """A size in binary units labelled as such (the OS says 1.39 GiB, so do we, never "GB"
    for 2**30): the one size format of the CLI and the window."""
    value, unit = float(n), "B"
    for bigger in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"


def format_count(n: int) -> str:
    """A count rounded to three significant digits in decimal units, trailing zeros dropped
    ("200K", "5.06K", "38.6M", "1.5B"): the one count format of the CLI and the window, shown
    beside the exact count where room allows."""
    if abs(n) < 1000:
        return str(n)
    for div, suffix in ((1e3, "K"), (1e6, "M"), (1e9, "B")):
        text = f"{n / div:.3g}"
        if abs(float(text)) < 1000:  # 999,999 rounds to 1000K: say 1M instead
            return f"{text}{suffix}"
    value = n / 1e12
    return f"{value:.3g}T" if abs(value) < 1000 else f"{value:,.0f}T"
