"""Scenario files: YAML → a validated pydantic model.

Every field has a default, so ``{}`` is a valid scenario. Unknown keys and bad values raise
:class:`ScenarioError` whose message names the YAML path and what is allowed, e.g.
``strategy.params.f: must be ...``. Cross-field checks (a rule's n > 2f requirement against the
topology's degree, partition sizes, ...) run here too, at validation time, never mid-run.

This module is the facade: :func:`parse`, :func:`load` and :func:`load_plugins`, and every public
name of the modules it is made of, so ``from fedsim.scenario import ...`` keeps working:
:mod:`fedsim.schema` (the pydantic model; its sections :mod:`fedsim.schema_sections`, its probe
entries :mod:`fedsim.schema_probes`, its error lines :mod:`fedsim.schema_errors`),
:mod:`fedsim.yamlsafe` (bounded YAML reading),
:mod:`fedsim.runfacts` (the facts a run and its validation share), :mod:`fedsim.validation`
(:func:`check_semantics`, :func:`unknown_names`, :func:`grid_errors`) and :mod:`fedsim.overrides`
(``--set`` parsing).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from fedsim.errors import ScenarioError
from fedsim.overrides import parse_set, parse_sets, parse_value, set_dotted
from fedsim.runfacts import (
    build_topology,
    byzantine_exposure,
    byzantine_mask,
    clients_per_round,
    default_f,
    largest_shard,
    partition_for,
    received_per_aggregation,
    resolve_f,
    resource_warnings,
    sampled_clients,
    shard_pad,
    strategy_params,
)
from fedsim.runplan import RunPlan, plan_lines
from fedsim.schema import Scenario
from fedsim.schema_errors import _messages
from fedsim.schema_probes import ProbeConfig, probe_config, to_config
from fedsim.schema_sections import (
    MAX_WEIGHT_DECAY,
    AttackCfg,
    BackboneCfg,
    CheckpointCfg,
    DatasetCfg,
    EngineCfg,
    EvaluationCfg,
    ModelCfg,
    OutputCfg,
    PartitionCfg,
    PeersCfg,
    SamplingCfg,
    StrategyCfg,
    TopologyCfg,
    TrainingCfg,
)
from fedsim.validation import check_semantics, grid_errors, unknown_names
from fedsim.yamlsafe import MAX_YAML_BYTES, MAX_YAML_DEPTH, MAX_YAML_VALUES, plain_tree, read_yaml, safe_yaml

__all__ = [
    "MAX_ERRORS_IN_LINE",
    "MAX_WEIGHT_DECAY",
    "MAX_YAML_BYTES",
    "MAX_YAML_DEPTH",
    "MAX_YAML_VALUES",
    "AttackCfg",
    "BackboneCfg",
    "CheckpointCfg",
    "DatasetCfg",
    "EngineCfg",
    "EvaluationCfg",
    "ModelCfg",
    "OutputCfg",
    "PartitionCfg",
    "PeersCfg",
    "ProbeConfig",
    "RunPlan",
    "SamplingCfg",
    "Scenario",
    "ScenarioError",
    "StrategyCfg",
    "TopologyCfg",
    "TrainingCfg",
    "build_topology",
    "byzantine_exposure",
    "byzantine_mask",
    "check_plugins_granted",
    "check_semantics",
    "clients_per_round",
    "default_f",
    "grid_errors",
    "load",
    "load_plugins",
    "load_with_plan",
    "parse",
    "parse_set",
    "parse_sets",
    "parse_value",
    "parse_with_plan",
    "plan_lines",
    "largest_shard",
    "partition_for",
    "plain_tree",
    "probe_config",
    "read_yaml",
    "received_per_aggregation",
    "resolve_f",
    "resource_warnings",
    "safe_yaml",
    "sampled_clients",
    "set_dotted",
    "shard_pad",
    "strategy_params",
    "to_config",
    "top_mapping",
    "unknown_names",
    "with_plugins",
]

MAX_ERRORS_IN_LINE = 6  # schema errors joined into one ScenarioError line; the rest are counted


def parse(data: Any, source: str = "scenario", *, require_data: bool = False) -> Scenario:
    """Validate a mapping (already-loaded YAML) into a :class:`Scenario`: the schema, then
    :func:`check_semantics`. ``require_data``: a dataset whose files are missing is an error
    (``fedsim validate``) rather than left for the run to report (a Flower device may get its
    data directory later)."""
    return parse_with_plan(data, source, require_data=require_data)[0]


def parse_with_plan(data: Any, source: str = "scenario", *, require_data: bool = False) -> tuple[Scenario, RunPlan]:
    """:func:`parse`, and the :class:`fedsim.runplan.RunPlan` its :func:`check_semantics` built."""
    data = plain_tree(top_mapping(data, source), source)
    check_plugins_granted(data, source)
    try:
        sc = Scenario.model_validate(data)
    except ValidationError as e:
        msgs = _messages(e)
        shown = "; ".join(msgs[:MAX_ERRORS_IN_LINE])
        if len(msgs) > MAX_ERRORS_IN_LINE:  # the line stays readable; `fedsim validate` prints every one
            shown += f"; and {len(msgs) - MAX_ERRORS_IN_LINE} more (fedsim validate lists each)"
        raise ScenarioError(f"{source}: {shown}", [f"{source}: {m}" for m in msgs]) from None
    except (ValueError, TypeError, OverflowError) as e:
        raise ScenarioError(f"{source}: {e}") from None
    load_plugins(sc, source)
    return sc, check_semantics(sc, source, require_data=require_data)


def top_mapping(data: Any, source: str = "scenario") -> dict[str, Any]:
    """Loaded YAML as a scenario's top level: ``None`` (an empty document) is ``{}``; anything but a
    mapping is a one-line :class:`ScenarioError` naming ``source``."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def check_plugins_granted(data: dict[str, Any], source: str = "scenario") -> None:
    """A scenario mapping whose ``plugins:`` names one the user did not grant (``--plugin``,
    ``plugins=``: :func:`fedsim.plugins.grant`) is a :class:`ScenarioError`, before any import:
    no file fedsim reads runs code by itself."""
    from fedsim import plugins

    listed = data.get("plugins")
    if isinstance(listed, list):
        try:
            plugins.check_granted([e for e in listed if isinstance(e, str)])
        except plugins.PluginError as e:
            raise ScenarioError(f"{source}: {e}") from None


