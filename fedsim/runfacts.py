"""The facts a run and its validation share (docs/architecture.md, "Who owns which fact").

:func:`fedsim.prepare.prepare` and :mod:`fedsim.validation` both call these, so a scenario that
validates computes the same Byzantine placement, topology, ``f``, rule parameters and partition
when it runs.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from fedlib.registry import param_names
from fedsim import limits

if TYPE_CHECKING:
    from fedsim.partition import Partition
    from fedsim.schema import Scenario
    from fedsim.topology import Topology
    from strategies import Strategy


def default_f(sc: Scenario, in_degree: float) -> int:
    """Byzantine senders a rule tolerates when ``strategy.f`` is unset: the expected number among
    an aggregator's ``in_degree`` senders, rounded up (federated: among the ``k`` sampled clients).
    ``strategy.f: max`` in federated mode is the worst case, ``min(byzantine, k)``; decentralized it
    needs the graph (:func:`resolve_f`)."""
    if isinstance(sc.strategy.f, int):
        return sc.strategy.f
    b = sc.peers.num_byzantine
    if sc.mode == "federated":
        k = clients_per_round(sc)
        if sc.strategy.f == "max":
            return min(b, k)
        return b if k == sc.peers.count else int(math.ceil(b * k / sc.peers.count)) if b else 0
    if sc.strategy.f == "max":
        raise ValueError("strategy.f: max needs the topology (fedsim.runfacts.resolve_f)")
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
    server every client it samples, :func:`clients_per_round`). The run (:func:`fedsim.prepare.prepare`) and
    validation both call this, so they agree on ``f`` (an Erdős–Rényi graph's real mean degree,
    not ``p·(n-1)``)."""
    if sc.mode == "federated":
        k = clients_per_round(sc)
        return default_f(sc, k), float(k)
    in_degree = float(np.mean(topo.degrees(0)))
    if sc.strategy.f == "max":  # the worst case: the most Byzantine in-neighbours an honest peer has
        return byzantine_exposure(sc, topo, 0)["max_byzantine_in_neighbours"], in_degree
    return default_f(sc, in_degree), in_degree


def byzantine_in_neighbours(topo: Topology, byzantine: np.ndarray, round_: int = 0) -> np.ndarray:
    """``[N]``: how many of each peer's in-neighbours in round ``round_`` are Byzantine. ``f``
    (:func:`default_f`) is the *expected* number, rounded up, so with random placement some honest
    peers hear more than ``f`` Byzantine senders and a rule's guarantee does not cover them
    (``fedsim.run(...).plan["honest_over_f"]`` counts them)."""
    ptr, idx = topo.in_neighbors(round_)
    return np.add.reduceat(np.append(byzantine[idx], 0).astype(np.int64), ptr[:-1]) * (np.diff(ptr) > 0)


EXPOSURE_KEYS = ("honest_over_f", "max_byzantine_in_neighbours")  # byzantine_exposure's, in summary.json's order


def byzantine_exposure(sc: Scenario, topo: Topology, f: int) -> dict[str, int]:
    """How far ``f`` covers the honest peers of a decentralized run, on round 0's graph (push
    gossip draws a new one each round): ``honest_over_f``, the honest peers with more than ``f``
    Byzantine in-neighbours (:func:`byzantine_in_neighbours`), and ``max_byzantine_in_neighbours``,
    the most any honest peer has (what ``strategy.f: max`` resolves to). The run computes it once
    (:func:`fedsim.prepare.prepare`, ``Prepared.info``): ``summary.json``, ``fedsim.run(...).plan``."""
    byz = byzantine_mask(sc)
    heard = byzantine_in_neighbours(topo, byz)[~byz]
    return dict(zip(EXPOSURE_KEYS, (int((heard > f).sum()), int(heard.max(initial=0))), strict=True))


def exposure_of(info: dict[str, Any]) -> dict[str, int]:
    """The :func:`byzantine_exposure` facts a run's ``info`` (``Prepared.info``) holds, in
    :data:`EXPOSURE_KEYS`' order; empty for a federated run (computed for decentralized ones only):
    what ``summary.json`` and ``fedsim.run(...).plan`` report."""
    return {k: info[k] for k in EXPOSURE_KEYS if k in info}


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
    if sc.mode == "federated" and "include_own" in param_names(strategies.REGISTRY.get(sc.strategy.name)):
        params.setdefault("include_own", False)
    return params


