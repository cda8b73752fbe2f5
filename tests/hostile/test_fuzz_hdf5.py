"""Mutated HDF5 files, with h5py as the oracle. libhdf5 can loop forever or crash on a damaged
file, so the window lists and decodes HDF5 in child processes; here each case runs in a forked
child with a time limit instead (fast enough for a long campaign), and a case that hangs or
kills that child is then opened the window's way, where it must be refused in one line.

Each case: what we list and read equals what h5py reads (every tensor's bytes are some dataset's
bytes as h5py returns them); every failure is one CheckpointError line. CI runs a few cases;
the by-hand campaign:

    FUZZ_EXAMPLES=10000 FUZZ_LOG=/tmp/hdf5.log python -m pytest -q tests/hostile/test_fuzz_hdf5.py

With FUZZ_LOG set every verdict is appended to that file (`cut -f1 LOG | cut -d: -f1 | sort |
uniq -c` counts them) and the test does not stop at the first MISMATCH/CRASH.
"""

from __future__ import annotations

import os
import select
import signal

import numpy as np
import pytest
from hypothesis import given, settings
from test_differential_fuzz import FUZZ, judge
from test_fuzz import mutate, mutations, other_framework_file

from ckpt_viewer.core import CheckpointError

h5py = pytest.importorskip("h5py")
CHILD_SECONDS = 4.0  # a case this slow is a libhdf5 spin: judged the window's way instead
WINDOW_SECONDS = 3.0  # the window's HDF5 time limit in those cases (judge calls 10 s a hang)
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", 15))  # each case forks: fewer than elsewhere


def _h5py_datasets(path: str) -> list[np.ndarray]:
    """Every dataset h5py reads from the file, in native byte order: groups walked item by
    item (visititems gives up on the first damaged link and would hide the rest)."""
    found: list[np.ndarray] = []

    def walk(group, depth):
        try:
            names = list(group.keys())
        except Exception:  # noqa: BLE001 - the oracle refusing a group is fine
            return
        for name in names:
            try:
                obj = group.get(name)
                if isinstance(obj, h5py.Dataset):
                    value = np.asarray(obj[()])
                    found.append(value.astype(value.dtype.newbyteorder("=")))
                elif isinstance(obj, h5py.Group) and depth < 32:
                    walk(obj, depth + 1)
            except Exception:  # noqa: BLE001 - nor refusing a dataset
                pass

    try:
        with h5py.File(path, "r") as f:
            walk(f, 0)
    except Exception:  # noqa: BLE001
        pass
    return found


def _same(ours: np.ndarray, theirs: np.ndarray) -> bool:
    """Bit for bit, ours taken back to h5py's dtype (we widen float16 and the like exactly)."""
    if ours.shape != theirs.shape or theirs.dtype.kind not in "biuf":
        return False
    return ours.astype(theirs.dtype).tobytes() == theirs.tobytes()


def _verdict_in_this_process(path: str) -> str:
    """Our listing and values, without the child-process guards (the caller is the guard)."""
    from ckpt_viewer.core.listing.open import open_checkpoint
    from ckpt_viewer.core.listing.readers import keras_h5
    from ckpt_viewer.core.values.read import read_array

    keras_h5.preflight = lambda reader, path: None
    keras_h5._decode = keras_h5.decode_here  # the listing binds it to each decoded dataset
    try:
        checkpoint = open_checkpoint(path)
    except CheckpointError as exc:
        return "OK: refused" if "\n" not in str(exc) else f"CRASH: two lines: {exc!r}"
    oracle = None
    for key, tensor, _ in checkpoint.tensors():
        try:
            ours = read_array(tensor)
        except CheckpointError as exc:
            if "\n" in str(exc):
                return f"CRASH: two lines: {exc!r}"
            continue
        if oracle is None:
            oracle = _h5py_datasets(path)
        if not any(_same(ours, theirs) for theirs in oracle):
            return f"MISMATCH: {key}: our values are no dataset's values as h5py reads them"
    return "OK: read"


def _in_a_child(path: str) -> str:
    """_verdict_in_this_process in a forked child; HANG/DIED when libhdf5 takes it down."""
    reading, writing = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(reading)
        try:
            verdict = _verdict_in_this_process(path)
        except BaseException as exc:  # noqa: BLE001 - reported, not raised, from the child
            verdict = f"CRASH: {type(exc).__name__}: {exc}"
        os.write(writing, verdict.encode("utf-8", "replace")[:4000])
        os._exit(0)
    os.close(writing)
    try:
        ready, _, _ = select.select([reading], [], [], CHILD_SECONDS)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "HANG"
        verdict = os.read(reading, 4000).decode("utf-8", "replace")
        _, status = os.waitpid(pid, 0)
        return verdict if verdict else f"DIED: {status}"
    finally:
        os.close(reading)


def _the_windows_way(path: str) -> str:
    """Open and read as the window does: listing and decoding in child processes."""
    from ckpt_viewer.core.listing.open import open_checkpoint
    from ckpt_viewer.core.listing.readers import keras_h5
    from ckpt_viewer.core.values.read import read_array

    before = keras_h5.PREFLIGHT_SECONDS
    keras_h5.PREFLIGHT_SECONDS = WINDOW_SECONDS
    try:
        for _, tensor, _ in open_checkpoint(path).tensors():
            read_array(tensor)
    except CheckpointError as exc:
        if "\n" in str(exc):
            return f"CRASH: two lines: {exc!r}"
        return "OK: guarded"
    finally:
        keras_h5.PREFLIGHT_SECONDS = before
    return "CRASH: a file that took libhdf5 down opened without a word"


def test_mutated_hdf5_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz-hdf5")
    original = open(other_framework_file(folder / "seed.h5"), "rb").read()
    target = folder / "mutant.h5"

    @settings(parent=FUZZ, max_examples=EXAMPLES)
    @given(mutations)
    def check(steps):
        data = mutate(original, steps)
        target.write_bytes(data)

        def verdict():
            found = _in_a_child(str(target))
            if not found.startswith(("HANG", "DIED")):
                return found
            guarded = _the_windows_way(str(target))
            if guarded.startswith("CRASH: a file that took"):
                # the window read it in its children: was it the fork (another thread of this
                # process, JAX's say, holding a lock as it forked)? once more, to tell
                again = _in_a_child(str(target))
                if not again.startswith(("HANG", "DIED")):
                    return again
            return f"{guarded} ({found} unguarded)"

        judge(verdict, f"{len(data)} bytes, steps {steps}")

    check()
