"""Every global a checkpoint's pickles name, triaged (ARCHITECTURE.md's safety model): `torch`
(accepted by torch.load(weights_only=True) as is), `data` (refused by weights_only but builds
plain data), `class` (a user class, decoded here as a placeholder) and `code` (a callable that
can run code or touch the system, or any call of a function that is not a class). With only
`data` beside `torch`, the snippet that makes weights_only load the file is given."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ckpt_viewer.core.listing.model import Checkpoint, iter_nodes
from ckpt_viewer.core.listing.safe_pickle import TORCH_ALLOWED

NUMPY_CORE = "(np._core if hasattr(np, '_core') else np.core)"
# qualname -> (import line, the expression naming the same object today)
DATA_GLOBALS = {
    "argparse.Namespace": ("import argparse", "argparse.Namespace"),
    "numpy.ndarray": ("import numpy as np", "np.ndarray"),
    "numpy.dtype": ("import numpy as np", "np.dtype"),
    "copyreg._reconstructor": ("import copyreg", "copyreg._reconstructor"),
    "builtins.object": ("", "object"),
}
for _module in ("numpy.core.multiarray", "numpy._core.multiarray"):
    for _name in ("scalar", "_reconstruct"):
        DATA_GLOBALS[f"{_module}.{_name}"] = (
            "import numpy as np",
            f"{NUMPY_CORE}.multiarray.{_name}",
        )
for _name in ("Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath"):
    DATA_GLOBALS[f"pathlib.{_name}"] = ("import pathlib", f"pathlib.{_name}")
for _name in ("datetime", "date", "time", "timedelta", "timezone"):
    DATA_GLOBALS[f"datetime.{_name}"] = ("import datetime", f"datetime.{_name}")
for _name in ("defaultdict", "deque"):
    DATA_GLOBALS[f"collections.{_name}"] = ("import collections", f"collections.{_name}")
# builtins that only build plain values
PLAIN_BUILTINS = (
    "list",
    "dict",
    "tuple",
    "frozenset",
    "slice",
    "range",
    "int",
    "float",
    "str",
    "bool",
    "bytes",
)
for _name in PLAIN_BUILTINS:
    DATA_GLOBALS[f"builtins.{_name}"] = ("", _name)
for _name in (
    "build_intlist",
    "build_tensorlist",
    "build_doublelist",
    "build_boollist",
    "build_genericlist",
    "build_tensor_from_id",
    "restore_type_tag",
):
    DATA_GLOBALS[f"torch.jit._pickle.{_name}"] = (
        "import torch.jit._pickle",
        f"torch.jit._pickle.{_name}",
    )
for _name in (
    "Bool",
    "Byte",
    "Bytes",
    "CLongDouble",
    "Complex128",
    "Complex64",
    "DateTime64",
    "Float16",
    "Float32",
    "Float64",
    "Int16",
    "Int32",
    "Int64",
    "Int8",
    "Int",
    "Long",
    "LongDouble",
    "LongLong",
    "Object",
    "Short",
    "Str",
    "String",
    "TimeDelta64",
    "UByte",
    "UInt16",
    "UInt32",
    "UInt64",
    "UInt8",
    "UInt",
    "ULong",
    "ULongLong",
    "UShort",
    "Void",
):
    DATA_GLOBALS[f"numpy.dtypes.{_name}DType"] = ("import numpy as np", f"np.dtypes.{_name}DType")
for _name in (
    "dictconfig.DictConfig",
    "listconfig.ListConfig",
    "base.ContainerMetadata",
    "base.Metadata",
    "nodes.AnyNode",
    "nodes.StringNode",
    "nodes.IntegerNode",
    "nodes.FloatNode",
    "nodes.BooleanNode",
    "nodes.EnumNode",
    "nodes.BytesNode",
    "nodes.PathNode",
):
    DATA_GLOBALS[f"omegaconf.{_name}"] = ("import omegaconf", f"omegaconf.{_name}")
DATA_GLOBALS["typing.Any"] = ("import typing", "typing.Any")  # OmegaConf's ref_type
for _module in ("_io", "io"):  # dcp.save of an io.BytesIO item: a buffer of bytes
    DATA_GLOBALS[f"{_module}.BytesIO"] = ("import io", "io.BytesIO")
# torch's DCP metadata records, by exact name (torch 2.0 to 2.13): nothing under a module prefix
# is data, for any module that imports os makes `module.os.system` a name under it
DCP_DATA = {
    f"torch.distributed.checkpoint.metadata.{n}"
    for n in (
        "Metadata",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "MetadataIndex",
        "TensorProperties",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    )
} | {
    "torch.distributed.checkpoint.filesystem._StorageInfo",
    "torch.distributed._shard.sharded_tensor.metadata.TensorProperties",
    "torch.distributed._shard.sharded_tensor.metadata.MEM_FORMAT_ENCODING",
    "torch.distributed._shard.metadata.ShardMetadata",
}

CODE_MODULES = (
    "os",
    "posix",
    "nt",
    "subprocess",
    "sys",
    "shutil",
    "socket",
    "importlib",
    "runpy",
    "webbrowser",
    "pickle",
    "_pickle",
    "marshal",
    "ctypes",
    "pty",
    "code",
    "codeop",
    "multiprocessing",
    "asyncio",
    "urllib",
    "http",
    "ftplib",
    "telnetlib",
    "smtplib",
    "requests",
    "commands",
    "signal",
    "pydoc",
    "timeit",
    "cProfile",
    "profile",
    "pdb",
    "trace",
    "pip",
    "tempfile",
    "glob",
    "io",
    "_io",
    "builtins",
    "__builtin__",
    "operator",
    "functools",
    "torch.hub",
    "torch.jit",
    "numpy.testing",
)
SAFE_IN_CODE_MODULES = {
    f"builtins.{n}" for n in (*PLAIN_BUILTINS, "object", "set", "complex", "bytearray")
} | {"functools.partial"}


@dataclass
class GlobalUse:
    name: str
    category: str  # torch | data | class | code
    uses: int = 0
    keys: list[str] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)  # arguments of each call, as text


def _is_code_module(name: str) -> bool:
    return any(name == m or name.startswith(m + ".") for m in CODE_MODULES)


def category(
    name: str, called: bool = False, partial_of_code: bool = False, module: str | None = None
) -> str:
    """The category of global `name`; `module` is given when the pickle named it as module +
    a dotted "a.b" attribute path, which pickle resolves one getattr at a time."""
    if name in TORCH_ALLOWED:
        return "torch"
    if name in DATA_GLOBALS or name in DCP_DATA:
        return "data"
    if module is not None and name.startswith(module + "."):
        steps = name[len(module) + 1 :].split(".")
        # each step may land on whatever the module imported (os, subprocess...): the name is
        # what its tail from any step names, and a lowercase step before the last is a module
        # or a function attribute, not a nested class
        if any(category(".".join(steps[i:]), called) == "code" for i in range(len(steps))) or any(
            not step[:1].isupper() for step in steps[:-1]
        ):
            return "code"
    if name == "functools.partial":
        return "code" if partial_of_code else "class"
    if _is_code_module(name.rsplit(".", 1)[0]) and name not in SAFE_IN_CODE_MODULES:
        return "code"
    short = name.rsplit(".", 1)[-1]
    if called and not short[:1].isupper():
        return "code"  # a call of a function the file names: it could do anything
    return "class"


def triage(checkpoint: Checkpoint, max_keys: int = 20) -> list[GlobalUse]:
    names = dict(checkpoint.globals_named) or {g: 1 for g in checkpoint.unsafe_globals}
    keys: dict[str, list[str]] = {}
    for node in iter_nodes(checkpoint.root):
        if node.type_name in names and len(keys.setdefault(node.type_name, [])) < max_keys:
            keys[node.type_name].append(node.key)
    calls, paths = checkpoint.global_calls, checkpoint.global_paths
    code_names = {n for n in names if category(n, n in calls, module=paths.get(n)) == "code"}
    partial_of_code = any(
        any(c in text for c in code_names) or "<" in text
        for text in calls.get("functools.partial", [])
    )
    result = []
    for name, uses in names.items():
        kind = (
            "code"
            if name in checkpoint.global_code
            else category(name, name in calls, partial_of_code, paths.get(name))
        )
        where = keys.get(name, []) + checkpoint.global_records.get(name, [])
        result.append(GlobalUse(name, kind, uses, where[:max_keys], calls.get(name, [])))
    order = {"code": 0, "class": 1, "data": 2, "torch": 3}
    return sorted(result, key=lambda g: (order[g.category], g.name))


TORCH_LOAD_FORMATS = ("torch-zip", "torch-legacy", "torchscript", "pickle")


def is_torch_class(name: str) -> bool:
    """A class of torch's own (torch.nn.modules.linear.Linear...): a whole pickled model."""
    return name.startswith("torch.nn.") and name.rsplit(".", 1)[-1][:1].isupper()


