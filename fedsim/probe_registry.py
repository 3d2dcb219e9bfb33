"""Probes as a registered extension point: what a ``probes:`` entry of a scenario may be.

A probe runs once after the last round against the trained federation. It is a :class:`Probe`
subclass registered under its ``kind`` (the built-ins, ``unlearning`` and ``cloning``, are
:mod:`fedsim.probe_builtins`; a plugin registers its own the same way)::

    @register_probe("my_probe")
    class MyProbe(Probe):
        \"\"\"One line for ``fedsim list probe``. More for ``fedsim list probe my_probe``.\"\"\"
        params = {"peer": param(None, Index(of="peers.count", noun="a peer id", null=True),
                                doc="the peer it looks at")}  # every key a scenario may set
        def run(self, i, cfg, ctx): ...    # -> its entry in probes.json (a dict, "kind" first)

The scenario schema holds each entry as its kind's typed config (:func:`fedsim.scenario.probe_config`:
a discriminated union on ``kind`` whose members are the registered kinds). ``params`` declares each
key once with :func:`fedlib.params.param` (its default, its constraint, one line of help), as rules
and attacks declare theirs: :meth:`Probe.validate` checks them all under ``probes.<i>.`` (run by
validation with ``peers.count``, which bounds an :class:`fedlib.params.Index`) and ``fedsim list
probe NAME`` prints the same declarations. Checks tying keys together are code in an override of
:meth:`Probe.validate` (after ``super().validate``); checks that need the trained run belong in
:meth:`Probe.run`. :mod:`fedsim.probe_runs` runs them.

Imports neither torch nor pydantic: ``fedsim list`` reads it.
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Callable
from typing import Any, ClassVar

from fedlib.params import DOC, check_params, default_of


class Probe:
    """Base class of probes (register a subclass with :func:`register_probe`).

    Class attribute ``params``: every key a scenario may set besides ``kind``, each a
    :func:`fedlib.params.param` (default, constraint, ``doc``: one line for ``fedsim list probe
    NAME``). The docstring's first paragraph is the probe's one-line summary.
    """

    kind: ClassVar[str] = ""
    params: ClassVar[dict[str, Any]] = {}
    # True: the probe reads every round's gossip messages, so the run keeps them
    # (fedsim.runner.Run.messages → ProbeContext.messages; fedsim.probe_gossip)
    needs_messages: ClassVar[bool] = False

    def validate(self, i: int, cfg: dict[str, Any], num_peers: int | None = None) -> dict[str, Any]:
        """``cfg`` (``probes[i]``'s keys as set, ``kind`` and keys of ``params``) with every default
        filled in and every value checked and normalised against its declaration
        (:func:`fedlib.params.check_params`: ``ValueError("probes.<i>.<key>: must be ..., got ...")``).
        ``num_peers``: ``peers.count`` (None where not known). An override adds the checks that tie
        keys together after ``super().validate`` (:func:`fedsim.errors.probe_error`)."""
        return check_params(f"probes.{i}", self.params, cfg, {"peers.count": num_peers}, keep=("kind",),
                            unknown=f"unknown key for kind {self.kind}")

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
        if "defaults" in vars(cls) or "notes" in vars(cls):
            raise TypeError(f"register_probe({kind!r}): declare the keys as params = {{key: param(default, "
                            "constraint, doc=...)} (fedlib.params), not defaults/notes")
        bad = [k for k, f in cls.params.items() if not isinstance(k, str) or k == "kind" or not hasattr(f, "metadata")]
        if bad:
            raise ValueError(f"register_probe({kind!r}): params keys must be names other than 'kind', each a "
                             f"fedlib.params.param(...), got {bad}")
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


def defaults(cls: type[Probe]) -> dict[str, Any]:
    """Every key of a probe kind with its default (fresh copies), in declaration order."""
    return {k: default_of(f) for k, f in cls.params.items()}


def doc(cls: type[Probe], key: str) -> str:
    """The one line of help declared with a probe kind's ``key``."""
    return cls.params[key].metadata.get(DOC) or ""


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
        if k != "kind" and k not in probe.params:
            raise ValueError(f"probes.{i}.{k}: unknown key for kind {probe.kind}; allowed: kind, "
                             f"{', '.join(probe.params)}")
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
