"""Keys listed in natural order where the file sorted them as text, the file's order kept
otherwise and on request; sizes in binary units; the words of `check`."""

import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import save_file

import builders
from ckpt_viewer import cli
from ckpt_viewer.core.listing.model import format_bytes
from ckpt_viewer.core.listing.open import open_checkpoint
from ckpt_viewer.core.listing.rows import build_rows
from ckpt_viewer.core.listing.text import listing_order, natural_key

LAYERS = 12


def gpt2_like(path) -> str:
    """A safetensors file as HF writes one: h.0 ... h.11, which the library stores sorted as
    text (h.0, h.1, h.10, h.11, h.2...)."""
    tensors = {f"h.{i}.mlp.c_fc.weight": torch.full((2,), float(i)) for i in range(LAYERS)}
    tensors["wte.weight"] = torch.zeros(3)
    save_file(tensors, str(path))
    return str(path)


header_keys = builders.safetensors_header_keys


def test_natural_key_orders_numbers_by_value_even_huge_ones():
    keys = ["h.10", "h.2", "h.1", "h.0", "h.01", "layer9", "layer10", "h." + "9" * 100_000]
    ordered = sorted(keys, key=natural_key)
    assert ordered[:5] == ["h.0", "h.01", "h.1", "h.2", "h.10"]
    assert ordered[5] == "h." + "9" * 100_000  # compared without int() (no ValueError)
    assert ordered[6:] == ["layer9", "layer10"]
    assert sorted(["n2", "n1", "n", "n10", "n.x", "m"], key=natural_key) == [
        "m",
        "n",  # before any digit run after it: a text with and one without digits compare
        "n1",
        "n2",
        "n10",
        "n.x",  # the text "n" before "n.x", as natsort has it
    ]


@given(st.lists(st.text(alphabet="ab01.\n", max_size=6), max_size=12))
def test_natural_key_sorts_any_names(names):
    ordered = sorted(names, key=natural_key)  # never a str-vs-tuple comparison
    assert sorted(ordered) == sorted(names)
    assert all(natural_key(a) <= natural_key(b) for a, b in zip(ordered, ordered[1:]))


def test_listing_order_keeps_an_order_that_is_not_the_alphabet():
    assert listing_order(["h.0", "h.1", "h.10", "h.2"]) == ["h.0", "h.1", "h.2", "h.10"]
    module_order = ["embed", "blocks.2", "blocks.10", "head", "bias"]
    assert listing_order(module_order) == module_order


def test_safetensors_rows_in_natural_order_with_the_file_order_remembered(tmp_path):
    path = gpt2_like(tmp_path / "model.safetensors")
    stored = header_keys(path)
    assert stored[:4] == ["h.0.mlp.c_fc.weight", "h.1.mlp.c_fc.weight"] + [
        "h.10.mlp.c_fc.weight",
        "h.11.mlp.c_fc.weight",
    ]  # the library's own text order: what we must not show
    index = build_rows(open_checkpoint(path).root)
    h = next(r for r in index.top.children if r.name == "h")
    assert [r.name for r in h.children] == [str(i) for i in range(LAYERS)]
    file_order = [r.name for r in sorted(h.children, key=lambda r: r.order)]
    assert file_order == [k.split(".")[1] for k in stored if k.startswith("h.")]
    tensors = [r.node.key for r in index.rows if r.node.tensor is not None]
    assert tensors == [f"h.{i}.mlp.c_fc.weight" for i in range(LAYERS)] + ["wte.weight"]


def test_torch_state_dict_keeps_its_module_order(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Linear(2, 1))
    path = builders.save(model.state_dict(), tmp_path / "m.pt")
    loaded = list(torch.load(path, weights_only=True))
    index = build_rows(open_checkpoint(path).root)
    assert [r.node.key for r in index.rows if r.node.tensor is not None] == loaded


def layer_lines(out: str) -> list[str]:
    """The names of the groups under `h` in `inspect`'s tree (the second level)."""
    return [
        line.split()[0]
        for line in out.splitlines()
        if line.startswith("    ") and line[4] != " " and "<group" in line
    ]


def test_inspect_lists_natural_order_and_file_order_on_request(tmp_path, capsys):
    path = gpt2_like(tmp_path / "model.safetensors")
    assert cli.main(["inspect", path]) == 0
    assert layer_lines(capsys.readouterr().out) == [str(i) for i in range(LAYERS)]
    assert cli.main(["inspect", path, "--file-order"]) == 0
    stored = [k.split(".")[1] for k in header_keys(path) if k.startswith("h.")]
    assert layer_lines(capsys.readouterr().out) == stored != [str(i) for i in range(LAYERS)]


def test_sizes_are_binary_and_labelled_so():
    assert format_bytes(512) == "512 B"
    assert format_bytes(1024) == "1.0 KiB"
    assert format_bytes(1_490_000_000) == "1.4 GiB"  # the OS dialog: 1.39 GiB
    assert format_bytes(3 * 2**50) == "3.0 PiB"


def test_check_counts_say_notes_with_plurals():
    from ckpt_viewer.core.analysis.check import Finding, HealthReport, severity_counts, text_lines

    severities = ("error", "warning", "warning", "info")
    report = HealthReport("p", [Finding("k", s, "kind", "") for s in severities])
    assert severity_counts(report) == "1 error, 2 warnings, 1 note"
    lines = list(text_lines(report))
    assert lines[3].startswith("note ") and lines[-1].endswith("1 error, 2 warnings, 1 note")
    assert report.to_json()["findings"][3]["severity"] == "info"  # the JSON contract stays


def test_check_lists_findings_in_layer_order(tmp_path):
    from ckpt_viewer.core.analysis.check import check
    from ckpt_viewer.core.values.stats import run

    path = tmp_path / "nan.safetensors"
    save_file({f"h.{i}.w": torch.full((4, 4), float("nan")) for i in range(LAYERS)}, str(path))
    report = run(check(open_checkpoint(str(path))))
    errors = [f.key for f in report.findings if f.severity == "error"]
    assert errors == [f"h.{i}.w" for i in range(LAYERS)]


def test_fuzzy_keys_match_characters_in_order_tightest_first():
    from ckpt_viewer.core.listing.text import FuzzyKeys

    keys = ["h.3.mlp.c_fc.weight", "h.3.attn.c_attn.weight", "head\nx]^-\\", "h.13.fc", "fc.h3"]
    finder = FuzzyKeys(keys)
    assert finder.find("h3fc") == ["h.13.fc", "h.3.mlp.c_fc.weight"]
    assert finder.find("x]^-\\") == ["head\nx]^-\\"]  # a key's newline never joins two keys
    assert finder.find("  ") == [] and finder.find("zz") == []
    assert finder.find("H3") == [  # the span h..3, then the key's length
        "fc.h3",
        "h.3.mlp.c_fc.weight",
        "h.3.attn.c_attn.weight",
        "h.13.fc",
    ]


def test_layers_text_counts_with_plurals(tmp_path):
    from ckpt_viewer.core.analysis.layers import layer_metrics, text_lines
    from ckpt_viewer.core.values.stats import run

    path = builders.save({f"blocks.{i}.w": torch.randn(4, 4) for i in range(3)}, tmp_path / "b.pt")
    lines = list(text_lines(run(layer_metrics(open_checkpoint(path)))))
    assert lines[0].endswith(": 3 layers, 1 role")
