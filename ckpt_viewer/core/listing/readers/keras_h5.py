"""Keras weights in HDF5 (through h5py) and Keras 3 `.keras` archives.

Layouts: Keras 2 / legacy `model.save('m.h5')` (`model_weights/` or the root with a
`layer_names` attribute, each layer's `weight_names`), Keras 3 `.weights.h5` (`layers/<group>/
vars/<i>`, named kernel/bias... from the layer's class in config.json where the count fits),
any other HDF5 file dataset by dataset. Only hard links are followed; soft and external links,
virtual and external-storage datasets are listed, never read (they point at other files).
`model_config` / config.json are shown as text, never deserialized: Lambda layers (marshalled
bytecode) and custom classes are listed as globals."""

from __future__ import annotations

import functools
import io
import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any, TypeVar, cast

from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.listing import remote
from ckpt_viewer.core.listing.model import (
    Checkpoint,
    DecodedBytes,
    FileSpan,
    Storage,
    TensorInfo,
)
from ckpt_viewer.core.listing.readers.numpy_files import KINDS, first_record_name, strides
from ckpt_viewer.core.listing.readers.safetensors import flat_tree
from ckpt_viewer.core.listing.readers.zip_directory import data_offset, read_directory, read_member
from ckpt_viewer.core.listing.text import safe_text

MAX_OBJECTS = 200_000  # groups and datasets walked before refusing
MAX_CONFIG_BYTES = 64 << 20
# libhdf5 can loop forever on a crafted file (a zeroed global-heap signature under a string
# attribute spun with no end): each HDF5 listing runs first in a child process this long
PREFLIGHT_SECONDS = float(os.environ.get("CKPT_VIEWER_HDF5_SECONDS", "30"))
MAX_ATTR_ITEMS = 1_000_000

T = TypeVar("T")
Layers = dict[str, tuple[str, dict[str, Any]]]  # layer name -> (class name, config)
Entries = list[tuple[str, "TensorInfo | None"]]  # (HDF5 path, tensor) of each dataset
# entries, weight_names keys, each vars group's name, each vars group's variable count
Scan = tuple[Entries, dict[str, str], dict[str, str], dict[str, int]]


def _flag(config: dict[str, Any], name: str) -> bool:
    """A layer's boolean option (absent: True); anything but a bool is no config Keras wrote,
    and the variables are then named by index ("use_bias": 10**12 must build no list)."""
    value = config.get(name, True)
    if not isinstance(value, bool):
        raise ValueError(f"{name} is not a bool")
    return value


# Keras 3 layer class -> its variables in creation order, given the layer's config
VARIABLES = {
    "Dense": lambda c: ["kernel"] + ["bias"] * _flag(c, "use_bias"),
    "EinsumDense": lambda c: ["kernel"] + ["bias"] * bool(c.get("bias_axes")),
    "Conv1D": lambda c: ["kernel"] + ["bias"] * _flag(c, "use_bias"),
    "Conv2D": lambda c: ["kernel"] + ["bias"] * _flag(c, "use_bias"),
    "Conv3D": lambda c: ["kernel"] + ["bias"] * _flag(c, "use_bias"),
    "Conv1DTranspose": lambda c: ["kernel"] + ["bias"] * _flag(c, "use_bias"),
    "Conv2DTranspose": lambda c: ["kernel"] + ["bias"] * _flag(c, "use_bias"),
    "Conv3DTranspose": lambda c: ["kernel"] + ["bias"] * _flag(c, "use_bias"),
    "DepthwiseConv2D": lambda c: ["kernel"] + ["bias"] * _flag(c, "use_bias"),
    "BatchNormalization": lambda c: (
        ["gamma"] * _flag(c, "scale")
        + ["beta"] * _flag(c, "center")
        + ["moving_mean", "moving_variance"]
    ),
    "LayerNormalization": lambda c: ["gamma"] * _flag(c, "scale") + ["beta"] * _flag(c, "center"),
    "Embedding": lambda c: ["embeddings"],
}
SNAKE = {re.sub(r"(?<!^)(?=[A-Z][a-z])", "_", name).lower(): name for name in VARIABLES}


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf8", "replace")
    return str(value)


