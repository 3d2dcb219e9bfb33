"""Reading run directories (shared by ``fedsim plot`` and ``fedsim report``).

A *run directory* holds ``scenario.yaml`` (the resolved scenario), ``metrics.jsonl`` (one JSON
object per round), ``summary.json`` once complete, and optionally ``probes.json``. A *sweep
directory* holds many run directories (at any depth) and, when made by ``fedsim sweep``, a
``sweep.json`` index whose grid gives the order of keys and values.

Nothing here imports matplotlib, torch or ray.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsim.cli_errors import RUN_ERROR_FILE
from fedsim.errors import CorruptFileError, ScenarioError
from fedsim.yamlsafe import plain_tree, read_yaml

# Scenario keys that never distinguish runs in a table or a figure (they do not change results
# or are bookkeeping): the run's name, where it ran, where it wrote.
IGNORED_PREFIXES = (
    "name", "output.", "engine.", "checkpoint.", "backbone.cache_dir", "dataset.data_dir", "probes",
    "peers.allow_idle_attack",  # only what validation accepts: runs made before the knob still match
)

# Keys added to the schema after runs existed, at the value that is the old behaviour: left out of a
# run's fingerprint and of a sweep's comparison while they hold it, so checkpoints and sweep folders
# made before they existed still resume (tests/test_whole.py checks these are ModelCfg's defaults).
OMITTED_AT_DEFAULT: dict[str, object] = {
    "sampling.fraction": None, "sampling.count": None,  # client sampling (issue 16): every client every round
    "model.trainable": "head", "model.k": None, "model.hidden": [], "model.init": "pretrained",
    "model.exchange": "params",  # whole-model training (issue 18): today's linear head
    "model.batching": "auto",  # how a group computes its peers' gradients (issue 18): the default rule
    "model.bn": "exchanged",  # BatchNorm on exchange (issue 18): sent and aggregated like the parameters
}


def comparable(flat: dict[str, Any]) -> dict[str, Any]:
    """A flattened resolved scenario without :data:`IGNORED_PREFIXES` and the keys of
    :data:`OMITTED_AT_DEFAULT` at their old value: what must match for a run to be the same run."""
    return {
        k: v for k, v in flat.items()
        if not k.startswith(IGNORED_PREFIXES) and not (k in OMITTED_AT_DEFAULT and OMITTED_AT_DEFAULT[k] == v)
    }

# Readable names for the keys a sweep usually varies.
LABELS = {
    "strategy.name": "strategy",
    "peers.attack.name": "attack",
    "peers.byzantine_fraction": "Byzantine fraction",
    "peers.byzantine": "Byzantine peers",
    "partition.alpha": "Dirichlet α",
    "partition.kind": "partition",
    "topology.kind": "topology",
    "topology.degree": "topology degree",
    "peers.count": "peers",
    "dataset.name": "dataset",
    "backbone.name": "backbone",
    "seed": "seed",
}
STRATEGY = "strategy.name"
ATTACK = "peers.attack.name"
FRACTIONS = ("peers.byzantine_fraction", "peers.byzantine")


def label(key: str) -> str:
    """Human name of a dotted scenario key (``peers.attack.name`` → ``attack``)."""
    return LABELS.get(key, key)


def fmt_value(value: Any) -> str:
    """A value as it reads in a table cell, legend or file name (``0.3``, ``krum``, ``{f: 1}``)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return f"{value:g}" if abs(value) < 1e6 else str(int(value))
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def get_dotted(d: dict[str, Any], key: str, default: Any = None) -> Any:
    """``get_dotted(d, "peers.attack.name")``; ``default`` when a part is missing."""
    node: Any = d
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _hashable(v: Any) -> Any:
    return json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v


# The most a JSON file fedsim reads back (summary.json, sweep.json, probes.json) or one line of a
# .jsonl (metrics, timings) may hold: fedsim writes kilobytes (a 100,000-peer sweep's index a few MiB),
# so a larger one is not fedsim's and is refused before it is read into memory.
MAX_JSON_BYTES = 64 * 2**20


