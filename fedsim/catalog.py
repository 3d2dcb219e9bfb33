"""What ``fedsim list`` shows: the names a scenario can use, by kind, and one of them in detail.

``fedsim list strategies krum`` prints the rule's docstring (paper, formula, departures) and each
parameter with its type, default and constraint. A strategy's or attack's parameters are its
dataclass fields; their constraints are the ones the fields declare (:mod:`fedlib.params`), the
same declarations the base classes validate with, so the listing can never disagree with what a
scenario is told. Partitions and topologies list the scenario fields that
apply to them, with the schema's type, default and bounds.

Every import is inside the functions, per kind: ``fedsim list partitions`` needs no torch.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from fedlib.params import CHECK, constraint
from fedlib.registry import class_doc, did_you_mean
from fedsim.errors import FedsimError

KINDS = ("datasets", "backbones", "partitions", "topologies", "strategies", "attacks", "probes")
_SINGULAR = {"datasets": "dataset", "backbones": "backbone", "partitions": "partition", "topologies": "topology",
             "strategies": "strategy", "attacks": "attack", "probes": "probe"}


# what the docs call them ("your own rule"): accepted as the kind they name
_ALIASES = {"rules": "strategies", "rule": "strategies", "models": "backbones", "model": "backbones"}


# `peers.attack.name: none` (fedsim.schema_sections.AttackCfg's default) is no registered attack but a
# name a scenario uses: listed with the attacks, described here (the schema imports pydantic, which
# `fedsim list` does not)
NO_ATTACK = "none"
NO_ATTACK_DOC = (
    "No attack (the default): no peer forges or poisons; with peers.byzantine > 0 it needs "
    "peers.allow_idle_attack: true, and the Byzantine peers then train honestly (left out of the evaluation)."
)


class CatalogError(FedsimError, ValueError):
    """An unknown kind or name asked of ``fedsim list`` (one line, with the closest match)."""


def resolve_kind(kind: str) -> str:
    """``kind`` when it is one of :data:`KINDS` (a singular, ``strategy``, or what the docs call
    it, ``rules``, is accepted too), else a :class:`CatalogError` naming the closest kind."""
    if kind in KINDS:
        return kind
    plural = {v: k for k, v in _SINGULAR.items()}.get(kind) or _ALIASES.get(kind)
    if plural:
        return plural
    named = [k for k in KINDS if kind in summaries(k)]  # `fedsim list krum extra`: a component, not a kind
    if named:
        raise CatalogError(
            f"{kind!r} is {' and '.join(_article(_SINGULAR[k]) for k in named)}, not a kind: `fedsim list {kind}` "
            f"describes it, `fedsim list KIND NAME` takes a kind first; kinds: {', '.join(KINDS)}"
        )
    raise CatalogError(f"unknown kind {kind!r}{did_you_mean(kind, KINDS)}; kinds: {', '.join(KINDS)}")


def _article(noun: str) -> str:
    """``noun`` with its indefinite article (an attack, a strategy)."""
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"


def is_kind(word: str) -> bool:
    """Whether ``word`` names a kind (:func:`resolve_kind` accepts it)."""
    return word in KINDS or word in _SINGULAR.values() or word in _ALIASES


def kinds_naming(name: str) -> list[str]:
    """The kinds that have a component called ``name`` (``fedsim list krum``: ``["strategies"]``);
    :class:`CatalogError` naming the closest kind or component when none has."""
    found = [k for k in KINDS if name in summaries(k)]
    if found:
        return found
    everything = [*KINDS, *(n for k in KINDS for n in summaries(k))]
    raise CatalogError(
        f"{name!r} is neither a kind nor a component{did_you_mean(name, everything)}; kinds: {', '.join(KINDS)}"
    )


def _first_paragraph(doc: str | None) -> str:
    return " ".join((doc or "").strip().split("\n\n")[0].split())


def summaries(kind: str) -> dict[str, str]:
    """Every name of ``kind`` → a one-line description (importing only what that kind needs)."""
    if kind == "datasets":
        from fedsim.data.datasets import DATASETS

        return {k: ("embedded, offline" if emb else "from dataset.data_dir") + " — " + _first_paragraph(fn.__doc__)
                for k, (fn, emb) in DATASETS.items()}
    if kind == "backbones":
        from fedsim.models.backbones import BACKBONES

        return {k: v.description for k, v in BACKBONES.items()}
    if kind == "partitions":
        from fedsim.partition import KINDS as PARTS

        return dict(PARTS)
    if kind == "topologies":
        from fedsim.topology import KINDS as TOPOS

        return dict(TOPOS)
    if kind == "probes":
        from fedsim.probe_registry import kinds, summary

        return {k: summary(cls) for k, cls in kinds().items()}
    if kind in ("strategies", "attacks"):
        package = kind
        # imported (with any plugins): the live registry
        names = sys.modules[package].available() if package in sys.modules else static_available(package)
        return {NO_ATTACK: NO_ATTACK_DOC, **names} if kind == "attacks" else names
    raise CatalogError(f"unknown kind {kind!r}; kinds: {', '.join(KINDS)}")


# modules of a package that register nothing (as its __init__ skips them)
_NOT_REGISTERING = {"strategies": {"base", "registry"}, "attacks": {"base", "registry", "probes"}}


def static_available(package: str) -> dict[str, str]:
    """``package.available()`` (``strategies`` or ``attacks``) read from the source without
    importing it (the rules import torch, 1-2 s): every class decorated ``@register("name")`` in
    the modules the package's ``__init__`` imports → the first paragraph of its docstring, sorted
    by name. A test keeps it equal to the live registry."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise CatalogError(f"package {package!r} not found")
    out = {}
    for path in sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.py")):
        if path.stem in _NOT_REGISTERING[package] or path.stem.startswith("_"):
            continue
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if not isinstance(node, ast.ClassDef):
                continue
            for deco in node.decorator_list:
                func = deco.func if isinstance(deco, ast.Call) else None
                called = getattr(func, "id", None) or getattr(func, "attr", None)
                if called == "register" and deco.args and isinstance(deco.args[0], ast.Constant):
                    out[str(deco.args[0].value)] = _first_paragraph(ast.get_docstring(node))
    return dict(sorted(out.items()))


