"""Name → class registries (the rules', the attacks'): one implementation of registering,
listing, building with checked parameters, and the did-you-mean hint. Standard library only."""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from typing import Any

NO_DOC = "(no docstring: add one to the class; `fedsim list` shows it)"


def class_doc(cls: type) -> str:
    """``cls``'s own docstring, cleaned, or :data:`NO_DOC` where it has none: a class without one
    gets None (not its base's), and a dataclass without one gets its generated signature
    (``Name(scale: float = 1.0)``), which describes nothing."""
    doc = cls.__dict__.get("__doc__")
    if not doc or (dataclasses.is_dataclass(cls) and doc.startswith(f"{cls.__name__}(")):
        return NO_DOC
    return inspect.cleandoc(doc)


def did_you_mean(name: Any, names: Any) -> str:
    """`` (did you mean 'krum'?)`` for the closest of ``names``, or ``""``."""
    close = difflib.get_close_matches(str(name), [str(n) for n in names], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def param_names(cls: Any) -> list[str]:
    """The parameters of a registered class: its dataclass fields that ``__init__`` takes, in
    declaration order (not ``ClassVar`` annotations such as ``exchanges: ClassVar[str]``, which
    ``__dataclass_fields__`` also holds); ``[]`` for a class that is not a dataclass."""
    if not dataclasses.is_dataclass(cls):
        return []
    return [f.name for f in dataclasses.fields(cls) if f.init]


class Registry(dict[str, Any]):
    """Registered classes by name (a ``dict``); ``kind`` ("strategy", "attack") names them in
    messages."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def ensure_free(self, name: str, cls: type) -> None:
        """``ValueError`` when a class other than ``cls`` is registered as ``name``."""
        if name in self and self[name] is not cls:
            old = self[name]
            raise ValueError(
                f"{self.kind} name {name!r} is registered twice ({old.__module__}.{old.__qualname__} and "
                f"{cls.__module__}.{cls.__qualname__}); choose another name"
            )

    def add(self, name: str, cls: type) -> None:
        """Register ``cls`` as ``name`` (sets ``cls.name``); see :meth:`ensure_free`."""
        self.ensure_free(name, cls)
        cls.name = name  # type: ignore[attr-defined]
        self[name] = cls

    def available(self) -> dict[str, str]:
        """Every name → the first paragraph of its class docstring, on one line (sorted by name)."""
        return {n: " ".join(class_doc(c).split("\n\n")[0].split()) for n, c in sorted(self.items())}

    def parameters(self, name: str) -> list[str]:
        """The parameter names of ``name`` (its dataclass fields), in declaration order."""
        return param_names(self[name])

    def unknown_params(self, name: str, params: dict[str, Any] | None) -> str | None:
        """``"unknown parameter 'x' of <kind> 'n' (did you mean 'y'?); its parameters: ..."`` for the
        first key of ``params`` that ``name`` does not have, or None."""
        if not dataclasses.is_dataclass(self[name]):
            return None  # not a dataclass: its constructor says what it takes
        known = self.parameters(name)
        for key in params or {}:
            if key not in known:
                listed = ", ".join(known) or "none"
                return (f"unknown parameter {key!r} of {self.kind} {name!r}{did_you_mean(key, known)}; "
                        f"its parameters: {listed}")
        return None

    def build(self, name: str, params: dict[str, Any] | None = None) -> Any:
        """An instance of ``name`` with ``params``; an unknown name or parameter raises ``ValueError``
        (so do the class's own parameter checks)."""
        if name not in self:
            raise ValueError(
                f"unknown {self.kind} {name!r}{did_you_mean(name, self)}; available: {', '.join(sorted(self))}"
            )
        bad = self.unknown_params(name, params)
        if bad:
            raise ValueError(bad)
        try:
            return self[name](**(params or {}))
        except TypeError as e:
            raise ValueError(f"{self.kind} {name!r}: {e}") from None
