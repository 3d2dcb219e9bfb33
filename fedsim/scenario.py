"""Scenario files: YAML → a validated pydantic model.

Every field has a default, so ``{}`` is a valid scenario. Unknown keys and bad values raise
:class:`ScenarioError` whose message names the YAML path and what is allowed, e.g.
``strategy.params.f: must be ...``. Cross-field checks (a rule's n > 2f requirement against the
topology's degree, partition sizes, ...) run here too, at validation time, never mid-run.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fedsim.errors import FedsimError


class ScenarioError(FedsimError, ValueError):
    """A scenario that cannot run; ``str()`` is one line naming the field and the fix."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class DatasetCfg(_Section):
    name: str = Field("mnist10k", description="see `fedsim list datasets`")
    data_dir: str | None = Field(None, description="directory (or .npz file) for non-embedded datasets")


class BackboneCfg(_Section):
    name: str = Field("fmnist_cnn", description="see `fedsim list backbones`")
    cache_dir: str | None = Field(None, description="feature cache; default ~/.cache/fedsim/features or $FEDSIM_CACHE")


class PartitionCfg(_Section):
    kind: Literal["iid", "dirichlet", "classes", "windows", "quantity"] = "dirichlet"
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration (kind=dirichlet)")
    k: int = Field(2, ge=1, description="classes per peer (kind=classes)")
    window: int = Field(3, ge=1, description="window width (kind=windows)")
    beta: float = Field(0.5, gt=0, description="size concentration (kind=quantity)")
    min_size: int = Field(2, ge=1, description="minimum samples per peer (dirichlet, quantity)")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="share of each peer's data kept as local validation")
    per_class: int | None = Field(
        None,
        ge=1,
        description="exactly this many samples of each held class per peer, val_fraction of each class "
        "kept for validation (kind=windows|classes; Bristle's runs: 4 = 2 training + 2 test)",
    )
    byzantine_classes: Literal["partition", "all"] = Field(
        "partition",
        description="'all': Byzantine peers hold every class (Bristle's attackers) and the kind's class "
        "sets go to the honest peers in id order (kind=windows|classes)",
    )

    @model_validator(mode="after")
    def _class_set_options(self) -> PartitionCfg:
        if (self.per_class is not None or self.byzantine_classes == "all") and self.kind not in ("windows", "classes"):
            raise ValueError(f"kind must be windows or classes for per_class and byzantine_classes, got {self.kind!r}")
        return self


class AttackCfg(_Section):
    name: str = Field("none", description="see `fedsim list attacks`; 'none' for no attack")
    params: dict[str, Any] = Field(default_factory=dict)
    omniscient: bool = Field(True, description="forgers that can use the honest vectors of the round see them")
    collude: bool = Field(True, description="Byzantine peers forge jointly (one forge call) or each alone")


class PeersCfg(_Section):
    count: int = Field(20, ge=1, le=1_000_000)
    byzantine: int | None = Field(None, ge=0, description="number of Byzantine peers (or use byzantine_fraction)")
    byzantine_fraction: float = Field(0.0, ge=0, lt=1)
    attack: AttackCfg = Field(default_factory=AttackCfg)

    @model_validator(mode="after")
    def _one_of(self) -> PeersCfg:
        if self.byzantine is not None and self.byzantine_fraction:
            raise ValueError("give peers.byzantine or peers.byzantine_fraction, not both")
        if self.num_byzantine >= self.count:
            raise ValueError(
                f"peers.byzantine: {self.num_byzantine} Byzantine of {self.count} peers leaves no honest peer"
            )
        return self

    @property
    def num_byzantine(self) -> int:
        return self.byzantine if self.byzantine is not None else int(math.floor(self.byzantine_fraction * self.count))


class TopologyCfg(_Section):
    kind: Literal["complete", "ring", "k_regular", "erdos_renyi", "watts_strogatz", "push_gossip", "star"] = "k_regular"
    degree: int = Field(6, ge=1, description="k_regular degree; watts_strogatz lattice degree")
    p: float = Field(0.2, ge=0, le=1, description="erdos_renyi edge prob.; watts_strogatz rewiring prob.")
    fanout: int = Field(5, ge=1, description="push_gossip receivers per sender per round")


class StrategyCfg(_Section):
    name: str = Field("fedavg", description="see `fedsim list strategies`")
    params: dict[str, Any] = Field(default_factory=dict)
    f: int | None = Field(
        None,
        ge=0,
        description="Byzantine senders a rule tolerates; default: expected Byzantine "
        "neighbours (decentralized) or Byzantine clients (federated)",
    )


