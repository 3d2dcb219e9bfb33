"""Validation beyond the schema: each check by the code the run uses (docs/architecture.md,
"Who owns which fact"), and the typo check of a sweep's grid (:func:`unknown_names`,
:func:`grid_errors`)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np
from pydantic import BaseModel, ValidationError

from fedlib.heads import num_params as head_params
from fedlib.registry import did_you_mean as _did_you_mean
from fedlib.registry import param_names
from fedsim import limits
from fedsim.device import device_error
from fedsim.errors import FedsimError, ScenarioError
from fedsim.overrides import set_dotted
from fedsim.plugins import hint as plugin_hint
from fedsim.probe_registry import get_probe
from fedsim.runfacts import (
    build_rule,
    build_topology,
    bytes_per_message,
    byzantine_mask,
    forges,
    largest_shard,
    message_values,
    partition_for,
    received_per_aggregation,
    resolve_f,
    sampled_clients,
    sends_per_round,
    sent_messages,
    shard_pad,
    silent_of,
    training_work,
)
from fedsim.runplan import RunPlan
from fedsim.schema import Scenario
from fedsim.schema_errors import _messages, _show
from fedsim.schema_sections import KIND_FIELDS, StrategyCfg
from fedsim.threads import group_count, groups_at_once
from fedsim.yamlsafe import plain_tree

if TYPE_CHECKING:
    from fedsim.data.arrays import DatasetInfo
    from fedsim.partition import Partition


def check_semantics(sc: Scenario, source: str = "scenario", *, require_data: bool = False) -> RunPlan:
    """The checks beyond the schema, each by the code the run uses, cheapest first: names exist
    and parameters build; the dataset's size and classes bound the partition; the memory the
    run needs fits the machine; the topology builds and the rule's n/f limits hold for its real
    in-degree; the partition itself gives every peer data; probes are well-formed. Returns what
    it built (:class:`fedsim.runplan.RunPlan`: the partition's largest shard, the topology's
    in-degrees, ``f``, the memory estimate, ...), each computed once."""
    errors, (rule, attack) = _name_errors(sc)
    errors += [] if errors else ignored_fields(sc, (rule, attack))  # (an attack's kind needs its name known)
    if errors:
        raise ScenarioError(f"{source}: " + "; ".join(errors), [f"{source}: {e}" for e in errors])

    def fail(msg: str) -> NoReturn:
        raise ScenarioError(f"{source}: {msg}")

    facts: dict[str, Any] = {}
    info = _dataset_info(sc, require_data, fail)
    if sc.dataset.domains:  # feature shift: where it cannot apply (fedsim.data.domains)
        from fedsim.data.domains import domain_error

        msg = domain_error(sc.dataset.domains, whole=sc.model.whole, mode=sc.mode, peers=sc.peers.count,
                           sample_shape=None if info is None else info.sample_shape,
                           dtype=None if info is None else info.dtype)
        if msg:
            fail(msg)
    if info is not None:
        from fedsim.partition import check_bounds

        try:
            check_bounds(sc.partition.kind, sc.peers.count, info.n_train, info.num_classes,
                         k=sc.partition.k, window=sc.partition.window, min_size=sc.partition.min_size)
        except ValueError as e:
            fail(str(e))
        part = _partition(sc, info)  # (its errors reported in their turn, below)
        facts |= _check_memory(sc, info, fail, None if isinstance(part, ValueError) else part, rule, attack)
    try:
        topo = build_topology(sc)
    except ValueError as e:
        fail(str(e))
    f, in_degree = resolve_f(sc, topo)
    _check_rule(sc, f, in_degree, rule, attack, fail)
    if info is not None:
        _check_partition(sc, part, fail)
    _check_probes(sc, fail)
    device = device_error(sc.engine.device, backend=sc.engine.backend)
    if device:
        fail(device)
    if sc.model.whole:
        from fedsim.whole_plan import check_model

        try:
            facts |= check_model(sc, rule, attack, info)  # a whole model's memory and message size
        except ValueError as e:
            fail(str(e))
    num_params = facts.pop("num_params", None)  # (a linear head's, from the memory check)
    if sc.mode == "decentralized":
        degrees = topo.degrees(0)
        facts["in_degree_range"] = (int(degrees.min()), int(degrees.max())) if len(degrees) else (0, 0)
        if num_params is not None:
            facts["memory"] = _with_device_aggregation(sc, facts["memory"], rule, facts["in_degree_range"][1],
                                                       num_params)
    return RunPlan(
        f=f,
        in_degree=in_degree,
        in_degree_range=facts.pop("in_degree_range", None),
        rule_params={k: getattr(rule, k) for k in param_names(type(rule))},
        sends_per_round=sends_per_round(sc, in_degree),
        # round 0's messages as the engine counts its bytes (fedsim.simulation.round_record)
        messages_round0=sent_messages(sc, topo, silent_of(attack, byzantine_mask(sc)), sampled_clients(sc, 0)),
        **facts,
    )


def _name_errors(sc: Scenario) -> tuple[list[str], tuple[Any, Any]]:
    """Every unknown name and unbuildable rule or attack, each as ``field: message``, and the
    ``(rule, attack)`` built on the way (None where it did not build; the attack None for none):
    the rest of the checks use these, nothing builds them again."""
    import attacks
    import strategies
    from fedsim.data.datasets import DATASETS
    from fedsim.models.backbones import BACKBONES, unknown_backbone

    errors = []
    if sc.dataset.name not in DATASETS:
        hint = _did_you_mean(sc.dataset.name, DATASETS)
        errors.append(f"dataset.name: unknown dataset {sc.dataset.name!r}{hint}; available: {', '.join(DATASETS)}")
    elif not DATASETS[sc.dataset.name][1] and not sc.dataset.data_dir:
        errors.append(f"dataset.data_dir: dataset {sc.dataset.name!r} is read from local files; set the directory")
    if sc.backbone.name not in BACKBONES:
        errors.append(f"backbone.name: {unknown_backbone(sc.backbone.name)}{plugin_hint(sc.plugins)}")
    rule = attack = None
    try:
        rule = build_rule(sc)
    except ValueError as e:
        known = sc.strategy.name in strategies.REGISTRY
        errors.append(f"strategy.params: {e}" if known else f"strategy.name: {e}{plugin_hint(sc.plugins)}")
    if sc.peers.attack.name != "none":
        try:
            attack = attacks.build(sc.peers.attack.name, sc.peers.attack.params)
        except ValueError as e:
            known = sc.peers.attack.name in attacks.REGISTRY
            errors.append(f"peers.attack.params: {e}" if known else f"peers.attack.name: {e}{plugin_hint(sc.plugins)}")
    if sc.peers.attack.name != "none" and not sc.peers.num_byzantine and not sc.peers.allow_idle_attack:
        errors.append(
            f"peers.attack.name: attack {sc.peers.attack.name!r} named but 0 Byzantine peers (nobody would attack); "
            "set peers.byzantine or peers.byzantine_fraction, or attack name: none "
            "(or peers.allow_idle_attack: true if intended)"
        )
    if sc.peers.num_byzantine and sc.peers.attack.name == "none" and not sc.peers.allow_idle_attack:
        errors.append(
            f"peers.attack.name: {sc.peers.num_byzantine} Byzantine peers but no attack; name one or set byzantine: 0 "
            "(or peers.allow_idle_attack: true if intended)"
        )
    return errors, (rule, attack)


def ignored_fields(sc: Scenario, built: tuple[Any, Any] | None = None) -> list[str]:
    """The fields the scenario set that nothing in its run reads, one ``field: message`` each: a
    field its section's kind does not read, from the one table
    :data:`fedsim.schema_sections.KIND_FIELDS`, and ``strategy.f`` where neither the rule nor the
    attack reads ``f`` (:func:`_unread_f`), and ``peers.attack.omniscient`` where the forger never
    reads the honest vectors (:func:`_unread_omniscient`). A field counts when its key is given (:func:`given`):
    at any value in a section written by hand, at other than its default in a section given
    complete (a recorded ``scenario.yaml``); given as null, not at all where the table says a null
    means none (``engine.address``). The attack's name must be known. ``built``: the
    scenario's ``(rule, attack)`` if already built (:func:`check_semantics`; default: built here)."""
    rule, attack = _built(sc) if built is None else built
    errors = []
    for path in KIND_FIELDS:
        section: Any = sc
        for part in path.split("."):
            section = getattr(section, part)
        errors += unread_kind_fields(path, section)
    return errors + _unread_f(sc, rule, attack) + _unread_omniscient(sc, attack)


