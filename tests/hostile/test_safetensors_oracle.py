"""The safetensors library is the oracle: for every crafted file, we open it and `verify` calls
it intact exactly when `safetensors.safe_open` accepts it."""

import json
import random
import struct
import subprocess
import sys

import pytest
from safetensors import safe_open

from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.analysis.verify import verify
from ckpt_viewer.core.listing.open import open_checkpoint
from ckpt_viewer.core.progress import run

T = '{"dtype":"F32","shape":[2],"data_offsets":[0,8]}'


def entry(dtype="F32", shape=(2,), offsets=(0, 8), **extra):
    return json.dumps(
        {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets), **extra}
    )


CASES = {
    "valid": ('{"a":%s}' % T, 8),
    "leading_space": (' {"a":%s}' % T, 8),
    "trailing_spaces": ('{"a":%s}    ' % T, 8),
    "trailing_newline_tab": ('{"a":%s}\n\t\r' % T, 8),
    "trailing_nul": ('{"a":%s}\x00' % T, 8),
    "trailing_formfeed": ('{"a":%s}\x0c' % T, 8),
    "gap_before_first": ('{"a":%s}' % entry(offsets=(4, 12)), 12),
    "gap_between": ('{"a":%s,"b":%s}' % (T, entry(offsets=(12, 20))), 20),
    "trailing_data_bytes": ('{"a":%s}' % T, 9),
    "short_data": ('{"a":%s}' % T, 7),
    "overlap": ('{"a":%s,"b":%s}' % (T, entry(offsets=(4, 12))), 12),
    "reversed_offsets": ('{"a":%s}' % entry(offsets=(8, 0)), 8),
    "nan_in_extra_field": ('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":NaN}}', 8),
    "infinity_in_metadata": ('{"__metadata__":{"k":Infinity},"a":%s}' % T, 8),
    "metadata_null": ('{"__metadata__":null,"a":%s}' % T, 8),
    "metadata_int_value": ('{"__metadata__":{"k":1},"a":%s}' % T, 8),
    "metadata_list": ('{"__metadata__":["x"],"a":%s}' % T, 8),
    "metadata_repeated": ('{"__metadata__":{},"__metadata__":{},"a":%s}' % T, 8),
    "metadata_key_repeated": ('{"__metadata__":{"k":"a","k":"b"},"a":%s}' % T, 8),
    "duplicate_tensor_last_fits": ('{"a":%s,"a":%s}' % (entry(shape=(3,), offsets=(0, 12)), T), 8),
    "duplicate_tensor_last_gap": ('{"a":%s,"a":%s}' % (T, entry(offsets=(8, 16))), 16),
    "duplicate_dtype_field": (
        '{"a":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}}',
        8,
    ),
    "unknown_field": ('{"a":%s}' % entry(x=[1, {"y": None}]), 8),
    "missing_shape": ('{"a":{"dtype":"F32","data_offsets":[0,8]}}', 8),
    "entry_as_list": ('{"a":["F32",[2],[0,8]]}', 8),
    "entry_not_object": ('{"a":1}', 0),
    "lone_surrogate_key": ('{"\\ud800":%s}' % T, 8),
    "surrogate_pair_key": ('{"\\ud83d\\ude00":%s}' % T, 8),
    "lone_surrogate_metadata": ('{"__metadata__":{"k":"\\udc00"},"a":%s}' % T, 8),
    "negative_zero_dim": ('{"a":{"dtype":"F32","shape":[-0],"data_offsets":[0,0]}}', 0),
    "float_dim": ('{"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}}', 8),
    "exponent_dim": ('{"a":{"dtype":"F32","shape":[2e0],"data_offsets":[0,8]}}', 8),
    "bool_dim": ('{"a":{"dtype":"F32","shape":[true],"data_offsets":[0,4]}}', 4),
    "dim_past_u64": (
        '{"a":{"dtype":"F32","shape":[18446744073709551616],"data_offsets":[0,8]}}',
        8,
    ),
    "zero_dim_times_huge": (
        '{"a":{"dtype":"F32","shape":[18446744073709551615,0],"data_offsets":[0,0]}}',
        0,
    ),
    "shape_product_overflow": (
        '{"a":{"dtype":"F32","shape":[9223372036854775808,2,0],"data_offsets":[0,0]}}',
        0,
    ),
    "bytes_overflow": (
        '{"a":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,0]}}',
        0,
    ),
    "three_offsets": ('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8,8]}}', 8),
    "offsets_object": ('{"a":{"dtype":"F32","shape":[2],"data_offsets":{"0":0,"1":8}}}', 8),
    "lowercase_dtype": ('{"a":%s}' % entry(dtype="f32"), 8),
    "complex128": ('{"a":%s}' % entry(dtype="C128", offsets=(0, 32)), 32),
    "complex64": ('{"a":%s}' % entry(dtype="C64", offsets=(0, 16)), 16),
    "float8_e8m0": ('{"a":%s}' % entry(dtype="F8_E8M0", offsets=(0, 2)), 2),
    "empty_header": ("{}", 0),
    "empty_header_with_data": ("{}", 1),
    "array_header": ("[]", 0),
    "bom": ('\ufeff{"a":%s}' % T, 8),
    "raw_control_in_key": ('{"a\x01":%s}' % T, 8),
    "empty_key": ('{"":%s}' % T, 8),
    "zero_size_tensors": (
        '{"z":%s,"a":%s,"y":%s}'
        % (entry(shape=(0,), offsets=(0, 0)), T, entry(shape=(0, 3), offsets=(8, 8))),
        8,
    ),
    "nesting_127": ('{"a":%s}' % entry(x=json.loads("[" * 125 + "]" * 125)), 8),
    "nesting_128": ('{"a":%s}' % entry(x=json.loads("[" * 126 + "]" * 126)), 8),
    "deep_dotted_key": ('{"%s":%s}' % (".".join(["a"] * 100_000), T), 8),
    "html_key": ('{"<h1>x</h1>\\u001b[2K":%s}' % T, 8),
}


