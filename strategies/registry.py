"""Find aggregation rules by name. A rule registers itself with ``@register("name")``;
``strategies/__init__.py`` imports every module of the package, and a scenario's ``plugins:``
list imports the user's own modules (:mod:`fedsim.plugins`), so a rule registered in either is
found on every backend. A rule must declare what it exchanges (``exchanges``): the byte counts
depend on it, so there is no silent default. The registry itself is :class:`fedlib.registry.Registry`
(shared with the attacks)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fedlib.registry import Registry, did_you_mean
from strategies.base import Strategy

T = TypeVar("T", bound=type[Strategy])
REGISTRY = Registry("strategy")
EXCHANGES = ("output_layer", "full_model")

__all__ = ["EXCHANGES", "REGISTRY", "available", "build", "declared_exchanges", "did_you_mean", "parameters",
           "register", "unknown_params"]


def declared_exchanges(cls: type) -> str | None:
    """What ``cls`` declares it exchanges (its own or a subclass-of-Strategy ancestor's
    ``exchanges``), or None when only the base class's placeholder would apply."""
    for k in cls.__mro__:
        if k is Strategy:
            return None
        if "exchanges" in vars(k):
            return vars(k)["exchanges"]
    return None


def register(name: str) -> Callable[[T], T]:
    """Class decorator: make the strategy available under ``name``."""

    def deco(cls: T) -> T:
        REGISTRY.ensure_free(name, cls)
        ex = declared_exchanges(cls)
        if ex not in EXCHANGES:
            raise ValueError(
                f"strategy {name!r} ({cls.__module__}.{cls.__qualname__}) must declare what it exchanges: "
                f"set the class attribute exchanges = 'output_layer' or 'full_model' (byte counts use it), "
                f"got {ex!r}"
            )
        REGISTRY.add(name, cls)
        return cls

    return deco


def available() -> dict[str, str]:
    """Names of all registered strategies → the first paragraph of their docstring, on one line."""
    return REGISTRY.available()


def build(name: str, params: dict[str, Any] | None = None) -> Strategy:
    """Instantiate strategy ``name`` with ``params``; unknown names/params raise ``ValueError``."""
    return REGISTRY.build(name, params)


def parameters(name: str) -> list[str]:
    """The parameter names of strategy ``name`` (its dataclass fields), in declaration order."""
    return REGISTRY.parameters(name)


def unknown_params(name: str, params: dict[str, Any] | None) -> str | None:
    """See :meth:`fedlib.registry.Registry.unknown_params`."""
    return REGISTRY.unknown_params(name, params)