class TrainingCfg(_Section):
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(1.0, gt=0, le=100, description="features have norm ≈ 1 (FeatureScale), so lr ≈ 1 suits")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(32, ge=1, le=1_000_000)
    local_steps: int = Field(5, ge=1, le=100_000)
    bias: bool = True


class EvaluationCfg(_Section):
    every: int = Field(1, ge=1, description="evaluate every k rounds (and always after the last)")
    peers: int | Literal["all"] = Field("all", description="'all' or a number of honest peers sampled each evaluation")
    per_peer: bool = Field(False, description="also write each evaluated peer's accuracy")

    @model_validator(mode="after")
    def _positive(self) -> EvaluationCfg:
        if isinstance(self.peers, int) and self.peers < 1:
            raise ValueError("evaluation.peers: must be 'all' or >= 1")
        return self


class EngineCfg(_Section):
    backend: Literal["ray", "local"] = Field(
        "ray",
        description="'local' runs the same peer groups in this process, one after another, each with "
        "num_actors x cpus_per_actor torch threads (at most the machine's CPUs): no Ray start-up, no "
        "object-store copies, identical metrics (docs/performance.md: when it beats Ray on one machine)",
    )
    address: str | None = Field(
        None, description="Ray cluster address ('auto', 'ray://host:10001'); none: start locally"
    )
    num_actors: int = Field(2, ge=1, le=10_000)
    cpus_per_actor: float = Field(1.0, gt=0)


class CheckpointCfg(_Section):
    every: int = Field(0, ge=0, description="save a resumable checkpoint every k rounds (0: never)")


class OutputCfg(_Section):
    dir: str = "runs"


class Scenario(_Section):
    name: str = Field(
        "run",
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$",
        description="the run folder under output.dir: a plain identifier (letters, digits, _ . -, not starting "
        "with . or -), so it can never name '.', '..' or a folder elsewhere",
    )
    seed: int = Field(0, ge=0, le=2**62)
    mode: Literal["decentralized", "federated"] = "decentralized"
    rounds: int = Field(30, ge=1, le=1_000_000)
    dataset: DatasetCfg = Field(default_factory=DatasetCfg)
    backbone: BackboneCfg = Field(default_factory=BackboneCfg)
    partition: PartitionCfg = Field(default_factory=PartitionCfg)
    peers: PeersCfg = Field(default_factory=PeersCfg)
    topology: TopologyCfg = Field(default_factory=TopologyCfg)
    strategy: StrategyCfg = Field(default_factory=StrategyCfg)
    training: TrainingCfg = Field(default_factory=TrainingCfg)
    evaluation: EvaluationCfg = Field(default_factory=EvaluationCfg)
    engine: EngineCfg = Field(default_factory=EngineCfg)
    checkpoint: CheckpointCfg = Field(default_factory=CheckpointCfg)
    output: OutputCfg = Field(default_factory=OutputCfg)
    probes: list[dict[str, Any]] = Field(default_factory=list, description="probes run after training")

    @model_validator(mode="after")
    def _mode_topology(self) -> Scenario:
        if self.mode == "federated" and self.topology.kind not in ("star",):
            object.__setattr__(self.topology, "kind", "star")
        if self.mode == "decentralized" and self.topology.kind == "star":
            raise ValueError("topology.kind: 'star' is federated mode; set mode: federated or choose a graph")
        return self


