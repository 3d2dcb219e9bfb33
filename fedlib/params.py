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
``k + e >= 1``) stay code in ``__post_init__``.

Tables: a mapping of keys to :func:`param` declarations (``{"lr": param(0.5, Real(lo=0.0,
lo_open=True))}``) is the same declaration for configuration that is a mapping, not a dataclass
(the probes of a scenario, a nested ``canaries:`` mapping): :func:`check_params` refuses unknown
keys, fills in the defaults and checks (and normalises: ``int``, ``float``, sorted lists) every
value, naming each bad one by its full path (``probes.0.defences.1.sigma: must be ...``).
Constraints that depend on the run (:class:`Index`: a peer id below ``peers.count``) read it from
the ``context`` mapping passed down. Standard library only.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import numbers
from collections.abc import Callable
from collections.abc import Mapping as MappingABC
from dataclasses import dataclass
from typing import Any, ClassVar

CHECK = "check"  # the field-metadata key of a parameter's constraint
DOC = "doc"  # the field-metadata key of a parameter's one-line help (``fedsim list``)
Context = MappingABC[str, Any] | None  # run facts a constraint may depend on (``{"peers.count": 8}``)


def _key(path: str) -> str:
    """The parameter name in a dotted path (``probes.0.defences.1.sigma`` -> ``sigma``)."""
    parts = [p for p in path.split(".") if not p.isdigit()]
    return parts[-1] if parts else path


@dataclass(frozen=True, kw_only=True)
class Constraint:
    """What one parameter accepts. ``null``: None is accepted too; ``what``: the text to show
    instead of the generated one (then it must say "null" itself when ``null``)."""

    null: bool = False
    what: str | None = None
    nested: ClassVar[bool] = False  # its own errors name paths below it (a table, a tagged mapping)

    def accepts(self, value: Any, context: Context = None) -> bool:
        """Whether ``value`` satisfies the constraint (None only when ``null``)."""
        try:
            self.check("value", value, context)
        except ValueError:
            return False
        return True

    def describe(self, name: str, context: Context = None) -> str:
        """What the value must be, as the error message and ``fedsim list`` say it (``context``:
        the run's facts where known, e.g. the peer count bounding an :class:`Index`)."""
        if self.what is not None:
            return self.what
        text = self._text(name, context)
        return f"{text} or null" if self.null else text

    def check(self, path: str, value: Any, context: Context = None) -> Any:
        """``value`` normalised (an ``int`` for :class:`Integer`, a ``float`` for :class:`Real`, ...),
        or ``ValueError("<path>: must be <describe>, got <value>")``."""
        if value is None and self.null:
            return None
        if value is None or not self._accepts(value, context):
            raise ValueError(f"{path}: must be {self.describe(_key(path), context)}, got {value!r}")
        return self._convert(path, value, context)

    def _accepts(self, value: Any, context: Context) -> bool:
        raise NotImplementedError

    def _convert(self, path: str, value: Any, context: Context) -> Any:
        return value

    def _text(self, name: str, context: Context) -> str:
        raise NotImplementedError


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclass(frozen=True, kw_only=True)
class Integer(Constraint):
    """An integer (not a bool; a NumPy integer too, checked as an ``int``) in ``[minimum, maximum]``
    (no maximum: ``>= minimum``)."""

    minimum: int = 0
    maximum: int | None = None

    def _accepts(self, value: Any, context: Context) -> bool:
        return _is_int(value) and value >= self.minimum and (self.maximum is None or value <= self.maximum)

    def _convert(self, path: str, value: Any, context: Context) -> int:
        return int(value)

    def _text(self, name: str, context: Context) -> str:
        if self.maximum is None:
            return f"an integer >= {self.minimum}"
        return f"an integer in [{self.minimum}, {self.maximum}]"


@dataclass(frozen=True, kw_only=True)
class Index(Constraint):
    """An integer in ``[0, count - 1]``, where ``count`` is the run fact ``context[of]`` (unknown:
    ``>= 0``), e.g. a peer id: ``Index(of="peers.count", noun="a peer id")``; ``extra``: other
    values accepted as they are (``"global"``)."""

    of: str = ""
    noun: str = "an index"
    extra: tuple[Any, ...] = ()

    def _bound(self, context: Context) -> int | None:
        n = (context or {}).get(self.of)
        return None if n is None else int(n) - 1

    def _accepts(self, value: Any, context: Context) -> bool:
        if isinstance(value, str) and value in self.extra:
            return True
        hi = self._bound(context)
        return _is_int(value) and value >= 0 and (hi is None or value <= hi)

    def _convert(self, path: str, value: Any, context: Context) -> Any:
        return value if isinstance(value, str) else int(value)

    def _text(self, name: str, context: Context) -> str:
        hi = self._bound(context)
        text = f"{self.noun} in [0, {f'{self.of} - 1' if hi is None else hi}]"
        return " or ".join([text, *map(repr, self.extra)])


