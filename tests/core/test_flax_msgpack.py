"""Flax msgpack state files: listed by our msgpack walk, values equal to what msgpack (and flax,
where installed) decode."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.analysis.verify import verify
from ckpt_viewer.core.listing.open import open_checkpoint, sniff
from ckpt_viewer.core.values.read import read_array
from ckpt_viewer.core.values.stats import run


def ndarray(a: np.ndarray, code: int = 1) -> msgpack.ExtType:
    """flax.serialization's ext record for an array (code 1) or numpy scalar (code 3)."""
    return msgpack.ExtType(
        code, msgpack.packb((a.shape, a.dtype.name, a.tobytes()), use_bin_type=True)
    )


def decoded(path) -> dict:
    """The oracle: msgpack's own decoding, arrays rebuilt as flax's _ndarray_from_bytes does."""

    def hook(code, data):
        if code in (1, 3):
            shape, name, raw = msgpack.unpackb(data, raw=False)
            return np.frombuffer(raw, dtype=name).reshape(shape)
        return msgpack.ExtType(code, data)

    flat, stack = {}, [("", msgpack.unpackb(path.read_bytes(), ext_hook=hook))]
    while stack:
        prefix, item = stack.pop()
        if isinstance(item, dict):
            stack.extend((f"{prefix}.{k}" if prefix else str(k), v) for k, v in item.items())
        elif isinstance(item, np.ndarray):
            flat[prefix] = item
    return flat


def listed(path) -> dict:
    return {key: read_array(t) for key, t, _ in open_checkpoint(str(path)).tensors()}


def test_msgpack_state_equals_msgpack_decoding(tmp_path):
    rng = np.random.default_rng(0)
    state = {
        "params": {
            "Dense_0": {"kernel": ndarray(rng.random((3, 4), dtype=np.float32))},
            "LayerNorm_0": {"scale": ndarray(np.ones(4, np.float16))},
            "Embed_0": {"embedding": ndarray(np.arange(600, dtype=np.int64).reshape(20, 30))},
        },
        "step": ndarray(np.array(7, np.int32), code=3),
        "flag": ndarray(np.array([True, False])),
        "note": "plain text",
        "lr": 0.5,
    }
    path = tmp_path / "flax_model.msgpack"
    path.write_bytes(msgpack.packb(state, use_bin_type=True))
    assert sniff(str(path)) == "flax_msgpack"
    ours, theirs = listed(path), decoded(path)
    assert sorted(ours) == sorted(theirs)
    for key, value in theirs.items():
        assert ours[key].shape == value.shape and ours[key].tobytes() == value.tobytes()
    assert open_checkpoint(str(path)).scalars() == {"note": "plain text", "lr": 0.5}
    assert run(verify(str(path))).ok


def test_flax_serialization_to_bytes(tmp_path):
    serialization = pytest.importorskip("flax.serialization")
    rng = np.random.default_rng(1)
    state = {
        "params": {"Conv_0": {"kernel": rng.random((3, 3, 2, 4)).astype(np.float32)}},
        "batch_stats": {"mean": np.zeros(4, np.float32)},
        "count": np.int64(3),
    }
    path = tmp_path / "state.msgpack"
    path.write_bytes(serialization.to_bytes(state))
    restored = serialization.msgpack_restore(path.read_bytes())
    ours = listed(path)
    assert (
        ours["params.Conv_0.kernel"].tobytes()
        == np.asarray(restored["params"]["Conv_0"]["kernel"]).tobytes()
    )
    assert ours["count"].item() == 3


@pytest.mark.parametrize(
    "data, why",
    [
        (msgpack.packb({"w": ndarray(np.zeros(8, np.float32))})[:-5], "past the end"),
        (b"\x81\xa1w\xc6\xff\xff\xff\xf0", "past the end"),  # bin32 claiming 4 GB
        (b"\x81\xa1w" + b"\x91" * 100_000 + b"\xc0", "deeper"),
        (msgpack.packb({"w": 1}) + b"junk", "follow the msgpack"),
        (
            msgpack.packb({"w": msgpack.ExtType(1, msgpack.packb(([4], "float32", b"\0" * 8)))}),
            "needs 16",
        ),
        (
            msgpack.packb({"w": msgpack.ExtType(1, msgpack.packb(([1], "object", b"\0" * 8)))}),
            "not read",
        ),
    ],
)
def test_hostile_msgpack_is_one_line(tmp_path, data, why):
    path = tmp_path / "bad.msgpack"
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match=why) as caught:
        open_checkpoint(str(path))
    assert "\n" not in str(caught.value)