def unread_kind_fields(path: str, section: BaseModel, hint: str | None = None) -> list[str]:
    """The fields ``section`` (the scenario's section at ``path``, a key of
    :data:`~fedsim.schema_sections.KIND_FIELDS`) sets that its kind does not read, one
    ``field: message`` each (:func:`ignored_fields`' check of one section; a sweep checks its
    ``engine`` section with it before it drops ``engine.address``). ``hint``: the advice ending each
    message, for a caller whose way out differs from the table's."""
    spec = KIND_FIELDS[path]
    kind = getattr(section, spec.kind)
    fields = type(section).model_fields
    errors = []
    for field in (f for f in fields if given(section, f)):
        if spec.null_is_unset and getattr(section, field) is None:
            continue
        kinds = spec.reads.get(field)
        if kinds is not None and kind not in kinds:
            noun = spec.noun or spec.kind + ("s" if len(kinds) > 1 and spec.kind == "kind" else "")
            advice = (": remove it, or with --set give the whole section, e.g. "
                      f"--set '{path}={{{spec.kind}: {kind}}}'"
                      if spec.kind in fields else "")  # (a derived kind, e.g. the attack's, is not set)
            advice = f": {hint or spec.hint}" if hint or spec.hint else advice
            errors.append(f"{path}.{field}: used only by {noun} {', '.join(kinds)} "
                          f"(this {path.rsplit('.', 1)[-1]} is {kind}){advice}")
    return errors