def snippet(checkpoint: Checkpoint, uses: list[GlobalUse]) -> str | None:
    """Python that makes torch.load(PATH, weights_only=True) load the file, when allowlisting
    `data` globals and torch's own classes is all it takes; None otherwise."""
    if checkpoint.format not in ("torch-zip", "torch-legacy"):
        return None
    outside = [u for u in uses if u.category != "torch"]
    if not outside or any(
        u.category != "data" and not (u.category == "class" and is_torch_class(u.name))
        for u in outside
    ):
        return None
    if any("allowlist" not in why for why in checkpoint.refusals):
        return None  # something allowlisting does not fix (opcodes, TorchScript...)
    imports = sorted({DATA_GLOBALS.get(u.name, ("import torch", ""))[0] for u in outside} - {""})
    entries = []
    for use in outside:
        expression = DATA_GLOBALS.get(
            use.name, (None, use.name if is_torch_class(use.name) else None)
        )[1]
        if expression is None:
            return None
        entries.append(f"({expression}, {use.name!r})")
        if use.name == "numpy.dtype":  # a BUILD on the dtype needs its class allowed too
            specs = sorted(
                {
                    call.strip("'")
                    for call in checkpoint.global_calls.get(use.name, [])
                    if call.strip("'")
                }
            )
            entries += [f"type(np.dtype({spec!r}))" for spec in specs]
    lines = [i for i in imports if i != "import torch"] + [
        "import torch",
        "",
        "with torch.serialization.safe_globals([" + ", ".join(entries) + "]):",
        f"    checkpoint = torch.load({checkpoint.path!r}, weights_only=True)",
    ]
    return "\n".join(lines)


