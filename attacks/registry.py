"""Find attacks by name (``@register("name")``); every module of ``attacks`` is imported by
``attacks/__init__.py``, and a scenario's ``plugins:`` list imports the user's own modules
(:mod:`fedsim.plugins`) in every process of the run."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any, TypeVar

from attacks.base import DataPoisoner, UpdateForger

T = TypeVar("T", bound=type)
REGISTRY: dict[str, type[UpdateForger] | type[DataPoisoner]] = {}


def register(name: str) -> Callable[[T], T]:
    """Class decorator: make the attack available under ``name``."""

    def deco(cls: T) -> T:
        if name in REGISTRY and REGISTRY[name] is not cls:
            old = REGISTRY[name]
            raise ValueError(
                f"attack name {name!r} is registered twice ({old.__module__}.{old.__qualname__} and "
                f"{cls.__module__}.{cls.__qualname__}); choose another name"
            )
        if not (isinstance(cls, type) and issubclass(cls, UpdateForger | DataPoisoner)):
            raise ValueError(f"attack {name!r}: {cls!r} must subclass attacks.UpdateForger or attacks.DataPoisoner")
        cls.name = name  # type: ignore[attr-defined]
        REGISTRY[name] = cls  # type: ignore[assignment]
        return cls

    return deco


def did_you_mean(name: str, names: Any) -> str:
    """`` (did you mean 'alie'?)`` for the closest of ``names``, or ``""`` (attacks import nothing
    of fedsim or strategies, hence not shared with ``strategies.registry.did_you_mean``)."""
    close = difflib.get_close_matches(name, list(names), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def available() -> dict[str, str]:
    """Names of all registered attacks → the first paragraph of their docstring, on one line."""
    return {n: " ".join((c.__doc__ or "").strip().split("\n\n")[0].split()) for n, c in sorted(REGISTRY.items())}


def build(name: str, params: dict[str, Any] | None = None) -> UpdateForger | DataPoisoner:
    """Instantiate attack ``name`` with ``params``; unknown names/params raise ``ValueError``."""
    if name not in REGISTRY:
        raise ValueError(
            f"unknown attack {name!r}{did_you_mean(name, REGISTRY)}; available: {', '.join(sorted(REGISTRY))}"
        )
    bad = unknown_params(name, params)
    if bad:
        raise ValueError(bad)
    try:
        return REGISTRY[name](**(params or {}))
    except TypeError as e:
        raise ValueError(f"attack {name!r}: {e}") from None


def parameters(name: str) -> list[str]:
    """The parameter names of attack ``name`` (its dataclass fields), in declaration order."""
    return list(getattr(REGISTRY[name], "__dataclass_fields__", {}))


def unknown_params(name: str, params: dict[str, Any] | None) -> str | None:
    """``"unknown parameter 'x' of attack 'n' (did you mean 'y'?); its parameters: ..."`` for the
    first key of ``params`` that attack ``name`` does not have, or None."""
    cls = REGISTRY[name]
    if not hasattr(cls, "__dataclass_fields__"):
        return None  # not a dataclass: its constructor says what it takes
    known = parameters(name)
    for key in params or {}:
        if key not in known:
            listed = ", ".join(known) or "none"
            hint = did_you_mean(str(key), known)
            return f"unknown parameter {key!r} of attack {name!r}{hint}; its parameters: {listed}"
    return None