def _built(sc: Scenario) -> tuple[Any, Any]:
    """The scenario's rule and attack (None: no attack), built as the run builds them."""
    import attacks

    attack = attacks.build(sc.peers.attack.name, sc.peers.attack.params) if sc.peers.attack.name != "none" else None
    return build_rule(sc), attack


def given(section: BaseModel, field: str) -> bool:
    """Whether the scenario set ``field`` of ``section`` (a pydantic section of the parsed
    scenario): its key was given (pydantic's ``model_fields_set``) — at any value, or, in a section
    given complete (every one of its fields: what fedsim records, a run's ``scenario.yaml``, the
    Flower run config, a sweep's run folders, old runs' too), at a value other than the default.
    That exception is a departure from "every key given counts", named here: a recorded scenario
    (the fields its kind ignores at their defaults) reads back, is resumed and re-run as it is,
    while a field written by hand counts even at its default (``topology.degree: 6`` with
    ``--set topology.kind=ring``)."""
    if field not in section.model_fields_set:
        return False
    fields = type(section).model_fields
    if not section.model_fields_set >= set(fields):  # written by hand: the key is enough
        return True
    return getattr(section, field) != fields[field].get_default(call_default_factory=True)


def _unread_f(sc: Scenario, rule: Any, attack: Any) -> list[str]:
    """``strategy.f`` given (:func:`given`) where nothing reads it: neither the rule
    (:attr:`strategies.base.Strategy.reads_f`: ``ctx.f`` or its ``check(n, f)`` limit) nor the
    forger (:attr:`attacks.base.UpdateForger.reads_f`: ALIE's ``ctx.f_received``). The readers
    the message names are the registered classes' own declarations."""
    import attacks
    import strategies

    if not given(sc.strategy, "f"):
        return []
    if rule.reads_f or getattr(attack, "reads_f", False):
        return []
    rules = sorted(n for n, cls in strategies.REGISTRY.items() if cls.reads_f)
    forgers = sorted(n for n, cls in attacks.REGISTRY.items() if getattr(cls, "reads_f", False))
    these = " with these params" if type(rule).reads_f else ""
    return [f"strategy.f: used only by rules {', '.join(rules)} and attacks {', '.join(forgers)} "
            f"(this rule is {sc.strategy.name}{these}, which does not read f): remove it"]


