"""Planning a sweep (``fedsim sweep``, :mod:`fedsim.sweep`): the grid from ``--grid KEY=V1,V2``
options (:func:`parse_grid`) and/or a scenario's ``sweep:`` section
(:func:`read_scenario_with_sweep`), its cartesian product (:func:`expand`), each run's folder name
from its overrides (:func:`run_name`), and the validated plan (:func:`plan_sweep`: the runs, which
are complete, which combinations are invalid; :func:`check_existing`: run folders that hold a
different scenario). Running a plan is :func:`fedsim.sweep_execute.execute_sweep`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

from fedsim._runs import SCENARIO_FILE, comparable, flatten, fmt_value, recorded_scenario
from fedsim.scenario import (
    ScenarioError,
    check_plugins_granted,
    grid_errors,
    parse,
    parse_value,
    plain_tree,
    read_yaml,
    set_dotted,
    with_plugins,
)

_UNSAFE = re.compile(r"[^A-Za-z0-9._,+\-]")
MAX_NAME = 200


def engine_errors(engine: Any, hint: str | None = None) -> list[str]:
    """The fields of an ``engine`` mapping that its backend does not read, by the check ``fedsim
    run`` makes (:func:`fedsim.validation.unread_kind_fields`, the one table
    :data:`~fedsim.schema_sections.KIND_FIELDS`), each message ending in ``hint`` (None: the
    table's); none for a mapping that is not a valid engine section (the run's validation names
    what is wrong)."""
    section = _engine_section(engine)
    if section is None:
        return []
    from fedsim.validation import unread_kind_fields

    return unread_kind_fields("engine", section, hint)


def named_cluster(engine: Any) -> str | None:
    """The Ray cluster an ``engine`` mapping names: its ``address`` where its backend is Ray (the
    default); None for none, or for a mapping that is not a valid engine section."""
    section = _engine_section(engine)
    return section.address if section is not None and section.backend == "ray" else None


def _engine_section(engine: Any) -> Any:
    from pydantic import ValidationError

    from fedsim.schema_sections import EngineCfg

    try:
        return EngineCfg.model_validate(engine if engine is not None else {})
    except ValidationError:
        return None


# --------------------------------------------------------------------------- grid parsing
def split_values(text: str) -> list[str]:
    """Split ``a,b,[1,2],{x: 1, y: 2}`` on the commas outside brackets and braces."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def parse_grid(items: tuple[str, ...] | list[str]) -> dict[str, list[Any]]:
    """``("strategy.name=fedavg,krum", "seed=0,1")`` → ``{"strategy.name": ["fedavg", "krum"], "seed": [0, 1]}``."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"{item!r}: expected KEY=V1,V2,..., e.g. strategy.name=fedavg,krum")
        key, vals = item.split("=", 1)
        values = [parse_value(v) for v in split_values(vals)]
        if not key.strip() or not values:
            raise ValueError(f"{item!r}: expected KEY=V1,V2,..., e.g. seed=0,1,2")
        grid[key.strip()] = values
    return grid


def grid_from_section(section: Any, prefix: str = "", source: str = "sweep") -> dict[str, list[Any]]:
    """A YAML ``sweep:`` mapping → grid; nested mappings become dotted keys, a scalar one value."""
    if not isinstance(section, dict):
        raise ValueError(f"{source}: must be a mapping of scenario keys to lists of values")
    grid: dict[str, list[Any]] = {}
    for k, v in section.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            grid.update(grid_from_section(v, key + ".", source))
        else:
            grid[key] = list(v) if isinstance(v, list) else [v]
            if not grid[key]:
                raise ValueError(f"{source}.{key}: empty list of values")
    return grid


def read_scenario_with_sweep(path: Path) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """Read a scenario YAML; return (scenario mapping without ``sweep:``, the grid it declared)."""
    data = read_yaml(path) or {}  # bounded, safe, one-line errors (as fedsim run reads it)
    if not isinstance(data, dict):
        raise ScenarioError(f"{path}: the top level must be a mapping of sections")
    data = plain_tree(data, str(path))
    section = data.pop("sweep", None)
    try:
        grid = grid_from_section(section, source=f"{path}: sweep") if section is not None else {}
    except ValueError as e:
        raise ScenarioError(str(e)) from None
    return data, grid


def expand(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Cartesian product of the grid, the first key varying slowest."""
    keys = list(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in product(*(grid[k] for k in keys))]


EMPTY_NAMES = {dict: "empty", list: "empty-list", tuple: "empty-list", str: "empty-string"}  # {} [] ""


def _name_part(v: Any) -> str:
    """A value as a readable, file-safe part of a folder name; an empty mapping, list or string is
    named (:data:`EMPTY_NAMES`: ``params={}`` → ``params=empty``) rather than left blank."""
    if type(v) in EMPTY_NAMES and not v:
        return EMPTY_NAMES[type(v)]
    if isinstance(v, dict):  # its keys made file-safe too: a key "../x" must not become a path
        return ",".join(f"{_UNSAFE.sub('-', str(k))}-{_name_part(x)}" for k, x in sorted(v.items()))
    if isinstance(v, (list, tuple)):
        return ",".join(_name_part(x) for x in v)
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    return _UNSAFE.sub("-", fmt_value(v))