def json_value(raw: bytes | str, where: str) -> Any:
    """``raw`` parsed as JSON; a one-line :class:`~fedsim.errors.CorruptFileError` naming ``where``
    when it is not UTF-8, not JSON (a number past Python's digit limit included) or nested past
    Python's recursion limit (``[[[[…``), never a bare ``RecursionError``."""
    try:
        return json.loads(raw)
    except UnicodeDecodeError as e:
        raise CorruptFileError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise CorruptFileError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise CorruptFileError(f"{where}: not valid JSON ({str(e).splitlines()[0][:120]})") from None
    except RecursionError:
        raise CorruptFileError(f"{where}: refused: JSON nested too deeply") from None


def json_record(line: bytes | str, where: str) -> dict[str, Any]:
    """One ``.jsonl`` line as the JSON object fedsim wrote (:func:`json_value`); anything but an
    object is a one-line :class:`~fedsim.errors.CorruptFileError` naming ``where``."""
    rec = json_value(line, where)
    if not isinstance(rec, dict):
        raise CorruptFileError(f"{where}: a JSON {type(rec).__name__}, not a record (a JSON object)")
    return rec


def read_json(path: Path) -> Any:
    """The JSON value of the file ``path``, read only if it is at most :data:`MAX_JSON_BYTES`
    (:func:`json_value`: one-line :class:`~fedsim.errors.CorruptFileError` naming it); a missing or
    unreadable file is the ``OSError``."""
    with open(path, "rb") as fh:
        raw = fh.read(MAX_JSON_BYTES + 1)
    if len(raw) > MAX_JSON_BYTES:
        raise CorruptFileError(f"{path}: more than {MAX_JSON_BYTES // 2**20} MiB; not a file fedsim wrote")
    return json_value(raw, str(path))


def jsonl_records(path: Path, torn_last: bool = True,
                  problem: Callable[[dict[str, Any]], str | None] | None = None) -> list[dict[str, Any]]:
    """The records of a ``.jsonl`` file, one JSON object per non-blank line (:func:`json_record`),
    read a line at a time, each at most :data:`MAX_JSON_BYTES`. A bad line (or one for which
    ``problem`` returns what is wrong) is a one-line :class:`~fedsim.errors.CorruptFileError`
    naming the file and the line, except, with ``torn_last``, a bad last line (a writer killed
    mid-line), which is left out."""
    out: list[dict[str, Any]] = []
    bad: CorruptFileError | None = None
    with open(path, "rb") as fh:
        for n, line in enumerate(iter(lambda: fh.readline(MAX_JSON_BYTES + 1), b""), 1):
            if not line.strip():
                continue
            if bad is not None:  # a line after the bad one: that one was not a torn last line
                raise bad
            where = f"{path}: line {n}"
            try:
                if len(line) > MAX_JSON_BYTES:
                    raise CorruptFileError(f"{where}: longer than {MAX_JSON_BYTES // 2**20} MiB; not a fedsim record")
                rec = json_record(line, where)
                wrong = problem(rec) if problem is not None else None
                if wrong:
                    raise CorruptFileError(f"{where}: {wrong}")
                out.append(rec)
            except CorruptFileError as e:
                if not torn_last:
                    raise
                bad = e
    return out


# the fields of a metrics record that tables and figures compute with, numbers where present: the
# accuracies may be null (a non-finite value as written, fedsim.rundir.json_safe), the byte counts
# (integers fedsim counts) may not
NULLABLE_NUMBERS = ("accuracy_mean", "accuracy_min", "accuracy_max")
METRIC_NUMBERS = (*NULLABLE_NUMBERS, "bytes_sent_total", "bytes_sent_per_peer")


def metrics_problem(rec: dict[str, Any]) -> str | None:
    """What makes ``rec`` no metrics record a table or figure can use (``None``: nothing): an
    integer ``round`` >= 0, and numbers in :data:`METRIC_NUMBERS` (or null in :data:`NULLABLE_NUMBERS`)."""
    rnd = rec.get("round")
    if isinstance(rnd, bool) or not isinstance(rnd, int) or rnd < 0:
        return f"'round' is {rnd!r:.40}, not a round number (an integer >= 0)"
    for k in METRIC_NUMBERS:
        v = rec.get(k)
        if (v is None and k in rec and k not in NULLABLE_NUMBERS) or (
                v is not None and (isinstance(v, bool) or not isinstance(v, int | float))):
            return f"{k!r} is {v!r:.40}, not a number"
    return None


