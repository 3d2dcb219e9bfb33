"""Find aggregation rules by name. A rule registers itself with ``@register("name")``;
``strategies/__init__.py`` imports every module of the package, so dropping a file into
``strategies/`` is enough for a scenario to name the rule."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from strategies.base import Strategy

T = TypeVar("T", bound=type[Strategy])
REGISTRY: dict[str, type[Strategy]] = {}


def register(name: str) -> Callable[[T], T]:
    """Class decorator: make the strategy available under ``name``."""

    def deco(cls: T) -> T:
        if name in REGISTRY and REGISTRY[name] is not cls:
            raise ValueError(f"strategy name {name!r} is registered twice")
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return deco


def available() -> dict[str, str]:
    """Names of all registered strategies → the first paragraph of their docstring, on one line."""
    return {n: " ".join((c.__doc__ or "").strip().split("\n\n")[0].split()) for n, c in sorted(REGISTRY.items())}


def build(name: str, params: dict[str, Any] | None = None) -> Strategy:
    """Instantiate strategy ``name`` with ``params``; unknown names/params raise ``ValueError``."""
    if name not in REGISTRY:
        raise ValueError(f"unknown strategy {name!r}; available: {', '.join(sorted(REGISTRY))}")
    try:
        return REGISTRY[name](**(params or {}))
    except TypeError as e:
        raise ValueError(f"strategy {name!r}: {e}") from None
