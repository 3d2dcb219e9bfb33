"""The scenario's sections: one pydantic model per top-level key of a scenario file (``dataset``,
``peers``, ``training``, ``model``, ``engine``, ...), each with its defaults and its own
cross-field checks. :class:`fedsim.schema.Scenario` holds one of each; the checks that need more
than one section are its own, and those beyond the schema :mod:`fedsim.validation`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fedsim.device import PATTERN as DEVICE_PATTERN

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

    @property
    def source(self) -> str:
        """``embedded`` (shipped with fedsim or a package: no data directory) or ``local files``
        (:data:`fedsim.data.datasets.DATASETS`); the name must be known."""
        from fedsim.data.datasets import DATASETS

        return "embedded" if DATASETS[self.name][1] else "local files"

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


class AttackCfg(_Section):
    name: str = Field("none", description="see `fedsim list attacks`; 'none' for no attack")
    params: dict[str, Any] = Field(default_factory=dict)
    omniscient: bool = Field(True, description="forgers that can use the honest vectors of the round see them")
    collude: bool = Field(True, description="Byzantine peers forge jointly (one forge call) or each alone")

    @property
    def kind(self) -> str:
        """``none``, or the registered attack's kind: ``forger`` (forges the messages it sends) or
        ``poisoner`` (changes its training data); the name must be registered."""
        if self.name == "none":
            return "none"
        import attacks

        return attacks.REGISTRY[self.name].kind


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
    f: int | str | None = Field(
        None,
        description="Byzantine senders a rule tolerates; default: expected Byzantine "
        "neighbours (decentralized) or Byzantine clients (federated), rounded up, so some honest peers "
        "may hear more (summary.json's honest_over_f); max: the most Byzantine in-neighbours any honest "
        "peer has (round 0's graph; federated: min(byzantine, sampled clients)), the worst case",
    )

    @field_validator("f", mode="before")
    @classmethod
    def _f_count_or_max(cls, v: Any) -> Any:
        if v is None or v == "max" or (type(v) is int and v >= 0):
            return v
        raise ValueError(f"got {v!r}; give a count >= 0 or max")


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
        description="'local' runs the same peer groups in this process (side by side or one after another: "
        "engine.local_parallel) with num_actors x cpus_per_actor torch threads in all (at most the machine's "
        "CPUs; a model section on the CPU: 1, fedsim.threads.fixed_threads): no Ray start-up, no object-store "
        "copies, identical metrics (docs/performance.md: when it beats Ray on one machine)",
    )
    address: str | None = Field(
        None, description="Ray cluster address ('auto', 'ray://host:10001'); none: start locally"
    )
    num_actors: int = Field(2, ge=1, le=10_000)
    cpus_per_actor: float = Field(1.0, gt=0, le=1024)
    device: str = Field(
        "cpu",
        pattern=DEVICE_PATTERN,
        description="where the batched training runs (the linear heads, or a model section's trainable part; "
        "aggregation stays on the CPU): cpu, cuda or cuda:N (needs engine.backend: local and a CUDA torch; "
        "not yet run on a GPU; fedsim/device.py)",
    )
    message_dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float32",
        description="precision of the heads peers send (decentralized, linear heads): float16/bfloat16 halve "
        "the messages' memory and bytes, receivers compute in float32, own heads stay in engine.head_dtype "
        "(fedsim/routing.py)",
    )
    head_dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float32",
        description="precision in which every peer's linear head, its optimizer state (momentum, Adam's moments) "
        "and Bristle's trained copy are stored (linear heads, no model section): float16/bfloat16 halve their "
        "memory; the local steps run in float32 a chunk of peers at a time, rounded once per peer and round "
        "after the last local step, and the aggregation computes in float32, rounded as it writes the heads "
        "(fedsim/peers.py; accuracy effect measured in docs/performance.md); float16 with training.optimizer: adam "
        "is refused (Adam's second moments underflow float16)",
    )
    aggregate_chunk: int = Field(
        64, ge=1, le=1_000_000,
        description="receivers aggregated per vectorised rule call: bounds the gathered in-neighbour tensors "
        "[chunk, n, P]; results do not depend on it",
    )
    local_parallel: Literal["auto", "off"] = Field(
        "off",
        description="engine.backend local: 'off' (the default) runs every call one group after another with all "
        "the threads; 'auto' trains (and evaluates) the groups side by side, one thread per group up to the "
        "run's threads, torch threads divided among them (1 each when groups >= threads), as Ray's actors do, "
        "and runs the decentralized aggregation one group after another and the federated server's alone, "
        "each on all the run's threads (fedsim.threads.runs_alone): measured 1.6x faster at 100 federated "
        "clients and 1.5x at 1,000 on a quiet 2-core machine; opt-in (a run-to-run difference in the last bit "
        "of one group's numbers, ~1 process in 8, was oneMKL's vector-math first-call race, now avoided: "
        "fedsim.mkl_vml; the default awaits a wider reproducibility check). "
        "A single group, a single thread or a device other than cpu runs one after another "
        "(fedsim.threads.local_workers; docs/performance.md, 'Thread policy in-process')",
    )

    @field_validator("local_parallel", mode="before")
    @classmethod
    def _off_as_yaml_reads_it(cls, v: Any) -> Any:
        """YAML 1.1 (the scenario files, ``--set``) reads an unquoted ``off`` as false and ``on`` as
        true: taken as ``"off"`` and ``"auto"``."""
        if v is False:
            return "off"
        if v is True:
            return "auto"
        return v

    ray_shared_memory: bool = Field(
        True,
        description="engine.backend ray on a single host: the training features reach the groups, and the groups' "
        "round messages each other and the server, through the senders' shared memory (memfd outboxes read in place) "
        "instead of Ray's object store: the same values, a round 0.65x at 100 clients and 20-130 MiB less at 10,000 "
        "peers (measured); off, or a Ray of several hosts: the object store (fedsim/ray_outbox.py)",
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


@dataclass(frozen=True)
class KindFields:
    """Which kinds of a section read each of its kind-specific fields: ``kind`` names the section's
    attribute that holds its kind, ``reads`` maps a field to the kinds that read it (a field not
    listed is read by every kind); ``noun``: how the message names the kinds (default: ``kind``);
    ``hint``: the message's advice (default: remove it, or give the whole section with ``--set``);
    ``null_is_unset``: a field given as null counts as not given, a departure from "a key given counts
    at any value" (:func:`fedsim.validation.given`) for fields whose null means "none": a run folder
    recorded before its section grew new fields (so no longer complete) holds ``engine.address: null``
    with the local backend, and resumes."""

    kind: str
    reads: dict[str, tuple[str, ...]]
    noun: str | None = None
    hint: str | None = None
    null_is_unset: bool = False


# The fields each kind reads, for every section with a kind and kind-specific fields (in the spirit
# of scikit-learn's declarative parameter constraints): a field the scenario sets that its section's
# kind does not read is an error, "partition.alpha: used only by kind dirichlet (this partition is
# iid)", checked by fedsim.validation.ignored_fields (a key given counts at any value, but in a section
# given complete, as fedsim records it, only at other than its default: fedsim.validation.given). What reads
# them: fedsim.partition.make_partition, fedsim.topology.Topology.build (in federated mode the topology is a
# star: none; a graph kind given there is refused by fedsim.schema.Scenario), fedsim.messages.forge_messages
# (omniscient, collude: update forgers only), fedsim.whole_plan (model.k), fedsim.data.datasets.load
# (data_dir: not an embedded dataset), fedsim.backend.make_backend (engine.address: a Ray cluster; the
# local backend runs in this process). Rule and attack parameters are each registered class's own
# (strategies/attacks.build refuse a key the class lacks; strategy.f: the rule's or forger's reads_f,
# fedsim.validation._unread_f); a probe's keys are its kind's
# (fedsim.schema_probes).
KIND_FIELDS: dict[str, KindFields] = {
    "dataset": KindFields("source", {"data_dir": ("local files",)}, noun="datasets read from"),
    "partition": KindFields("kind", {
        "alpha": ("dirichlet",),
        "k": ("classes",),
        "window": ("windows",),
        "beta": ("quantity",),
        "min_size": ("dirichlet", "quantity"),
        "per_class": ("classes", "windows"),
        "byzantine_classes": ("classes", "windows"),
    }),
    "topology": KindFields("kind", {
        "degree": ("k_regular", "watts_strogatz"),
        "p": ("erdos_renyi", "watts_strogatz"),
        "fanout": ("push_gossip",),
    }),
    "peers.attack": KindFields("kind", {"omniscient": ("forger",), "collude": ("forger",)}),
    "model": KindFields("trainable", {"k": ("last_k",)}),
    "engine": KindFields(
        "backend",
        {"address": ("ray",)},
        noun="backend",
        hint="drop --address (engine.address), or run on Ray: --set engine.backend=ray",
        null_is_unset=True,
    ),
}
