"""Key rules, one place for export, diff and Compare: take a subtree (root), keep keys by globs
or an explicit selection, rename optimizer state by parameter name, strip and add a prefix.
And the alignment search: the root and wrapper prefix on each side that make the most keys of
two checkpoints the same (a DataParallel `module.` copy against a plain state_dict, a training
checkpoint's `model_state_dict` against its exported weights)."""

from __future__ import annotations

import fnmatch
import re
import shlex
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.listing.model import Checkpoint, TensorInfo
from ckpt_viewer.core.listing.summary import MODEL, model_roots, tensor_categories

# Wrappers that prefix every key of a state_dict: DataParallel/DDP, torch.compile, FSDP,
# activation checkpointing, and the `model.` a LightningModule (or a trainer) holds its net under.
WRAPPERS = (
    "module.",
    "_orig_mod.",
    "_fsdp_wrapped_module.",
    "_checkpoint_wrapped_module.",
    "model.",
)
WRAPPER_NAMES = frozenset(w[:-1] for w in WRAPPERS)
MAX_ROOTS = 8  # candidate roots per side: the search stays a few set intersections


@dataclass(frozen=True)
class Side:
    """One side's key rules in a comparison."""

    root: str = ""
    strip_prefix: str = ""
    add_prefix: str = ""


def map_keys(
    checkpoint: Checkpoint,
    root: str = "",
    strip_prefix: str = "",
    add_prefix: str = "",
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    keys: Iterable[str] | None = None,
    renames: dict[str, str] | None = None,
    verb: str = "written as",
) -> list[tuple[str, str, TensorInfo]]:
    """(source key, new key, tensor) in file order. The key relative to `root` (after renames)
    is what globs match; a new key given twice is an error ('would both be <verb> ...')."""
    root = root.strip(".")
    if root and checkpoint.find(root) is None:
        raise CheckpointError(f"no key {root!r} in the file")
    included, excluded = _any_glob(include), _any_glob(exclude)
    selected = set(keys) if keys is not None else None
    result: list[tuple[str, str, TensorInfo]] = []
    seen: dict[str, str] = {}  # new key -> the source key written as it
    under = root + "."
    for key, tensor, _ in checkpoint.tensors():
        if root and not (key.startswith(under) or key == root):
            continue
        if selected is not None and key not in selected:
            continue
        named = renames.get(key, key) if renames else key
        if not root:
            relative = named
        elif key == root:  # the root is itself a tensor
            relative = key.rsplit(".", 1)[-1]
        else:  # a root inside one parameter's state keeps that state's id
            relative = (named if named.startswith(under) else key)[len(under) :]
        if included is not None and not included(relative):
            continue
        if excluded is not None and excluded(relative):
            continue
        new_key = relative
        if strip_prefix and new_key.startswith(strip_prefix):
            new_key = new_key[len(strip_prefix) :]
        new_key = add_prefix + new_key
        if new_key in seen:
            raise CheckpointError(f"{seen[new_key]!r} and {key!r} would both be {verb} {new_key!r}")
        seen[new_key] = key
        result.append((key, new_key, tensor))
    return result


def _any_glob(globs: Iterable[str]) -> Callable[[str], object] | None:
    """Whether a key matches any of the globs (fnmatchcase's rules), as one compiled pattern:
    a call per key and glob made planning 50,000 keys several times slower."""
    patterns = [fnmatch.translate(g) for g in globs]
    return re.compile("|".join(f"(?:{p})" for p in patterns)).match if patterns else None


def optimizer_renames(checkpoint: Checkpoint) -> dict[str, str]:
    """{state tensor key: the same key with the parameter's name for its id}, for every
    optimizer whose names are proven (optim.py); empty when any optimizer has only ids."""
    if not checkpoint.optimizers or not all(o.names_source for o in checkpoint.optimizers):
        return {}
    renames: dict[str, str] = {}
    for optimizer in checkpoint.optimizers:
        for name, state in optimizer.state.items():
            named = f"{optimizer.key}.state.{name}" if optimizer.key else f"state.{name}"
            for child in state.children:
                if child.kind == "tensor":
                    renames[child.key] = f"{named}{child.key[len(state.key) :]}"
    keys = [renames.get(key, key) for key, _, _ in checkpoint.tensors()]
    return renames if len(set(keys)) == len(keys) else {}  # names given twice: ids


@dataclass(frozen=True)
class Alignment:
    a: Side
    b: Side
    common: int  # keys in both files under these rules
    keys_a: int
    keys_b: int

    @property
    def text(self) -> str:
        """'A: model_state_dict, strip module. from B'."""
        parts = []
        for label, side in (("A", self.a), ("B", self.b)):
            if side.root:
                parts.append(f"{label}: {side.root}")
            if side.strip_prefix:
                parts.append(f"strip {side.strip_prefix} from {label}")
            if side.add_prefix:
                parts.append(f"add {side.add_prefix} to {label}")
        return ", ".join(parts) or "keys as they are"

    @property
    def options(self) -> str:
        """The same rules as `diff` options."""
        words = []
        for label, side in (("a", self.a), ("b", self.b)):
            for name, value in (
                ("root", side.root),
                ("strip-prefix", side.strip_prefix),
                ("add-prefix", side.add_prefix),
            ):
                if value:
                    words.append(f"--{name}-{label} {shlex.quote(value)}")
        return " ".join(words)

    @property
    def poor(self) -> bool:
        """Fewer than half the keys of the smaller side are common."""
        return 2 * self.common < min(self.keys_a, self.keys_b)