@dataclass(frozen=True, kw_only=True)
class Real(Constraint):
    """A finite ``int`` or ``float`` (not a bool) in ``[lo, hi]`` (either end open or absent)."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def _accepts(self, value: Any, context: Context) -> bool:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        if ok and self.lo is not None:
            ok = value > self.lo if self.lo_open else value >= self.lo
        if ok and self.hi is not None:
            ok = value < self.hi if self.hi_open else value <= self.hi
        return ok

    def _convert(self, path: str, value: Any, context: Context) -> float:
        return float(value)

    def _text(self, name: str, context: Context) -> str:
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

    def _accepts(self, value: Any, context: Context) -> bool:
        try:
            return value in self.choices
        except TypeError:  # an unhashable value compared with a choice
            return False

    def _text(self, name: str, context: Context) -> str:
        return f"one of {', '.join(map(repr, self.choices))}"


@dataclass(frozen=True, kw_only=True)
class Boolean(Constraint):
    """``True`` or ``False`` (a YAML string "false" would be truthy)."""

    def _accepts(self, value: Any, context: Context) -> bool:
        return isinstance(value, bool)

    def _text(self, name: str, context: Context) -> str:
        return "true or false"


@dataclass(frozen=True, kw_only=True)
class Text(Constraint):
    """A ``str`` (``what`` says which, e.g. "a registered rule's name"; whether it names something
    that exists is for the code that uses it to say)."""

    def _accepts(self, value: Any, context: Context) -> bool:
        return isinstance(value, str)

    def _text(self, name: str, context: Context) -> str:
        return "a string"


@dataclass(frozen=True, kw_only=True)
class AnyOf(Constraint):
    """A value that one of ``options`` accepts (the first that does normalises it)."""

    options: tuple[Constraint, ...] = ()

    def _accepts(self, value: Any, context: Context) -> bool:
        return any(o.accepts(value, context) for o in self.options)

    def _convert(self, path: str, value: Any, context: Context) -> Any:
        return next(o for o in self.options if o.accepts(value, context)).check(path, value, context)

    def _text(self, name: str, context: Context) -> str:
        return " or ".join(o.describe(name, context) for o in self.options)


@dataclass(frozen=True, kw_only=True)
class ListOf(Constraint):
    """A ``list`` of at least ``min_len`` values that ``item`` accepts, normalised by it; ``distinct``:
    duplicates refused; ``dedupe``: duplicates dropped (the first kept); ``sort``: sorted. A bad
    value of a scalar ``item`` is the whole list's error; a nested one (a mapping) names its own
    path (``defences.1.sigma``)."""

    item: Constraint
    min_len: int = 0
    distinct: bool = False
    dedupe: bool = False
    sort: bool = False

    def _accepts(self, value: Any, context: Context) -> bool:
        if not isinstance(value, list) or len(value) < self.min_len:
            return False
        if not self.item.nested and not all(self.item.accepts(x, context) for x in value):
            return False
        return not self.distinct or len({repr(x) for x in value}) == len(value)

    def _convert(self, path: str, value: Any, context: Context) -> list[Any]:
        out = [self.item.check(f"{path}.{j}", x, context) for j, x in enumerate(value)]
        if self.dedupe:
            out = list(dict.fromkeys(out))
        return sorted(out) if self.sort else out

    def _text(self, name: str, context: Context) -> str:
        head = "a non-empty list" if self.min_len == 1 else (
            f"a list of at least {self.min_len}" if self.min_len else "a list")
        return f"{head}{' of distinct values' if self.distinct else ''}, each {self.item.describe(name, context)}"


def param(default: Any = dataclasses.MISSING, check: Constraint | None = None, *,
          factory: Any = dataclasses.MISSING, doc: str = "") -> Any:
    """A dataclass field (or a table entry, :func:`check_params`) with default ``default`` (or
    ``factory()``) whose values must satisfy ``check``; ``doc``: one line for ``fedsim list``."""
    return dataclasses.field(default=default, default_factory=factory, metadata={CHECK: check, DOC: doc})


Table = MappingABC[str, Any]  # key -> param(...): the declaration of a mapping's keys


def default_of(f: Any) -> Any:
    """A :func:`param`'s default (a fresh copy: a list default is never shared)."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return copy.deepcopy(f.default)


