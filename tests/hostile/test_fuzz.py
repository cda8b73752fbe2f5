"""Mutated valid files of every format: opening (and verifying) either works or says what is
wrong in one line; nothing else escapes. CI runs a bounded number of cases; for a long run:

    FUZZ_EXAMPLES=5000 python -m pytest tests/hostile/test_fuzz.py -q
"""

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import builders
from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.analysis.verify import verify
from ckpt_viewer.core.listing.open import open_checkpoint
from ckpt_viewer.core.progress import run
from ckpt_viewer.core.values.stats import compute

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))
SEEDS = {}


def seed_file(kind, folder):
    if kind not in SEEDS:
        path = {
            "zip": lambda: builders.training_checkpoint(folder / "z.pt"),
            "legacy": lambda: builders.training_checkpoint(folder / "l.pt", legacy=True),
            "safetensors": lambda: builders.safetensors_file(folder / "s.safetensors"),
            "torchscript": lambda: builders.torchscript_file(folder / "j.pt"),
            "npz": lambda: other_framework_file(folder / "a.npz"),
            "onnx": lambda: other_framework_file(folder / "m.onnx"),
            "hdf5": lambda: other_framework_file(folder / "w.h5"),
            "msgpack": lambda: other_framework_file(folder / "s.msgpack"),
        }[kind]()
        SEEDS[kind] = open(path, "rb").read()
    return SEEDS[kind]


def other_framework_file(path):
    """A small file of another framework's format, written by that format's own library."""
    import numpy as np

    rng = np.random.default_rng(0)
    arrays = {"w": rng.random((4, 3), dtype=np.float32), "b": np.arange(3, dtype=np.int64)}
    if path.suffix == ".npz":
        np.savez(path, **arrays)
    elif path.suffix == ".onnx":
        onnx = pytest.importorskip("onnx")
        from onnx import helper, numpy_helper

        tensors = [numpy_helper.from_array(a, k) for k, a in arrays.items()]
        graph = helper.make_graph([], "g", [], [], initializer=tensors)
        onnx.save(helper.make_model(graph, producer_name="pytorch"), str(path))
    elif path.suffix == ".h5":
        h5py = pytest.importorskip("h5py")
        with h5py.File(path, "w") as f:
            f.attrs["layer_names"] = [b"dense"]
            f.create_group("dense").attrs["weight_names"] = [b"dense/w:0", b"dense/b:0"]
            for key, value in arrays.items():
                f.create_dataset(f"dense/dense/{key}:0", data=value)
            f.create_dataset("z", data=arrays["w"], chunks=(2, 3), compression="gzip")
    else:
        import msgpack

        def ext(a):
            return msgpack.ExtType(1, msgpack.packb((a.shape, a.dtype.name, a.tobytes())))

        path.write_bytes(msgpack.packb({"params": {k: ext(a) for k, a in arrays.items()}}))
    return path


mutations = st.lists(
    st.tuples(
        st.sampled_from(["flip", "cut", "splice", "zero"]), st.floats(0, 1), st.integers(0, 255)
    ),
    min_size=1,
    max_size=4,
)


def mutate(data: bytes, steps) -> bytes:
    data = bytearray(data)
    for op, where, value in steps:
        at = min(int(where * len(data)), max(len(data) - 1, 0))
        if not data:
            break
        if op == "flip":
            data[at] ^= value or 1
        elif op == "cut":
            del data[at:]
        elif op == "splice":
            data[at:at] = bytes([value]) * (value % 17 + 1)
        else:
            data[at : at + value] = bytes(min(value, len(data) - at))
    return bytes(data)


# not "hdf5": libhdf5 itself can loop forever on a damaged file (a variable-length string
# attribute whose global heap lost its signature), which no test timeout here can stop
@pytest.mark.parametrize(
    "kind", ["zip", "legacy", "safetensors", "torchscript", "npz", "onnx", "msgpack"]
)
def test_mutated_files(tmp_path_factory, kind):
    folder = tmp_path_factory.mktemp(f"fuzz-{kind}")
    original = seed_file(kind, folder)
    # the suffix as the seed's: ONNX and msgpack files are told apart partly by their names
    target = folder / f"mutant.{kind if kind in ('onnx', 'msgpack') else 'bin'}"

    @settings(
        max_examples=EXAMPLES,
        deadline=10_000,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(mutations)
    def check(steps):
        target.write_bytes(mutate(original, steps))
        try:
            checkpoint = open_checkpoint(str(target))
        except CheckpointError as exc:
            assert str(exc) and "\n" not in str(exc)
            return
        report = run(verify(str(target)))
        assert report.ok or report.problem
        for _, tensor, _ in list(checkpoint.tensors())[:3]:
            try:
                run(compute(tensor, bins=16))
            except CheckpointError:
                pass

    check()