# --------------------------------------------------------------------------- parameters
@dataclasses.dataclass(frozen=True)
class Param:
    """One parameter as ``fedsim list KIND NAME`` prints it."""

    name: str
    type: str
    default: str
    constraint: str
    help: str = ""


def _show(value: Any) -> str:
    """A default as a scenario would spell it (``true``, ``null``, ``'median'``, ``0.5``)."""
    if value is dataclasses.MISSING:
        return "required"
    if value is None or isinstance(value, bool):
        return {True: "true", False: "false", None: "null"}[value]
    return repr(value)


def constraint_of(cls: type, name: str) -> str:
    """What ``cls`` accepts for parameter ``name``: its declared constraint's text (the ``X`` of
    the ``"name: must be X, got ..."`` a bad value gets), or ``"not declared"``."""
    check = constraint(cls, name)
    return "not declared" if check is None else check.describe(name)


def constraint_text(field: Any, name: str) -> str:
    """The constraint text of one :func:`fedlib.params.param` declaration (a table entry)."""
    check = field.metadata.get(CHECK)
    return "not declared" if check is None else check.describe(name)


def class_params(cls: type) -> list[Param]:
    """The parameters of a strategy or attack class (its dataclass fields, in order)."""
    out = []
    for f in dataclasses.fields(cls) if dataclasses.is_dataclass(cls) else []:
        if not f.init:
            continue
        default = f.default
        if default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        out.append(Param(f.name, _type_name(f.type), _show(default), constraint_of(cls, f.name)))
    return out


def _bounds(info: Any) -> str:
    """The schema bounds of a pydantic field (``> 0``, ``>= 1, < 1``), or ``any``."""
    parts = []
    for m in info.metadata:
        for attr, sym in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            v = getattr(m, attr, None)
            if v is not None:
                parts.append(f"{sym} {v}")
    return ", ".join(parts) or "any"