def _nan_for_null(rec: dict[str, Any]) -> dict[str, Any]:
    """``rec`` with NaN for each of :data:`NULLABLE_NUMBERS` written as null (the record itself if none is)."""
    if all(rec.get(k, 0) is not None for k in NULLABLE_NUMBERS):
        return rec
    return {k: math.nan if v is None and k in NULLABLE_NUMBERS else v for k, v in rec.items()}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The metrics records of a ``.jsonl`` file (:func:`jsonl_records`, each checked by
    :func:`metrics_problem`); a torn last line (a killed writer) is ignored, any other bad line is
    a one-line :class:`~fedsim.errors.CorruptFileError`."""
    return jsonl_records(path, problem=metrics_problem) if path.exists() else []


@dataclass
class RunData:
    """One run directory, read."""

    path: Path
    scenario: dict[str, Any]
    metrics: list[dict[str, Any]]
    summary: dict[str, Any] | None
    flat: dict[str, Any] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.summary is not None

    @property
    def name(self) -> str:
        return self.path.name

    def get(self, key: str, default: Any = None) -> Any:
        """A resolved scenario value by dotted key."""
        return self.flat.get(key, get_dotted(self.scenario, key, default))

    @property
    def evaluations(self) -> list[dict[str, Any]]:
        """The metric records of evaluation rounds (those with ``accuracy_mean``), honest group; a
        number written as null (non-finite when recorded, e.g. no honest peer evaluated) reads as NaN,
        so tables print ``nan``, curves leave a gap and no target counts as reached there."""
        return [_nan_for_null(m) for m in self.metrics if "accuracy_mean" in m and m.get("group", "honest") == "honest"]

    @property
    def final_accuracy(self) -> float | None:
        ev = self.evaluations
        return ev[-1]["accuracy_mean"] if ev else None

    def rounds_to(self, target: float) -> int | None:
        """Rounds run until mean honest accuracy first reached ``target`` (round index + 1)."""
        for m in self.evaluations:
            if m["accuracy_mean"] >= target:
                return int(m["round"]) + 1
        return None

    def bytes_total(self) -> int:
        """Bytes sent by all peers over all rounds recorded."""
        return int(sum(m.get("bytes_sent_total", 0) for m in self.metrics))

    def bytes_per_peer(self) -> int:
        """Bytes sent by one peer over all rounds recorded."""
        return int(sum(m.get("bytes_sent_per_peer", 0) for m in self.metrics))

    def probes(self) -> Any:
        """The parsed ``probes.json``, or ``None`` when absent or unreadable."""
        p = self.path / "probes.json"
        if not p.exists():
            return None
        try:
            return read_json(p)
        except (OSError, CorruptFileError):
            return None


SCENARIO_FILE = "scenario.yaml"


def recorded_scenario(path: Path) -> dict[str, Any]:
    """The scenario a run directory ``path`` recorded (its ``scenario.yaml``) as plain data, read
    by the bounded reader every scenario file goes through (:func:`fedsim.yamlsafe.read_yaml`:
    size, depth and value caps, duplicate keys refused, one-line
    :class:`~fedsim.errors.ScenarioError`); an empty file is ``{}``, anything but a mapping is
    refused in one line. Its YAML aliases are expanded by :func:`fedsim.yamlsafe.plain_tree`, which
    refuses a billion-laughs file (the readers flatten and serialise every value). Not parsed into a
    :class:`fedsim.scenario.Scenario`: the run may need a plugin, or predate a field."""
    file = Path(path) / SCENARIO_FILE
    data = read_yaml(file)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ScenarioError(f"{file}: holds a {type(data).__name__}, not a scenario (a mapping of sections)")
    return plain_tree(data, str(file))


def load_run(path: Path) -> RunData:
    """Read one run directory (``scenario.yaml`` may be missing: then the scenario is ``{}``;
    else :func:`recorded_scenario`)."""
    path = Path(path)
    scenario = recorded_scenario(path) if (path / SCENARIO_FILE).exists() else {}
    summary = None
    if (path / "summary.json").exists():
        summary = read_json(path / "summary.json")
        if not isinstance(summary, dict):
            raise CorruptFileError(f"{path / 'summary.json'}: a JSON {type(summary).__name__}, not a run's summary")
    return RunData(path, scenario, read_jsonl(path / "metrics.jsonl"), summary, flatten(scenario))


def is_run_dir(path: Path) -> bool:
    return (path / "metrics.jsonl").exists() or (path / "summary.json").exists()


ERROR_TAIL_BYTES = 64 * 1024  # run_error reads no more of error.txt than its last 64 KiB


def run_error(path: Path) -> str | None:
    """What failed in the run folder ``path``, from the ``error.txt`` that ``fedsim sweep`` writes
    for a failed run (and ``fedsim run`` for an unexpected error): its last line, the exception
    (``RuntimeError: boom``), cut to 200 characters; None without that file."""
    try:
        with (Path(path) / RUN_ERROR_FILE).open("rb") as fh:  # its tail only: the file may be large
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - ERROR_TAIL_BYTES))
            tail = fh.read(ERROR_TAIL_BYTES)
    except OSError:
        return None
    lines = [x.strip() for x in tail.decode(errors="replace").splitlines()]
    last = next((x for x in reversed(lines) if x), "(empty)")
    return last if len(last) <= 200 else last[:199] + "…"


@dataclass
class RunSet:
    """The runs under a directory, plus the sweep index when there is one. ``unstarted``: run
    folders with no round recorded, so not in ``runs``: a sweep's listed runs not run yet or that
    failed before their first round, and (in a folder of runs) folders whose run failed so
    (:func:`run_error`); :func:`left_out` says which is which."""

    root: Path
    runs: list[RunData]
    index: dict[str, Any] | None = None
    unstarted: list[Path] = field(default_factory=list)

    @property
    def title(self) -> str:
        """A sweep's own name (its folder: ``runs/attack-matrix`` → ``attack-matrix``), not its base
        scenario's ``name:`` (which every sweep of that scenario shares); a run's scenario name."""
        if self.index is not None:
            return self.root.resolve().name
        if len(self.runs) == 1:
            return str(self.runs[0].scenario.get("name") or self.runs[0].name)
        return self.root.resolve().name

    def grid_order(self, key: str) -> list[Any] | None:
        grid = (self.index or {}).get("grid") or {}
        return grid.get(key)

    def varying_keys(self, include_seed: bool = False) -> list[str]:
        """Scenario keys whose value differs between runs, in the sweep grid's order first."""
        values: dict[str, set] = {}
        all_keys: list[str] = []
        for r in self.runs:
            for k in r.flat:
                if k not in values:
                    values[k] = set()
                    all_keys.append(k)
        for r in self.runs:
            for k in all_keys:
                values[k].add(_hashable(r.flat.get(k)))
        varying = [
            k
            for k in all_keys
            if len(values[k]) > 1 and not k.startswith(IGNORED_PREFIXES) and (include_seed or k != "seed")
        ]
        grid_keys = list(((self.index or {}).get("grid") or {}).keys())

        def rank(k: str) -> tuple[int, str]:
            for i, g in enumerate(grid_keys):
                if k == g or k.startswith(g + "."):
                    return (i, k)
            return (len(grid_keys), k)

        return sorted(varying, key=rank)

    def values(self, key: str, runs: Iterable[RunData] | None = None) -> list[Any]:
        """Distinct values of ``key`` among ``runs``: in grid order if swept, else sorted."""
        seen: dict[Any, Any] = {}
        for r in self.runs if runs is None else runs:
            v = r.get(key)
            seen.setdefault(_hashable(v), v)
        order = self.grid_order(key)
        if order is not None:
            pos = {_hashable(v): i for i, v in enumerate(order)}
            return sorted(seen.values(), key=lambda v: (pos.get(_hashable(v), len(pos)), fmt_value(v)))
        return sorted(seen.values(), key=_sort_key)