def _attr(obj: Any, name: str, default: Any = None) -> Any:
    """An attribute's value, its size checked first: a damaged or hostile one may declare
    billions of elements, which h5py would try to build."""
    if name not in obj.attrs:
        return default
    attribute = obj.attrs.get_id(name)
    count = math.prod(attribute.shape or ())
    nbytes = count * attribute.get_type().get_size()
    if count > MAX_ATTR_ITEMS or nbytes > MAX_CONFIG_BYTES:
        raise CheckpointError(
            f"HDF5 attribute {safe_text(name)!r} declares {count:,} elements "
            f"({nbytes:,} bytes); refusing to read it"
        )
    return obj.attrs[name]


def _names(value: Any) -> list[str]:
    """An attribute holding a list of names (bytes or str arrays, as h5py reads them)."""
    try:
        return [_text(v) for v in value]
    except TypeError:
        return []


def config_layers(config: Any) -> tuple[Layers, dict[str, int]]:
    """{layer name: (class name, config)} of every layer a Keras config describes, and the
    globals it names: Lambda layers and lambdas (marshalled code), classes from outside keras."""
    layers: Layers = {}
    globals_named: dict[str, int] = {}
    stack = [(config, False)]
    while stack:
        item, in_lambda = stack.pop()
        if isinstance(item, list):
            stack.extend((v, in_lambda) for v in item)
            continue
        if not isinstance(item, dict):
            continue
        cls, cfg, module = item.get("class_name"), item.get("config"), item.get("module")
        named = None
        if cls == "Lambda":
            named, in_lambda = "keras.layers.Lambda", True
        elif cls == "__lambda__" and not in_lambda:
            named = "keras.__lambda__"
        elif isinstance(cls, str) and isinstance(module, str):
            if module.split(".")[0] not in ("keras", "builtins"):
                named = f"{module}.{cls}"
        if named:
            globals_named[named] = globals_named.get(named, 0) + 1
        if isinstance(cls, str) and isinstance(cfg, dict) and isinstance(cfg.get("name"), str):
            layers.setdefault(cfg["name"], (cls, cfg))
        stack.extend((v, in_lambda) for v in item.values() if isinstance(v, (dict, list)))
    return layers, globals_named


def _walk(group: Any, warnings: list[str]) -> list[tuple[str, Any]]:
    """(path, dataset) of every dataset reachable by hard links, each object once."""
    import h5py

    found, seen, stack, count = [], set(), [("", group)], 0
    while stack:
        prefix, node = stack.pop()
        for name in sorted(node.keys(), reverse=True):
            count += 1
            if count > MAX_OBJECTS:
                raise CheckpointError(f"the HDF5 file holds more than {MAX_OBJECTS:,} objects")
            path = f"{prefix}/{name}" if prefix else name
            link = node.get(name, getlink=True)
            if not isinstance(link, h5py.HardLink):
                warnings.append(
                    f"{safe_text(path)}: {type(link).__name__} not followed (it may point at "
                    "another file)"
                )
                continue
            obj = node[name]
            if obj.id in seen:
                continue
            seen.add(obj.id)
            if isinstance(obj, h5py.Group):
                stack.append((path, obj))
            elif isinstance(obj, h5py.Dataset):
                found.append((path, obj))
    found.sort(key=lambda item: item[0])
    return found


def _keras2_keys(f: Any) -> dict[str, str]:
    """{dataset path: key} from `layer_names` / `weight_names` (Keras 2, legacy .h5)."""
    root = f["model_weights"] if "model_weights" in f else f
    prefix = "model_weights/" if root is not f else ""
    keys = {}
    for layer in _names(_attr(root, "layer_names", [])):
        group = root.get(layer)
        if group is None:
            continue
        for weight in _names(_attr(group, "weight_names", [])):
            keys[f"{prefix}{layer}/{weight}"] = re.sub(r":\d+$", "", weight).replace("/", ".")
    return keys


