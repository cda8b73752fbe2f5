"""The key tree's row index and filter, without a window."""

import pytest
import torch

import builders
from ckpt_viewer.core.open import open_checkpoint
from ckpt_viewer.core.rows import build_rows, matching_rows


def test_rows_group_dotted_keys_and_sum_subtrees(tmp_path):
    shared = torch.ones(6)
    path = builders.save({"enc.0.weight": torch.zeros(2, 3), "enc.0.bias": torch.zeros(2),
                          "enc.1.weight": shared, "tied": shared}, tmp_path / "c.pt")
    index = build_rows(open_checkpoint(path).root)
    assert index.keys == ["", "enc", "enc.0", "enc.0.weight", "enc.0.bias", "enc.1",
                          "enc.1.weight", "tied"]
    by_key = dict(zip(index.keys, index.rows))
    assert by_key["enc"].params == 14 and by_key["enc.0"].tensors == 2
    assert by_key[""].params == 14                     # the tied copy adds nothing
    assert list(index.sizes)[:2] == [8, 6] and list(index.parents)[:3] == [-1, 0, 1]


@pytest.mark.parametrize("text, expected", [
    ("WEIGHT", ["enc.0.weight", "enc.1.weight"]),          # substring, any case
    ("*.bias", ["enc.0.bias"]),                             # glob, whole key
    ("/^enc\\.1/", ["enc.1", "enc.1.weight"]),              # regex
])
def test_filter_modes(text, expected):
    keys = ["", "enc", "enc.0", "enc.0.weight", "enc.0.bias", "enc.1", "enc.1.weight"]
    hits = matching_rows(text, keys, [k.lower() for k in keys])
    assert [keys[i] for i in hits] == expected


def test_bad_regex_is_one_line():
    with pytest.raises(ValueError, match="bad regular expression"):
        matching_rows("/(/", ["a"], ["a"])
