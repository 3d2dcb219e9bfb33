"""Scenario files: YAML → a validated pydantic model.

Every field has a default, so ``{}`` is a valid scenario. Unknown keys and bad values raise
:class:`ScenarioError` whose message names the YAML path and what is allowed, e.g.
``strategy.params.f: must be ...``. Cross-field checks (a rule's n > 2f requirement against the
topology's degree, partition sizes, ...) run here too, at validation time, never mid-run.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializeAsAny,
    ValidationError,
    create_model,
    field_validator,
    model_serializer,
    model_validator,
)

from fedlib.heads import num_params as head_params
from fedlib.registry import did_you_mean as _did_you_mean
from fedsim import limits
from fedsim.device import PATTERN as DEVICE_PATTERN
from fedsim.device import device_error
from fedsim.errors import FedsimError
from fedsim.probe_registry import Probe, check_entry, get_probe

if TYPE_CHECKING:
    from fedsim.data.datasets import DatasetInfo
    from fedsim.partition import Partition
    from fedsim.topology import Topology

MAX_WEIGHT_DECAY = 10.0
MAX_YAML_BYTES = 2**20  # scenario files are a few hundred bytes; a larger one is a mistake (or an attack)
MAX_YAML_DEPTH = 32  # nesting of mappings and lists (the deepest real scenario nests 4)
MAX_YAML_VALUES = 50_000  # scalars, lists and mappings after aliases are expanded (billion laughs: 10^9)


class ScenarioError(FedsimError, ValueError):
    """A scenario that cannot run; ``str()`` is one line naming the field and the fix.

    ``errors`` holds each problem as its own line (``source: field: message``) for
    ``fedsim validate``, which prints one line per error; ``str()`` joins them with ``; ``."""

    def __init__(self, message: object, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.errors = [" ".join(str(e).split()) for e in errors] if errors else [str(self)]


class _Section(BaseModel):
    """Every section: unknown keys refused; strict types (no ``true`` for a count, no ``"5"`` for
    a number; an int is still a float); floats finite (no ``.nan``/``.inf``)."""

    model_config = ConfigDict(extra="forbid", validate_default=True, strict=True, allow_inf_nan=False)


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
    allow_idle_attack: bool = Field(
        False,
        description="allow an attack named with 0 Byzantine peers (it never acts) or Byzantine peers with "
        "attack 'none' (they train honestly and are left out of the evaluation), e.g. the 0% column of a "
        "sweep over byzantine_fraction; without it either is a validation error (usually a mistake)",
    )

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
    weight_decay: float = Field(
        0.0,
        ge=0,
        le=MAX_WEIGHT_DECAY,
        description=f"L2 coefficient (typically 1e-4..1e-2), at most {MAX_WEIGHT_DECAY:g}; with sgd also "
        "lr * weight_decay <= 1 + momentum, beyond which the decay alone makes the heads diverge",
    )
    batch_size: int = Field(32, ge=1, le=1_000_000)
    local_steps: int = Field(5, ge=1, le=100_000)
    bias: bool = True

    @model_validator(mode="after")
    def _stable_decay(self) -> TrainingCfg:
        # SGD with heavy-ball momentum on the decay's quadratic term w ↦ wd·|w|²/2 is stable only for
        # lr·wd < 2(1 + momentum); half that keeps room for the loss's own curvature.
        if self.optimizer == "sgd" and self.lr * self.weight_decay > 1 + self.momentum:
            raise ValueError(
                f"training.weight_decay: lr * weight_decay = {self.lr * self.weight_decay:g} > 1 + momentum "
                f"({1 + self.momentum:g}); SGD's weights would grow without bound (NaN); lower either"
            )
        return self


class ModelCfg(_Section):
    """What peers train and exchange (:mod:`fedsim.models.trainable`, :mod:`fedsim.whole`). The
    defaults are today's: the linear head on cached frozen features, its parameters exchanged."""

    trainable: Literal["head", "last_k", "all"] = Field(
        "head",
        description="head: the output layer(s) on frozen features; last_k: the last k layers; all: the whole network",
    )
    k: int | None = Field(None, ge=1, description="trainable layers counted from the output (trainable=last_k)")
    hidden: list[int] = Field(
        default_factory=list, description="hidden widths of a head MLP on the backbone (empty: one linear layer)"
    )
    init: Literal["pretrained", "scratch"] = Field(
        "pretrained", description="backbone weights: the registered pretrained ones, or random from the seed"
    )
    exchange: Literal["params", "gradients"] = Field(
        "params",
        description="params: peers send their trained parameters; gradients: FedSGD, one step per round, "
        "the aggregated gradient is applied (training.local_steps must be 1). Bristle keeps exchanging only "
        "its output layer and needs model.trainable: head",
    )

    @model_validator(mode="after")
    def _consistent(self) -> ModelCfg:
        if self.trainable == "last_k" and self.k is None:
            raise ValueError("model.k: trainable: last_k needs k (how many layers, counted from the output)")
        if self.trainable != "last_k" and self.k is not None:
            raise ValueError(f"model.k: only for trainable: last_k (got trainable: {self.trainable})")
        if any(h < 1 or h > 1_000_000 for h in self.hidden):
            raise ValueError(f"model.hidden: widths must be between 1 and 1000000, got {self.hidden}")
        if len(self.hidden) > 64:
            raise ValueError(f"model.hidden: at most 64 hidden layers, got {len(self.hidden)}")
        return self

    @property
    def whole(self) -> bool:
        """True: anything beyond today's linear head (the :mod:`fedsim.whole` path)."""
        return self.trainable != "head" or bool(self.hidden) or self.exchange != "params" or self.init != "pretrained"


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
    cpus_per_actor: float = Field(1.0, gt=0, le=1024)
    device: str = Field(
        "cpu",
        pattern=DEVICE_PATTERN,
        description="where a model section's batched trainable part runs: cpu, cuda or cuda:N (needs "
        "engine.backend: local and a CUDA torch; fedsim/device.py)",
    )