def _keras3_key(
    path: str, layers: Layers, var_names: dict[str, str], counts: dict[str, int]
) -> str | None:
    """`layers/dense/vars/0` -> `d1.kernel` (the layer's own name, from its `vars` group, its
    variable's name from its class where the count fits); None for a path not in that
    layout. `var_names` and `counts`: each vars group's name attribute and its variables."""
    parts = path.split("/")
    if len(parts) < 2 or parts[-2] != "vars" or not parts[-1].isdigit():
        return None
    names, group_path = [], ""
    for index, part in enumerate(parts[:-2]):
        group_path = f"{group_path}/{part}" if group_path else part
        if part == "layers" and index % 2 == 0:
            continue
        names.append(var_names.get(f"{group_path}/vars") or part)
    leaf = parts[-1]
    if names:
        cls, cfg = layers.get(names[-1], (SNAKE.get(re.sub(r"_\d+$", "", parts[-3])), {}))
        try:
            variables = VARIABLES[cls](cfg) if cls in VARIABLES and isinstance(cfg, dict) else []
        except ValueError:
            variables = []
        count = counts.get("/".join(parts[:-1]), -1)
        if len(variables) == count and int(leaf) < count:
            leaf = variables[int(leaf)]
    return ".".join(names + [leaf]) if names else f"vars.{leaf}"


def _scan(path: str, f: Any, window: tuple[int, int] | None, warnings: list[str]) -> Scan:
    """Every dataset as (HDF5 path, TensorInfo or None), and its Keras naming facts: the
    `weight_names` keys, each vars group's name attribute, each vars group's variable count."""
    import h5py

    entries: Entries = []
    var_names: dict[str, str] = {}
    counts: dict[str, int] = {}
    for h5path, dataset in _walk(f, warnings):
        entries.append((h5path, _tensor(path, h5path, h5path, dataset, window, warnings)))
        parent, _, leaf = h5path.rpartition("/")
        if parent.rpartition("/")[2] == "vars" and leaf.isdigit():
            counts[parent] = counts.get(parent, 0) + 1
    # a layer holding its variables in sublayers (an LSTM's cell, attention's projections)
    # names itself in a vars group of its own, empty
    layers = {parent.rpartition("/")[0] for parent in counts}
    for group in list(layers):
        while "/" in group:
            group = group.rpartition("/")[0]
            layers.add(group)
    for layer in layers:
        if isinstance(f[layer].get("vars", getlink=True), h5py.HardLink):
            vars_group = f[layer]["vars"]
            name = _attr(vars_group, "name") if isinstance(vars_group, h5py.Group) else None
            if name is not None:
                var_names[f"{layer}/vars"] = _text(name)
    return entries, _keras2_keys(f), var_names, counts


def _named(
    entries: Entries,
    named: dict[str, str],
    layers: Layers,
    var_names: dict[str, str],
    counts: dict[str, int],
) -> dict[str, TensorInfo]:
    """{key: TensorInfo}: Keras names where the layout gives them, else the HDF5 path."""
    tensors, taken = {}, set()
    for h5path, info in entries:
        key = named.get(h5path) or _keras3_key(h5path, layers, var_names, counts)
        if key is None or key in taken:
            key = h5path.replace("/", ".")
        taken.add(key)
        if info is not None:
            cast(Storage, info.storage).key = key  # _tensor gives every tensor one
            tensors[key] = info
    return tensors


