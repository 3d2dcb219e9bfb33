"""The base of probes and the table they register in: :class:`Probe`, :data:`REGISTRY`,
:func:`register_probe` and the helpers that read a kind's declaration (:func:`summary`,
:func:`defaults`, :func:`doc`). A leaf: the built-ins (:mod:`fedsim.probe_builtins`) and plugins
register here, and :mod:`fedsim.probe_registry` (which re-exports every name) looks kinds up, so
neither imports the other back.

Imports neither torch nor pydantic: ``fedsim list`` reads it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, ClassVar

from fedlib.params import DOC, check_params, default_of
from fedlib.registry import class_doc


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

    def check_scenario(self, i: int, cfg: dict[str, Any], sc: Any) -> None:
        """What the scenario ``sc`` (a :class:`fedsim.scenario.Scenario`) alone decides about this
        probe, checked by validation before anything runs (``ValueError("probes.<i>.<key>: ...")``);
        ``cfg``: :meth:`validate`'s. Default: nothing to check."""

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
        held = vars(cls).get("kind")  # a class is one kind: its entries say cls.kind, the schema types them by it
        if held and held != kind and REGISTRY.get(held) is cls:
            raise ValueError(f"register_probe({kind!r}): {cls.__qualname__} is already registered as kind {held!r}; "
                             "one class is one kind: register a subclass for the second")
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


def summary(cls: type[Probe]) -> str:
    """A probe's one-line summary: its docstring's first paragraph."""
    return " ".join(class_doc(cls).split("\n\n")[0].split())


def defaults(cls: type[Probe]) -> dict[str, Any]:
    """Every key of a probe kind with its default (fresh copies), in declaration order."""
    return {k: default_of(f) for k, f in cls.params.items()}


def doc(cls: type[Probe], key: str) -> str:
    """The one line of help declared with a probe kind's ``key``."""
    return cls.params[key].metadata.get(DOC) or ""
