"""Shared plumbing of the pre-aggregators (bucketing, ARC): building their inner rule."""

from __future__ import annotations

from typing import Any

from strategies.base import Strategy
from strategies.registry import REGISTRY, build


def build_inner(inner: str, inner_params: Any, include_own: bool) -> Strategy:
    """Build the rule a pre-aggregator hands its vectors to. ``include_own`` is passed down as the
    inner rule's ``include_own`` unless ``inner_params`` sets it (rules without the parameter keep
    their own behaviour), so a federated server's ``include_own: false`` reaches the inner rule."""
    if not isinstance(inner_params, dict):
        raise ValueError(f"inner_params: must be a mapping of the inner rule's parameters, got {inner_params!r}")
    params = dict(inner_params)
    if "include_own" in getattr(REGISTRY.get(inner), "__dataclass_fields__", {}):
        params.setdefault("include_own", include_own)
    try:
        return build(inner, params)
    except ValueError as e:
        raise ValueError(f"inner: {e}") from None