def build_rule(sc: Scenario) -> Strategy:
    """The scenario's rule, built as every group builds it (:func:`strategy_params`; ``ValueError``
    for a name or parameter it refuses). What the engine does for the rule (the messages' size, the
    class sets peers compare, consolidated weights) is read from this instance, not its class: a
    pre-aggregator's instance reports its inner rule's (:class:`strategies._compose.PreAggregator`)."""
    import strategies

    return strategies.build(sc.strategy.name, strategy_params(sc))


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


def resource_warnings(sc: Scenario, largest_shard: int | None = None, work: limits.Work | None = None) -> list[str]:
    """Warnings (not errors) about what the run asks of this machine: a local Ray instance given
    more CPUs than the machine has (``engine.num_actors``); a ``training.batch_size`` above every
    peer's shard (``largest_shard``: :func:`largest_shard`, omitted where unknown); local steps
    above :data:`fedsim.limits.WORK_WARN_FLOP` (``work``: :func:`training_work`, omitted where unknown;
    a linear head's only: the warning's time is at :data:`fedsim.limits.LOCAL_STEPS_FLOP_PER_S`, the
    heads' rate, and a whole CNN ran about 9 times faster a FLOP, 2.0e11 FLOP a round of
    ``scenarios/fedbn_feature_shift.yaml`` in 3.6 s of training, load 7, so the warning would overstate
    its time; ``fedsim validate``'s plan shows a whole model's work all the same)."""
    warnings = []
    if sc.engine.backend == "ray":
        warnings.append(limits.cpu_warning(sc.engine.num_actors, sc.engine.cpus_per_actor, limits.local_ray_cpus(sc)))
    if largest_shard is not None:
        warnings.append(limits.batch_warning(sc.training.batch_size, largest_shard))
    if work is not None and not sc.model.whole:
        warnings.append(limits.work_warning(work, sc.rounds))
    return [w for w in warnings if w]


def training_work(sc: Scenario, flop_per_column: int, largest: int | None = None) -> limits.Work:
    """:func:`fedsim.limits.training_work` of the run, ``flop_per_column`` FLOP a sample of a step
    (a linear head's :func:`fedsim.limits.head_flop`, a whole model's
    :func:`fedsim.whole_plan.sample_flop`): a linear-head run whose largest shard is ``largest``
    (:func:`largest_shard`) steps over the padded shards or the gathered batch (:func:`shard_pad`);
    a whole model (``largest`` None) always over the gathered batch."""
    t = sc.training
    columns = t.batch_size if largest is None else shard_pad(largest, t.batch_size) or t.batch_size
    return limits.training_work(peers=sc.peers.count, local_steps=t.local_steps, batch=t.batch_size,
                                columns=columns, flop_per_column=flop_per_column)


def largest_shard(sc: Scenario, part: Partition) -> int:
    """The most training samples any peer of ``part`` (:func:`partition_for`) holds once an
    unlearning probe's member canaries joined the leaver's shard (:func:`fedsim.canaries.planted_sizes`):
    what the groups hold, for validation and the run alike (:func:`shard_pad`, the batch warning).
    A probe's malformed canaries or leaver: :func:`fedsim.canaries.plant`'s ``ValueError``."""
    from fedsim.canaries import planted_sizes

    return int(planted_sizes(list(part.train), byzantine_mask(sc), sc.probes).max(initial=0))


def forges(sc: Scenario, attack: Any) -> bool:
    """Whether the run's Byzantine peers send forged messages: :func:`sends_forgeries` of ``attack``
    (the scenario's, built; None for none) and the run's Byzantine placement (:func:`byzantine_mask`,
    what every group is given). The memory estimates then count the forged copies and every group's
    concatenation of the messages (the forger sees every vector)."""
    return sends_forgeries(attack, byzantine_mask(sc))


def sends_forgeries(attack: Any, byzantine: np.ndarray) -> bool:
    """Whether peers ``byzantine`` (bool ``[N]``) send forged messages: ``attack`` (built; None for
    none) is an update forger (:class:`attacks.UpdateForger`, not a data poisoner) and one of them
    is Byzantine. Validation (:func:`forges`, from the scenario) and each group
    (``GroupSetup.byzantine``: the gossip aggregation's concatenation, :func:`fedsim.messages.forge_messages`)
    ask this one function."""
    import attacks

    return isinstance(attack, attacks.UpdateForger) and bool(np.any(byzantine))