def with_plugins(data: dict[str, Any], granted: Sequence[str], source: str = "scenario") -> dict[str, Any]:
    """``data`` with the user's ``granted`` plugins (``--plugin``, ``plugins=``) granted in this
    process and added to its ``plugins:`` list (those it does not list yet), so the resolved
    scenario records them for the actors, the sweep tasks and a resume."""
    from fedsim import plugins

    if not granted:
        return data
    try:
        entries = plugins.grant(granted)
    except ValueError as e:
        raise ScenarioError(f"{source}: plugins: {e}") from None
    listed = data.get("plugins")
    return data | {"plugins": plugins.merge(listed if isinstance(listed, list) else [], entries)}


def load_plugins(sc: Scenario, source: str = "scenario") -> None:
    """Import the scenario's ``plugins:`` in this process (before its names are checked); a plugin
    that fails is a :class:`ScenarioError` naming the file and the plugin."""
    from fedsim import plugins

    try:
        plugins.load(sc.plugins)
    except plugins.PluginError as e:
        raise ScenarioError(f"{source}: {e}") from None


def load(
    path: str | Path,
    overrides: dict[str, Any] | None = None,
    *,
    require_data: bool = False,
    plugins: Sequence[str] = (),
) -> Scenario:
    """Read a YAML scenario file (:func:`read_yaml`), apply dotted ``overrides``
    (``{"strategy.name": "krum"}``), validate (:func:`parse`). ``plugins``: the ones the user
    named (``--plugin``): granted and added to the scenario's (:func:`with_plugins`)."""
    return load_with_plan(path, overrides, require_data=require_data, plugins=plugins)[0]


def load_with_plan(
    path: str | Path,
    overrides: dict[str, Any] | None = None,
    *,
    require_data: bool = False,
    plugins: Sequence[str] = (),
) -> tuple[Scenario, RunPlan]:
    """:func:`load`, and the :class:`fedsim.runplan.RunPlan` validation built (``fedsim validate``)."""
    path = Path(path)
    # plain_tree: an override must change one place, not every alias of it
    data = plain_tree(top_mapping(read_yaml(path), str(path)), str(path))
    data.pop("sweep", None)  # a grid for `fedsim sweep`; one run of a sweep file uses its base values
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    data = with_plugins(data, plugins, str(path))
    return parse_with_plan(data, str(path), require_data=require_data)
