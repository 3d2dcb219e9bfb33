"""Declarative parameter constraints: a rule's or attack's dataclass field says what it accepts,
and one validator checks every declared field.

::

    @dataclass
    class Balance(Strategy):
        gamma: float = param(0.3, Real(lo=0.0, lo_open=True))
        alpha: float = param(0.5, Real(lo=0.0, hi=1.0))

The base classes (``strategies.Strategy``, ``attacks.UpdateForger``/``DataPoisoner``) run
:func:`validate` in ``__post_init__`` (a subclass that needs more calls ``super().__post_init__()``
first), so a bad value fails at construction with ``"gamma: must be a finite number > 0.0, got
-1"``; ``fedsim list`` prints :meth:`Constraint.describe` of the same declaration, so the listing
and the error can never disagree. Constraints that tie two parameters together (Bristle's
``k + e >= 1``) stay code in ``__post_init__``. Standard library only.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

CHECK = "check"  # the field-metadata key of a parameter's constraint


@dataclass(frozen=True, kw_only=True)
class Constraint:
    """What one parameter accepts. ``null``: None is accepted too; ``what``: the text to show
    instead of the generated one (then it must say "null" itself when ``null``)."""

    null: bool = False
    what: str | None = None

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` satisfies the constraint (None only when ``null``)."""
        return (self.null and value is None) or (value is not None and self._accepts(value))

    def describe(self, name: str) -> str:
        """What the value must be, as the error message and ``fedsim list`` say it."""
        if self.what is not None:
            return self.what
        text = self._text(name)
        return f"{text} or null" if self.null else text

    def _accepts(self, value: Any) -> bool:
        raise NotImplementedError

    def _text(self, name: str) -> str:
        raise NotImplementedError


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, kw_only=True)
class Integer(Constraint):
    """An ``int`` (not a bool) ``>= minimum``."""

    minimum: int = 0

    def _accepts(self, value: Any) -> bool:
        return _is_int(value) and value >= self.minimum

    def _text(self, name: str) -> str:
        return f"an integer >= {self.minimum}"


@dataclass(frozen=True, kw_only=True)
class Real(Constraint):
    """A finite ``int`` or ``float`` (not a bool) in ``[lo, hi]`` (either end open or absent)."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def _accepts(self, value: Any) -> bool:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if ok and self.lo is not None:
            ok = value > self.lo if self.lo_open else value >= self.lo
        if ok and self.hi is not None:
            ok = value < self.hi if self.hi_open else value <= self.hi
        return ok

    def _text(self, name: str) -> str:
        lo_op, hi_op = "<" if self.lo_open else "<=", "<" if self.hi_open else "<="
        if self.lo is not None and self.hi is not None:
            return f"a finite number with {self.lo} {lo_op} {name} {hi_op} {self.hi}"
        if self.lo is not None:
            return f"a finite number {'>' if self.lo_open else '>='} {self.lo}"
        if self.hi is not None:
            return f"a finite number {hi_op} {self.hi}"
        return "a finite number"


@dataclass(frozen=True, kw_only=True)
class Options(Constraint):
    """One of ``choices`` (compared with ``in``)."""

    choices: tuple[Any, ...] = ()

    def _accepts(self, value: Any) -> bool:
        try:
            return value in self.choices
        except TypeError:  # an unhashable value compared with a choice
            return False

    def _text(self, name: str) -> str:
        return f"one of {', '.join(map(repr, self.choices))}"


@dataclass(frozen=True, kw_only=True)
class Boolean(Constraint):
    """``True`` or ``False`` (a YAML string "false" would be truthy)."""

    def _accepts(self, value: Any) -> bool:
        return isinstance(value, bool)

    def _text(self, name: str) -> str:
        return "true or false"


@dataclass(frozen=True, kw_only=True)
class Text(Constraint):
    """A ``str`` (``what`` says which, e.g. "a registered rule's name"; whether it names something
    that exists is for the code that uses it to say)."""

    def _accepts(self, value: Any) -> bool:
        return isinstance(value, str)

    def _text(self, name: str) -> str:
        return "a string"


@dataclass(frozen=True, kw_only=True)
class Mapping(Constraint):
    """A ``dict`` (``what`` says of what, e.g. "a mapping of the inner rule's parameters")."""

    def _accepts(self, value: Any) -> bool:
        return isinstance(value, dict)

    def _text(self, name: str) -> str:
        return "a mapping"


def param(default: Any = dataclasses.MISSING, check: Constraint | None = None, *,
          factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with default ``default`` (or ``factory()``) whose values must satisfy
    ``check`` (:func:`validate`)."""
    return dataclasses.field(default=default, default_factory=factory, metadata={CHECK: check})


def require(name: str, value: Any, check: Constraint) -> None:
    """Raise ``ValueError("name: must be <describe>, got <value>")`` unless ``check`` accepts it."""
    if not check.accepts(value):
        raise ValueError(f"{name}: must be {check.describe(name)}, got {value!r}")


def constraint(cls: type, name: str) -> Constraint | None:
    """The constraint declared on field ``name`` of dataclass ``cls`` (None: none declared)."""
    fields = getattr(cls, "__dataclass_fields__", {})
    return fields[name].metadata.get(CHECK) if name in fields else None


def validate(obj: Any) -> None:
    """Check every field of dataclass instance ``obj`` that declares a constraint, in field order
    (the first bad one raises, see :func:`require`)."""
    for f in dataclasses.fields(obj):
        check = f.metadata.get(CHECK)
        if check is not None:
            require(f.name, getattr(obj, f.name), check)
