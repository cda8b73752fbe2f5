"""`sanitize` on every corpus file that opens: a copy plain torch.load(weights_only=True) loads,
or one line saying why not; never code run, never a traceback, never a hang."""

import signal

import pytest
import torch

from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.listing.open import open_checkpoint
from ckpt_viewer.core.progress import run
from ckpt_viewer.core.writing.sanitize import sanitize
from corpus import CORPUS

TIME_LIMIT = 20
OPENS = sorted(name for name, (_, expect) in CORPUS.items() if expect == "opens")


def _fail(signum, frame):
    raise TimeoutError(f"took longer than {TIME_LIMIT} s")


@pytest.mark.parametrize("name", OPENS)
def test_sanitize_corpus(name, tmp_path):
    builder, _ = CORPUS[name]
    sentinel = tmp_path / "SENTINEL"
    folder = tmp_path / "files"
    folder.mkdir()
    path = builder(folder, sentinel)
    destination = tmp_path / "clean.pt"
    signal.signal(signal.SIGALRM, _fail)
    signal.alarm(TIME_LIMIT)
    try:
        summary = run(sanitize(open_checkpoint(path), str(destination)))
    except CheckpointError as exc:
        assert str(exc) and "\n" not in str(exc)
        assert not destination.exists()
    else:
        assert summary.bytes < 64 << 20  # a small file never balloons
        torch.load(destination, weights_only=True)
    finally:
        signal.alarm(0)
    assert not sentinel.exists(), "code from the file ran"
