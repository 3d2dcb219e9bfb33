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

The base class and the table are :mod:`fedsim.probe_base` (re-exported here); importing this
module registers the built-ins, so :func:`kinds` is complete without a lazy import. Imports
neither torch nor pydantic: ``fedsim list`` reads it.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable
from typing import Any

import fedsim.probe_builtins  # noqa: F401  (registers the built-in kinds)
from fedsim import plugins
from fedsim.probe_base import REGISTRY, Probe, defaults, doc, register_probe, summary

__all__ = ["REGISTRY", "Probe", "check_entry", "defaults", "doc", "entry_problem", "get_probe", "json_problem", "kinds",
           "register_probe", "summarize", "summary", "validate_probe"]


def kinds() -> dict[str, type[Probe]]:
    """Every registered probe kind (the built-ins, registered when this module was imported, and
    any a plugin registered since)."""
    return REGISTRY


def get_probe(i: int, kind: Any, scenario_plugins: Iterable[str] | None = ()) -> Probe:
    """The probe of ``kind`` (``probes[i]``), or ``ValueError("probes.<i>.kind: ...")``, ending in
    the ``--plugin`` hint where the scenario names no plugin (``scenario_plugins``: its
    ``plugins:``; :func:`fedsim.plugins.hint`, as for an unknown rule, attack or backbone)."""
    known = kinds()
    if not isinstance(kind, str) or kind not in known:
        close = difflib.get_close_matches(str(kind), list(known), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"probes.{i}.kind: got {kind!r}{hint}; allowed: {', '.join(known)}"
                         f"{plugins.hint(scenario_plugins)}")
    return known[kind]()


def check_entry(i: int, data: Any, scenario_plugins: Iterable[str] | None = ()) -> Probe:
    """``probes[i]``'s probe, after checking that it is a mapping with a registered ``kind`` and
    only that kind's keys (``ValueError("probes.<i>...: ...")``; ``scenario_plugins``: as for
    :func:`get_probe`)."""
    if not isinstance(data, dict) or "kind" not in data:
        raise ValueError(f"probes.{i}: each probe is a mapping with a 'kind' ({' | '.join(kinds())})")
    probe = get_probe(i, data["kind"], scenario_plugins)
    for k in data:
        if k != "kind" and k not in probe.params:
            raise ValueError(f"probes.{i}.{k}: unknown key for kind {probe.kind}; allowed: kind, "
                             f"{', '.join(probe.params)}")
    return probe


def validate_probe(i: int, probe: Any, num_peers: int | None = None,
                   scenario_plugins: Iterable[str] | None = ()) -> dict[str, Any]:
    """Check ``scenario.probes[i]`` (a mapping, or the schema's typed entry) and return it with
    every default filled in: :func:`check_entry`, then its kind's :meth:`Probe.validate`."""
    data = probe.settings() if hasattr(probe, "settings") else probe
    return check_entry(i, data, scenario_plugins).validate(i, dict(data), num_peers)


def entry_problem(kind: str, entry: Any) -> str | None:
    """What keeps ``entry`` (what a ``kind`` probe's ``run`` returned) from being its
    ``probes.json`` entry, a mapping whose ``kind`` is ``kind``, as the end of a sentence ("the
    entry is ..."); None when nothing does. The runner (:func:`fedsim.probe_runs.run_probes`) and
    :func:`fedsim.checks.check_probe` both say it."""
    if not isinstance(entry, dict):
        return f"a {type(entry).__name__}, not a mapping with 'kind': {kind!r}"
    if "kind" not in entry:
        keys = ", ".join(map(str, entry)) or "none"
        return f"a mapping without 'kind' (its keys: {keys}), not one with 'kind': {kind!r}"
    if entry["kind"] != kind:
        return f"a mapping with 'kind': {entry['kind']!r}, not {kind!r}"
    if (error := json_problem(entry)) is not None:  # a tensor, a set, an object: probes.json cannot hold it
        return f"a mapping holding a value JSON cannot hold ({error}), not plain numbers, strings, lists and mappings"
    return None


def json_problem(value: Any) -> str | None:
    """Why strict JSON (``probes.json``'s) cannot hold ``value`` (the encoder's message), or None."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as e:
        return str(e)
    return None


def summarize(entry: dict[str, Any]) -> dict[str, Any]:
    """The compact form of one ``probes.json`` entry kept in ``summary.json`` (its kind's
    :meth:`Probe.summarize`)."""
    return get_probe(0, entry["kind"]).summarize(entry)
