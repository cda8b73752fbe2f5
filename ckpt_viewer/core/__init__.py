"""The Qt-free core. Listing modules import neither torch nor Qt."""

import threading


class CheckpointError(Exception):
    """A file that cannot be read; the message is one line for the user."""


class Ambiguous(CheckpointError):
    """torch's reading of the file is not well defined, or another reader could read other
    content: refused rather than showing one reading of it."""


class StructureError(CheckpointError):
    """Structure the format's own reader refuses or reads in no defined way (DCP chunks that
    overlap or leave holes, `.pt2` views outside their record...): `verify` reports it as
    damage of `record`, naming the tensor `key` it belongs to."""

    def __init__(self, message: str, key: str = "", record: str = ""):
        super().__init__(message)
        self.key, self.record = key, record


def describe_error(exc: BaseException) -> str:
    """One line for the user, whatever was raised (text from the file escaped, never a
    second line)."""
    from ckpt_viewer.core.listing.text import clipped, safe_text

    if isinstance(exc, CheckpointError):
        return safe_text(clipped(str(exc), 2000))
    if isinstance(exc, MemoryError):
        return "not enough memory"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return safe_text(f"unexpected {type(exc).__name__}{': ' + text[:200] if text else ''}")


class paused_gc:
    """Building hundreds of thousands of small objects triggers repeated full garbage
    collections that cost more than the work itself.

    freeze=True (a GUI load) also freezes what was built: otherwise the next young collection
    walks all of it at once (holding the GIL: a visible stall) and every later full
    collection walks it again. Frozen objects are still freed by reference counting;
    the window unfreezes when a tab closes, so cycles among them are collected later.

    Pauses may overlap on several threads (GUI jobs): the collector is back once the last
    one ends, not when the first does."""

    def __init__(self, freeze: bool = False):
        self.freeze = freeze

    def __enter__(self):
        import gc

        with _pauses_lock:
            if not _pauses["depth"]:
                _pauses["was_enabled"] = gc.isenabled()
                gc.disable()
            _pauses["depth"] += 1

    def __exit__(self, *exc):
        import gc

        with _pauses_lock:
            _pauses["depth"] -= 1
            if self.freeze:  # the GUI collects on a timer (automatic collection off): it too
                gc.freeze()
            if _pauses["was_enabled"] and not _pauses["depth"]:
                gc.enable()


_pauses = {"depth": 0, "was_enabled": False}  # paused_gc's open pauses, on all threads
_pauses_lock = threading.Lock()


def paused() -> bool:
    """Whether a paused_gc is open on some thread."""
    return bool(_pauses["depth"])
