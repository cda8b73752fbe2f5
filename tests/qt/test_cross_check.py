"""One cross-check (issue #20): for every file of a small corpus, what the window shows (tree
counts and sizes, summary totals, statistics table, plotted histogram), what `inspect --json`
and `stats --json` print, and what the format's own loader gives (torch, safetensors, DCP's
converter) are the same numbers. Integers exactly; figures shown rounded within the precision
they are shown with; JSON figures to float64 rounding."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QTreeView
from qt_helpers import open_and_wait

from ckpt_viewer import cli
from crosscheck_corpus import CORPUS

QUANTILES = (0.001, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 0.999)
FIGURES = {"min": "min", "max": "max", "mean": "mean", "std": "std", "l2": "L2 norm"}
BYTE_UNITS = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}


# --- the reference: torch's figures over every value (float64, so nothing rounds) -------------


def _figures(v: torch.Tensor) -> dict:
    if not v.numel():
        return {"min": None, "max": None, "mean": None, "std": None, "l2": 0.0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # std of one value: torch warns and says nan
        return {
            "min": v.amin().item(),
            "max": v.amax().item(),
            "mean": v.mean().item(),
            "std": v.std().item(),
            "l2": torch.linalg.norm(v).item(),
        }


def reference_stats(tensor: torch.Tensor) -> dict:
    v = tensor.detach().reshape(-1)
    v = (v.abs() if v.is_complex() else v).to(torch.float64)  # complex: the magnitude
    finite = v[v.isfinite()]
    ref = {
        "numel": v.numel(),
        "nan": int(v.isnan().sum()),
        "posinf": int((v == math.inf).sum()),
        "neginf": int((v == -math.inf).sum()),
        "zeros": int((v == 0).sum()),
        "all": _figures(v),
        "finite": _figures(finite),
        "values": finite,
        "dtype": tensor.dtype,
    }
    ref["quantiles"] = (
        {q: float(np.quantile(finite.numpy(), q, method="inverted_cdf")) for q in QUANTILES}
        if finite.numel()
        else {}
    )
    if not tensor.is_floating_point():
        values, counts = torch.unique(v, return_counts=True)
        ref["value_counts"] = dict(zip(values.long().tolist(), counts.tolist()))
    return ref


def histogram(values: torch.Tensor, edges) -> list[int]:
    """torch.histogram of the finite values over the very edges the viewer reports."""
    counts, _ = torch.histogram(values, bins=torch.tensor(list(edges), dtype=torch.float64))
    return [int(c) for c in counts.tolist()]


def unique_elements(tensors) -> tuple[int, int]:
    """(elements, bytes) of the storages the tensors use, each storage element counted once:
    the very indices each view touches, enumerated."""
    touched: dict[int, tuple] = {}
    for t in tensors:
        storage = t.untyped_storage()
        size = storage.nbytes() // t.element_size()
        indices = torch.arange(size).as_strided(t.shape, t.stride(), t.storage_offset())
        seen, _ = touched.get(storage.data_ptr(), (set(), 0))
        touched[storage.data_ptr()] = (seen | set(indices.reshape(-1).tolist()), t.element_size())
    return (
        sum(len(seen) for seen, _ in touched.values()),
        sum(len(seen) * size for seen, size in touched.values()),
    )


def listed(entry, key) -> tuple[list, str, int]:
    """(shape, dtype, nbytes) of a key as its format stores it."""
    if key in entry.listing:
        return entry.listing[key]
    t = entry.tensors[key]
    return list(t.shape), str(t.dtype).removeprefix("torch."), t.nbytes


def held(entry, keys) -> tuple[int, int]:
    """(elements, bytes) the keys' tensors hold, each stored element counted once."""
    if entry.listing:  # GGUF: no storage is shared; bytes are the blocks'
        return (sum(entry.tensors[k].numel() for k in keys), sum(entry.listing[k][2] for k in keys))
    return unique_elements([entry.tensors[k] for k in keys])


def undefined_std(ours, theirs, count) -> bool:
    """std of fewer than two values: torch's nan, shown as undefined ('-', null)."""
    return ours is None and theirs is not None and math.isnan(theirs) and count < 2


def same(ours, theirs, rel) -> bool:
    if theirs is None or ours is None:
        return ours is theirs
    if math.isnan(theirs):
        return math.isnan(ours)
    return ours == pytest.approx(theirs, rel=rel, abs=1e-12)


def json_number(value):
    return float(value) if isinstance(value, str) else value


# --- what the window shows, parsed ------------------------------------------------------------


def shown_number(text: str):
    """(value, half a unit of its last digit) of a number as the window shows it."""
    text = text.replace("≈ ", "").replace(",", "").strip()
    if text in ("", "-"):
        return None, 0.0
    if text in ("nan", "inf", "-inf"):
        return float(text), 0.0
    mantissa, _, exponent = text.partition("e")
    decimals = len(mantissa.partition(".")[2])
    return float(text), 0.5 * 10.0 ** (int(exponent or 0) - decimals)


