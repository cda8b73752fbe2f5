"""The values of an optimizer's small state tensors (Adam's 0-d `step`), read from the file:
a table shows `1000` where a listing could only say `float32 []`. Reads bytes, so it runs
off the GUI thread; listing (optim.py) stays free of numpy."""

from __future__ import annotations

from collections.abc import Generator

from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.listing.optim import OptimizerInfo
from ckpt_viewer.core.values.read import read_array

SMALL_STATE = 1  # elements: a step counter or another per-parameter scalar


def value_text(tensor) -> str:
    """'1000' for a 0-d tensor, '[0.5]' for a one-element one; integral floats without '.0'."""
    values = read_array(tensor, max_elements=SMALL_STATE).reshape(-1).tolist()
    shown = [f"{v:.6g}" if isinstance(v, float) else str(v) for v in values]
    return shown[0] if not tensor.shape else f"[{', '.join(shown)}]"


def small_state_values(optimizer: OptimizerInfo, limit: int) -> Generator[float, None, dict]:
    """Generator: yields progress; returns {(parameter, state name): text} for the state tensors
    of at most SMALL_STATE elements among the first `limit` parameters (unreadable ones left out)."""
    states = list(optimizer.state.items())[:limit]
    values = {}
    for index, (param, state) in enumerate(states):
        for child in state.children:
            tensor = child.tensor
            if tensor is not None and tensor.numel <= SMALL_STATE and not tensor.parts:
                try:
                    values[(param, child.name)] = value_text(tensor)
                except (CheckpointError, OSError, ValueError):  # keeps its dtype/shape text
                    continue
        yield (index + 1) / max(len(states), 1)
    return values
