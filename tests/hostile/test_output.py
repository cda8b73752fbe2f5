"""Output nobody can forge: text a file controls never moves the cursor, starts a line, or
breaks JSON; shared objects are written once; huge values stay small."""

import json
import math
import subprocess
import sys

import pytest
import torch

import builders
from ckpt_viewer.core.listing.text import SHARED, json_safe, safe_text, strict_json

EVIL = "k\r\x1b[2K\nintact: forged\t\x85\u202eevil\u2066<h1>big</h1><img src=x>"


@pytest.fixture(autouse=True)
def big_int_parsing():
    """Our JSON may hold integers of any size; Python's parser refuses past 4,300 digits."""
    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    yield
    sys.set_int_max_str_digits(limit)


def cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "ckpt_viewer", *args], capture_output=True, text=True, timeout=60
    )


def test_safe_text_escapes_controls_and_bidi():
    assert safe_text("a\x1b[2K\r\n\tb") == "a\\x1b[2K\\r\\n\\tb"
    assert (
        safe_text("\x00\x7f\x9f\u202a\u202e\u2066\u2069\u2028")
        == "\\x00\\x7f\\x9f\\u202a\\u202e\\u2066\\u2069\\u2028"
    )
    assert safe_text("plain ünïcode 名前 <b>") == "plain ünïcode 名前 <b>"
    assert safe_text(safe_text(EVIL)) == safe_text(EVIL)
    assert len(safe_text(EVIL).splitlines()) == 1


def test_strict_json():
    text = strict_json({"a": math.nan, "b": [math.inf, -math.inf], "c": 10**5000, "d": 1.5})
    assert "NaN" not in text and "Infinity" not in text
    value = json.loads(text, parse_constant=lambda name: pytest.fail(name))
    assert value["a"] == "nan" and value["b"] == ["inf", "-inf"] and value["c"] == 10**5000
    assert json_safe(10**300_000).startswith("<integer of")


def test_inspect_text_escapes_every_key_and_global(tmp_path):
    path = builders.save({EVIL: torch.ones(2), "s": EVIL, "n": 10**100_000}, tmp_path / "e.pt")
    result = cli("inspect", path)
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout and "\r" not in result.stdout
    assert "\u202e" not in result.stdout and "\x85" not in result.stdout
    assert not any(line.startswith("intact:") for line in result.stdout.splitlines())
    assert "an integer of 100,001 digits" in result.stdout
    data = json.loads(cli("inspect", path, "--json").stdout)
    assert data["tensors"][0]["key"] == EVIL and data["scalars"]["n"] == 10**100_000


def test_error_lines_are_one_line(tmp_path):
    header = json.dumps({EVIL + "\nTraceback (most recent call last):": "not an object"}).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    result = cli("inspect", str(path))
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("error: ")
    assert "\x1b" not in result.stderr
    result = cli("verify", str(path))
    assert result.returncode in (1, 2) and len((result.stdout + result.stderr).splitlines()) == 1


def test_verify_line_cannot_be_forged(tmp_path):
    path = builders.save({"w" + EVIL: torch.randn(100)}, tmp_path / "v.pt")
    data = bytearray(open(path, "rb").read())
    at = data.rindex(b"version") - 200  # flip a byte inside the tensor's record
    data[at] ^= 0xFF
    open(path, "wb").write(bytes(data))
    result = cli("verify", path)
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and not lines[0].startswith("intact:")


def test_stats_json_is_strict(tmp_path):
    path = builders.save(
        {"t": torch.tensor([1.0, math.nan, math.inf, 3e38, 3e38])}, tmp_path / "t.pt"
    )
    result = cli("stats", path, "t", "--json")
    assert result.returncode == 0, result.stderr
    json.loads(result.stdout, parse_constant=lambda name: pytest.fail(f"bare {name}"))


def test_diff_json_is_strict(tmp_path):
    a = builders.save({"t": torch.zeros(3)}, tmp_path / "a.pt")
    b = builders.save({"t": torch.ones(3)}, tmp_path / "b.pt")
    result = cli("diff", a, b, "--json")
    assert result.returncode == 1
    info = json.loads(result.stdout, parse_constant=lambda name: pytest.fail(f"bare {name}"))
    assert info["tensors"][0]["rel_l2"] == "inf"


def test_shared_objects_are_shown_once(tmp_path):
    """A few hundred KB of pickle referencing one large string and list from thousands of
    places: the reports stay small and say what they left out."""
    text, items = "A" * 100_000, ["B" * 1000] * 20
    obj = {
        "s": {f"k{i}": text for i in range(4000)},
        "l": {f"l{i}": items for i in range(4000)},
        "opt": {"state": {}, "param_groups": [{"params": [0], "names": items}] * 500},
    }
    path = builders.save(obj, tmp_path / "shared.pt")
    report = cli("inspect", path)
    as_json = cli("inspect", path, "--json")
    assert report.returncode == 0 and as_json.returncode == 0
    assert len(report.stdout) < 5_000_000 and len(as_json.stdout) < 2_000_000
    assert SHARED in report.stdout
    scalars = json.loads(as_json.stdout)["scalars"]
    assert scalars["s.k0"].startswith("AAAA") and scalars["s.k1"] == SHARED