def _sort_key(v: Any) -> tuple[int, float, str]:
    if isinstance(v, bool) or v is None:
        return (2, 0.0, str(v))
    if isinstance(v, (int, float)):
        return (0, float(v), "")
    return (1, 0.0, fmt_value(v))


PLOTS_DIR = "plots"  # where `fedsim plot DIR` writes by default: DIR/plots, never a run


def _sweep_index(folder: Path) -> dict[str, Any] | None:
    """A sweep folder's ``sweep.json``, or None (absent or unreadable: the folder is walked
    instead). Its runs are folder names in ``folder`` (:func:`sweep_run_dirs`): an entry that is not
    one (``../other``, an absolute path, not a string) is a one-line
    :class:`~fedsim.errors.CorruptFileError`, so a planted index cannot point a report elsewhere."""
    try:
        index = read_json(folder / "sweep.json")
    except (OSError, CorruptFileError):
        return None
    if not isinstance(index, dict):
        return None
    sweep_run_dirs(folder, index)
    return index


def sweep_run_dirs(folder: Path, index: dict[str, Any]) -> list[Path]:
    """The run folders a sweep's ``sweep.json`` (``index``) lists, in its order: each entry's
    ``dir`` must name a folder directly in ``folder`` (what ``fedsim sweep`` writes), else one-line
    :class:`~fedsim.errors.CorruptFileError`."""
    runs, grid, invalid = index.get("runs") or [], index.get("grid") or {}, index.get("invalid") or []
    where = folder / "sweep.json"
    if (not isinstance(runs, list) or not isinstance(grid, dict) or not all(isinstance(v, list) for v in grid.values())
            or not isinstance(invalid, list)
            or not all(isinstance(r, dict) and isinstance(r.get("dir"), str) for r in invalid)):
        raise CorruptFileError(f"{where}: not a sweep index ('runs' must be a list, 'grid' a mapping of lists, "
                               "'invalid' a list of entries with a 'dir')")
    out = []
    for i, r in enumerate(runs):
        d = r.get("dir") if isinstance(r, dict) else None
        if not isinstance(d, str) or d in ("", ".", "..") or "/" in d or "\0" in d:
            shown = repr(d if isinstance(d, str) else r)[:80]
            raise CorruptFileError(f"{where}: runs[{i}]: {shown} is not the name of a folder in the sweep "
                                   "(no '/', '..' or absolute path)")
        out.append(folder / d)
    return out