def _decode(path: str, window: tuple[int, int] | None, name: str, nbytes: int) -> bytes:
    """A dataset's bytes as h5py decodes them (chunked or compressed), in stored order, decoded
    in a child process: the structure's preflight never touched the chunks, and libhdf5 can
    hang or crash on a crafted chunk index or filter; the refusal is then one line here."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if nbytes > memory // 2:
        raise CheckpointError(
            f"dataset {safe_text(name)!r} is chunked or compressed and decodes to "
            f"{nbytes:,} bytes, more than half this machine's memory; refusing"
        )
    code = (
        "import sys\n"
        "from ckpt_viewer.core import CheckpointError\n"
        "from ckpt_viewer.core.listing.readers import keras_h5\n"
        "window = (int(sys.argv[3]), int(sys.argv[4])) if sys.argv[3] != '-' else None\n"
        "try:\n"
        "    data = keras_h5.decode_here(sys.argv[1], window, sys.argv[2], int(sys.argv[5]))\n"
        "except CheckpointError as exc:\n"
        "    sys.stderr.write(str(exc))\n"
        "    sys.exit(3)\n"
        "sys.stdout.buffer.write(data)\n"
    )
    start, size = window if window else ("-", "-")
    seconds = PREFLIGHT_SECONDS + nbytes / 20e6  # a slow filter on a large dataset is not a hang
    child = _libhdf5_child(
        code,
        [path, name, str(start), str(size), str(nbytes)],
        seconds,
        f"decoding dataset {safe_text(name)!r}",
    )
    if child.returncode == 3:
        raise CheckpointError(child.stderr.decode("utf-8", "replace")[:300])
    if len(child.stdout) != nbytes:
        raise CheckpointError(
            f"dataset {safe_text(name)!r} decodes to {len(child.stdout):,} bytes, not {nbytes:,}"
        )
    return child.stdout


def decode_here(path: str, window: tuple[int, int] | None, name: str, nbytes: int) -> bytes:
    """_decode's work, in this process (the child's side)."""
    h5py = _h5py()
    with remote.open_source(path) as f:
        fileobj = io.BufferedReader(Window(f, *window)) if window else f
        try:
            with h5py.File(fileobj, "r") as h5:
                data: bytes = h5[name][()].tobytes()
        except (OSError, KeyError, ValueError) as exc:
            raise CheckpointError(
                f"dataset {safe_text(name)!r} cannot be read ({str(exc)[:80]})"
            ) from None
    if len(data) != nbytes:
        raise CheckpointError(
            f"dataset {safe_text(name)!r} decodes to {len(data):,} bytes, not {nbytes:,}"
        )
    return data


def _tensor(
    path: str,
    h5path: str,
    key: str,
    dataset: Any,
    window: tuple[int, int] | None,
    warnings: list[str],
) -> TensorInfo | None:
    dtype = dataset.dtype
    if dataset.is_virtual or dataset.id.get_create_plist().get_external_count():
        warnings.append(f"{safe_text(key)}: not read: its data lie in other files")
        return None
    torch_dtype = KINDS.get((dtype.kind, dtype.itemsize)) if dtype.fields is None else None
    if torch_dtype is None or dataset.shape is None:
        warnings.append(
            f"{safe_text(key)}: not read: HDF5 type {safe_text(str(dtype))} has no torch dtype"
        )
        return None
    shape = tuple(int(d) for d in dataset.shape)
    numel = 1
    for dim in shape:
        numel *= dim
    nbytes = numel * dtype.itemsize
    offset = dataset.id.get_offset()
    order = "big" if dtype.byteorder == ">" else "little"
    base, size = window or (0, remote.getsize(path))
    if offset is not None and dataset.chunks is None and not dataset.compression:
        if offset + nbytes > size:
            raise CheckpointError(f"dataset {safe_text(h5path)!r} reaches past the end of the file")
        source: FileSpan | DecodedBytes = FileSpan(path, base + offset, nbytes)
    else:  # chunked, compressed, compact or never written: h5py decodes it when read
        source = DecodedBytes(
            nbytes, functools.partial(_decode, path, window, dataset.name, nbytes)
        )
    storage = Storage(key, torch_dtype, numel, "cpu", source, byteorder=order)
    return TensorInfo(dtype=torch_dtype, shape=shape, stride=strides(shape, False), storage=storage)


class Window(remote.PositionedFile):
    """Bytes [start, start+size) of an open file, as a file (an HDF5 stored in a zip)."""

    def __init__(self, f: remote.SizedFile, start: int, size: int) -> None:
        super().__init__()
        self.f, self.start, self.size, self.position = f, start, size, 0

    def readinto(self, buffer: Any) -> int:
        count = max(0, min(len(buffer), self.size - self.position))
        self.f.seek(self.start + self.position)
        data = self.f.read(count)
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)


def _h5py() -> Any:
    try:
        import h5py
    except ImportError:
        raise CheckpointError(
            "an HDF5 file (Keras/h5py): reading it needs the h5py package (pip install h5py)"
        ) from None
    return h5py


def _opened(fileobj: Any, use: Callable[[Any], T]) -> T:
    """`use(h5file)`, with libhdf5's complaints about a damaged file as one line."""
    h5py = _h5py()
    try:
        f = h5py.File(fileobj, "r")
    except OSError as exc:
        raise CheckpointError(f"HDF5 file cannot be opened ({str(exc)[:80]})") from None
    try:
        with f:
            return use(f)
    except (RuntimeError, OSError, KeyError) as exc:
        # libhdf5 reports damaged structures (bad link names, B-trees...) as these
        text = str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__
        raise CheckpointError(f"the HDF5 file is damaged ({text})") from None


