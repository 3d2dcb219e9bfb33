"""Find attacks by name (``@register("name")``); every module of ``attacks`` is imported by
``attacks/__init__.py`` so dropping a file in is enough."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from attacks.base import DataPoisoner, UpdateForger

T = TypeVar("T", bound=type)
REGISTRY: dict[str, type[UpdateForger] | type[DataPoisoner]] = {}


def register(name: str) -> Callable[[T], T]:
    """Class decorator: make the attack available under ``name``."""

    def deco(cls: T) -> T:
        if name in REGISTRY and REGISTRY[name] is not cls:
            raise ValueError(f"attack name {name!r} is registered twice")
        cls.name = name  # type: ignore[attr-defined]
        REGISTRY[name] = cls  # type: ignore[assignment]
        return cls

    return deco


def available() -> dict[str, str]:
    """Names of all registered attacks → the first paragraph of their docstring, on one line."""
    return {n: " ".join((c.__doc__ or "").strip().split("\n\n")[0].split()) for n, c in sorted(REGISTRY.items())}


def build(name: str, params: dict[str, Any] | None = None) -> UpdateForger | DataPoisoner:
    """Instantiate attack ``name`` with ``params``; unknown names/params raise ``ValueError``."""
    if name not in REGISTRY:
        raise ValueError(f"unknown attack {name!r}; available: {', '.join(sorted(REGISTRY))}")
    try:
        return REGISTRY[name](**(params or {}))
    except TypeError as e:
        raise ValueError(f"attack {name!r}: {e}") from None
