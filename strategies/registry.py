"""Find aggregation rules by name. A rule registers itself with ``@register("name")``;
``strategies/__init__.py`` imports every module of the package, and a scenario's ``plugins:``
list imports the user's own modules (:mod:`fedsim.plugins`), so a rule registered in either is
found on every backend. A rule must declare what it exchanges (``exchanges``): the byte counts
depend on it, so there is no silent default."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any, TypeVar

from strategies.base import Strategy

T = TypeVar("T", bound=type[Strategy])
REGISTRY: dict[str, type[Strategy]] = {}
EXCHANGES = ("output_layer", "full_model")


def declared_exchanges(cls: type) -> str | None:
    """What ``cls`` declares it exchanges (its own or a subclass-of-Strategy ancestor's
    ``exchanges``), or None when only the base class's placeholder would apply."""
    for k in cls.__mro__:
        if k is Strategy:
            return None
        if "exchanges" in vars(k):
            return vars(k)["exchanges"]
    return None


def did_you_mean(name: str, names: list[str] | Any) -> str:
    """`` (did you mean 'krum'?)`` for the closest of ``names``, or ``""``."""
    close = difflib.get_close_matches(name, list(names), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def register(name: str) -> Callable[[T], T]:
    """Class decorator: make the strategy available under ``name``."""

    def deco(cls: T) -> T:
        if name in REGISTRY and REGISTRY[name] is not cls:
            old = REGISTRY[name]
            raise ValueError(
                f"strategy name {name!r} is registered twice ({old.__module__}.{old.__qualname__} and "
                f"{cls.__module__}.{cls.__qualname__}); choose another name"
            )
        ex = declared_exchanges(cls)
        if ex not in EXCHANGES:
            raise ValueError(
                f"strategy {name!r} ({cls.__module__}.{cls.__qualname__}) must declare what it exchanges: "
                f"set the class attribute exchanges = 'output_layer' or 'full_model' (byte counts use it), "
                f"got {ex!r}"
            )
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
        raise ValueError(
            f"unknown strategy {name!r}{did_you_mean(name, REGISTRY)}; available: {', '.join(sorted(REGISTRY))}"
        )
    bad = unknown_params(name, params)
    if bad:
        raise ValueError(bad)
    try:
        return REGISTRY[name](**(params or {}))
    except TypeError as e:
        raise ValueError(f"strategy {name!r}: {e}") from None


def parameters(name: str) -> list[str]:
    """The parameter names of strategy ``name`` (its dataclass fields), in declaration order."""
    return list(getattr(REGISTRY[name], "__dataclass_fields__", {}))


def unknown_params(name: str, params: dict[str, Any] | None) -> str | None:
    """``"unknown parameter 'x' of strategy 'n' (did you mean 'y'?); its parameters: ..."`` for the
    first key of ``params`` that strategy ``name`` does not have, or None."""
    cls = REGISTRY[name]
    if not hasattr(cls, "__dataclass_fields__"):
        return None  # not a dataclass: its constructor says what it takes
    known = parameters(name)
    for key in params or {}:
        if key not in known:
            listed = ", ".join(known) or "none"
            hint = did_you_mean(str(key), known)
            return f"unknown parameter {key!r} of strategy {name!r}{hint}; its parameters: {listed}"
    return None
