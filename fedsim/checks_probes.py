"""The properties every probe must have, for your own probe as for the built-ins.

:func:`check_probe` (re-exported by :mod:`fedsim.checks`) runs them on one registered probe kind
(its name, as a scenario's ``probes:`` entry names it, or its registered class) with the engine's
own code: it trains a tiny run (:data:`TINY`: 8 peers on scikit-learn's digits, 4 rounds,
in-process) with the probe in its ``probes:`` (:class:`fedsim.runner.Run`, which runs it through
:func:`fedsim.probe_runs.run_probes` and writes ``probes.json``), then runs the probe once more on
a fresh :class:`fedsim.probes.ProbeContext` of that run. ``tests/test_checks_probes.py`` runs it
over every registered kind. The properties:

* :func:`check_declaration` — the class has a docstring (``fedsim list probe`` shows its first
  paragraph), its declared ``params`` defaults pass their own constraints through the one
  validator (:func:`fedsim.probe_registry.validate_probe`, what ``fedsim validate`` runs), and
  ``summarize`` of its entry is a mapping with its ``kind`` (``summary.json``);
* :func:`check_entry_schema` — the run with the probe completes, and the ``probes.json`` entry it
  wrote (strict JSON: :func:`fedsim.rundir.json_safe` makes NaN null) is an object with the
  probe's ``kind`` and meets the schema ``docs/probes.md`` documents, as ``fedsim report`` and
  ``fedsim run`` read it: :func:`fedsim.report_probes.format_probes` renders it without a
  :class:`~fedsim.report_probes.ProbesShapeError` (for ``unlearning``, every membership result has
  ``advantage``, ``null_q95``, ``p_value``, ``tpr_at_1pct_fpr``, …; with a retrained model, every
  method ``kl_to_retrained`` and ``disagreement_to_retrained``; a plugin kind's own
  ``markdown(entry)`` must accept it). A run that fails after writing ``probes.json`` (its
  ``summarize`` raising on the entry) is judged on that file first;
* :func:`check_reproducible` — run again on the same trained run, with torch's, numpy's and
  Python's global generators seeded otherwise, the probe returns the same entry (randomness only
  from ``ctx.seed``: :mod:`fedsim.rng`);
* :func:`check_leaves_run` — the probe modifies nothing of the run it probes: no tensor, array or
  field of the :class:`~fedsim.probes.ProbeContext` (the final heads, features, training indices,
  final state, messages, …: the run's own arrays, and what the scenario's next probe gets), and no
  file of the run directory outside ``probes/`` (where retrainings go).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import random
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedlib.registry import NO_DOC, class_doc
from fedsim.errors import ProbeResultError
from fedsim.probe_registry import REGISTRY, Probe, entry_problem, summarize, validate_probe

__all__ = ["TINY", "check_declaration", "check_entry_schema", "check_leaves_run", "check_probe", "check_reproducible"]

# the run check_probe trains (the tests' small scenario): its probes: is the probe checked
TINY: dict[str, Any] = {
    "name": "check_probe",
    "rounds": 4,
    "dataset": {"name": "sklearn_digits"},
    "backbone": {"name": "identity"},
    "partition": {"kind": "dirichlet", "alpha": 1.0},
    "peers": {"count": 8},
    "topology": {"kind": "k_regular", "degree": 4},
    "training": {"lr": 0.05, "momentum": 0.5, "batch_size": 16, "local_steps": 3},
    "engine": {"backend": "local", "num_actors": 2},
}


def _fail(kind: str, prop: str, what: str) -> AssertionError:
    return AssertionError(f"probe {kind}: {prop}: {what}")


def check_declaration(cls: type[Probe], num_peers: int) -> None:
    """The first property's declaration half (module docstring): a docstring and defaults that
    validate (``summarize`` is checked on the run's entry, :func:`check_entry_schema`)."""
    if class_doc(cls) == NO_DOC:
        raise _fail(cls.kind, "declaration", f"{cls.__name__} has no docstring (fedsim list probe shows it)")
    try:
        validate_probe(0, {"kind": cls.kind}, num_peers)
    except ValueError as e:
        raise _fail(cls.kind, "declaration", f"its declared defaults do not validate: {e}") from e


def check_entry_schema(kind: str, entry: Any) -> None:
    """The second property (module docstring) on a parsed ``probes.json`` entry, and ``summarize``."""
    from fedsim.report_probes import ProbesShapeError, format_probes

    if (problem := entry_problem(kind, entry)) is not None:
        raise _fail(kind, "probes.json schema", f"the entry is {problem}")
    try:
        format_probes([entry])
    except ProbesShapeError as e:
        raise _fail(kind, "probes.json schema", f"fedsim report cannot read the entry (docs/probes.md): {e}") from e
    short = summarize(entry)
    if not isinstance(short, dict) or short.get("kind") != kind:
        raise _fail(kind, "declaration", f"summarize(entry) gave {short!r}, not a mapping with kind {kind!r}")


def snapshot(obj: Any, name: str = "ctx", skip: Sequence[str] = ("retrained",)) -> dict[str, str]:
    """Every tensor, array and plain value reachable from ``obj`` (dataclass fields, mappings,
    lists), by path: a digest of its bytes, or its ``repr``. ``skip``: fields not followed
    (``ProbeContext.retrained``, the cache a probe fills on purpose)."""
    out: dict[str, str] = {}

    def walk(o: Any, path: str) -> None:
        if isinstance(o, torch.Tensor):
            t = o.detach().cpu().contiguous()
            out[path] = f"{t.dtype}{tuple(t.shape)}" + hashlib.sha256(t.numpy().tobytes()).hexdigest()
        elif isinstance(o, np.ndarray):
            out[path] = f"{o.dtype}{o.shape}" + hashlib.sha256(np.ascontiguousarray(o).tobytes()).hexdigest()
        elif isinstance(o, Mapping):
            for k, v in o.items():
                walk(v, f"{path}[{k!r}]")
        elif isinstance(o, list | tuple):
            for i, v in enumerate(o):
                walk(v, f"{path}[{i}]")
        elif dataclasses.is_dataclass(o) and not isinstance(o, type):
            for f in dataclasses.fields(o):
                if f.name not in skip:
                    walk(getattr(o, f.name), f"{path}.{f.name}")
        else:
            out[path] = repr(o)

    walk(obj, name)
    return out


def files(run_dir: Path) -> dict[str, str]:
    """A digest of every file of ``run_dir`` outside ``probes/`` (where a probe's retrainings go)."""
    return {
        str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and p.relative_to(run_dir).parts[0] != "probes"
    }


def check_leaves_run(kind: str, before: Mapping[str, str], after: Mapping[str, str], what: str) -> None:
    """The fourth property (module docstring): ``before`` and ``after`` (:func:`snapshot` or
    :func:`files`) are the same; ``what``: what they describe, for the message."""
    changed = [k for k in before if after.get(k) != before[k]] + [k for k in after if k not in before]
    if changed:
        raise _fail(kind, "leaves the run", f"run() modified {what} {', '.join(changed[:3])} (copy before writing)")


def check_reproducible(kind: str, first: Any, second: Any) -> None:
    """The third property (module docstring): two entries of one run, as ``probes.json`` holds them."""
    if first != second:
        diff = [k for k in {**first, **second} if first.get(k) != second.get(k)] if isinstance(first, dict) else []
        raise _fail(kind, "reproducible", f"a second run on the same trained run (global generators seeded "
                    f"otherwise) gave another entry (fields {', '.join(map(str, diff[:5]))}): draw only from "
                    "generators seeded from ctx.seed (fedsim.rng)")


def _seed_rngs(seed: int) -> None:
    """Torch's, numpy's and Python's global generators seeded from ``seed``."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


@contextmanager
def _rngs_kept() -> Iterator[None]:
    """Torch's, numpy's and Python's global generators as they were, afterwards."""
    state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            np.random.set_state(state[0])
            random.setstate(state[1])


def _rerun(run: Any, kind: str, cfg: dict[str, Any], seed: int) -> Callable[[], Any]:
    """The probe run once more on a fresh context of ``run``, as :func:`fedsim.probe_runs.run_probes`
    runs it (one thread, the entry made JSON-safe), with the property checks around it."""
    from fedsim.probe_context import _context, _plain
    from fedsim.probe_registry import get_probe

    def again() -> Any:
        ctx = _context(run, run.prepared, run.final_params, run.retrain_without)
        before, before_files = snapshot(ctx), files(Path(run.dir))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            _seed_rngs(seed + 1)
            entry = _plain(get_probe(0, kind).run(0, cfg, ctx))
        finally:
            torch.set_num_threads(threads)
        check_leaves_run(kind, before, snapshot(ctx), "the probe context's")
        check_leaves_run(kind, before_files, files(Path(run.dir)), "the run directory's file")
        return json.loads(json.dumps(entry, allow_nan=False))

    return again


def check_probe(
    probe: str | type[Probe],
    cfg: Mapping[str, Any] | None = None,
    *,
    scenario: Mapping[str, Any] | None = None,
    seed: int = 0,
    plugins: Sequence[str] = (),
) -> int:
    """Check probe ``probe`` (a registered kind, or its registered class) against the properties
    of the module docstring on a tiny run (:data:`TINY`, seed ``seed``, with dotted ``scenario``
    overrides such as ``{"mode": "federated", "topology.kind": "star"}``) whose ``probes:`` holds
    ``{"kind": <kind>, **cfg}``; ``AssertionError`` naming the probe and the property at the first
    failure. A ``cfg`` or scenario that does not validate is the one-line ``ValueError`` /
    ``ScenarioError`` validation gives, before anything runs. ``plugins``: the files or modules that
    register it (as ``fedsim.run``'s). Global random states are left as they were. Returns the
    number of properties checked (4)."""
    from fedsim.api import resolve
    from fedsim.runner import Run

    if plugins:
        from fedsim import plugins as plugin_mod

        plugin_mod.load(plugin_mod.grant(plugins))
    kind = probe if isinstance(probe, str) else probe.kind
    cls = REGISTRY.get(kind)
    if cls is None or not (isinstance(probe, str) or cls is probe):
        raise ValueError(f"check_probe: {probe!r} is not a registered probe kind (register it with "
                         "fedsim.probe_registry.register_probe)")
    check_declaration(cls, int(TINY["peers"]["count"]))
    entry = {"kind": kind, **(cfg or {})}
    with tempfile.TemporaryDirectory(prefix="check_probe-") as tmp, _rngs_kept():
        base = copy.deepcopy(TINY) | {"seed": seed, "probes": [entry], "output": {"dir": tmp}}
        base["backbone"]["cache_dir"] = str(Path(tmp) / "cache")
        sc = resolve(base, dict(scenario or {}), require_data=True, plugins=plugins)
        filled = validate_probe(0, sc.probes[0], sc.peers.count)
        run = Run(sc, Path(tmp) / "run")
        run.create_dir()
        try:
            _seed_rngs(seed)
            run.execute()
        except Exception as e:
            if isinstance(e, ProbeResultError):  # the runner's own verdict on the entry (entry_problem)
                raise _fail(kind, "probes.json schema", f"the entry is {e.problem}") from e
            if (run.dir / "probes.json").exists():  # written before summary.json: what it lacks says more
                check_entry_schema(kind, _written(run.dir, kind)[0])
            raise _fail(kind, "probes.json schema", f"the tiny run with the probe raised {e!r}") from e
        written = _written(run.dir, kind)
        check_entry_schema(kind, written[0])
        check_reproducible(kind, written[0], _rerun(run, kind, filled, seed)())
    return 4


def _written(run_dir: Path, kind: str) -> list[Any]:
    """The entries of ``run_dir``'s ``probes.json``: one, the probe's."""
    written = json.loads((run_dir / "probes.json").read_text())
    if not isinstance(written, list) or len(written) != 1:
        raise _fail(kind, "probes.json schema", f"probes.json holds {written!r}, not one entry")
    return written
