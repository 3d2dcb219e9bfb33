"""Aggregation rules for fedsim: pure tensor math over flattened output layers.

Every module in this package is imported here so that ``@register`` runs for each rule.
"""

import importlib
import pkgutil

from strategies.base import (
    AggregationContext,
    Strategy,
    aggregate,
    aggregate_batch,
    finite_rows,
    flatten,
    head_logits,
    sanitize,
    unflatten,
)
from strategies.errors import CannotAggregateError
from strategies.registry import REGISTRY, available, build, register

for _m in pkgutil.iter_modules(__path__):
    if _m.name not in {"base", "errors", "registry"} and not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = [
    "AggregationContext", "CannotAggregateError", "Strategy", "aggregate", "aggregate_batch",
    "finite_rows", "flatten", "head_logits", "sanitize", "unflatten",
    "REGISTRY", "available", "build", "register",
]