FOLDER_FORMATS = ("hf-sharded", "hf-trainer", "accelerate", "training-dir")


def loads_with_weights_only(checkpoint: Checkpoint) -> bool:
    """Whether torch.load(weights_only=True) loads the file as it is: never for a file that
    torch does not read with torch.load at all (DCP folders, .pt2 archives, safetensors...)."""
    if checkpoint.format in TORCH_LOAD_FORMATS:
        return not checkpoint.refusals
    # a folder: each of its pickled files is torch.load-ed on its own
    return (
        checkpoint.format in FOLDER_FORMATS
        and bool(checkpoint.globals_named)
        and not checkpoint.refusals
        and all(g in TORCH_ALLOWED for g in checkpoint.globals_named)
    )


def report_dict(checkpoint: Checkpoint) -> dict[str, Any]:
    """The object `ckpt-viewer globals --json` prints."""
    uses = triage(checkpoint)
    return {
        "path": checkpoint.path,
        "loads_with_weights_only": loads_with_weights_only(checkpoint),
        "refusals": list(checkpoint.refusals),
        "globals": [
            {
                "name": u.name,
                "category": u.category,
                "uses": u.uses,
                "keys": u.keys,
                "calls": u.calls,
            }
            for u in uses
        ],
        "snippet": snippet(checkpoint, uses),
    }


MEANING = {
    "code": "CAN RUN CODE: torch.load(weights_only=False) would call it; never load this file "
    "that way",
    "class": "a class from the code that wrote the file; torch would need its source",
    "data": "builds plain data; needs allowlisting to load with weights_only",
    "torch": "accepted by torch.load(weights_only=True)",
}
TORCH_CLASS = (
    "torch's own classes (a whole pickled model): weights_only refuses them until "
    "they are allowlisted; a state_dict export needs no allowlist"
)
LOADERS = {
    "dcp": "torch.load does not read a DCP folder: torch.distributed.checkpoint unpickles "
    ".metadata with plain pickle and each bytes item with torch.load(weights_only=False), "
    "allowlisting nothing",
    "pt2": "torch.load does not read a .pt2 archive: torch.export.load unpickles its pickled "
    "parts (sample inputs, pickled tensors, objects) with weights_only=False or "
    "pickle.loads, allowlisting nothing",
    "hdf5": "torch.load does not read HDF5: keras.models.load_model rebuilds the model_config "
    "it holds, refusing lambdas with safe_mode=True and running them with safe_mode=False",
    "keras": "torch.load does not read a .keras archive: keras.models.load_model rebuilds its "
    "config.json, refusing lambdas with safe_mode=True and running them with safe_mode=False",
}

# what runs a `code` global of a file that torch.load does not read
CODE_RUNNERS = {
    "hdf5": "keras.models.load_model(safe_mode=False)",
    "keras": "keras.models.load_model(safe_mode=False)",
}


