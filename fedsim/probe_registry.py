"""Probes as a registered extension point: what a ``probes:`` entry of a scenario may be.

A probe runs once after the last round against the trained federation. It is a :class:`Probe`
subclass registered under its ``kind`` (the built-ins, ``unlearning`` and ``cloning``, are
:mod:`fedsim.probe_builtins`; a plugin registers its own the same way)::

    @register_probe("my_probe")
    class MyProbe(Probe):
        \"\"\"One line for ``fedsim list probe``. More for ``fedsim list probe my_probe``.\"\"\"
        defaults = {"peer": None}          # every key a scenario may set, with its default
        def run(self, i, cfg, ctx): ...    # -> its entry in probes.json (a dict, "kind" first)

The scenario schema holds each entry as its kind's typed config (:func:`fedsim.scenario.probe_config`:
a discriminated union on ``kind`` whose members are the registered kinds). Value checks are the
probe's :meth:`Probe.validate` (run by validation with ``peers.count``); checks that need the
trained run belong in :meth:`Probe.run`. :mod:`fedsim.probe_runs` runs them.

Imports neither torch nor pydantic: ``fedsim list`` reads it.
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar


class Probe:
    """Base class of probes (register a subclass with :func:`register_probe`).

    Class attributes: ``defaults`` (every key a scenario may set besides ``kind``, with its
    default) and ``notes`` (optional one-line comments per key, shown by ``fedsim list probe
    NAME``). The docstring's first paragraph is the probe's one-line summary.
    """

    kind: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    notes: ClassVar[dict[str, str]] = {}

    def validate(self, i: int, cfg: dict[str, Any], num_peers: int | None = None) -> dict[str, Any]:
        """``cfg`` (``probes[i]``'s keys as set, every one a key of ``defaults``) with every default
        filled in; raise ``ValueError("probes.<i>.<key>: ...")`` (:func:`fedsim.errors.probe_error`)
        for a bad value. ``num_peers``: ``peers.count`` (None where not known)."""
        return {**self.defaults, **cfg}

    def run(self, i: int, cfg: dict[str, Any], ctx: Any) -> dict[str, Any]:
        """Run against the trained federation (``ctx``: :class:`fedsim.probes.ProbeContext`) with
        :meth:`validate`'s ``cfg``; return the entry written to ``probes.json`` (plain data)."""
        raise NotImplementedError

    def summarize(self, entry: dict[str, Any]) -> dict[str, Any]:
        """The compact form of :meth:`run`'s entry kept in ``summary.json``."""
        return {"kind": entry.get("kind", self.kind)}


REGISTRY: dict[str, type[Probe]] = {}


def register_probe(kind: str) -> Callable[[type[Probe]], type[Probe]]:
    """Class decorator: register a :class:`Probe` subclass under ``kind``."""

    def deco(cls: type[Probe]) -> type[Probe]:
        if not (isinstance(cls, type) and issubclass(cls, Probe)):
            raise TypeError(f"register_probe({kind!r}): {cls!r} is not a subclass of fedsim.probe_registry.Probe")
        if not isinstance(kind, str) or not re.fullmatch(r"[A-Za-z_]\w*", kind):
            raise ValueError(f"register_probe: the kind must be a name (letters, digits, _), got {kind!r}")
        if kind in REGISTRY and REGISTRY[kind].__qualname__ != cls.__qualname__:
            raise ValueError(f"probe kind {kind!r} is already registered ({REGISTRY[kind].__module__})")
        bad = [k for k in cls.defaults if not isinstance(k, str) or k == "kind"]
        if bad:
            raise ValueError(f"register_probe({kind!r}): defaults keys must be names other than 'kind', got {bad}")
        cls.kind = kind
        REGISTRY[kind] = cls
        return cls

    return deco


def kinds() -> dict[str, type[Probe]]:
    """Every registered probe kind (the built-ins imported on first use)."""
    import fedsim.probe_builtins  # noqa: F401  (registers unlearning and cloning)

    return REGISTRY


def summary(cls: type[Probe]) -> str:
    """A probe's one-line summary: its docstring's first paragraph."""
    return " ".join(inspect.cleandoc(cls.__doc__ or "").split("\n\n")[0].split())


def notes_from_comments(path: str, name: str) -> dict[str, str]:
    """``{key: comment}`` of a ``NAME = {"key": value,  # comment`` dict literal in the file ``path``
    (the built-in probes document their keys where their defaults are)."""
    block = re.search(rf"^{name}[^=]*= {{\n(.*?)^}}", Path(path).read_text(), re.S | re.M)
    lines = block.group(1).splitlines() if block else []
    return {m[1]: m[2].strip() for m in (re.match(r'\s*"(\w+)":.*?#\s*(.*)$', ln) for ln in lines) if m}


def get_probe(i: int, kind: Any) -> Probe:
    """The probe of ``kind`` (``probes[i]``), or ``ValueError("probes.<i>.kind: ...")``."""
    known = kinds()
    if not isinstance(kind, str) or kind not in known:
        close = difflib.get_close_matches(str(kind), list(known), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"probes.{i}.kind: got {kind!r}{hint}; allowed: {', '.join(known)}")
    return known[kind]()


def check_entry(i: int, data: Any) -> Probe:
    """``probes[i]``'s probe, after checking that it is a mapping with a registered ``kind`` and
    only that kind's keys (``ValueError("probes.<i>...: ...")``)."""
    if not isinstance(data, dict) or "kind" not in data:
        raise ValueError(f"probes.{i}: each probe is a mapping with a 'kind' ({' | '.join(kinds())})")
    probe = get_probe(i, data["kind"])
    for k in data:
        if k != "kind" and k not in probe.defaults:
            raise ValueError(f"probes.{i}.{k}: unknown key for kind {probe.kind}; allowed: kind, "
                             f"{', '.join(probe.defaults)}")
    return probe


def validate_probe(i: int, probe: Any, num_peers: int | None = None) -> dict[str, Any]:
    """Check ``scenario.probes[i]`` (a mapping, or the schema's typed entry) and return it with
    every default filled in: :func:`check_entry`, then its kind's :meth:`Probe.validate`."""
    data = probe.settings() if hasattr(probe, "settings") else probe
    return check_entry(i, data).validate(i, dict(data), num_peers)


def summarize(entry: dict[str, Any]) -> dict[str, Any]:
    """The compact form of one ``probes.json`` entry kept in ``summary.json`` (its kind's
    :meth:`Probe.summarize`)."""
    return get_probe(0, entry["kind"]).summarize(entry)