def _list(
    path: str,
    fileobj: Any,
    window: tuple[int, int] | None,
    fmt: str,
    config: Any = None,
    metadata: dict[str, Any] | None = None,
) -> Checkpoint:
    return _opened(fileobj, lambda f: _checkpoint(path, f, window, fmt, config, metadata))


def _checkpoint(
    path: str,
    f: Any,
    window: tuple[int, int] | None,
    fmt: str,
    config: Any,
    metadata: dict[str, Any] | None,
) -> Checkpoint:
    warnings, metadata = [], dict(metadata or {})
    for name in f.attrs:
        value = _attr(f, name)
        metadata[name] = _text(value) if not hasattr(value, "shape") else safe_text(str(value))
    if config is None and "model_config" in f.attrs:
        try:
            config = json.loads(_text(_attr(f, "model_config")))
        except ValueError:
            warnings.append("model_config is not valid JSON; shown as text")
    layers, globals_named = config_layers(config) if config is not None else ({}, {})
    entries, named, var_names, counts = _scan(path, f, window, warnings)
    tensors = _named(entries, named, layers, var_names, counts)
    checkpoint = Checkpoint(
        path=path,
        format=fmt,
        file_bytes=remote.getsize(path),
        root=flat_tree(tensors),
        warnings=warnings,
        metadata=metadata,
    )
    checkpoint.globals_named = globals_named
    for name in ("keras.layers.Lambda", "keras.__lambda__"):
        if name in globals_named:
            checkpoint.global_code[name] = (
                "marshalled Python bytecode (a lambda) that Keras runs when the model is "
                "loaded with safe_mode=False"
            )
    return checkpoint


def preflight(reader: str, path: str) -> None:
    """Run the same listing in a child process first: a libhdf5 that hangs or crashes on this
    file takes the child with it, and the refusal is one line here."""
    code = (
        "import sys\n"
        "from ckpt_viewer.core import CheckpointError\n"
        "from ckpt_viewer.core.listing.readers import keras_h5\n"
        "try:\n"
        f"    keras_h5.{reader}(sys.argv[1], checked=True)\n"
        "except CheckpointError:\n"
        "    pass\n"
    )
    _libhdf5_child(code, [path], PREFLIGHT_SECONDS, "reading the file's structure")