def _accepts(info: Any) -> str:
    """What a pydantic field accepts: ``one of 'a', 'b'`` for a ``Literal`` (``_bounds`` alone
    said ``any``), its bounds, and ``or null`` when ``None`` is allowed."""
    import typing

    args = typing.get_args(info.annotation)
    if typing.get_origin(info.annotation) is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    text = _bounds(info)
    return f"{text} or null" if type(None) in args and text != "any" else text


def _type_name(annotation: Any) -> str:
    import typing

    if typing.get_origin(annotation) is Literal:
        return type(typing.get_args(annotation)[0]).__name__
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    return text or str(annotation).replace("typing.", "")


def schema_params(model: Any, section: str, kind: str, all_kinds: Any) -> list[Param]:
    """The fields of a scenario section (``partition``, ``topology``) that apply to ``kind``:
    those whose description names ``kind``, and those that name no kind at all."""
    out = []
    for name, info in model.model_fields.items():
        if name == "kind":
            continue
        desc = info.description or ""
        named = [k for k in all_kinds if re.search(rf"\b{re.escape(k)}\b", desc)]
        if named and kind not in named:
            continue
        out.append(Param(f"{section}.{name}", _type_name(info.annotation), _show(info.default), _accepts(info), desc))
    return out


def probe_params(kind: str) -> list[Param]:
    """The keys of a ``probes:`` entry of ``kind``: its registered probe's ``params`` declarations
    (default, the constraint ``fedsim validate`` checks, as the error message says it, and the
    declared one line of help)."""
    from fedsim.probe_registry import kinds

    return table_params(kinds()[kind].params)


def table_params(table: Any, prefix: str = "", where: str = "") -> list[Param]:
    """One row per key of a :mod:`fedlib.params` table, then the keys of a nested table under it
    (``canaries.count``; for a mapping tagged by ``kind``, each kind's keys, ``target_head.hidden``
    with ``(kind bottleneck)``; ``defences.*.sigma`` for the mappings of a list): each its default,
    its constraint's text and its ``doc``."""
    from fedlib.params import DOC, ListOf, Mapping, Tagged, default_of

    out = []
    for k, f in table.items():
        v, check, name = default_of(f), f.metadata.get(CHECK), f"{prefix}{k}"
        help_ = " ".join(filter(None, [where, f.metadata.get(DOC) or ""]))
        kind = type(v).__name__ if v is not None else _constraint_type(check)
        out.append(Param(name, kind, _show(v), constraint_text(f, k), help_))
        inner, below = (check.item, f"{name}.*.") if isinstance(check, ListOf) else (check, f"{name}.")
        if isinstance(inner, Mapping) and inner.keys is not None:
            out += table_params(inner.keys, below, where)
        elif isinstance(inner, Tagged):
            for tag, sub in inner.kinds.items():
                out += table_params(sub, below, f"(kind {tag})")
    return out


def _constraint_type(check: Any) -> str:
    """The type a :mod:`fedlib.params` constraint accepts, for a key whose default (None) shows
    none: ``int | None`` for a nullable peer id, not ``any``."""
    from fedlib.params import AnyOf, Boolean, Index, Integer, ListOf, Mapping, Options, Real, Tagged, Text

    names = {Integer: "int", Index: "int", Real: "float", Boolean: "bool", Text: "str", ListOf: "list",
             Mapping: "mapping", Tagged: "mapping"}
    if isinstance(check, AnyOf):
        parts = [_constraint_type(o) for o in check.options]
    elif isinstance(check, Options):
        parts = [type(c).__name__ for c in check.choices]
    elif isinstance(check, Index):
        parts = ["int", *(type(x).__name__ for x in check.extra)]
    else:
        parts = [names.get(type(check), "any")]
    if getattr(check, "null", False):
        parts.append("None")
    return " | ".join(dict.fromkeys(p for part in parts for p in part.split(" | ")))


