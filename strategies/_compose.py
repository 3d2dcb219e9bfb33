"""Shared plumbing of the pre-aggregators (bucketing, ARC, NNM): their inner rule's parameters and
building it."""

from __future__ import annotations

from typing import Any

from fedlib.params import Mapping, Text, param
from fedlib.registry import param_names
from strategies.base import Strategy
from strategies.registry import REGISTRY, build


def inner_field() -> Any:
    """The ``inner`` parameter of a pre-aggregator: the name of the rule it hands its vectors to."""
    return param("median", Text(what="a registered rule's name (fedsim list strategies)"))


def inner_params_field() -> Any:
    """The ``inner_params`` parameter of a pre-aggregator: the inner rule's parameters."""
    return param(factory=dict, check=Mapping(what="a mapping of the inner rule's parameters"))


def build_inner(inner: str, inner_params: dict[str, Any], include_own: bool | None) -> Strategy:
    """Build the rule a pre-aggregator hands its vectors to (``inner``/``inner_params`` already
    checked against their declarations). ``include_own`` (unless None) is passed down as the
    inner rule's ``include_own`` unless ``inner_params`` sets it (rules without the parameter keep
    their own behaviour), so a federated server's ``include_own: false`` reaches the inner rule."""
    params = dict(inner_params)
    if include_own is not None and "include_own" in param_names(REGISTRY.get(inner)):
        params.setdefault("include_own", include_own)
    try:
        return build(inner, params)
    except ValueError as e:
        raise ValueError(f"inner: {e}") from None


def follow_inner(rule: Any, include_own: bool | None) -> Strategy:
    """Build pre-aggregator ``rule``'s inner rule (:func:`build_inner` of its ``inner`` and
    ``inner_params``, ``include_own`` passed down as there) and make ``rule`` follow it: its
    ``needs`` and ``exchanges`` become the inner rule's (what the inner rule reads, the engine must
    supply; what it exchanges, the messages carry). Returns the inner rule."""
    built = build_inner(rule.inner, rule.inner_params, include_own)
    rule.needs, rule.exchanges = built.needs, built.exchanges
    return built
