"""Result records: dataclasses whose ``to_dict()`` is JSON-serialisable (plain ints, floats,
bools, strings, lists, dicts; non-finite floats become ``None``).

A field declared with ``field(metadata={"json": False})`` (large tensors such as recovered
logits) is kept on the object but left out of ``to_dict()``.
"""

from __future__ import annotations

import math
from dataclasses import fields, is_dataclass
from typing import Any

import numpy as np
import torch


def to_plain(obj: Any) -> Any:
    """Recursively turn tensors, numpy values, dataclasses and containers into plain Python."""
    if isinstance(obj, Record):
        return obj.to_dict()
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu()
        return to_plain(obj.item() if obj.dim() == 0 else obj.tolist())
    if isinstance(obj, np.ndarray):
        return to_plain(obj.tolist())
    if isinstance(obj, np.generic):
        return to_plain(obj.item())
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    raise TypeError(f"cannot serialise {type(obj).__name__}")


class Record:
    """Mixin for result dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable view (fields marked ``metadata={"json": False}`` skipped)."""
        return {
            f.name: to_plain(getattr(self, f.name))
            for f in fields(self)  # type: ignore[arg-type]
            if f.metadata.get("json", True)
        }