def _unread_omniscient(sc: Scenario, attack: Any) -> list[str]:
    """``peers.attack.omniscient`` given (:func:`given`) for a forger that never reads the honest
    vectors it is handed (:attr:`attacks.base.UpdateForger.reads_honest` False: sign_flip sends
    ``−own`` whatever the others sent). The readers the message names are the registered classes'
    own declarations. (A data poisoner or no attack: :data:`KIND_FIELDS` refuses it already.)"""
    import attacks

    if attack is None or not given(sc.peers.attack, "omniscient"):
        return []
    if not isinstance(attack, attacks.UpdateForger) or attack.reads_honest:
        return []
    readers = sorted(n for n, cls in attacks.REGISTRY.items()
                     if issubclass(cls, attacks.UpdateForger) and cls.reads_honest)
    return [f"peers.attack.omniscient: used only by attacks {', '.join(readers)} (this attack is "
            f"{sc.peers.attack.name}, which never reads the honest vectors): remove it"]


_TYPO_TYPES = ("extra_forbidden", "literal_error")  # pydantic errors that are a misspelt key or kind


def _get(data: Any, path: str) -> Any:
    """``data["a"]["b"]`` for ``"a.b"``, or None where a part is missing or not a mapping."""
    for part in path.split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(part)
    return data


def unknown_names(data: Any) -> list[str]:
    """The typos in a scenario mapping, each as ``field: message`` with the closest allowed name:
    unknown keys, a kind outside its fixed set (``topology.kind``), unknown dataset, backbone,
    strategy and attack names, and parameter keys that *no* registered rule (attack) has. These are
    mistakes in any combination of a sweep, so ``fedsim sweep --skip-invalid`` never skips them
    (a parameter another rule has, or a limit like Krum's n > 2f + 2, is a constraint failure).
    Load the scenario's plugins first (their names count)."""
    import attacks
    import strategies
    from fedsim.data.datasets import DATASETS
    from fedsim.models.backbones import BACKBONES, unknown_backbone

    if not isinstance(data, dict):
        return []
    errors = []
    try:
        Scenario.model_validate(plain_tree(data))
    except ValidationError as e:
        errors += [m for err, m in zip(e.errors(), _messages(e), strict=True) if err["type"] in _TYPO_TYPES]
    except (ValueError, TypeError, OverflowError):
        pass
    name = _get(data, "dataset.name")
    if isinstance(name, str) and name not in DATASETS:
        errors.append(f"dataset.name: unknown dataset {name!r}{_did_you_mean(name, DATASETS)}; "
                      f"available: {', '.join(DATASETS)}")
    name = _get(data, "backbone.name")
    if isinstance(name, str) and name not in BACKBONES:
        errors.append(f"backbone.name: {unknown_backbone(name)}{plugin_hint(_get(data, 'plugins'))}")
    for field, registry, module in (("strategy", strategies.REGISTRY, strategies), ("peers.attack", attacks.REGISTRY,
                                                                                   attacks)):
        name, params = _get(data, f"{field}.name"), _get(data, f"{field}.params")
        if name is None:
            name = StrategyCfg.model_fields["name"].default if field == "strategy" else "none"
        if not isinstance(name, str) or (field == "peers.attack" and name == "none"):
            continue
        if name not in registry:
            try:
                module.build(name)
            except ValueError as e:
                errors.append(f"{field}.name: {e}{plugin_hint(_get(data, 'plugins'))}")
            continue
        everyone = {p for n in registry for p in param_names(registry[n])}
        if isinstance(params, dict) and dataclasses.is_dataclass(registry[name]):
            typos = {k: v for k, v in params.items() if k not in everyone}
            msg = module.registry.unknown_params(name, typos)
            if msg:
                errors.append(f"{field}.params: {msg}")
    return errors