def silent_peers(sc: Scenario, byzantine: np.ndarray) -> np.ndarray:
    """bool ``[N]``: the peers that send nothing at all, the Byzantine peers ``byzantine`` of an
    attack whose forger is silent every round (:attr:`attacks.UpdateForger.silent`: crash). They
    send 0 bytes (:func:`sent_messages`, ``bytes_sent_*`` in ``metrics.jsonl``)."""
    import attacks

    if sc.peers.attack.name == "none":
        return np.zeros(len(byzantine), dtype=bool)
    return silent_of(attacks.build(sc.peers.attack.name, sc.peers.attack.params), byzantine)


def silent_of(attack: Any, byzantine: np.ndarray) -> np.ndarray:
    """:func:`silent_peers` of an attack already built (None for none): validation's, built once."""
    silent = getattr(attack, "silent", False) and sends_forgeries(attack, byzantine)
    return np.asarray(byzantine, dtype=bool).copy() if silent else np.zeros(len(byzantine), dtype=bool)


def sent_messages(sc: Scenario, topo: Topology | None, silent: np.ndarray, sampled: np.ndarray | None) -> int:
    """Messages sent in a round by the peers not ``silent`` (:func:`silent_peers`), of those
    ``sampled`` (federated client sampling; None: all): one a client (federated), the fanout a
    peer (push gossip), else each peer's out-degree in ``topo`` (its in-neighbour lists)."""
    sends = ~np.asarray(silent, dtype=bool)
    if sampled is not None:
        sends &= np.asarray(sampled, dtype=bool)
    if sc.mode == "federated":
        return int(sends.sum())
    if sc.topology.kind == "push_gossip":
        return int(sc.topology.fanout) * int(sends.sum())
    if topo is None:
        raise ValueError("sent_messages: a graph topology needs the built topology")
    _, senders = topo.in_neighbors(0)
    return int(np.bincount(senders, minlength=len(sends))[sends].sum())


def shard_pad(largest: int, batch_size: int) -> int:
    """``GroupSetup.shard_pad`` of a linear-head run: the largest shard when no shard exceeds the
    batch (each step then weighs the zero-padded shards by draw counts instead of gathering
    ``batch_size`` rows, ``fedsim.peers.PeerGroup._batch``), else 0 (gathered)."""
    return largest if largest <= batch_size else 0


def sends_per_round(sc: Scenario, mean_in_degree: float) -> float:
    """Messages each peer sends per round: 1 (federated), the push-gossip fanout, or the mean
    in-degree (:func:`resolve_f`); ``bytes_sent_*`` in ``metrics.jsonl`` and ``fedsim validate``'s plan."""
    if sc.mode == "federated":
        return 1.0
    if sc.topology.kind == "push_gossip":
        return float(sc.topology.fanout)
    return float(mean_in_degree)


@functools.lru_cache(maxsize=16)
def backbone_param_count(name: str) -> int:
    """Parameters of the backbone ``name`` (0 for one without a network, ``identity``; built once
    per process: validation and the run both ask)."""
    from fedsim.models.backbones import BACKBONES

    spec = BACKBONES[name]
    return 0 if spec.build is None else sum(p.numel() for p in spec.build().parameters())


def message_values(sc: Scenario, rule: Strategy, num_params: int) -> int:
    """Values in one message of a linear-head run: the head's ``num_params``, plus the backbone's
    parameters where the scenario's rule (:func:`build_rule`) exchanges the full model
    (``Strategy.exchanges``: what its paper's peers send, though only the head trains)."""
    full = rule.exchanges == "full_model"
    return num_params + (backbone_param_count(sc.backbone.name) if full else 0)


def bytes_per_message(sc: Scenario, values: int) -> int:
    """Bytes of one message of ``values`` numbers in ``engine.message_dtype`` (``Prepared.bytes_per_message``)."""
    from fedsim.routing import MESSAGE_DTYPES

    return MESSAGE_DTYPES[sc.engine.message_dtype].itemsize * values
