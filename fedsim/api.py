"""fedsim's Python API, for notebooks and scripts: :func:`run` one scenario, :func:`load_run` a
finished run directory. Both return a :class:`RunResult`.

The API runs exactly what ``fedsim run`` runs (the same :class:`fedsim.runner.Run`); the history
is the records the run wrote to its ``metrics.jsonl`` (the single record of a run, read back as
written), so what a notebook sees and what ``fedsim report``/``fedsim plot`` read cannot differ.
``callbacks`` (:mod:`fedsim.callbacks`) watch every round and may stop the run::

    import fedsim
    r = fedsim.run("scenarios/quickstart.yaml", overrides={"rounds": 5})
    r.history[-1]          # {'round': 4, 'accuracy_mean': ..., 'bytes_sent_total': ..., ...}
    r.summary["final_accuracy_mean"]
    df = r.to_pandas()     # when pandas is installed
    r.records[-1].phases   # {'train': ..., 'aggregate': ..., 'evaluate': ...} wall seconds
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedsim import rundir
from fedsim import scenario as sc_mod
from fedsim._runs import SCENARIO_FILE, read_json, recorded_scenario, run_error
from fedsim.cli_errors import RUN_ERROR_FILE
from fedsim.errors import CorruptFileError, FedsimError
from fedsim.runfiles import read_history, read_records
from fedsim.scenario import Scenario

if TYPE_CHECKING:
    from fedsim.callbacks import Callback
    from fedsim.simulation import RoundRecord


YAML_TEXT = "scenario (YAML text)"  # how errors name a scenario given as text


class RunResultError(FedsimError):
    """A directory :func:`load_run` cannot read as a fedsim run."""


@dataclass
class RunResult:
    """What one run produced.

    ``history``: one dict per round, as in ``metrics.jsonl`` (rounds numbered from 0, as in the
    metrics, plots and reports; evaluation rounds carry ``accuracy_mean`` and friends).
    ``summary``: ``summary.json`` (final accuracy, bytes, f, wall time, probes' summary).
    ``final_params``: the flattened heads ``[peers, P]`` float32 (rows of Byzantine peers included; in
    federated mode every row is the global model) when the run ran to its end in this process, else
    ``None`` (also when :func:`run` or :func:`resume` was called with ``final_params=False`` and no
    probe of the run read them).
    ``plan``: the facts the run resolved from the scenario (f, Byzantine ids, bytes per message,
    trainable parameters per peer), computed by the code the run used; decentralized, also
    ``honest_over_f`` (honest peers with more than ``f`` Byzantine in-neighbours, round 0 for push
    gossip: ``f`` is the expected count, not the worst) and ``max_byzantine_in_neighbours``.
    ``records``: the :class:`~fedsim.simulation.RoundRecord` of every round run in this process
    (metrics and phase timings); for :func:`load_run`, every round read back from ``metrics.jsonl``
    and ``timings.jsonl`` (:func:`fedsim.runfiles.read_records`: metrics as written, strict JSON;
    no ``messages``; empty where the timings lack a round's phases).
    ``scenario``: for :func:`run`, the :class:`~fedsim.scenario.Scenario` that ran; for
    :func:`load_run`, the plain ``dict`` its ``scenario.yaml`` records (equal to that object's
    ``model_dump(mode="json")``), not parsed again: reading a run must not need the plugins it
    was made with, nor fail on a field a later fedsim no longer has. ``fedsim.scenario.parse(d)``
    makes the object (its plugins imported first)."""

    dir: Path
    scenario: Scenario | dict[str, Any]
    history: list[dict[str, Any]]
    summary: dict[str, Any] | None
    final_params: np.ndarray | None = None
    plan: dict[str, Any] = field(default_factory=dict)
    records: list[RoundRecord] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Whether the run finished (its ``summary.json`` exists)."""
        return self.summary is not None

    @property
    def evaluations(self) -> list[dict[str, Any]]:
        """The history's evaluation rounds (those with ``accuracy_mean``)."""
        return [h for h in self.history if "accuracy_mean" in h]

    def to_pandas(self) -> Any:
        """The history as a ``pandas.DataFrame`` indexed by round (pandas must be installed)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("RunResult.to_pandas needs pandas: pip install pandas") from None
        return pd.DataFrame(self.history).set_index("round")


def _scenario_data(scenario: str | Path | Mapping[str, Any] | Scenario) -> tuple[dict[str, Any] | None, Path | None]:
    if isinstance(scenario, Scenario):
        return scenario.model_dump(mode="json"), None
    if isinstance(scenario, Mapping):
        return dict(scenario), None
    if isinstance(scenario, str) and "\n" in scenario:  # YAML text (no path has a line break): the bounded reader
        from fedsim.yamlsafe import safe_yaml

        return sc_mod.top_mapping(safe_yaml(scenario, YAML_TEXT), YAML_TEXT), None
    if isinstance(scenario, str) and not Path(scenario).exists() and (":" in scenario or "{" in scenario):
        raise sc_mod.ScenarioError(f"{scenario!r:.80}: no such file (YAML text spans lines, e.g. ends with a "
                                   "newline; or pass a dict)")
    if isinstance(scenario, (str, Path)):
        return None, Path(scenario)
    raise TypeError(f"scenario must be a path, a mapping or a Scenario, got {type(scenario).__name__}")


def resolve(
    scenario: str | Path | Mapping[str, Any] | Scenario,
    overrides: Mapping[str, Any] | None = None,
    *,
    require_data: bool = False,
    plugins: Sequence[str] = (),
) -> Scenario:
    """Validate ``scenario`` (a YAML path, YAML text: a string with a line break, a mapping as the
    YAML would load, or a :class:`~fedsim.scenario.Scenario`) with dotted ``overrides`` (``{"strategy.name": "krum"}``,
    as ``--set``) applied; raises :class:`~fedsim.scenario.ScenarioError` (one line).
    ``require_data``: missing dataset files are an error here (:func:`run` sets it: a run
    directory is made, or overwritten, only for a scenario whose data is there). ``plugins``: your
    plugin files or modules (``["my_plugins.py"]``), imported and recorded in the scenario's
    ``plugins:``; a scenario that lists a plugin not given here is refused (a plugin is code:
    :mod:`fedsim.plugins`)."""
    data, path = _scenario_data(scenario)
    if overrides is not None and not isinstance(overrides, Mapping):
        raise TypeError(f"overrides: expected a mapping of dotted keys to values, e.g. {{'rounds': 10, "
                        f"'strategy.name': 'median'}} (--set's KEY=VALUE), got {type(overrides).__name__} "
                        f"{overrides!r:.80}")
    overrides = dict(overrides or {})
    if path is not None:
        return sc_mod.load(path, overrides, require_data=require_data, plugins=plugins)
    data = sc_mod.plain_tree(data, "scenario")
    data.pop("sweep", None)
    for key, value in overrides.items():
        sc_mod.set_dotted(data, key, value)
    data = sc_mod.with_plugins(data, plugins)
    return sc_mod.parse(data, "scenario", require_data=require_data)


def run(
    scenario: str | Path | Mapping[str, Any] | Scenario,
    overrides: Mapping[str, Any] | None = None,
    out: str | Path | None = None,
    *,
    overwrite: bool = False,
    progress: Callable[[int, dict[str, Any]], None] | None = None,
    log: Callable[[str], None] | None = None,
    callbacks: Sequence[Callback] = (),
    plugins: Sequence[str] = (),
    final_params: bool = True,
) -> RunResult:
    """Run one scenario in this process's driver (the engine the scenario names: Ray actors or
    in-process) and return its :class:`RunResult`.

    ``out``: the run directory. ``None`` makes a new one under the system's temporary directory
    (``fedsim-XXXX/<name>``; kept, so :func:`load_run` can read it again; removed again when the run is
    refused before its folder is made, e.g. no live cluster at ``engine.address``), so calling ``run``
    twice in a notebook never collides; pass a path to keep results where ``fedsim report`` and
    ``fedsim plot`` look (``runs/<name>``). An existing run there is refused unless
    ``overwrite=True`` (the same rules as ``fedsim run``: :mod:`fedsim.rundir`).
    ``progress(round, record)`` is called after every round; ``log`` receives progress messages
    (feature caching, Ray start). ``callbacks``: objects of the :mod:`fedsim.callbacks` protocol,
    called after every round in order; one returning :class:`~fedsim.callbacks.Stop` ends the run
    there (checkpointed: :func:`resume` continues it), and the result is incomplete
    (``summary`` None). ``plugins``: your rules', attacks', backbones' or probes' files or modules
    (``["my_plugins.py"]``, as ``fedsim run --plugin``; :func:`resolve`). ``final_params=False``:
    the heads are not fetched from the peer groups after the last round (``RunResult.final_params``
    None; as ``fedsim run``, which keeps no heads: ``[peers, P]`` float32 less in this process, 220 MiB
    at 10,000 peers of ``benchmarks/scale.py``'s model)."""
    from fedsim.callbacks import checked
    from fedsim.runner import Run  # torch, Ray: only when a run is asked for

    callbacks = checked(callbacks)  # before the run directory is made
    sc = resolve(scenario, overrides, require_data=True, plugins=plugins)
    made = Path(tempfile.mkdtemp(prefix="fedsim-")) if out is None else None
    r = Run(sc, made / sc.name if made is not None else Path(out), fetch_final_params=final_params)
    try:
        r.create_dir(overwrite=overwrite)
    except BaseException:
        if made is not None:  # the folder made for this call: nothing left behind by a run refused at once
            shutil.rmtree(made, ignore_errors=True)
        raise
    r.execute(progress=progress, log=log or (lambda m: None), callbacks=callbacks)
    return _result(r)


def resume(
    path: str | Path,
    *,
    progress: Callable[[int, dict[str, Any]], None] | None = None,
    log: Callable[[str], None] | None = None,
    callbacks: Sequence[Callback] = (),
    plugins: Sequence[str] = (),
    final_params: bool = True,
) -> RunResult:
    """Continue the run in ``path`` from its last checkpoint (as ``fedsim run --resume``); the
    history then holds every round, those before the checkpoint included. ``plugins``: those the
    run was made with (its ``scenario.yaml`` lists them; a run that lists one not given here is
    refused in one line, nothing run). ``final_params``: as for :func:`run`."""
    from fedsim.callbacks import checked
    from fedsim.rundirectory import load_for_resume
    from fedsim.runner import Run

    callbacks = checked(callbacks)
    sc = load_for_resume(Path(path), plugins=plugins)
    r = Run(sc, Path(path), fetch_final_params=final_params)
    r.execute(progress=progress, log=log or (lambda m: None), resume=True, callbacks=callbacks)
    return _result(r)


def _result(r: Any) -> RunResult:
    """What the run ``r`` (a :class:`fedsim.runner.Run` that executed here) produced."""
    summary_path = r.dir / rundir.SUMMARY
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    result = RunResult(r.dir, r.sc, list(r.history), summary, r.final_params, records=list(r.records))
    prep = r.prepared
    if prep is not None:
        result.plan = {
            "f": prep.f,
            "byzantine_ids": [int(i) for i in np.flatnonzero(prep.byzantine)],
            "num_params": prep.num_params,
            "bytes_per_message": prep.bytes_per_message,
        }
        from fedsim.runfacts import exposure_of  # decentralized only (runfacts.byzantine_exposure)

        result.plan.update(exposure_of(prep.info))
    return result


def load_run(path: str | Path) -> RunResult:
    """Read a run directory that ``fedsim run`` / :func:`run` / ``fedsim sweep`` wrote (finished
    or not): its scenario, per-round history and summary. Not a run directory → one-line
    :class:`RunResultError`."""
    path = Path(path)
    if not rundir.is_run_dir(path):
        raise RunResultError(f"{path} is not a fedsim run directory (no {rundir.MARKER})")
    if not (path / SCENARIO_FILE).exists():
        raise RunResultError(f"{path}: {SCENARIO_FILE} is missing; the run did not start")
    try:
        scenario = recorded_scenario(path)  # a dict, as written: the run may need a plugin (RunResult)
        history = read_history(path / rundir.METRICS)
        summary_path = path / rundir.SUMMARY
        summary = read_json(summary_path) if summary_path.exists() else None
        if summary is not None and not isinstance(summary, dict):
            raise CorruptFileError(f"{summary_path}: a JSON {type(summary).__name__}, not a run's summary")
    except FileNotFoundError as e:
        err = run_error(path)  # a sweep's run that failed at start: what failed, not only what is missing
        why = f"; it failed: {err} ({path / RUN_ERROR_FILE})" if err else "; the run did not start"
        raise RunResultError(f"{path}: {Path(e.filename).name} is missing{why}") from None
    except (OSError, ValueError) as e:  # ScenarioError is a ValueError
        raise RunResultError(f"{path}: cannot read the run ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    from fedsim.runfacts import EXPOSURE_KEYS

    plan = {k: summary[k] for k in ("f", "num_params", *EXPOSURE_KEYS) if summary and k in summary}
    return RunResult(path, scenario, history, summary, None, plan, read_records(path, history))
