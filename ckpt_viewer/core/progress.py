"""Progress generators: long work yields its progress in [0, 1] and returns its result, so a
caller can report progress and stop the work between two steps (by closing the generator)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Generator
from typing import Any, TypeVar

Result = TypeVar("Result")


class Cancelled(Exception):
    """The work was stopped before it returned a result."""


_driver = threading.local()


@contextlib.contextmanager
def cancelled_by(event: threading.Event | None) -> Generator[None, None, None]:
    """While a caller drives a progress generator on this thread, `event` is what cancels it:
    work that the generator hands to other threads (analysis.scan) watches it too, and stops at
    its next step instead of when the generator is next resumed and closed."""
    outer = getattr(_driver, "event", None)
    _driver.event = event
    try:
        yield
    finally:
        _driver.event = outer


def cancel_event() -> threading.Event | None:
    """The event of the caller driving this thread's progress generator, if any."""
    return getattr(_driver, "event", None)


def run(generator: Generator[Any, None, Result], cancel: threading.Event | None = None) -> Result:
    """Drive a progress generator to its result (the CLI, tests). When `cancel` is set between
    two steps the generator is closed, which runs its cleanup (thread pools stop), and
    Cancelled is raised."""
    with contextlib.closing(generator), cancelled_by(cancel):
        while True:
            try:
                next(generator)
            except StopIteration as end:
                return end.value
            if cancel is not None and cancel.is_set():
                raise Cancelled


def within(
    generator: Generator[Any, None, Result],
    span: tuple[float, float] = (0.0, 1.0),
    steps: int = 0,
) -> Generator[float, None, Result]:
    """Drive `generator` from inside another progress generator, yielding its progress mapped
    into `span`: with `steps`, each of its yields counts as one step of that many (what it
    yields is ignored); without, it yields its own progress in [0, 1]. Returns its result."""
    low, high = span
    done = 0
    with contextlib.closing(generator):  # closing this one closes it too
        while True:
            try:
                value = next(generator)
            except StopIteration as end:
                return end.value
            done += 1
            fraction = min(done / steps, 1.0) if steps else value
            yield low + (high - low) * fraction
