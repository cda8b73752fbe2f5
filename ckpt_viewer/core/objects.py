"""Objects of known classes decoded from their pickled state and shown as what they are."""

from __future__ import annotations

from dataclasses import dataclass, field

from ckpt_viewer.core.model import TensorInfo


@dataclass
class Described:
    kind: str                      # tensor | scalar | opaque | object | module | list | dict
    type_name: str = ""
    tensor: TensorInfo | None = None
    value: object = None
    children: list = field(default_factory=list)   # (name, value, role) like tree children
    note: str = ""


def describe_object(obj) -> Described | None:
    """How a placeholder of a known class is shown, or None to show it generically."""
    return None