class SamplingCfg(_Section):
    """Client sampling per round (federated mode only; McMahan et al., AISTATS 2017, "fraction C of
    clients"): each round the server picks ``k`` of the ``peers.count`` clients (honest and Byzantine
    alike, uniformly without replacement, from the run's seed and the round number via
    :mod:`fedsim.rng`, so a run and its resume are bit-reproducible); only they train and send, the
    server aggregates what it received, and bytes count only their messages. ``fraction``: ``k =
    max(1, ⌊fraction · peers.count⌋)``; ``count``: ``k`` itself (1 <= count <= peers.count). Give one
    or neither (neither: every client every round; ``k = peers.count`` is the same run byte for byte).
    With sampling the rule's default ``f`` is the expected Byzantine count among the sampled,
    ``⌈byzantine · k / peers.count⌉`` (``strategy.f`` overrides), and ``check(n, f)`` is asked about
    ``n = k``."""

    fraction: float | None = Field(
        None, gt=0, le=1, description="fraction of the clients sampled each round, in (0, 1]"
    )
    count: int | None = Field(None, ge=1, description="number of clients sampled each round, 1..peers.count")

    @model_validator(mode="after")
    def _one(self) -> SamplingCfg:
        if self.fraction is not None and self.count is not None:
            raise ValueError("give sampling.fraction or sampling.count, not both")
        return self

    @property
    def enabled(self) -> bool:
        return self.fraction is not None or self.count is not None


class CheckpointCfg(_Section):
    every: int = Field(0, ge=0, description="save a resumable checkpoint every k rounds (0: never)")


class OutputCfg(_Section):
    dir: str = "runs"


