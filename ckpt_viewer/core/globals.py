"""Every global a checkpoint's pickles name, triaged (DESIGN.md's table): `torch` (accepted by
torch.load(weights_only=True) as is), `data` (refused by weights_only but builds plain data),
`class` (a user class, decoded here as a placeholder) and `code` (a callable that can run code
or touch the system, or any call of a function that is not a class). With only `data` beside
`torch`, the snippet that makes weights_only load the file is given."""

from __future__ import annotations

from dataclasses import dataclass, field

from ckpt_viewer.core.model import Checkpoint, iter_nodes
from ckpt_viewer.core.safe_pickle import TORCH_ALLOWED

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
        DATA_GLOBALS[f"{_module}.{_name}"] = ("import numpy as np",
                                              f"{NUMPY_CORE}.multiarray.{_name}")
for _name in ("Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath"):
    DATA_GLOBALS[f"pathlib.{_name}"] = ("import pathlib", f"pathlib.{_name}")
for _name in ("datetime", "date", "time", "timedelta", "timezone"):
    DATA_GLOBALS[f"datetime.{_name}"] = ("import datetime", f"datetime.{_name}")
for _name in ("defaultdict", "deque"):
    DATA_GLOBALS[f"collections.{_name}"] = ("import collections", f"collections.{_name}")
for _name in ("list", "dict", "tuple", "frozenset", "slice", "range", "int", "float", "str",
              "bool", "bytes"):
    DATA_GLOBALS[f"builtins.{_name}"] = ("", _name)
for _name in ("build_intlist", "build_tensorlist", "build_doublelist", "build_boollist",
              "build_genericlist", "build_tensor_from_id", "restore_type_tag"):
    DATA_GLOBALS[f"torch.jit._pickle.{_name}"] = ("import torch.jit._pickle",
                                                 f"torch.jit._pickle.{_name}")
DATA_PREFIXES = ("numpy.dtypes.", "omegaconf.", "torch.distributed.checkpoint.")

CODE_MODULES = ("os", "posix", "nt", "subprocess", "sys", "shutil", "socket", "importlib",
                "runpy", "webbrowser", "pickle", "_pickle", "marshal", "ctypes", "pty", "code",
                "codeop", "multiprocessing", "asyncio", "urllib", "http", "ftplib", "telnetlib",
                "smtplib", "requests", "commands", "signal", "pydoc", "timeit", "cProfile",
                "profile", "pdb", "trace", "pip", "tempfile", "glob", "io", "_io", "builtins",
                "__builtin__", "operator", "functools", "torch.hub", "torch.jit",
                "numpy.testing")
SAFE_IN_CODE_MODULES = {f"builtins.{n}" for n in ("list", "dict", "tuple", "frozenset", "slice",
                                                  "range", "int", "float", "str", "bool",
                                                  "bytes", "object", "set", "complex",
                                                  "bytearray")} | {"functools.partial"}


@dataclass
class GlobalUse:
    name: str
    category: str                  # torch | data | class | code
    uses: int = 0
    keys: list = field(default_factory=list)
    calls: list = field(default_factory=list)   # arguments of each call, as text


def _is_code_module(name: str) -> bool:
    return any(name == m or name.startswith(m + ".") for m in CODE_MODULES)


def category(name: str, called: bool = False, partial_of_code: bool = False) -> str:
    if name in TORCH_ALLOWED:
        return "torch"
    if name in DATA_GLOBALS or name.startswith(DATA_PREFIXES):
        return "data"
    if name == "functools.partial":
        return "code" if partial_of_code else "class"
    if _is_code_module(name.rsplit(".", 1)[0]) and name not in SAFE_IN_CODE_MODULES:
        return "code"
    short = name.rsplit(".", 1)[-1]
    if called and not short[:1].isupper():
        return "code"          # a call of a function the file names: it could do anything
    return "class"