def shown_figure_agrees(text: str, theirs, count: int, name: str) -> bool:
    value, half = shown_number(text)
    if value is None or theirs is None:
        return (value is None and theirs is None) or (
            name == "std" and undefined_std(value, theirs, count)
        )
    if math.isnan(theirs) or math.isinf(theirs):
        return value == theirs or (math.isnan(theirs) and math.isnan(value))
    return abs(value - theirs) <= half * (1 + 1e-6) + 1e-300


def shown_count(text: str) -> int:
    return int(text.split(" (")[0].replace(",", "")) if text else 0


def shown_bytes(text: str) -> tuple[float, float]:
    if not text:
        return 0.0, 0.0
    number, unit = text.split()
    decimals = len(number.partition(".")[2])
    return float(number) * BYTE_UNITS[unit], 0.5 * 10.0**-decimals * BYTE_UNITS[unit]


def tree_rows(model, parent=None, out=None):
    """[(key, [column texts])] of every row, whether or not the view has expanded it."""
    from PySide6.QtCore import QModelIndex

    parent = parent if parent is not None else QModelIndex()
    out = [] if out is None else out
    for r in range(model.rowCount(parent)):
        index = model.index(r, 0, parent)
        out.append(
            (
                index.data(Qt.UserRole),
                [model.index(r, c, parent).data() or "" for c in range(model.columnCount())],
            )
        )
        tree_rows(model, index, out)
    return out


def summary_fields(text: str) -> dict:
    """The Summary table's label -> value (plain text: one cell a line, up to "By dtype")."""
    lines = text.split("\n\nBy dtype")[0].splitlines()[1:]
    return dict(zip(lines[::2], lines[1::2]))


def dtype_table(tab) -> dict:
    """The Summary's By dtype table: dtype -> (tensors, elements, bytes text)."""
    text = tab.findChild(object, "summaryPanel").toPlainText()
    lines = text.split("By dtype\n")[1].split("\n\n")[0].splitlines()[4:]
    return {
        lines[i]: (shown_count(lines[i + 1]), shown_count(lines[i + 2]), lines[i + 3])
        for i in range(0, len(lines) - 3, 4)
    }


def tensor_facts_shown(view) -> dict:
    """The Tensor pane's facts: label -> text (plain text: a label line, then its value)."""
    lines = [line.strip() for line in view.facts.toPlainText().strip().splitlines()]
    return dict(zip(lines[::2], lines[1::2]))


def exact_in_parentheses(text: str) -> int:
    return int(re.search(r"\(([\d,]+)\)", text).group(1).replace(",", ""))


# --- the CLI, in process ------------------------------------------------------------------------


def run_cli(capsys, *argv) -> dict:
    capsys.readouterr()
    assert cli.main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def check_stats_json(info: dict, ref: dict, where: str) -> list[str]:
    """stats --json against torch. std and L2 of float32 (and narrower, and complex64's
    magnitudes) are summed in float32 as torch sums them: equal to the float64 figures within
    float32's precision."""
    problems = []
    dtype = ref["dtype"]
    narrow = (dtype.is_floating_point or dtype.is_complex) and dtype not in (
        torch.float64,
        torch.complex128,
    )
    rel = 1e-6 if narrow else 1e-9
    for name in ("numel", "nan", "posinf", "neginf", "zeros"):
        if info[name] != ref[name]:
            problems.append(f"{where}: {name} {info[name]} vs torch {ref[name]}")
    if info["inf"] != ref["posinf"] + ref["neginf"]:
        problems.append(f"{where}: inf {info['inf']}")
    finite_count = ref["values"].numel()
    for name in FIGURES:
        for ours, theirs, count in (
            (info[name], ref["all"][name], ref["numel"]),
            (info[f"{name}_finite"], ref["finite"][name], finite_count),
        ):
            ours = json_number(ours)
            if not same(ours, theirs, rel) and not (
                name == "std" and undefined_std(ours, theirs, count)
            ):
                problems.append(f"{where}: {name} {ours} vs torch {theirs}")
    quantiles = {float(q): v for q, v in info["quantiles"].items()}
    if quantiles != ref["quantiles"]:
        problems.append(f"{where}: quantiles {quantiles} vs numpy {ref['quantiles']}")
    if finite_count:
        if info["counts"] != histogram(ref["values"], info["edges"]):
            problems.append(
                f"{where}: counts {info['counts']} vs torch.histogram "
                f"{histogram(ref['values'], info['edges'])}"
            )
    elif info["counts"]:
        problems.append(f"{where}: a histogram of no finite values")
    for value, count in info["value_counts"].items():
        if ref.get("value_counts", {}).get(int(value)) != count:
            problems.append(
                f"{where}: value {value}: {count} vs torch "
                f"{ref.get('value_counts', {}).get(int(value))}"
            )
    return problems