def _loc(err: dict) -> str:
    return ".".join(str(p) for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-after")))


def _format(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc, msg = _loc(err), err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check its spelling; `fedsim run --help` lists the sections)"
        elif err["type"] == "literal_error":
            msg = f"got {err.get('input')!r}; {msg.lower()}"
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def parse(data: Any, source: str = "scenario") -> Scenario:
    """Validate a mapping (already-loaded YAML) into a :class:`Scenario`."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: the top level must be a mapping of sections, got {type(data).__name__}")
    try:
        sc = Scenario.model_validate(data)
    except ValidationError as e:
        raise ScenarioError(f"{source}: {_format(e)}") from None
    except (ValueError, TypeError, OverflowError) as e:
        raise ScenarioError(f"{source}: {e}") from None
    check_semantics(sc, source)
    return sc


def load(path: str | Path, overrides: dict[str, Any] | None = None) -> Scenario:
    """Read a YAML scenario file, apply dotted ``overrides`` (``{"strategy.name": "krum"}``), validate."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ScenarioError(f"{path}: no such file") from None
    except UnicodeDecodeError as e:
        raise ScenarioError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ScenarioError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ScenarioError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    data.pop("sweep", None)  # a grid for `fedsim sweep`; one run of a sweep file uses its base values
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    return parse(data, str(path))


def set_dotted(data: dict, key: str, value: Any) -> None:
    """``set_dotted(d, "strategy.params.f", 2)`` sets ``d["strategy"]["params"]["f"] = 2``."""
    parts = key.split(".")
    node = data
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value


def default_f(sc: Scenario, in_degree: float) -> int:
    """Byzantine senders a rule tolerates when ``strategy.f`` is unset."""
    if sc.strategy.f is not None:
        return sc.strategy.f
    b = sc.peers.num_byzantine
    if sc.mode == "federated":
        return b
    return int(math.ceil(b / sc.peers.count * in_degree)) if b else 0


def check_semantics(sc: Scenario, source: str = "scenario") -> None:
    """Checks that need the registries: names exist, parameters build, the rule's n/f limits hold."""
    import attacks
    import strategies
    from fedsim.data.datasets import DATASETS
    from fedsim.models.backbones import BACKBONES

    def fail(path: str, msg: str) -> None:
        raise ScenarioError(f"{source}: {path}: {msg}")

    if sc.dataset.name not in DATASETS:
        fail("dataset.name", f"unknown dataset {sc.dataset.name!r}; available: {', '.join(DATASETS)}")
    if not DATASETS[sc.dataset.name][1] and not sc.dataset.data_dir:
        fail("dataset.data_dir", f"dataset {sc.dataset.name!r} is read from local files; set the directory")
    if sc.backbone.name not in BACKBONES:
        fail("backbone.name", f"unknown backbone {sc.backbone.name!r}; available: {', '.join(BACKBONES)}")
    try:
        params = dict(sc.strategy.params)
        fields = getattr(strategies.REGISTRY.get(sc.strategy.name), "__dataclass_fields__", {})
        if sc.mode == "federated" and "include_own" in fields:
            params.setdefault("include_own", False)  # as the runner does: a server averages its clients only
        rule = strategies.build(sc.strategy.name, params)
    except ValueError as e:
        fail("strategy.params" if sc.strategy.name in strategies.REGISTRY else "strategy.name", str(e))
    if sc.peers.attack.name != "none":
        try:
            attacks.build(sc.peers.attack.name, sc.peers.attack.params)
        except ValueError as e:
            fail("peers.attack.params" if sc.peers.attack.name in attacks.REGISTRY else "peers.attack.name", str(e))
    if sc.peers.num_byzantine and sc.peers.attack.name == "none":
        fail(
            "peers.attack.name", f"{sc.peers.num_byzantine} Byzantine peers but no attack; name one or set byzantine: 0"
        )
    n_peers = sc.peers.count
    if sc.mode == "federated":
        n = n_peers
    else:
        t = sc.topology
        if t.kind == "complete":
            n = n_peers - 1
        elif t.kind == "ring":
            n = 2
        elif t.kind in ("k_regular", "watts_strogatz"):
            n = t.degree
            if t.degree >= n_peers:
                fail("topology.degree", f"{t.degree} must be < peers.count ({n_peers})")
        elif t.kind == "push_gossip":
            n = t.fanout
            if t.fanout >= n_peers:
                fail("topology.fanout", f"{t.fanout} must be < peers.count ({n_peers})")
        else:
            n = max(1, int(round(t.p * (n_peers - 1))))
    f = default_f(sc, n)
    try:
        rule.check(n, f)
    except ValueError as e:
        where = "strategy.f" if sc.strategy.f is not None else "strategy.name"
        fail(
            where,
            f"{e} (with {n} received vectors per aggregation and f={f}; set strategy.f, "
            "raise the topology degree, or lower the Byzantine count)",
        )
    for i, p in enumerate(sc.probes):
        if not isinstance(p, dict) or "kind" not in p:
            fail(f"probes.{i}", "each probe is a mapping with a 'kind' (unlearning | cloning)")
        if p["kind"] not in ("unlearning", "cloning"):
            fail(f"probes.{i}.kind", f"got {p['kind']!r}; allowed: unlearning, cloning")
        from fedsim.probes import validate_probe

        try:
            validate_probe(i, p, sc.peers.count)
        except ValueError as e:
            raise ScenarioError(f"{source}: {e}") from None

_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def parse_value(text: str) -> Any:
    """One grid value: YAML scalar (``0.3``, ``krum``, ``true``, ``{f: 1}``); ``1e-3`` is a float."""
    text = text.strip()
    if _NUMBER.fullmatch(text):
        return int(text) if re.fullmatch(r"[-+]?\d+", text) else float(text)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_sets(values: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``("rounds=20", "strategy.name=krum")`` → ``{"rounds": 20, "strategy.name": "krum"}`` (``--set``)."""
    import click

    out = {}
    for v in values:
        if "=" not in v:
            raise click.BadParameter(f"{v!r}: expected KEY=VALUE, e.g. strategy.name=krum", param_hint="--set")
        k, val = v.split("=", 1)
        out[k.strip()] = parse_value(val)
    return out