# --------------------------------------------------------------------------- one component
def _lookup(kind: str, name: str, names: Any, plugin_entries: Sequence[str] = ()) -> None:
    """:class:`CatalogError` unless ``name`` is one of ``names`` (a ``kind``'s), ending in the
    ``--plugin`` hint where the command named no plugin (``plugin_entries``: its ``--plugin``)."""
    if name not in names:
        # a component of another kind (`fedsim list attacks krum`): say which, not only the closest name of this one
        other = [k for k in KINDS if k != kind and name in summaries(k)]
        where = "".join(f"; {name!r} is {_article(_SINGULAR[k])}: fedsim list {k} {name}" for k in other)
        from fedsim import plugins

        hint = plugins.hint(plugin_entries) if kind in plugins.PLUGGABLE and not other else ""
        raise CatalogError(
            f"unknown {_SINGULAR[kind]} {name!r}{did_you_mean(name, names)}{where}; available: "
            f"{', '.join(sorted(names))}{hint}"
        )


def describe(kind: str, name: str, plugin_entries: Sequence[str] = ()) -> tuple[str, list[Param]]:
    """``(text, parameters)`` of one component: its full docstring (or description) and the
    parameters a scenario sets for it; :class:`CatalogError` for an unknown name (with the
    ``--plugin`` hint where ``plugin_entries``, the command's ``--plugin``, name none)."""
    kind = resolve_kind(kind)
    if kind == "attacks" and name == NO_ATTACK:
        return NO_ATTACK_DOC, []
    if kind in ("strategies", "attacks"):
        registry = _registry(kind)
        _lookup(kind, name, registry, plugin_entries)
        cls = registry[name]
        return class_doc(cls), class_params(cls)
    if kind in ("partitions", "topologies"):
        from fedsim import scenario

        kinds = summaries(kind)
        _lookup(kind, name, kinds, plugin_entries)
        model, section = (scenario.PartitionCfg, "partition") if kind == "partitions" else (scenario.TopologyCfg,
                                                                                            "topology")
        return kinds[name], schema_params(model, section, name, kinds)
    if kind == "probes":
        from fedsim.probe_registry import kinds

        _lookup(kind, name, kinds(), plugin_entries)
        return class_doc(kinds()[name]), probe_params(name)
    if kind == "datasets":
        from fedsim.data.datasets import DATASETS

        _lookup(kind, name, DATASETS, plugin_entries)
        fn, embedded = DATASETS[name]
        where = "embedded: runs offline" if embedded else "read from dataset.data_dir"
        return f"{inspect.cleandoc(fn.__doc__ or '')}\n\n({where})", []
    from fedsim.models.backbones import BACKBONES

    _lookup(kind, name, BACKBONES, plugin_entries)
    spec = BACKBONES[name]
    facts = [spec.description]
    if spec.input_shape:
        facts.append(f"input: {'×'.join(map(str, spec.input_shape))} (C×H×W), normalised with mean {spec.mean}, "
                     f"std {spec.std}")
    if spec.build is not None and spec.weights_file:
        facts.append(f"weights: {spec.weights_path()}"
                     + (f" (fedsim pretrain --backbone {name}, on {spec.pretrain_dataset})"
                        if spec.pretrain_dataset else ""))
    return "\n".join(facts), []


def _registry(kind: str) -> dict[str, type]:
    if kind == "strategies":
        import strategies

        return strategies.REGISTRY
    import attacks

    return attacks.REGISTRY


def format_params(params: list[Param], echo: Callable[[str], None]) -> None:
    """Print ``params`` as aligned rows: name, type, default, constraint (and help)."""
    if not params:
        return
    rows = [("parameter", "type", "default", "accepts")] + [(p.name, p.type, p.default, p.constraint) for p in params]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r, p in zip(rows, [None, *params], strict=True):
        echo("  " + "  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3])
        if p is not None and p.help:
            echo("  " + " " * (widths[0] + 2) + "  " + " ".join(p.help.split()))