def grid_errors(base: dict[str, Any], grid: dict[str, list[Any]], source: str = "scenario") -> list[str]:
    """The typos (:func:`unknown_names`) of a sweep: the base scenario's, then each value of each
    grid axis applied alone to the base, as ``source: sweep KEY=VALUE: field: message`` (the field
    left out when it is the axis itself). Empty when every name and key exists."""
    import copy

    from fedsim import plugins

    try:
        plugins.load([plugins.normalize(e) for e in base.get("plugins") or [] if isinstance(e, str)])
    except (plugins.PluginError, ValueError):
        pass  # validation names the plugin that fails
    known = unknown_names(base)
    out = [f"{source}: {e}" for e in known]
    for key, values in grid.items():
        seen = set(known)  # an axis whose key is misspelt says so once, not once per value
        for v in values:
            data = copy.deepcopy(base)
            set_dotted(data, key, v)
            for e in unknown_names(data):
                if e not in seen:
                    seen.add(e)
                    shown = v if isinstance(v, str) else _show(v)
                    out.append(f"{source}: sweep {key}={shown}: {e.removeprefix(key + ': ')}")
    return out


def _dataset_info(sc: Scenario, require_data: bool, fail: Callable[[str], NoReturn]) -> DatasetInfo | None:
    """The dataset's sizes and labels from its loader (cached), or None when its files are missing
    and ``require_data`` is off (the run then names the missing file)."""
    from fedsim.data.datasets import dataset_info

    try:
        return dataset_info(sc.dataset.name, sc.dataset.data_dir)
    except FileNotFoundError as e:
        if require_data:
            fail(f"dataset.data_dir: {e}")
        return None
    except ImportError as e:
        fail(f"dataset.name: {sc.dataset.name!r} needs a package that is not installed ({e})")
    except (FedsimError, ValueError, OSError) as e:
        fail(f"dataset.data_dir: {e}")
    return None


@functools.lru_cache(maxsize=32)
def _feature_dim(backbone: str, sample_shape: tuple[int, ...], dtype: str) -> int:
    from fedsim.models.backbones import extract_features, get_spec

    spec = get_spec(backbone)
    net = spec.build() if spec.build else None  # untrained weights: only the output size is read
    return int(extract_features(net, np.zeros((1, *sample_shape), dtype=np.dtype(dtype)), spec).shape[1])