def candidate_roots(checkpoint: Checkpoint) -> list[str]:
    """The whole file, then each state dict or module outside the optimizers, in file order."""
    roots = [""] + [n.key for n in model_roots(checkpoint) if n.key]
    return roots[:MAX_ROOTS]


def _wrapper_run(key: str) -> str:
    """The wrappers `key` starts with, one after another ('module._orig_mod.')."""
    if not key.startswith(WRAPPERS):
        return ""
    parts = key.split(".")
    count = 0
    while count < len(parts) - 1 and parts[count] in WRAPPER_NAMES:
        count += 1
    return "".join(f"{part}." for part in parts[:count])


def candidate_strips(keys: list[str]) -> list[str]:
    """No strip, each run of wrappers the keys start with, and a first name at least half the
    keys share (a Hugging Face base model's `transformer.` or `bert.` beside its head)."""
    strips = dict.fromkeys(["", *{_wrapper_run(k) for k in keys}])
    firsts = Counter(k.split(".", 1)[0] for k in keys if "." in k)
    for first, count in firsts.most_common(2):
        if 2 * count >= len(keys) and first.isprintable():  # a picker shows it as it is
            strips[f"{first}."] = None
    return list(strips)


def _is_copy(root: str) -> bool:
    """An EMA or shadow copy of the weights (`model_ema`, `ema_state_dict`, `ema.shadow`)."""
    return bool({"ema", "shadow"} & set(re.split(r"[^a-z]+", root.lower())))


Plainness = tuple[bool, bool, bool, int]  # (strips, roots, EMA copy, file order): fewer first


Variant = tuple[Plainness, Side, frozenset[str], frozenset[str]]


def _variants(checkpoint: Checkpoint, roots: list[str], renames: dict[str, str]) -> list[Variant]:
    """(plainness: strips, roots, EMA, file order; rules; keys under them; the model's keys
    among them) for each candidate root x strip of one side."""
    categories = tensor_categories(checkpoint)
    model = {key for key, _, node in checkpoint.tensors() if categories.get(id(node)) == MODEL}
    variants: list[Variant] = []
    for order, root in enumerate(roots):
        try:
            mapped = [
                (new, old in model) for old, new, _ in map_keys(checkpoint, root, renames=renames)
            ]
        except CheckpointError:
            continue  # a root the file cannot give (a key given twice): not a candidate
        for strip in candidate_strips([new for new, _ in mapped]):
            path = f"{root}.{strip}" if root else strip
            if any(len(r) > len(root) and path.startswith(f"{r}.") for r in roots):
                continue  # 'model.module.' from the whole file is root 'model', strip 'module.'
            named = [(k[len(strip) :] if k.startswith(strip) else k, m) for k, m in mapped]
            keys = frozenset(k for k, _ in named)
            if len(keys) < len(mapped):
                continue  # 'module.x' beside 'x': diff would refuse to name both 'x'
            plainness = (bool(strip), bool(root), _is_copy(root), order)
            models = frozenset(k for k, m in named if m)
            variants.append((plainness, Side(root, strip), keys, models))
    return variants


def align(
    a: Checkpoint,
    b: Checkpoint,
    renames: tuple[dict[str, str], dict[str, str]] = ({}, {}),
    roots: tuple[list[str], list[str]] | None = None,
) -> Alignment | None:
    """The rules that make the most model keys common (users compare models: two training
    checkpoints whose models sit under different names must not be aligned on their larger
    optimizer state), then the most keys; among equals, the fewest keys left over (a root
    leaves out what is not the model), then the fewest rules (a root before a strip), then
    not an EMA copy, then the earlier root in the file. None when a side has no keys the
    rules can name. `roots`: candidate_roots of each side, when known already."""
    roots = roots or (candidate_roots(a), candidate_roots(b))
    variants_a, variants_b = _variants(a, roots[0], renames[0]), _variants(b, roots[1], renames[1])
    best, best_rank = None, None
    for plain_a, side_a, keys_a, models_a in variants_a:
        for plain_b, side_b, keys_b, models_b in variants_b:
            if best_rank is not None:
                at_most = (-min(len(models_a), len(models_b)), -min(len(keys_a), len(keys_b)))
                if at_most > best_rank[:2]:
                    continue  # cannot beat it
            common = len(keys_a & keys_b)
            left_over = len(keys_a) + len(keys_b) - 2 * common
            rank = (
                -len(models_a & models_b),
                -common,
                left_over,
                *(x + y for x, y in zip(plain_a, plain_b)),
            )
            if best_rank is None or rank < best_rank:
                best, best_rank = Alignment(side_a, side_b, common, len(keys_a), len(keys_b)), rank
    return best