class ProbeConfig(BaseModel):
    """One ``probes:`` entry as the schema holds it: an instance of its kind's model
    (:func:`probe_config`), whose fields are ``kind`` and the probe's ``defaults``. Dumps only the
    keys given, in the given order, so a resolved ``scenario.yaml`` reads as written."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str
    _keys: tuple[str, ...] = PrivateAttr(default=())

    def settings(self) -> dict[str, Any]:
        """The keys the scenario set (``kind`` first, as given)."""
        return {k: getattr(self, k) for k in self._keys}

    @model_serializer(mode="plain")
    def _dump(self) -> dict[str, Any]:
        return self.settings()


@functools.cache
def probe_config(cls: type[Probe]) -> type[ProbeConfig]:
    """The schema's model of a registered probe kind: ``kind: Literal[<kind>]`` and one field per
    key of its ``defaults`` (values are checked by the probe's own ``validate``)."""
    fields: dict[str, Any] = {"kind": (Literal[cls.kind], ...)}
    fields |= {k: (Any, v) for k, v in cls.defaults.items()}
    return create_model(f"{cls.__name__}Config", __base__=ProbeConfig, **fields)


def to_config(i: int, data: Any) -> ProbeConfig:
    """``probes[i]`` as its kind's :func:`probe_config` (the union's dispatch on ``kind``, over the
    registered kinds): ``ValueError("probes.<i>...: ...")`` for a non-mapping, an unknown kind or
    an unknown key (:func:`fedsim.probe_registry.check_entry`)."""
    if isinstance(data, ProbeConfig):
        return data
    probe = check_entry(i, data)
    cfg = probe_config(type(probe)).model_validate(data)
    cfg._keys = tuple(data)
    return cfg


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
    model: ModelCfg = Field(default_factory=ModelCfg)
    evaluation: EvaluationCfg = Field(default_factory=EvaluationCfg)
    engine: EngineCfg = Field(default_factory=EngineCfg)
    sampling: SamplingCfg = Field(
        default_factory=SamplingCfg,
        description="federated mode: clients sampled each round (fraction or count; see SamplingCfg)",
    )
    checkpoint: CheckpointCfg = Field(default_factory=CheckpointCfg)
    output: OutputCfg = Field(default_factory=OutputCfg)
    probes: list[SerializeAsAny[ProbeConfig]] = Field(
        default_factory=list,
        description="probes run after training: each its kind's config (a registered kind: fedsim.probe_registry)",
    )
    plugins: list[str] = Field(
        default_factory=list,
        description="your modules (my_pkg.rules) or .py files (my_rules.py, relative to the current directory) "
        "imported in every process of the run before names are checked; see docs/extending.md",
    )

    @model_validator(mode="before")
    @classmethod
    def _probe_plugins_first(cls, data: Any) -> Any:
        """A plugin may register a probe kind: import the plugins before the probes are read (a
        plugin that fails is reported after the schema, by :func:`load_plugins`)."""
        if isinstance(data, dict) and data.get("probes") and isinstance(data.get("plugins"), list):
            from fedsim import plugins

            try:
                plugins.load([plugins.normalize(e) for e in data["plugins"] if isinstance(e, str)])
            except (plugins.PluginError, ValueError):
                pass
        return data

    @field_validator("probes", mode="before")
    @classmethod
    def _probe_kinds(cls, v: Any) -> Any:
        """Each entry as its kind's config (the union's dispatch on ``kind``: the registry's kinds)."""
        return [to_config(i, p) for i, p in enumerate(v)] if isinstance(v, list) else v

    @field_validator("plugins")
    @classmethod
    def _plugin_entries(cls, v: list[str]) -> list[str]:
        from fedsim import plugins

        return [plugins.normalize(e) for e in v]  # .py paths made absolute: actors may run elsewhere

    @model_validator(mode="after")
    def _mode_topology(self) -> Scenario:
        if self.mode == "federated" and self.topology.kind not in ("star",):
            object.__setattr__(self.topology, "kind", "star")
        if self.mode == "decentralized" and self.topology.kind == "star":
            raise ValueError("topology.kind: 'star' is federated mode; set mode: federated or choose a graph")
        if self.sampling.enabled and self.mode != "federated":
            raise ValueError(
                "sampling: client sampling is for mode: federated (a decentralized peer hears its neighbours)"
            )
        if self.sampling.count is not None and self.sampling.count > self.peers.count:
            raise ValueError(
                f"sampling.count: {self.sampling.count} clients per round but peers.count is {self.peers.count}"
            )
        return self


def _unknown_key(loc: tuple) -> str:
    """The message for a key the schema does not have at ``loc``: the closest allowed key and all of them."""
    model: Any = Scenario
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        sub = field.annotation if field is not None else None
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            return "unknown key (check its spelling)"
        model = sub
    keys = list(model.model_fields)
    return f"unknown key{_did_you_mean(loc[-1], keys)}; allowed here: {', '.join(keys)}"


def _loc(err: dict) -> str:
    return ".".join(str(p) for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-after")))


def _show(value: Any) -> str:
    """A short rendering of an offending input, YAML-like (``true``, ``'5'``)."""
    text = {True: "true", False: "false", None: "null"}.get(value, None) if isinstance(value, bool | None) else None
    text = text or repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


def _messages(e: ValidationError) -> list[str]:
    """One ``field: message`` per pydantic error."""
    out = []
    for err in e.errors():
        loc, msg = _loc(err), err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = _unknown_key(err["loc"])
        elif err["type"] == "literal_error":
            allowed = re.findall(r"'([^']*)'", str((err.get("ctx") or {}).get("expected", "")))
            msg = f"got {err.get('input')!r}{_did_you_mean(err.get('input'), allowed)}; {msg.lower()}"
        elif err["type"] in ("int_type", "float_type", "bool_type", "string_type", "finite_number", "dict_type"):
            msg = f"{msg}, got {_show(err.get('input'))} (types are strict: no true for a number, no '5' for 5)"
        if loc and re.match(rf"{re.escape(loc)}\.[\w.]+\s*[:=]", msg):
            loc = ""  # a model validator's message that already names its field
        out.append(f"{loc}: {msg}" if loc else msg)
    return out


class _YamlLimitError(Exception):
    """A YAML document beyond :data:`MAX_YAML_DEPTH` or :data:`MAX_YAML_VALUES`."""


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader that stops composing past :data:`MAX_YAML_DEPTH` levels or
    :data:`MAX_YAML_VALUES` nodes, long before Python's recursion limit or memory is reached.
    Aliases compose to the node they name (no copy); their expansion is bounded afterwards by
    :func:`plain_tree`."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        self._nodes += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise _YamlLimitError(f"nested deeper than {MAX_YAML_DEPTH} levels")
            if self._nodes > MAX_YAML_VALUES:
                raise _YamlLimitError(f"more than {MAX_YAML_VALUES} values")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


# YAML 1.1 (PyYAML) reads `1e-3` and `1.0e30` as strings (its floats need a dot and a signed
# exponent); with strict types that string would be refused. These are floats, as in YAML 1.2 and
# as `--set` reads them (parse_value).
_BoundedLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _yaml(text: str) -> Any:
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    except RecursionError:
        raise _YamlLimitError("nested too deeply") from None
    finally:
        loader.dispose()


def safe_yaml(text: str, source: str) -> Any:
    """Parse YAML ``text`` as data (safe loader: no Python objects), refusing documents nested
    deeper than :data:`MAX_YAML_DEPTH` or with more than :data:`MAX_YAML_VALUES` values, with a
    one-line :class:`ScenarioError` naming ``source``."""
    try:
        return _yaml(text)
    except _YamlLimitError as e:
        raise ScenarioError(f"{source}: refused: the YAML is {e} (scenario files are small)") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ScenarioError(f"{source}: not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None


def read_yaml(path: str | Path) -> Any:
    """The YAML data in ``path``, read safely: at most :data:`MAX_YAML_BYTES` (checked before
    reading), UTF-8, depth and values bounded (:func:`safe_yaml`); every failure is one line."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise ScenarioError(f"{path}: a directory, not a scenario file")
        if size > MAX_YAML_BYTES:
            raise ScenarioError(f"{path}: {size} bytes; scenario files are at most {MAX_YAML_BYTES // 2**20} MiB")
        with open(path, "rb") as fh:
            raw = fh.read(MAX_YAML_BYTES + 1)  # capped again: a pipe or a growing file has no size
    except FileNotFoundError:
        raise ScenarioError(f"{path}: no such file") from None
    except OSError as e:
        raise ScenarioError(f"{path}: cannot read it ({e.strerror or e})") from None
    if len(raw) > MAX_YAML_BYTES:
        raise ScenarioError(f"{path}: more than {MAX_YAML_BYTES // 2**20} MiB; scenario files are small")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ScenarioError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return safe_yaml(text, str(path))


def plain_tree(data: Any, source: str = "scenario") -> Any:
    """A copy of ``data`` in which no dict or list appears twice (YAML aliases share them), refusing
    one that would expand past :data:`MAX_YAML_VALUES` values or nest deeper than
    :data:`MAX_YAML_DEPTH` (a recursive alias nests forever). The copy stops at the limit, so a
    billion-laughs document is refused after 50,000 values, never expanded."""
    count = 0

    def copy(x: Any, depth: int) -> Any:
        nonlocal count
        count += 1
        if count > MAX_YAML_VALUES:
            raise ScenarioError(
                f"{source}: refused: more than {MAX_YAML_VALUES} values once YAML aliases are expanded "
                "(scenario files are small)"
            )
        if depth > MAX_YAML_DEPTH:
            raise ScenarioError(f"{source}: refused: nested deeper than {MAX_YAML_DEPTH} levels (or a recursive alias)")
        if isinstance(x, dict):
            return {k: copy(v, depth + 1) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [copy(v, depth + 1) for v in x]
        return x

    return copy(data, 0)


MAX_ERRORS_IN_LINE = 6  # schema errors joined into one ScenarioError line; the rest are counted


def parse(data: Any, source: str = "scenario", *, require_data: bool = False) -> Scenario:
    """Validate a mapping (already-loaded YAML) into a :class:`Scenario`: the schema, then
    :func:`check_semantics`. ``require_data``: a dataset whose files are missing is an error
    (``fedsim validate``) rather than left for the run to report (a Flower device may get its
    data directory later)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: the top level must be a mapping of sections, got {type(data).__name__}")
    data = plain_tree(data, source)
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
    check_semantics(sc, source, require_data=require_data)
    return sc


def load_plugins(sc: Scenario, source: str = "scenario") -> None:
    """Import the scenario's ``plugins:`` in this process (before its names are checked); a plugin
    that fails is a :class:`ScenarioError` naming the file and the plugin."""
    from fedsim import plugins

    try:
        plugins.load(sc.plugins)
    except plugins.PluginError as e:
        raise ScenarioError(f"{source}: {e}") from None


def load(path: str | Path, overrides: dict[str, Any] | None = None, *, require_data: bool = False) -> Scenario:
    """Read a YAML scenario file (:func:`read_yaml`), apply dotted ``overrides``
    (``{"strategy.name": "krum"}``), validate (:func:`parse`)."""
    path = Path(path)
    data = read_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ScenarioError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    data = plain_tree(data, str(path))  # an override must change one place, not every alias of it
    data.pop("sweep", None)  # a grid for `fedsim sweep`; one run of a sweep file uses its base values
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    return parse(data, str(path), require_data=require_data)


def set_dotted(data: dict, key: str, value: Any) -> None:
    """``set_dotted(d, "strategy.params.f", 2)`` sets ``d["strategy"]["params"]["f"] = 2``."""
    parts = key.split(".")
    node = data
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value


# ---------------------------------------------------------------- facts the run and validation share
def default_f(sc: Scenario, in_degree: float) -> int:
    """Byzantine senders a rule tolerates when ``strategy.f`` is unset."""
    if sc.strategy.f is not None:
        return sc.strategy.f
    b = sc.peers.num_byzantine
    if sc.mode == "federated":
        k = clients_per_round(sc)
        return b if k == sc.peers.count else int(math.ceil(b * k / sc.peers.count)) if b else 0
    return int(math.ceil(b / sc.peers.count * in_degree)) if b else 0


def clients_per_round(sc: Scenario) -> int:
    """``k``, the clients the federated server samples each round (``peers.count`` without sampling)."""
    n, smp = sc.peers.count, sc.sampling
    if smp.count is not None:
        return smp.count
    if smp.fraction is not None:
        return max(1, math.floor(round(smp.fraction * n, 9)))  # round first: 0.29 * 100 is 28.999...
    return n


def sampled_clients(sc: Scenario, round_: int) -> np.ndarray | None:
    """Bool ``[peers.count]``: the clients sampled in round ``round_`` (a seeded draw of
    :func:`clients_per_round` without replacement, a pure function of ``(seed, round)``), or None
    when every client takes part (no sampling, or ``k = peers.count``: the unsampled run itself)."""
    from fedsim import rng as crng

    n, k = sc.peers.count, clients_per_round(sc)
    if sc.mode != "federated" or k >= n:
        return None
    mask = np.zeros(n, dtype=bool)
    mask[crng.numpy_generator(sc.seed, "client_sampling", round_).choice(n, size=k, replace=False)] = True
    return mask


def byzantine_mask(sc: Scenario) -> np.ndarray:
    """Bool ``[peers.count]``: which peers are Byzantine (a seeded draw of ``num_byzantine``)."""
    from fedsim import rng as crng

    n = sc.peers.count
    byz = np.zeros(n, dtype=bool)
    byz[crng.numpy_generator(sc.seed, "byzantine").permutation(n)[: sc.peers.num_byzantine]] = True
    return byz


def build_topology(sc: Scenario) -> Topology:
    """The scenario's topology, built (``ValueError`` naming the ``topology.*`` field if it cannot be)."""
    from fedsim.topology import Topology

    t = sc.topology
    return Topology(t.kind, sc.peers.count, sc.seed, degree=t.degree, p=t.p, fanout=t.fanout).build()


def resolve_f(sc: Scenario, topo: Topology) -> tuple[int, float]:
    """``(f, mean in-degree)`` from the built topology: the ``f`` every rule is given and the mean
    number of vectors an aggregator hears per round (round 0 for push gossip; for the federated
    server every client it samples, :func:`clients_per_round`). The run (:func:`fedsim.runner.prepare`) and
    validation both call this, so they agree on ``f`` (an Erdős–Rényi graph's real mean degree,
    not ``p·(n-1)``)."""
    if sc.mode == "federated":
        k = clients_per_round(sc)
        return default_f(sc, k), float(k)
    in_degree = float(np.mean(topo.degrees(0)))
    return default_f(sc, in_degree), in_degree


def received_per_aggregation(in_degree: float) -> int:
    """The ``n`` a rule's :meth:`check` is asked about: the mean in-degree (:func:`resolve_f`;
    every client for the federated server) rounded, at least 1."""
    return max(1, int(round(in_degree)))


def strategy_params(sc: Scenario) -> dict[str, Any]:
    """The parameters the rule is built with, by the run and by validation: ``strategy.params``,
    and in federated mode ``include_own: false`` unless set (a server averages its clients, not
    the old global model)."""
    import strategies

    params = dict(sc.strategy.params)
    fields = getattr(strategies.REGISTRY.get(sc.strategy.name), "__dataclass_fields__", {})
    if sc.mode == "federated" and "include_own" in fields:
        params.setdefault("include_own", False)
    return params


def partition_for(sc: Scenario, y_train: np.ndarray, byzantine: np.ndarray) -> Partition:
    """The scenario's partition of ``y_train`` (``byzantine``: :func:`byzantine_mask`)."""
    from fedsim.partition import make_partition

    pt = sc.partition
    return make_partition(
        pt.kind,
        y_train,
        sc.peers.count,
        sc.seed,
        alpha=pt.alpha,
        k=pt.k,
        window=pt.window,
        beta=pt.beta,
        min_size=pt.min_size,
        val_fraction=pt.val_fraction,
        per_class=pt.per_class,
        all_classes=byzantine if pt.byzantine_classes == "all" else None,
    )


def resource_warnings(sc: Scenario) -> list[str]:
    """Warnings (not errors) about what the run asks of this machine: a local Ray instance given
    more CPUs than the machine has (``engine.num_actors``)."""
    from fedsim.runner import local_ray_cpus

    if sc.engine.backend != "ray":
        return []
    w = limits.cpu_warning(sc.engine.num_actors, sc.engine.cpus_per_actor, local_ray_cpus(sc))
    return [w] if w else []


# ---------------------------------------------------------------- validation
def check_semantics(sc: Scenario, source: str = "scenario", *, require_data: bool = False) -> None:
    """The checks beyond the schema, each by the code the run uses, cheapest first: names exist
    and parameters build; the dataset's size and classes bound the partition; the memory the
    run needs fits the machine; the topology builds and the rule's n/f limits hold for its real
    in-degree; the partition itself gives every peer data; probes are well-formed."""
    errors = _name_errors(sc)
    if errors:
        raise ScenarioError(f"{source}: " + "; ".join(errors), [f"{source}: {e}" for e in errors])

    def fail(msg: str) -> None:
        raise ScenarioError(f"{source}: {msg}")

    info = _dataset_info(sc, require_data, fail)
    if info is not None:
        from fedsim.partition import check_bounds

        try:
            check_bounds(sc.partition.kind, sc.peers.count, info.n_train, info.num_classes,
                         k=sc.partition.k, window=sc.partition.window, min_size=sc.partition.min_size)
        except ValueError as e:
            fail(str(e))
        _check_memory(sc, info, fail)
    try:
        topo = build_topology(sc)
    except ValueError as e:
        fail(str(e))
    _check_rule(sc, topo, fail)
    if info is not None:
        _check_partition(sc, info, fail)
    _check_probes(sc, fail)
    device = device_error(sc.engine.device, whole=sc.model.whole, backend=sc.engine.backend)
    if device:
        fail(device)
    if sc.model.whole:
        from fedsim.whole import check_model

        try:
            check_model(sc, info)
        except ValueError as e:
            fail(str(e))


def _name_errors(sc: Scenario) -> list[str]:
    """Every unknown name and unbuildable rule or attack, each as ``field: message``."""
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
        errors.append(f"backbone.name: {unknown_backbone(sc.backbone.name)}")
    try:
        strategies.build(sc.strategy.name, strategy_params(sc))
    except ValueError as e:
        errors.append(f"{'strategy.params' if sc.strategy.name in strategies.REGISTRY else 'strategy.name'}: {e}")
    if sc.peers.attack.name != "none":
        try:
            attacks.build(sc.peers.attack.name, sc.peers.attack.params)
        except ValueError as e:
            where = "peers.attack.params" if sc.peers.attack.name in attacks.REGISTRY else "peers.attack.name"
            errors.append(f"{where}: {e}")
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
    return errors


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
        errors.append(f"backbone.name: {unknown_backbone(name)}")
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
                errors.append(f"{field}.name: {e}")
            continue
        everyone = {p for n in registry for p in getattr(registry[n], "__dataclass_fields__", {})}
        if isinstance(params, dict) and hasattr(registry[name], "__dataclass_fields__"):
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


def _dataset_info(sc: Scenario, require_data: bool, fail: Callable[[str], None]) -> DatasetInfo | None:
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


def _check_memory(sc: Scenario, info: DatasetInfo, fail: Callable[[str], None]) -> None:
    """The backbone accepts the dataset's inputs, its weights exist, and the run's memory
    estimate (:mod:`fedsim.limits`) fits the machine."""
    import attacks
    import strategies
    from fedsim.models.backbones import get_spec
    from fedsim.runner import local_ray_cpus

    spec = get_spec(sc.backbone.name)
    if spec.build is not None and spec.weights_file and not spec.weights_path().exists():
        fail(f"backbone.name: no weights for {sc.backbone.name!r} at {spec.weights_path()}; "
             f"create them with `fedsim pretrain --backbone {sc.backbone.name}`")
    try:
        dim = _feature_dim(sc.backbone.name, info.sample_shape, info.dtype)
    except (ValueError, RuntimeError) as e:
        fail(f"backbone.name: {' '.join(str(e).split())[:200]} (dataset {sc.dataset.name!r})")
    t, n, c = sc.topology, sc.peers.count, info.num_classes
    groups = min(sc.engine.num_actors, n)
    on_ray = sc.engine.backend == "ray" and local_ray_cpus(sc) is not None
    attack = attacks.build(sc.peers.attack.name, sc.peers.attack.params) if sc.peers.attack.name != "none" else None
    est = limits.estimate_memory(
        peers=n,
        num_params=head_params((c, dim), sc.training.bias),
        dim=dim,
        n_train=info.n_train,
        n_test=info.n_test,
        groups=groups,
        concurrent=groups if sc.engine.backend == "ray" else 1,
        adam=sc.training.optimizer == "adam",
        consolidated=bool(strategies.build(sc.strategy.name, strategy_params(sc)).consolidated),
        forged=isinstance(attack, attacks.UpdateForger) and sc.peers.num_byzantine > 0,
        edges=0 if sc.mode == "federated" else limits.directed_edges(t.kind, n, t.degree, t.p, t.fanout),
        ray_actors=groups + (sc.mode == "federated") if on_ray else 0,
    )
    msg = limits.memory_error(est)
    if msg:
        fail(f"{est.biggest()[0]}: the run {msg}")


def _check_rule(sc: Scenario, topo: Topology, fail: Callable[[str], None]) -> None:
    """The rule's n/f limits for the f and in-degree the run will use (:func:`resolve_f`), and the
    forger's: it is told the same ``n`` and ``f`` (``AttackContext``)."""
    import attacks
    import strategies

    f, in_degree = resolve_f(sc, topo)
    n = received_per_aggregation(in_degree)
    try:
        strategies.build(sc.strategy.name, strategy_params(sc)).check(n, f)
    except ValueError as e:
        where = "strategy.f" if sc.strategy.f is not None else "strategy.name"
        fail(
            f"{where}: {e} (with {n} received vectors per aggregation and f={f}; set strategy.f, "
            "raise the topology degree, or lower the Byzantine count)"
        )
    if sc.peers.attack.name != "none" and sc.peers.num_byzantine:
        attack = attacks.build(sc.peers.attack.name, sc.peers.attack.params)
        try:
            if isinstance(attack, attacks.UpdateForger):
                attack.check(n, f)
        except ValueError as e:
            fail(f"peers.attack.params: {e} (with {n} received vectors per aggregation and f={f})")


def _check_partition(sc: Scenario, info: DatasetInfo, fail: Callable[[str], None]) -> None:
    """The partition the run will make (:func:`partition_for`) gives every peer training data."""
    try:
        part = partition_for(sc, info.y_train, byzantine_mask(sc))
    except ValueError as e:
        fail(str(e))
    empty = [i for i, t in enumerate(part.train) if len(t) == 0]
    if empty:
        fail(
            f"peers.count: partition {sc.partition.kind!r} leaves {len(empty)} of {sc.peers.count} peers "
            f"(e.g. peer {empty[0]}) without training samples; use fewer peers, another partition or a "
            "lower partition.val_fraction"
        )


def _check_probes(sc: Scenario, fail: Callable[[str], None]) -> None:
    """Each probe's own value checks (its kind's ``validate``; the schema checked kind and keys)."""
    for i, p in enumerate(sc.probes):
        try:
            get_probe(i, p.kind).validate(i, p.settings(), sc.peers.count)
        except ValueError as e:
            fail(str(e))
    from fedsim.canaries import plan

    try:
        plan(sc.probes)  # at most one probe plants canaries
    except ValueError as e:
        fail(str(e))


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def parse_value(text: str) -> Any:
    """One grid value: YAML scalar (``0.3``, ``krum``, ``true``, ``{f: 1}``); ``1e-3`` is a float."""
    text = text.strip()
    if _NUMBER.fullmatch(text):
        return int(text) if re.fullmatch(r"[-+]?\d+", text) else float(text)
    try:
        return _yaml(text)
    except yaml.YAMLError:
        return text
    except _YamlLimitError as e:
        raise ScenarioError(f"{text[:40]!r}: refused: the YAML is {e}") from None


def parse_set(item: str) -> tuple[str, Any]:
    """``"rounds=20"`` → ``("rounds", 20)``: one dotted override, the value read by
    :func:`parse_value`. The one parser of ``--set`` (``fedsim run``, ``fedsim sweep``,
    ``fedsim flower``) and of the Flower run config's ``set`` key."""
    if "=" not in item:
        raise ScenarioError(f"{item!r}: expected KEY=VALUE, e.g. strategy.name=krum")
    k, val = item.split("=", 1)
    return k.strip(), parse_value(val)


def parse_sets(values: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``("rounds=20", "strategy.name=krum")`` → ``{"rounds": 20, "strategy.name": "krum"}`` (``--set``)."""
    import click

    out = {}
    for v in values:
        try:
            k, val = parse_set(v)
        except ScenarioError as e:
            raise click.BadParameter(str(e), param_hint="--set") from None
        out[k] = val
    return out