def _libhdf5_child(
    code: str, args: list[str], seconds: float, doing: str
) -> subprocess.CompletedProcess[bytes]:
    """Run `code` in a child Python (exit 0, or 3: a CheckpointError on its stderr); libhdf5
    hanging or dying there while `doing` its work is one line here."""
    try:
        child = subprocess.run(
            [sys.executable, "-c", code, *args],
            capture_output=True,
            timeout=seconds,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
    except subprocess.TimeoutExpired:
        raise CheckpointError(
            f"libhdf5 did not finish {doing} in {seconds:g} s "
            "(a damaged or crafted HDF5 file); refusing"
        ) from None
    if child.returncode not in (0, 3):
        last = child.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no message"]
        raise CheckpointError(
            f"libhdf5 failed {doing} (exit {child.returncode}: "
            f"{safe_text(last[0])[:100]}); refusing"
        )
    return child


def read(path: str, checked: bool = False) -> Checkpoint:
    if not checked:
        preflight("read", path)
    with remote.open_source(path) as f:
        return _list(path, f, None, "hdf5")


def read_keras(path: str, checked: bool = False) -> Checkpoint:
    """A Keras 3 `.keras` zip: config.json, metadata.json, model.weights.h5."""
    if not checked:
        preflight("read_keras", path)
    members = {m.name: m for m in read_directory(path)}
    if "config.json" not in members:
        raise CheckpointError("a .keras archive without config.json")
    try:
        config = json.loads(read_member(members["config.json"], MAX_CONFIG_BYTES))
        metadata = (
            json.loads(read_member(members["metadata.json"], MAX_CONFIG_BYTES))
            if ("metadata.json" in members)
            else {}
        )
    except (ValueError, RecursionError):
        raise CheckpointError(
            "config.json or metadata.json of the .keras archive is not JSON"
        ) from None
    if not isinstance(metadata, dict):
        metadata = {}
    weights = members.get("model.weights.h5")
    if weights is None:
        other = [n for n in members if n.startswith("model.weights")]
        raise CheckpointError(
            f"a .keras archive whose weights are {safe_text(', '.join(other) or 'missing')}: "
            "only model.weights.h5 is read"
        )
    if weights.compress_type != 0:
        raise CheckpointError("a .keras archive whose model.weights.h5 is compressed (not read)")
    metadata = {f"metadata.{k}": v for k, v in metadata.items()}
    metadata["config"] = json.dumps(config)
    with remote.open_source(path) as f:
        start = data_offset(weights, f)
        if start + weights.file_size > f.size:
            raise CheckpointError("model.weights.h5 reaches past the end of the archive")
        window = io.BufferedReader(Window(f, start, weights.file_size))
        return _list(path, window, (start, weights.file_size), "keras", config, metadata)


def _scan_shard(shard: str, found: list[str], h5: Any) -> Scan:
    return _scan(shard, h5, None, found)


def read_sharded(path: str, checked: bool = False) -> Checkpoint:
    """A Keras 3 sharded `*.weights.json` manifest: its `weight_map` names the `.weights.h5`
    shards (files beside it) that hold each layer's variables; each shard is listed as one."""
    if not checked:
        preflight("read_sharded", path)
    with remote.open_source(path) as f:
        if f.size > MAX_CONFIG_BYTES:
            raise CheckpointError("the weights manifest is larger than 64 MB")
        raw = f.read(f.size)
    try:
        manifest = json.loads(raw)
    except (ValueError, RecursionError):
        raise CheckpointError("the weights manifest is not JSON") from None
    weight_map = manifest.get("weight_map") if isinstance(manifest, dict) else None
    if not isinstance(weight_map, dict):
        raise CheckpointError("the weights manifest has no weight_map")
    shards: dict[str, None] = {}
    for names in weight_map.values():
        for name in names if isinstance(names, list) else [names]:
            if (
                not isinstance(name, str)
                or not name
                or "/" in name
                or "\\" in name
                or name in ("..", ".")
            ):
                raise CheckpointError(
                    f"the weights manifest names shard {safe_text(str(name))[:80]!r}, not a "
                    "file beside it"
                )
            shards[name] = None
    entries: Entries = []
    named: dict[str, str] = {}
    var_names: dict[str, str] = {}
    counts: dict[str, int] = {}
    warnings: list[str] = []
    for name in shards:
        shard = remote.join(remote.dirname(path), name)
        remote.check_regular(shard)
        if not remote.isfile(shard):
            raise CheckpointError(f"shard {safe_text(name)!r} named by the manifest is missing")
        found: list[str] = []
        with remote.open_source(shard) as f:
            part = _opened(f, functools.partial(_scan_shard, shard, found))
        warnings += [f"{safe_text(name)}: {w}" for w in found]
        # a layer's variables may be split across shards (its vars group in each)
        entries += part[0]
        named.update(part[1])
        for group, group_name in part[2].items():
            var_names.setdefault(group, group_name)
        for group, count in part[3].items():
            counts[group] = counts.get(group, 0) + count
    tensors = _named(entries, named, {}, var_names, counts)
    metadata = manifest.get("metadata")
    return Checkpoint(
        path=path,
        format="keras-sharded",
        file_bytes=remote.getsize(path),
        root=flat_tree(tensors),
        warnings=warnings,
        metadata={f"metadata.{k}": v for k, v in metadata.items()}
        if isinstance(metadata, dict)
        else {},
    )


KERAS_RECORDS = (b"metadata.json", b"config.json", b"model.weights.h5")


def is_keras(path: str, head: bytes) -> bool:
    """A Keras 3 archive: the first record one of its own (Keras writes metadata.json first),
    config.json and weights in its directory."""
    if first_record_name(head) not in KERAS_RECORDS:
        return False
    try:
        names = {m.name for m in read_directory(path)}
    except CheckpointError:
        return False
    return "config.json" in names and any(n.startswith("model.weights") for n in names)
