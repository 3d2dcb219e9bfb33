"""The scenario schema: the pydantic model a scenario file validates into.

Every field has a default, so ``{}`` is a valid scenario. Each section refuses unknown keys and
takes strict, finite types; :func:`_messages` turns pydantic's errors into one ``field: message``
line each, naming the closest allowed key or value. ``probes:`` entries are typed by their
registered kind (:func:`probe_config`, :func:`to_config`). Reading files is :mod:`fedsim.yamlsafe`,
the checks beyond the schema :mod:`fedsim.validation`; :mod:`fedsim.scenario` ties them together.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any, Literal

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

from fedlib.registry import did_you_mean as _did_you_mean
from fedsim.device import PATTERN as DEVICE_PATTERN
from fedsim.probe_registry import Probe, check_entry
from fedsim.probe_registry import defaults as probe_defaults

MAX_WEIGHT_DECAY = 10.0


class _Section(BaseModel):
    """Every section: unknown keys refused; strict types (no ``true`` for a count, no ``"5"`` for
    a number; an int is still a float); floats finite (no ``.nan``/``.inf``)."""

    model_config = ConfigDict(extra="forbid", validate_default=True, strict=True, allow_inf_nan=False)


class DatasetCfg(_Section):
    name: str = Field("mnist10k", description="see `fedsim list datasets`")
    data_dir: str | None = Field(None, description="directory (or .npz file) for non-embedded datasets")
    domains: list[str] = Field(
        default_factory=list,
        description="feature shift (FedBN's setting; fedsim.data.domains): peer i sees its training, validation "
        "and test images through domain domains[i % len]'s fixed transform (identity, invert, rot90, noise, blur, "
        "contrast) and is evaluated on its own domain's test set; whole models, decentralized mode; [] = none",
    )

    @field_validator("domains")
    @classmethod
    def _known_domains(cls, v: list[str]) -> list[str]:
        from fedsim.data.domains import check_names

        return check_names(v)


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
    exchange: Literal["params", "gradients", "dpsgd"] = Field(
        "params",
        description="params: peers send their trained parameters; gradients: FedSGD, one step per round, "
        "the aggregated gradient is applied (training.local_steps must be 1); dpsgd: D-PSGD / BRIDGE, "
        "decentralized only, one step per round: peers send their parameters, the rule combines them and "
        "the peer then steps with its own gradient taken before the exchange. Bristle keeps exchanging only "
        "its output layer and needs model.trainable: head",
    )
    batching: Literal["auto", "vmap", "loop"] = Field(
        "auto",
        description="how a group computes its peers' gradients over the stacked parameters: vmap (one "
        "torch.func.vmap(grad) call for all peers), loop (torch.func.grad per peer, one after another), auto "
        "(loop when the trainable part has a convolution and runs on the CPU, else vmap: a fixed rule, "
        "fedsim.stacked.resolve_batching). Same results to float rounding, not to the bit",
    )
    bn: Literal["exchanged", "local"] = Field(
        "exchanged",
        description="BatchNorm layers on exchange: exchanged (FedAvg's default: their parameters and running "
        "statistics are sent and aggregated by the rule like the other parameters) or local (FedBN, Li et al. "
        "2021: their parameters and statistics stay with each peer, never sent; decentralized mode only)",
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
        if self.batching != "auto" and not self.whole:
            raise ValueError(
                f"model.batching: {self.batching} applies to whole-model training only (today's linear head "
                "is batched as bmm heads); set model.trainable, hidden, init or exchange, or leave batching: auto"
            )
        if self.bn != "exchanged" and not self.whole:
            raise ValueError(
                f"model.bn: {self.bn} applies to whole-model training only (today's linear head has no "
                "BatchNorm); set model.trainable, hidden, init or exchange, or leave bn: exchanged"
            )
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
    message_dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float32",
        description="precision of the heads peers send (decentralized, linear heads): float16/bfloat16 halve "
        "the messages' memory and bytes, receivers compute in float32, own heads stay float32 (fedsim/routing.py)",
    )
    aggregate_chunk: int = Field(
        64, ge=1, le=1_000_000,
        description="receivers aggregated per vectorised rule call: bounds the gathered in-neighbour tensors "
        "[chunk, n, P]; results do not depend on it",
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
    (:func:`probe_config`), whose fields are ``kind`` and the probe's ``params``. Dumps only the
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
    key of its ``params``, with its default (values are checked by the probe's own ``validate``)."""
    fields: dict[str, Any] = {"kind": (Literal[cls.kind], ...)}
    fields |= {k: (Any, v) for k, v in probe_defaults(cls).items()}
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
        if self.engine.message_dtype != "float32" and (self.mode != "decentralized" or self.model.whole):
            raise ValueError(
                f"engine.message_dtype: {self.engine.message_dtype} messages are for mode: decentralized with "
                "linear heads (no model section); use float32 here"
            )
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