def meaning(name: str, kind: str, fmt: str) -> str:
    """What a global of this category means, in the file's own terms (one sentence source for
    the CLI, the banner and the Pickle Imports dialog)."""
    if kind == "class" and is_torch_class(name):
        return TORCH_CLASS
    if kind == "data" and fmt in LOADERS:
        return "builds plain data (its loader unpickles it with no allowlist)"
    if kind == "code" and fmt in CODE_RUNNERS:
        return f"CAN RUN CODE: {CODE_RUNNERS[fmt]} would run it; never load this file that way"
    return MEANING[kind]


def verdict(checkpoint: Checkpoint, report: dict[str, Any] | None = None) -> str:
    """One line: whether (and by what) the file is loaded as it is."""
    report = report or report_dict(checkpoint)
    if checkpoint.format in LOADERS:
        return LOADERS[checkpoint.format]
    if checkpoint.format not in TORCH_LOAD_FORMATS and not checkpoint.globals_named:
        return f"no pickle in it ({checkpoint.format}): nothing is unpickled, nothing to allow"
    if checkpoint.format in FOLDER_FORMATS:
        if report["loads_with_weights_only"]:
            return "torch.load(weights_only=True) loads each of its pickled files as it is"
        why = "; ".join(report["refusals"]) or "its files name globals outside the allowlist"
        return "torch.load(weights_only=True) refuses some of its files: " + why
    if report["loads_with_weights_only"]:
        return "torch.load(weights_only=True) loads this file as it is"
    return "torch.load(weights_only=True) refuses this file: " + "; ".join(report["refusals"])


def advice(checkpoint: Checkpoint, report: dict[str, Any] | None = None) -> str:
    """What to do about the globals: the allowlist, or why there is none ("" when none is
    needed)."""
    report = report or report_dict(checkpoint)
    if report["snippet"]:
        return "`ckpt-viewer globals FILE` prints the allowlist that makes weights_only load it."
    if report["loads_with_weights_only"] or not checkpoint.globals_named:
        return ""
    if checkpoint.format in LOADERS:
        if all(use["category"] == "torch" for use in report["globals"]):
            return ""
        return (
            "Its loader allowlists nothing: load it only if you trust whoever wrote it, "
            "or export its tensors with ckpt-viewer export."
        )
    return (
        "No allowlist makes weights_only load it; do not fall back to weights_only=False "
        "unless you trust whoever wrote the file."
    )


def banner_lines(checkpoint: Checkpoint) -> tuple[bool, list[str]]:
    """(names code, the lines) of the window's banner over a file naming unsafe globals."""
    uses = [u for u in triage(checkpoint) if u.category != "torch"]
    code = [u for u in uses if u.category == "code"]
    if code:
        lines = ["This file names code that its loader would run. Nothing was run here."]
        for use in code[:6]:
            call = f"{use.name}({use.calls[0]})" if use.calls else use.name
            where = f" at {use.keys[0]}" if use.keys else ""
            lines.append(f"  {call[:200]}{where}")
        return True, lines
    groups: dict[str, list[str]] = {}
    for use in uses:
        groups.setdefault(meaning(use.name, use.category, checkpoint.format), []).append(use.name)
    lines = []
    for text, names in groups.items():
        more = f" and {len(names) - 8} more" if len(names) > 8 else ""
        lines.append(f"{', '.join(names[:8])}{more}: {text}.")
    note = advice(checkpoint)
    return False, lines + ([note] if note else [])


def text_lines(checkpoint: Checkpoint) -> Iterator[str]:
    report = report_dict(checkpoint)
    yield f"path: {checkpoint.path}"
    yield verdict(checkpoint, report)
    for use in report["globals"]:
        where = f"  at {', '.join(use['keys'][:5])}" if use["keys"] else ""
        yield f"  [{use['category']}] {use['name']} ({use['uses']} use{'s' * (use['uses'] != 1)}){where}"
        for call in use["calls"] if use["category"] == "code" else []:
            yield f"      called as {use['name']}({call})"
    meanings: dict[str, str] = {}
    for use in report["globals"]:
        if use["category"] != "torch":
            meanings.setdefault(
                meaning(use["name"], use["category"], checkpoint.format), use["category"]
            )
    for text, kind in sorted(meanings.items(), key=lambda m: ("code", "class", "data").index(m[1])):
        yield f"{kind}: {text}"
    if report["snippet"]:
        yield "to load it with weights_only=True:"
        yield from ("    " + line for line in report["snippet"].splitlines())
    elif advice(checkpoint, report):
        yield advice(checkpoint, report)