def _check_memory(sc: Scenario, info: DatasetInfo, fail: Callable[[str], NoReturn], part: Partition | None,
                  rule: Any, attack: Any) -> dict[str, Any]:
    """The backbone accepts the dataset's inputs, its weights exist, and the run's memory
    estimate (:mod:`fedsim.limits`) fits the machine; ``part``: the partition (None when it cannot
    be made: then the minibatch is counted as gathered, nothing padded); ``rule``, ``attack``: the built ones.
    Returns the :class:`fedsim.runplan.RunPlan` facts it computed on the way (the largest shard,
    the padding, the message size, the estimate, the local steps' work; those of a linear head only)."""
    from fedsim.heads import chunk_peers, step_peers
    from fedsim.models.backbones import get_spec
    from fedsim.routing import MESSAGE_DTYPES

    spec = get_spec(sc.backbone.name)
    scratch = sc.model.init == "scratch"  # a seeded random network (fedsim.models.trainable): no weights read
    if spec.build is not None and spec.weights_file and not scratch and not spec.weights_path().exists():
        fail(f"backbone.name: no weights for {sc.backbone.name!r} at {spec.weights_path()}; "
             f"create them with `fedsim pretrain --backbone {sc.backbone.name}`")
    try:
        dim = _feature_dim(sc.backbone.name, info.sample_shape, info.dtype)
    except (ValueError, RuntimeError) as e:
        fail(f"backbone.name: {' '.join(str(e).split())[:200]} (dataset {sc.dataset.name!r})")
    t, n, c = sc.topology, sc.peers.count, info.num_classes
    groups = group_count(sc)
    per_group = -(-n // groups)
    forged = forges(sc, attack)
    concurrent, training = groups_at_once(sc, "aggregate"), groups_at_once(sc, "train")
    try:  # the run's figure (the canaries included: fedsim.runfacts.largest_shard)
        largest = None if part is None or sc.model.whole else largest_shard(sc, part)
    except ValueError:  # a probe's malformed canaries or leaver: _check_probes names the key
        largest = None
    pad = 0 if largest is None else shard_pad(largest, sc.training.batch_size)
    num_params = head_params((c, dim), sc.training.bias)
    # chunked local steps (fedsim.heads.local_steps): temporaries and gradient of a chunk of peers at once
    chunk = step_peers(sc.training, per_group, c * dim, limits.FLOAT)
    # half-precision heads (engine.head_dtype): trained in float32 a chunk of peers at a time
    # (fedsim.heads.upcast_steps), any optimizer
    head_bytes = MESSAGE_DTYPES[sc.engine.head_dtype].itemsize
    working = 0 if head_bytes == limits.FLOAT or sc.model.whole else min(per_group, chunk_peers(c * dim))
    chunk = min(chunk, working) if working else chunk
    est = limits.estimate_memory(
        peers=n,
        num_params=num_params,
        dim=dim,
        n_train=info.n_train,
        n_test=info.n_test,
        groups=groups,
        concurrent=concurrent,
        training_concurrent=training,
        adam=sc.training.optimizer == "adam",
        consolidated=bool(rule.consolidated),
        forged=forged,
        edges=0 if sc.mode == "federated" else limits.directed_edges(t.kind, n, t.degree, t.p, t.fanout),
        ray_actors=limits.ray_actor_processes(sc, groups),
        message_bytes=MESSAGE_DTYPES[sc.engine.message_dtype].itemsize,
        concatenated=sc.mode == "federated" or forged,
        server_float64=sc.mode == "federated" and rule.float64_input,
        # (a whole model's minibatch, its gathered inputs, is fedsim.whole_plan.memory_estimate's to count)
        batches=0 if sc.model.whole else limits.minibatch_bytes(
            per_group=per_group, batch=sc.training.batch_size, dim=dim, num_classes=c, concurrent=training,
            padded_to=pad, step_peers=chunk),
        padded=limits.padded_bytes(peers=n, pad=pad, dim=dim, train_rows=sum(len(t) for t in part.train))
        if pad else 0,
        gradient_peers=None if sc.model.whole else chunk,
        head_bytes=head_bytes,
        working_peers=working,
        checkpoints=sc.checkpoint.every > 0,
    )
    available = limits.machine_memory()
    msg = limits.memory_error(est, available)
    if msg:
        fail(f"{est.biggest()[0]}: the run {msg}")
    if sc.model.whole:  # (its sizes, memory and messages are fedsim.whole_plan's)
        return {}
    return {"largest_shard": largest, "shard_pad": None if largest is None else pad, "memory": est,
            "available": available, "num_params": num_params,
            "bytes_per_message": bytes_per_message(sc, message_values(sc, rule, num_params)),
            "work": None if largest is None else training_work(sc, limits.head_flop(c, dim), largest)}


def _with_device_aggregation(sc: Scenario, est: limits.MemoryEstimate, rule: Any, heard: int,
                             num_params: int) -> limits.MemoryEstimate:
    """``est`` with :attr:`fedsim.limits.MemoryEstimate.device_aggregation` where a decentralized
    linear-head run aggregates on a non-CPU ``engine.device`` (the rule has a batched form there,
    :func:`fedsim.gossip.has_batched_form`): one chunk of ``engine.aggregate_chunk`` receivers (at
    most a group's peers) that heard ``heard`` rows, round 0's largest in-degree (a dynamic graph may
    exceed it later; a per-receiver attack or FLTrust's root updates send every peer through the CPU
    path instead: then an upper bound)."""
    import dataclasses

    import torch

    from fedsim.gossip import has_batched_form
    from fedsim.routing import MESSAGE_DTYPES

    device = torch.device(sc.engine.device)
    if device.type == "cpu" or not has_batched_form(rule, device):
        return est
    per_group = -(-sc.peers.count // min(sc.engine.num_actors, sc.peers.count))
    term = limits.device_aggregation_bytes(chunk=min(sc.engine.aggregate_chunk, per_group), heard=heard,
                                           num_params=num_params,
                                           message_bytes=MESSAGE_DTYPES[sc.engine.message_dtype].itemsize)
    return dataclasses.replace(est, device_aggregation=term)


def _check_rule(sc: Scenario, f: int, in_degree: float, rule: Any, attack: Any,
                fail: Callable[[str], NoReturn]) -> None:
    """The rule's n/f limits for the f and in-degree the run will use (:func:`resolve_f`), and the
    forger's: it is told the same ``n`` and ``f`` (``AttackContext``)."""
    import attacks

    n = received_per_aggregation(in_degree)
    try:
        rule.check(n, f)
    except ValueError as e:
        where = "strategy.f" if sc.strategy.f is not None else "strategy.name"
        fail(
            f"{where}: {e} (with {n} received vectors per aggregation and f={f}; set strategy.f, "
            "raise the topology degree, or lower the Byzantine count)"
        )
    if attack is not None and sc.peers.num_byzantine:
        try:
            if isinstance(attack, attacks.UpdateForger):
                attack.check(n, f)
        except ValueError as e:
            fail(f"peers.attack.params: {e} (with {n} received vectors per aggregation and f={f})")


def _partition(sc: Scenario, info: DatasetInfo) -> Partition | ValueError:
    """The partition the run will make (:func:`partition_for`), or why it cannot be made."""
    try:
        return partition_for(sc, info.y_train, byzantine_mask(sc))
    except ValueError as e:
        return e


def _check_partition(sc: Scenario, part: Partition | ValueError, fail: Callable[[str], NoReturn]) -> None:
    """The partition (:func:`_partition`) can be made and gives every peer training data."""
    if isinstance(part, ValueError):
        fail(str(part))
        return
    empty = [i for i, t in enumerate(part.train) if len(t) == 0]
    if empty:
        fail(
            f"peers.count: partition {sc.partition.kind!r} leaves {len(empty)} of {sc.peers.count} peers "
            f"(e.g. peer {empty[0]}) without training samples; use fewer peers, another partition or a "
            "lower partition.val_fraction"
        )


def _check_probes(sc: Scenario, fail: Callable[[str], NoReturn]) -> None:
    """Each probe's own value checks (its kind's ``validate``, then its ``check_scenario``: what the
    scenario alone decides; the schema checked kind and keys)."""
    for i, p in enumerate(sc.probes):
        try:
            probe = get_probe(i, p.kind, sc.plugins)
            probe.check_scenario(i, probe.validate(i, p.settings(), sc.peers.count), sc)
        except ValueError as e:
            fail(str(e))
    from fedsim.canaries import plan

    try:
        plan(sc.probes)  # at most one probe plants canaries
    except ValueError as e:
        fail(str(e))