# --- the test ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CORPUS))
def test_window_cli_and_reference_agree(qtbot, window, tmp_path, capsys, name):
    entry = CORPUS[name](str(tmp_path))
    total = held(entry, entry.tensors)
    assert total[0] == sum(entry.split.values())  # the corpus' own bookkeeping
    problems = check_inspect(run_cli(capsys, "inspect", entry.path, "--json"), entry, total)
    open_and_wait(qtbot, window, entry.path)
    tab = window.tabs.currentWidget()
    problems += check_tree(tab.findChild(QTreeView, "keyTree").model(), entry)
    problems += check_summary(tab, entry, total)
    for key, tensor in entry.tensors.items():
        ref = reference_stats(tensor)
        problems += check_stats_json(
            run_cli(capsys, "stats", entry.path, key, "--json"), ref, f"stats {key}"
        )
        with qtbot.waitSignal(
            tab.tensor_view.view_ready,
            timeout=20_000,
            check_params_cb=lambda shown_key, k=key: shown_key == k,
        ):
            assert tab.select_key(key, show=False)
        problems += check_window_stats(tab.tensor_view, ref, key)
        problems += check_facts(tab.tensor_view, entry, key)
        problems += check_plot(tab.tensor_view, ref, key, capsys, entry.path)
    assert not problems, "\n".join(problems)


def check_inspect(inspected: dict, entry, total) -> list[str]:
    tensors = {t["key"]: t for t in inspected["tensors"]}
    assert set(tensors) == set(entry.tensors)
    problems = []
    for key in entry.tensors:
        theirs = dict(zip(("shape", "dtype", "nbytes"), listed(entry, key)))
        if {k: tensors[key][k] for k in theirs} != theirs:
            problems.append(f"inspect {key}: {tensors[key]} vs {theirs}")
    if inspected["params"] != entry.split or inspected["total_params"] != total[0]:
        problems.append(
            f"inspect: {inspected['params']} {inspected['total_params']} vs {entry.split}"
        )
    for key, value in entry.scalars.items():
        if inspected["scalars"].get(key) != value:
            problems.append(f"inspect scalar {key}: {inspected['scalars'].get(key)} vs {value}")
    return problems


def check_tree(model, entry) -> list[str]:
    """Each row's Shape, DType, Elements and Size: a tensor's own, a subtree's each stored
    element once."""
    problems = []
    for key, columns in tree_rows(model):
        _, _, shape, dtype, elements, size, _ = columns
        if key in entry.tensors:
            mine = (shape, dtype, shown_count(elements))
            their_shape, their_dtype, expected_bytes = listed(entry, key)
            theirs = (str(their_shape), their_dtype, entry.tensors[key].numel())
        else:
            mine = shown_count(elements)
            theirs, expected_bytes = held(
                entry, [k for k in entry.tensors if k.startswith(key + ".")]
            )
        if mine != theirs:
            problems.append(f"tree {key}: {mine} vs {theirs}")
        value, half = shown_bytes(size)
        if abs(value - expected_bytes) > half:
            problems.append(f"tree {key}: size {size} vs {expected_bytes} bytes")
    return problems


def check_summary(tab, entry, total) -> list[str]:
    problems = []
    summary = summary_fields(tab.findChild(object, "summaryPanel").toPlainText())
    parameters = entry.split["model"] - entry.buffers
    shown = {
        "Tensors": shown_count(summary["Tensors"]),
        "Model parameters": exact_in_parentheses(summary["Model parameters"]),
        "All elements": exact_in_parentheses(summary["All elements"]),
    }
    if shown != {
        "Tensors": len(entry.tensors),
        "Model parameters": parameters,
        "All elements": total[0],
    }:
        problems.append(f"summary {shown} vs {len(entry.tensors)}, {parameters}, {total[0]}")
    for label, count in (
        ("Model buffers", entry.buffers),
        ("Optimizer state", entry.split["optimizer_state"]),
        ("Other tensors", entry.split["other"]),
    ):
        text = summary.get(label, "0 elements")
        if (exact_in_parentheses(text) if "(" in text else shown_count(text.split()[0])) != count:
            problems.append(f"summary {label}: {text} vs {count}")
    value, half = shown_bytes(summary["Tensor bytes"])
    if abs(value - total[1]) > half:
        problems.append(f"summary tensor bytes {summary['Tensor bytes']} vs {total[1]}")
    by_dtype = {}
    for key in entry.tensors:
        by_dtype.setdefault(listed(entry, key)[1], []).append(key)
    table = dtype_table(tab)
    for dtype, (count, elements, size) in table.items():
        theirs = (len(by_dtype.get(dtype, [])), *held(entry, by_dtype.get(dtype, [])))
        value, half = shown_bytes(size)
        if (count, elements) != theirs[:2] or abs(value - theirs[2]) > half:
            problems.append(f"summary {dtype}: {count}, {elements}, {size} vs {theirs}")
    if set(table) != set(by_dtype):
        problems.append(f"summary dtypes {sorted(table)} vs {sorted(by_dtype)}")
    return problems


