"""The key tree's row index and filter, without a window."""

from array import array

import pytest
import torch

import builders
from ckpt_viewer.core.listing.open import open_checkpoint
from ckpt_viewer.core.listing.rows import RowIndex, build_rows, filter_rows, matching_rows
from ckpt_viewer.core.listing.summary import totals


def test_rows_group_dotted_keys_and_sum_subtrees(tmp_path):
    shared = torch.ones(6)
    path = builders.save(
        {
            "enc.0.weight": torch.zeros(2, 3),
            "enc.0.bias": torch.zeros(2),
            "enc.1.weight": shared,
            "tied": shared,
        },
        tmp_path / "c.pt",
    )
    index = build_rows(open_checkpoint(path).root)
    assert index.keys == [
        "",
        "enc",
        "enc.0",
        "enc.0.weight",
        "enc.0.bias",
        "enc.1",
        "enc.1.weight",
        "tied",
    ]
    by_key = dict(zip(index.keys, index.rows))
    assert by_key["enc"].elements == 14 and by_key["enc.0"].tensors == 2
    assert by_key[""].elements == 14  # the tied copy adds nothing
    assert by_key["tied"].elements == 6 and by_key["tied"].nbytes == 24  # but holds its own
    assert list(index.sizes)[:2] == [8, 6] and list(index.parents)[:3] == [-1, 0, 1]


def test_views_of_one_storage_count_once_where_they_meet(tmp_path):
    """A fused qkv saved as three views: the group held only q's elements (16 of 48)."""
    qkv, embed = torch.randn(3, 4, 4), torch.randn(10, 4)
    path = builders.save(
        {
            "attn.q": qkv[0],
            "attn.k": qkv[1],
            "attn.v": qkv[2],
            "attn.again": qkv[1],
            "embed": embed,
            "head.w": embed,
            "col": embed[:, 1],
        },
        tmp_path / "v.pt",
    )
    index = build_rows(open_checkpoint(path).root)
    by_key = dict(zip(index.keys, index.rows))
    assert [by_key[k].elements for k in ("attn", "attn.k", "head", "head.w", "col")] == [
        48,
        16,
        40,
        40,
        10,
    ]
    assert by_key["attn"].nbytes == 192 and by_key["head"].nbytes == 160
    assert by_key[""].elements == 48 + 40 == totals(open_checkpoint(path)).elements  # col inside


@pytest.mark.parametrize(
    "text, expected",
    [
        ("WEIGHT", ["enc.0.weight", "enc.1.weight"]),  # substring, any case
        ("*.bias", ["enc.0.bias"]),  # glob, whole key
        ("/^enc\\.1/", ["enc.1", "enc.1.weight"]),  # regex
    ],
)
def test_filter_modes(text, expected):
    keys = ["", "enc", "enc.0", "enc.0.weight", "enc.0.bias", "enc.1", "enc.1.weight"]
    hits = matching_rows(text, keys, [k.lower() for k in keys])
    assert [keys[i] for i in hits] == expected


def test_bad_regex_is_one_line():
    with pytest.raises(ValueError, match="bad regular expression"):
        matching_rows("/(/", ["a"], ["a"])


def _shown_by_walking(index, hits):
    """The rows a filter must show, found the slow way: a hit, inside a hit, or above one."""
    shown = set()
    for row in index.rows[1:]:
        line, above = [row], row.parent
        while above is not None:
            line.append(above)
            above = above.parent
        below = range(row.index, row.index + row.size)
        if any(r.index in hits for r in line) or any(i in hits for i in below):
            shown.add(row.index)
    return shown


@pytest.mark.parametrize(
    "text", ["sub1", "layers.1*.sub2", "/^layers\\.3$/", "bias", "zzz", "layers", "WEIGHT", "  "]
)
def test_filter_rows_shows_matches_their_subtrees_and_ancestors(tmp_path, text):
    state = {
        f"layers.{i}.sub{j}.{p}": torch.zeros(1)
        for i in range(12)
        for j in range(3)
        for p in ("weight", "bias")
    }
    state["head"] = {"weight": torch.zeros(1), "scale": torch.zeros(1)}
    index = build_rows(open_checkpoint(builders.save(state, tmp_path / "many.pt")).root)
    filtered = filter_rows(text, index)
    hits = set(matching_rows(text, index.keys, index.lowered)) - {0} if text.strip() else None
    if filtered.visible is None:  # no filter, or every key matches
        assert hits is None or len(hits) >= len(index.rows) - 1
        assert filtered.visible_count == len(index.rows) - 1
        return
    shown = {i for i in range(1, len(index.rows)) if filtered.visible[i]}
    assert shown == _shown_by_walking(index, hits)
    assert filtered.visible_count == len(shown) and filtered.matches == len(hits)
    assert filtered.visible[0] == 1 and not filtered.error


def test_filter_rows_bad_regex_is_one_line_in_the_result():
    keys = ["", "a"]
    index = RowIndex(None, [None, None], keys, keys, array("q", [-1, 0]), array("q", [2, 1]))
    filtered = filter_rows("/(/", index)
    assert filtered.error.startswith("bad regular expression") and "\n" not in filtered.error
    assert filtered.visible is None


def test_position_is_the_first_row_of_a_key():
    """A key's row by lookup (the tree selects keys by it): the first row where a group and a
    tensor share a key, as a search of the keys in order finds it; None for no row."""
    keys = ["", "w", "w", "w.absmax"]
    index = RowIndex(
        None, [None] * 4, keys, None, array("q", [-1, 0, 0, 0]), array("q", [4, 1, 1, 1])
    )
    assert [index.position(k) for k in keys] == [keys.index(k) for k in keys] == [0, 1, 1, 3]
    assert index.position("x") is None and index.position("W") is None