_UNREAD: Any = object()  # (_run_dirs: the folder's sweep.json not read yet)


def _run_dirs(folder: Path, depth: int, index: Any = _UNREAD) -> tuple[list[Path], list[Path], list[Path]]:
    """The run folders ``folder`` stands for, the folders in it that are none of what is
    accepted, and the run folders with no round recorded that it stands for: itself if it is a
    run; a sweep's runs (its ``sweep.json``'s list, grid order; older leftovers are not part of
    it; a listed run not run yet, or failed before its first round, is the third list's); with
    ``depth`` > 0, those of its sub-folders, each a run, a sweep or (depth permitting) a folder
    of them. Never walks further: a run's own sub-folders (an unlearning probe's retrain) and
    hidden folders, ``plots``, and run folders without a round yet (a ``scenario.yaml``, no
    metrics: starting, or failed at start, then in the third list) are passed over.
    ``index``: ``folder``'s :func:`_sweep_index` where the caller already read it (default: read here)."""
    if is_run_dir(folder):
        return [folder], [], []
    index = _sweep_index(folder) if index is _UNREAD else index
    if index is not None and index.get("runs"):
        listed = sweep_run_dirs(folder, index)
        return [d for d in listed if is_run_dir(d)], [], [d for d in listed if not is_run_dir(d)]
    if depth == 0:
        return [], [folder], []
    runs: list[Path] = []
    others: list[Path] = []
    unstarted: list[Path] = []
    for child in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if child.name == PLOTS_DIR:
            continue
        if not is_run_dir(child) and (child / "scenario.yaml").is_file():
            if (child / RUN_ERROR_FILE).is_file():
                unstarted.append(child)
            continue
        found, strangers, waiting = _run_dirs(child, depth - 1)
        runs += found
        unstarted += waiting
        others += strangers if found or waiting else [child]
    return runs, others, unstarted