def check_facts(view, entry, key) -> list[str]:
    facts = tensor_facts_shown(view)
    shape, dtype, nbytes = listed(entry, key)
    numel = entry.tensors[key].numel()
    shown = (
        facts["shape"],
        facts["dtype"],
        shown_count(facts["elements"]),
        exact_in_parentheses(facts["bytes"]),
    )
    if shown != (str(shape), dtype, numel, nbytes):
        return [f"facts {key}: {shown} vs {shape, dtype, numel, nbytes}"]
    return []


def check_plot(view, ref, key, capsys, path) -> list[str]:
    """The plotted counts are torch.histogram's over the plotted edges, and what
    `stats --bins <as many>` prints."""
    x, y = view.histogram.curve.getData()
    plotted = [int(c) for c in y]
    if not ref["values"].numel():
        return [f"window {key}: bars plotted for no finite value"] if any(plotted) else []
    problems = []
    if plotted != histogram(ref["values"], x):
        problems.append(
            f"window {key}: plotted {plotted} vs torch.histogram {histogram(ref['values'], x)}"
        )
    same_bins = run_cli(capsys, "stats", path, key, "--json", "--bins", str(len(plotted)))
    if same_bins["edges"] != list(x) or same_bins["counts"] != plotted:
        problems.append(f"window {key}: plot differs from stats --bins {len(plotted)}")
    return problems


def check_window_stats(view, ref: dict, key: str) -> list[str]:
    table = view.table.as_dict()
    problems = []
    for label, theirs in (
        ("elements", ref["numel"]),
        ("NaN", ref["nan"]),
        ("+Inf", ref["posinf"]),
        ("-Inf", ref["neginf"]),
        ("zeros", ref["zeros"]),
    ):
        if shown_count(table[label]) != theirs:
            problems.append(f"window {key}: {label} {table[label]} vs torch {theirs}")
    percent = re.search(r"\(([\d.]+) %\)", table["zeros"])
    theirs = 100 * ref["zeros"] / max(ref["numel"], 1)
    if percent is None or abs(float(percent.group(1)) - theirs) > 0.005 + 1e-9:
        problems.append(f"window {key}: zeros {table['zeros']} vs {theirs:.4f} %")
    nonfinite = bool(ref["nan"] or ref["posinf"] or ref["neginf"])
    finite_count = ref["values"].numel()
    for name, label in FIGURES.items():
        if not shown_figure_agrees(table[label], ref["all"][name], ref["numel"], name):
            problems.append(f"window {key}: {label} {table[label]} vs torch {ref['all'][name]}")
        finite_label = f"{label} (finite)"
        if nonfinite != (finite_label in table):
            problems.append(f"window {key}: {finite_label} shown: {finite_label in table}")
        elif nonfinite and not shown_figure_agrees(
            table[finite_label], ref["finite"][name], finite_count, name
        ):
            problems.append(
                f"window {key}: {finite_label} {table[finite_label]} vs torch {ref['finite'][name]}"
            )
    for q, theirs in ref["quantiles"].items():
        label = f"{100 * q:g} %"
        if not shown_figure_agrees(table.get(label, ""), theirs, finite_count, label):
            problems.append(f"window {key}: {label} {table.get(label)} vs numpy {theirs}")
    for label, text in table.items():
        if label.startswith("value "):
            value = int(label.removeprefix("value "))
            if ref.get("value_counts", {}).get(value) != shown_count(text):
                problems.append(
                    f"window {key}: {label} {text} vs torch "
                    f"{ref.get('value_counts', {}).get(value)}"
                )
    return problems


def test_one_real_subprocess_agrees_with_torch(tmp_path):
    """The installed entry point, not only cli.main: one file, one tensor."""
    entry = CORPUS["plain"](str(tmp_path))
    run = [sys.executable, "-m", "ckpt_viewer"]
    inspected = json.loads(
        subprocess.run(
            run + ["inspect", entry.path, "--json"], check=True, capture_output=True, text=True
        ).stdout
    )
    assert {t["key"]: t["shape"] for t in inspected["tensors"]} == {
        k: list(t.shape) for k, t in entry.tensors.items()
    }
    info = json.loads(
        subprocess.run(
            run + ["stats", entry.path, "nonfinite", "--json"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    assert check_stats_json(info, reference_stats(entry.tensors["nonfinite"]), "nonfinite") == []