def write(folder, name, header: str, data_bytes: int, length=None):
    raw = header.encode("utf-8", "surrogatepass")
    path = folder / f"{name}.safetensors"
    path.write_bytes(
        struct.pack("<Q", len(raw) if length is None else length)
        + raw
        + bytes(range(256)) * (data_bytes // 256)
        + bytes(data_bytes % 256)
    )
    return str(path)


def library_accepts(path) -> bool:
    try:
        with safe_open(path, "np") as f:
            for key in f.keys():
                f.get_slice(key).get_shape()
        return True
    except Exception:  # noqa: BLE001 - any refusal is the verdict
        return False


def our_verdicts(path) -> tuple[bool, bool]:
    try:
        open_checkpoint(path)
        opens = True
    except CheckpointError as exc:
        assert "\n" not in str(exc)
        opens = False
    try:
        intact = run(verify(path)).ok
    except CheckpointError:  # not recognised at all: exit 2, never "intact"
        intact = False
    return opens, intact


@pytest.mark.parametrize("name", sorted(CASES))
def test_crafted_headers_agree_with_the_library(tmp_path, name):
    header, data_bytes = CASES[name]
    path = write(tmp_path, name, header, data_bytes)
    expected = library_accepts(path)
    assert our_verdicts(path) == (expected, expected)


def test_mutated_headers_agree_with_the_library(tmp_path):
    """Random byte edits of a valid two-tensor header (seeded, so failures repeat)."""
    header = '{"__metadata__":{"format":"pt"},"a":%s,"b":%s}' % (
        T,
        entry(dtype="I8", shape=(2, 2), offsets=(8, 12)),
    )
    rng = random.Random(1234)
    alphabet = b'0123456789-.,:[]{}" \\eEuNaIf'
    disagreements = []
    for case in range(300):
        raw = bytearray(header.encode())
        for _ in range(rng.randint(1, 3)):
            raw[rng.randrange(len(raw))] = rng.choice(alphabet)
        path = write(tmp_path, f"m{case}", raw.decode("latin-1"), rng.choice((12, 12, 11, 13)))
        expected = library_accepts(path)
        if our_verdicts(path) != (expected, expected):
            disagreements.append((bytes(raw), expected))
    assert not disagreements, disagreements[:3]


def test_verify_exit_codes_follow_the_library(tmp_path):
    gap = write(tmp_path, "gap", '{"a":%s}' % entry(offsets=(4, 12)), 12)
    result = subprocess.run(
        [sys.executable, "-m", "ckpt_viewer", "verify", gap],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and result.stdout.startswith("damaged: ")
    assert "'a'" in result.stdout and len(result.stdout.splitlines()) == 1
    padded = write(tmp_path, "padded", '{"a":%s}     ' % T, 8)
    result = subprocess.run(
        [sys.executable, "-m", "ckpt_viewer", "verify", padded],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and result.stdout.startswith("intact: ")