def unsortable_keys(v: Any) -> tuple[Any, Any] | None:
    """Two keys of a mapping in ``v`` (at any depth) that cannot be sorted against each other (``{1:
    a, x: b}``: an int and a str), else None. :func:`_name_part` and :func:`_digest` sort a mapping's
    keys to name its run folder, so :func:`plan_sweep` refuses such a value first, naming its grid key."""
    if isinstance(v, dict):
        keys = list(v)
        try:
            sorted(keys)
        except TypeError:
            pairs = ((a, b) for i, a in enumerate(keys) for b in keys[i + 1:] if _unordered(a, b))
            return next(pairs, (keys[0], keys[-1]))
        values = v.values()
    elif isinstance(v, (list, tuple)):
        values = v
    else:
        return None
    return next((bad for x in values if (bad := unsortable_keys(x)) is not None), None)


def _unordered(a: Any, b: Any) -> bool:
    """Whether ``a < b`` or ``b < a`` (the comparisons sorted() makes) raises TypeError."""
    try:
        a < b, b < a  # noqa: B018
    except TypeError:
        return True
    return False


def _digest(overrides: dict[str, Any]) -> str:
    try:
        text = json.dumps(overrides, sort_keys=True, default=str)
    except TypeError:  # a key JSON cannot hold (YAML reads 2001-01-01 as a date): named by its text
        text = json.dumps(_text_keys(overrides), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _text_keys(v: Any) -> Any:
    """``v`` with every mapping key JSON cannot hold (a date, a tuple) given as its ``str`` (the
    names :func:`_digest` gave before are unchanged: it is asked only where ``json.dumps`` refused)."""
    if isinstance(v, dict):
        return {(k if k is None or isinstance(k, (str, int, float, bool)) else str(k)): _text_keys(x)
                for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_text_keys(x) for x in v]
    return v


def run_name(overrides: dict[str, Any]) -> str:
    """Folder name of a run: ``strategy.name=krum__peers.byzantine_fraction=0.3__seed=1``."""
    if not overrides:
        return "base"
    name = "__".join(f"{_UNSAFE.sub('-', k)}={_name_part(v)}" for k, v in overrides.items())
    if len(name) > MAX_NAME:
        name = name[: MAX_NAME - 9] + "~" + _digest(overrides)
    return name


# --------------------------------------------------------------------------- planning
@dataclass
class PlannedRun:
    name: str
    overrides: dict[str, Any]
    data: dict[str, Any]  # the full scenario mapping this run validates and executes
    dir: Path
    rounds: int = 0

    @property
    def complete(self) -> bool:
        return (self.dir / "summary.json").exists()


@dataclass
class SweepPlan:
    name: str
    out: Path
    grid: dict[str, list[Any]]
    base: dict[str, Any]
    runs: list[PlannedRun]
    invalid: list[tuple[str, dict[str, Any], str]] = field(default_factory=list)
    source: str = ""
    address: str | None = None  # the Ray cluster the scenario's engine.address names (the sweep's, unless --address)

    def index(self) -> dict[str, Any]:
        from fedsim.version import __version__

        return {
            "name": self.name,
            "scenario": self.source,
            "fedsim": __version__,
            "grid": self.grid,
            "base": self.base,
            "runs": [{"dir": r.name, "overrides": r.overrides} for r in self.runs],
            "invalid": [{"dir": n, "overrides": o, "error": e} for n, o, e in self.invalid],
        }


def _comparable(data: dict[str, Any]) -> dict[str, Any]:
    return comparable(flatten(data))


def plan_sweep(
    scenario: Path,
    grid: dict[str, list[Any]] | None = None,
    sets: dict[str, Any] | None = None,
    out: Path | None = None,
    skip_invalid: bool = False,
    require_data: bool = False,
    plugins: Sequence[str] = (),
) -> SweepPlan:
    """Expand ``scenario`` (its ``sweep:`` section, then ``grid`` on top) into validated runs.

    ``sets`` are fixed overrides for every run (not part of folder names). Raises
    :class:`ScenarioError` for an invalid combination unless ``skip_invalid`` (then it is listed
    in ``plan.invalid`` and not run). Unknown names and keys anywhere in the grid
    (:func:`fedsim.scenario.grid_errors`: ``strategy.name=bulyn``) raise whatever ``skip_invalid``
    says, before any combination is validated: ``skip_invalid`` leaves out only combinations of
    valid names that fail a constraint (Krum's n > 2f + 2, an attack with 0 Byzantine peers).
    ``require_data``: a dataset whose files are missing is an error, as for ``fedsim run`` (a
    local sweep; on a cluster the data may be only there). ``plugins``: the user's ``--plugin``
    entries, granted and added to every run's ``plugins:`` (:func:`fedsim.scenario.with_plugins`).
    A Ray cluster the runs name (``engine: {backend: ray, address: X}``) is the sweep's
    (``plan.address``: its tasks run there, each run in-process; its data is then not required
    here); runs naming different ones are refused (:func:`_one_cluster`)."""
    base, file_grid = read_scenario_with_sweep(scenario)
    for k, v in (sets or {}).items():
        set_dotted(base, k, v)
    base = with_plugins(base, plugins, str(scenario))
    check_plugins_granted(base, str(scenario))  # before grid_errors, which would import them
    full_grid = dict(file_grid)
    full_grid.update(grid or {})
    typos = grid_errors(base, full_grid, str(scenario))
    if typos:  # a misspelt name or key is never a combination to skip
        raise ScenarioError("; ".join(typos), typos)
    for key, values in full_grid.items():  # a folder name sorts a mapping's keys (_name_part)
        for v in values:
            if (bad := unsortable_keys(v)) is not None:
                raise ScenarioError(
                    f"{scenario}: sweep {key}={v!r}: a mapping's keys must be all text or all numbers to name "
                    f"the run's folder, not {bad[0]!r} beside {bad[1]!r}; quote them all as text ('1': ...)"
                )
    name = str(base.get("name") or "run")
    out_dir = Path(out) if out else Path((base.get("output") or {}).get("dir", "runs")) / f"{name}-sweep"
    combos = [(run_name(ov), ov, _with_overrides(base, ov)) for ov in expand(full_grid)]
    cluster = _one_cluster(str(scenario), combos)
    runs, invalid, seen = [], [], {}
    for rn, ov, data in combos:
        # each run in-process (engine.backend: local) inside a Ray task, on the sweep's cluster
        set_dotted(data, "engine.backend", "local")
        data["engine"].pop("address", None)  # the sweep's cluster (SweepPlan.address), or null, or absent
        try:
            sc = parse(copy.deepcopy(data), f"{scenario} [{rn}]", require_data=require_data and cluster is None)
        except ScenarioError as e:
            if not skip_invalid:
                hint = " (--skip-invalid leaves out combinations that cannot run)"
                raise ScenarioError(f"{e}{hint}", [*e.errors[:-1], e.errors[-1] + hint]) from None
            invalid.append((rn, ov, str(e)))
            continue
        if rn in seen:  # two overrides that read alike once made file-safe
            raise ScenarioError(f"runs {seen[rn]} and {ov} would share the folder {rn}; spell the values apart")
        seen[rn] = ov
        runs.append(PlannedRun(rn, ov, data, out_dir / rn, sc.rounds))
    return SweepPlan(name, out_dir, full_grid, base, runs, invalid, str(scenario), cluster)


def _with_overrides(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    data = copy.deepcopy(base)
    for k, v in overrides.items():
        set_dotted(data, k, v)
    return data


def _one_cluster(source: str, combos: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> str | None:
    """The Ray cluster the sweep's runs name (``engine.address`` with the Ray backend,
    :func:`named_cluster`), which the sweep runs its tasks on; None where none does.
    :class:`ScenarioError` for an address a run's backend would not read (as ``fedsim run``
    refuses it: :func:`engine_errors`) and for runs that name different clusters (a sweep runs on
    one)."""
    named: dict[str | None, str] = {}  # cluster (None: none) → the first run naming it
    for rn, _, data in combos:
        unread = engine_errors(data.get("engine"))
        if unread:
            raise ScenarioError(f"{source} [{rn}]: {unread[0]}")
        engine = data.get("engine")
        if isinstance(engine, dict) and engine.get("address") is not None and _engine_section(engine) is None:
            # an engine section naming a cluster that does not validate: its own error, as `fedsim run`
            # gives it (not "no cluster": the runs would go to a Ray of the sweep's own)
            parse(copy.deepcopy(data), f"{source} [{rn}]", require_data=False)
        named.setdefault(named_cluster(data.get("engine")), rn)
    if len(named) > 1:
        which = ", ".join(f"{a or 'none'} ({rn})" for a, rn in named.items())
        raise ScenarioError(f"{source}: the sweep's runs name different Ray clusters in engine.address: {which}; "
                            "a sweep runs on one: give engine.address one value, or none and --address ADDR")
    return next(iter(named), None)


def check_existing(plan: SweepPlan) -> list[str]:
    """Run folders whose recorded scenario differs from the planned one (would be reused wrongly)."""
    bad = []
    for r in plan.runs:
        if not (r.dir / SCENARIO_FILE).exists():
            continue
        old = _comparable(recorded_scenario(r.dir))  # the bounded reader, as for every scenario file
        new = _comparable(parse(copy.deepcopy(r.data)).model_dump(mode="json"))
        diff = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        if diff:
            k = diff[0]
            bad.append(f"{r.dir}: {k} was {old.get(k)!r}, now {new.get(k)!r}")
    return bad
