"""Find attacks by name (``@register("name")``); every module of ``attacks`` is imported by
``attacks/__init__.py``, and a scenario's ``plugins:`` list imports the user's own modules
(:mod:`fedsim.plugins`) in every process of the run. The registry itself is
:class:`fedlib.registry.Registry` (shared with the rules)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from attacks.base import DataPoisoner, UpdateForger
from fedlib.registry import Registry, did_you_mean

T = TypeVar("T", bound=type)
REGISTRY = Registry("attack")

__all__ = ["REGISTRY", "available", "build", "did_you_mean", "parameters", "register", "unknown_params"]


def register(name: str) -> Callable[[T], T]:
    """Class decorator: make the attack available under ``name``."""

    def deco(cls: T) -> T:
        REGISTRY.ensure_free(name, cls)
        if not (isinstance(cls, type) and issubclass(cls, UpdateForger | DataPoisoner)):
            raise ValueError(f"attack {name!r}: {cls!r} must subclass attacks.UpdateForger or attacks.DataPoisoner")
        REGISTRY.add(name, cls)
        return cls

    return deco


def available() -> dict[str, str]:
    """Names of all registered attacks → the first paragraph of their docstring, on one line."""
    return REGISTRY.available()


def build(name: str, params: dict[str, Any] | None = None) -> UpdateForger | DataPoisoner:
    """Instantiate attack ``name`` with ``params``; unknown names/params raise ``ValueError``."""
    return REGISTRY.build(name, params)


def parameters(name: str) -> list[str]:
    """The parameter names of attack ``name`` (its dataclass fields), in declaration order."""
    return REGISTRY.parameters(name)


def unknown_params(name: str, params: dict[str, Any] | None) -> str | None:
    """See :meth:`fedlib.registry.Registry.unknown_params`."""
    return REGISTRY.unknown_params(name, params)