def triage(checkpoint: Checkpoint, max_keys: int = 20) -> list[GlobalUse]:
    names = dict(checkpoint.globals_named) or {g: 1 for g in checkpoint.unsafe_globals}
    keys: dict[str, list] = {}
    for node in iter_nodes(checkpoint.root):
        if node.type_name in names and len(keys.setdefault(node.type_name, [])) < max_keys:
            keys[node.type_name].append(node.key)
    calls = checkpoint.global_calls
    code_names = {n for n in names if category(n, n in calls) == "code"}
    partial_of_code = any(any(c in text for c in code_names) or "<" in text
                          for text in calls.get("functools.partial", []))
    result = []
    for name, uses in names.items():
        kind = category(name, name in calls, partial_of_code)
        result.append(GlobalUse(name, kind, uses, keys.get(name, []), calls.get(name, [])))
    order = {"code": 0, "class": 1, "data": 2, "torch": 3}
    return sorted(result, key=lambda g: (order[g.category], g.name))


def snippet(checkpoint: Checkpoint, uses: list[GlobalUse]) -> str | None:
    """Python that makes torch.load(PATH, weights_only=True) load the file, when allowlisting
    `data` globals is all it takes; None otherwise."""
    if checkpoint.format not in ("torch-zip", "torch-legacy"):
        return None
    outside = [u for u in uses if u.category != "torch"]
    if not outside or any(u.category != "data" for u in outside):
        return None
    if any("allowlist" not in why for why in checkpoint.refusals):
        return None            # something allowlisting does not fix (opcodes, TorchScript...)
    imports = sorted({DATA_GLOBALS.get(u.name, ("", ""))[0] for u in outside} - {""})
    entries = []
    for use in outside:
        expression = DATA_GLOBALS.get(use.name, (None, None))[1]
        if expression is None:
            return None        # a data prefix (omegaconf...) without a known expression
        entries.append(f"({expression}, {use.name!r})")
        if use.name == "numpy.dtype":     # a BUILD on the dtype needs its class allowed too
            specs = sorted({call.strip("'") for call in checkpoint.global_calls.get(use.name, [])
                            if call.strip("'")})
            entries += [f"type(np.dtype({spec!r}))" for spec in specs]
    lines = imports + ["import torch", "",
                       "with torch.serialization.safe_globals([" + ", ".join(entries) + "]):",
                       f"    checkpoint = torch.load({checkpoint.path!r}, weights_only=True)"]
    return "\n".join(lines)


def report_dict(checkpoint: Checkpoint) -> dict:
    """The object `ckpt-viewer globals --json` prints."""
    uses = triage(checkpoint)
    return {"path": checkpoint.path,
            "loads_with_weights_only": not checkpoint.refusals,
            "refusals": list(checkpoint.refusals),
            "globals": [{"name": u.name, "category": u.category, "uses": u.uses,
                         "keys": u.keys, "calls": u.calls} for u in uses],
            "snippet": snippet(checkpoint, uses)}


MEANING = {
    "code": "CAN RUN CODE: torch.load(weights_only=False) would call it; never load this file "
            "that way",
    "class": "a class from the code that wrote the file; torch would need its source",
    "data": "builds plain data; needs allowlisting to load with weights_only",
    "torch": "accepted by torch.load(weights_only=True)",
}


def text_lines(checkpoint: Checkpoint):
    report = report_dict(checkpoint)
    yield f"path: {checkpoint.path}"
    if report["loads_with_weights_only"]:
        yield "torch.load(weights_only=True) loads this file as it is"
    else:
        yield "torch.load(weights_only=True) refuses this file: " + "; ".join(report["refusals"])
    for use in report["globals"]:
        where = f"  at {', '.join(use['keys'][:5])}" if use["keys"] else ""
        yield f"  [{use['category']}] {use['name']} ({use['uses']} use{'s' * (use['uses'] != 1)}){where}"
        for call in use["calls"] if use["category"] == "code" else []:
            yield f"      called as {use['name']}({call})"
    for kind in ("code", "class", "data"):
        if any(u["category"] == kind for u in report["globals"]):
            yield f"{kind}: {MEANING[kind]}"
    if report["snippet"]:
        yield "to load it with weights_only=True:"
        yield from ("    " + line for line in report["snippet"].splitlines())
    elif not report["loads_with_weights_only"]:
        yield ("no allowlist makes weights_only load it; do not fall back to weights_only=False "
               "unless you trust whoever wrote the file")