def defaults(table: Table) -> dict[str, Any]:
    """Every key of ``table`` with its default, in declaration order."""
    return {k: default_of(f) for k, f in table.items()}


def check_params(path: str, table: Table, values: MappingABC[str, Any], context: Context = None, *,
                 unknown: str = "unknown key", keep: tuple[str, ...] = ()) -> dict[str, Any]:
    """``values`` (a mapping whose keys ``table`` declares, or are in ``keep``) with every default
    filled in and every declared constraint checked and normalised, in declaration order: the
    first bad value raises ``ValueError("<path>.<key>: must be ..., got ...")``; a key not declared,
    ``"<path>.<key>: <unknown>; allowed: <keep>, <keys>"``."""
    for k in values:
        if k not in table and k not in keep:
            raise ValueError(f"{path}.{k}: {unknown}; allowed: {', '.join([*keep, *table])}")
    out = {**defaults(table), **values}
    for k, f in table.items():
        check = f.metadata.get(CHECK)
        if check is not None:
            out[k] = check.check(f"{path}.{k}", out[k], context)
    return out


@dataclass(frozen=True, kw_only=True)
class Mapping(Constraint):
    """A ``dict`` (``what`` says of what, e.g. "a mapping of the inner rule's parameters"); with
    ``keys`` (a table), only those keys, each checked (:func:`check_params`), the defaults filled in,
    then ``after(path, mapping, context)`` (checks tying keys together; returns the mapping)."""

    keys: Table | None = None
    after: Callable[[str, dict[str, Any], Context], dict[str, Any]] | None = None

    @property
    def nested(self) -> bool:  # type: ignore[override]
        return self.keys is not None

    def _accepts(self, value: Any, context: Context) -> bool:
        return isinstance(value, dict)

    def _convert(self, path: str, value: Any, context: Context) -> Any:
        if self.keys is None:
            return value
        out = check_params(path, self.keys, value, context)
        return self.after(path, out, context) if self.after is not None else out

    def _text(self, name: str, context: Context) -> str:
        return "a mapping" if self.keys is None else f"a mapping with keys {', '.join(self.keys)}"


@dataclass(frozen=True, kw_only=True)
class Tagged(Constraint):
    """A mapping whose ``kind`` names one of ``kinds``, each a table of its other keys (a
    discriminated union: ``{kind: noise, sigma: 0.1}``); ``noun`` names it in the unknown-key error
    (``unknown key for defence kind noise``)."""

    kinds: MappingABC[str, Table]
    noun: str = ""
    nested: ClassVar[bool] = True

    def _accepts(self, value: Any, context: Context) -> bool:
        return isinstance(value, dict) and isinstance(value.get("kind"), str) and value["kind"] in self.kinds

    def _convert(self, path: str, value: Any, context: Context) -> dict[str, Any]:
        kind = value["kind"]
        noun = f"{self.noun} " if self.noun else ""
        return check_params(path, self.kinds[kind], value, context, keep=("kind",),
                            unknown=f"unknown key for {noun}kind {kind}")

    def _text(self, name: str, context: Context) -> str:
        return f"a mapping with kind: {' | '.join(self.kinds)}"


def require(name: str, value: Any, check: Constraint, context: Context = None) -> Any:
    """Raise ``ValueError("name: must be <describe>, got <value>")`` unless ``check`` accepts it;
    return it normalised (:meth:`Constraint.check`)."""
    return check.check(name, value, context)


def constraint(cls: type, name: str) -> Constraint | None:
    """The constraint declared on field ``name`` of dataclass ``cls`` (None: none declared)."""
    fields = getattr(cls, "__dataclass_fields__", {})
    return fields[name].metadata.get(CHECK) if name in fields else None


def validate(obj: Any) -> None:
    """Check every field of dataclass instance ``obj`` that declares a constraint, in field order
    (the first bad one raises, see :func:`require`; the fields keep their values as given)."""
    for f in dataclasses.fields(obj):
        check = f.metadata.get(CHECK)
        if check is not None:
            require(f.name, getattr(obj, f.name), check)
