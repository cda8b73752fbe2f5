"""Guards against Qt binding bugs the app would crash on."""

import sys

from PySide6.QtCore import QObject, Signal


class Emitter(QObject):
    value = Signal(object)


def test_emit_keeps_reference_counts(qapp):
    """PySide6 6.12.0's Signal.emit() returns True without a new reference; the worker
    threads emit thousands of progress signals, and Python 3.11 then aborts (bool_dealloc)."""
    emitter = Emitter()
    emitter.value.connect(lambda v: None)
    before = sys.getrefcount(True), sys.getrefcount(None)
    for _ in range(2000):
        emitter.value.emit(0.5)
    assert (sys.getrefcount(True), sys.getrefcount(None)) == before