def load_runs(root: Path) -> RunSet:
    """The runs of ``root``: a run directory, a sweep directory (with a ``sweep.json``, the runs it
    lists), or a folder of runs and sweeps, two levels down at most (``runs/``: ``runs/<name>``,
    ``runs/<sweep>/<run>``); nothing deeper is walked.

    Raises ``FileNotFoundError`` (one line) when ``root`` does not exist, holds no run, or holds a
    folder that is none of these."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such directory")
    index = _sweep_index(root)  # read once: for the runs it lists and for the RunSet's grid order
    dirs, others, unstarted = _run_dirs(root, 2, index)
    expected = ("expected a run (with metrics.jsonl), a sweep (with sweep.json) or a folder of runs and sweeps "
                "(like runs/)")
    if others:
        more = f" (and {len(others) - 1} more)" if len(others) > 1 else ""
        raise FileNotFoundError(f"{root}: {others[0]}{more} is neither a run nor a sweep; {expected}")
    if not dirs and unstarted:  # a sweep whose runs all failed at start (or have not run yet)
        none = left_out(RunSet(root, [], index, unstarted))
        raise FileNotFoundError(f"{root}: no run has recorded a round yet; {none}")
    if not dirs:
        raise FileNotFoundError(f"{root}: no run directories found; {expected}")
    return RunSet(root, [load_run(d) for d in dirs], index, unstarted)


def left_out(rs: RunSet, limit: int = 5) -> str | None:
    """The runs of ``rs`` without a ``summary.json`` (that a table leaves out) in one line, the
    failed ones first: ``2 incomplete run(s) (no summary.json): NAME failed: RuntimeError: boom
    (DIR/error.txt); NAME not finished`` (or ``failed before its first round``, ``not run yet``),
    at most ``limit`` named, then ``... and K more``; None when every run is complete."""
    failed: list[str] = []
    other: list[str] = []
    for path, started in [(r.path, True) for r in rs.runs if not r.complete] + [(p, False) for p in rs.unstarted]:
        name = path.name if path != rs.root else str(path)
        err = run_error(path)
        if err is not None:
            when = "" if started else " before its first round"
            failed.append(f"{name} failed{when}: {err} ({path / RUN_ERROR_FILE})")
        else:
            other.append(f"{name} {'not finished' if started else 'not run yet'}")
    out = failed + other
    if not out:
        return None
    named = out[:limit] + ([f"... and {len(out) - limit} more"] if len(out) > limit else [])
    return f"{len(out)} incomplete run(s) (no summary.json): {'; '.join(named)}"


def group_runs(rs: RunSet, keys: list[str], runs: Iterable[RunData] | None = None) -> list[tuple[tuple, list[RunData]]]:
    """Runs grouped by their values of ``keys``, groups ordered by each key's value order."""
    runs = list(rs.runs if runs is None else runs)
    groups: dict[tuple, list[RunData]] = {}
    for r in runs:
        groups.setdefault(tuple(_hashable(r.get(k)) for k in keys), []).append(r)
    orders = [[_hashable(v) for v in rs.values(k, runs)] for k in keys]
    keyed = sorted(groups.items(), key=lambda kv: tuple(o.index(x) for o, x in zip(orders, kv[0], strict=True)))
    return [(tuple(g[0].get(k) for k in keys), g) for _, g in keyed]


def shared_settings(rs: RunSet, skip: Iterable[str] = (), rounds: bool = False) -> list[str]:
    """The settings all runs share, as short phrases: ``sklearn_digits``, ``identity backbone``,
    ``6 peers``, ``k_regular (degree 2)``, ``Dirichlet α=0.5``, ... (keys in ``skip`` left out)."""
    skip = set(skip)

    def one(key: str) -> str | None:
        vals = {fmt_value(r.get(key)) for r in rs.runs}
        return vals.pop() if len(vals) == 1 and key not in skip else None

    parts = []
    for key, fmt in [
        ("dataset.name", "{}"),
        ("backbone.name", "{} backbone"),
        ("mode", "{}"),
        ("peers.count", "{} peers"),
    ]:
        v = one(key)
        if v is not None:
            parts.append(fmt.format(v))
    topo = one("topology.kind")
    if topo is not None:
        deg = one("topology.degree") if topo in ("k_regular", "watts_strogatz") else None
        parts.append(f"{topo} (degree {deg})" if deg else topo)
    part = one("partition.kind")
    if part is not None:
        alpha = one("partition.alpha") if part == "dirichlet" else None
        parts.append(f"Dirichlet α={alpha}" if alpha else f"{part} partition")
    for key, fmt in [(STRATEGY, "{}"), (ATTACK, "attack {}")]:
        v = one(key)
        if v is not None and v != "none":
            parts.append(fmt.format(v))
    for key in FRACTIONS:
        v = one(key)
        if v not in (None, "0", "None"):
            parts.append(f"{label(key)} {v}")
    if rounds and (v := one("rounds")) is not None:
        parts.append(f"{v} rounds")
    return parts


def mean_std(xs: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n − 1; ``None`` for a single value)."""
    n = len(xs)
    m = sum(xs) / n
    if n < 2:
        return m, None
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
