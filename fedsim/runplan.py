"""The plan of a run as validation built it (:func:`fedsim.validation.check_semantics` returns one):
the facts it computed with the run's own functions (:mod:`fedsim.runfacts`, :mod:`fedsim.limits`),
kept so that nothing is built twice, and their short text for ``fedsim validate``
(:func:`plan_lines`). Nothing here computes a fact; it only carries and shows them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fedsim.units import human_bytes

if TYPE_CHECKING:
    from fedsim.limits import MemoryEstimate, Work
    from fedsim.schema import Scenario


@dataclass(frozen=True)
class RunPlan:
    """What validation built for a scenario. A fact it could not compute (the dataset's files
    missing without ``require_data``; a whole model's shard sizes) is None. A whole model's memory,
    message size and work are :func:`fedsim.whole_plan.check_model`'s."""

    f: int  # fedsim.runfacts.resolve_f
    in_degree: float  # mean vectors an aggregator hears per round (round 0)
    in_degree_range: tuple[int, int] | None  # (min, max) in round 0; None in federated mode
    rule_params: dict[str, Any] = field(default_factory=dict)  # the built rule's fields, defaults filled in
    largest_shard: int | None = None  # fedsim.runfacts.largest_shard
    shard_pad: int | None = None  # fedsim.runfacts.shard_pad (0: gathered minibatches)
    bytes_per_message: int | None = None  # fedsim.runfacts.bytes_per_message (whole: of whole_plan.message_size)
    sends_per_round: float = 0.0  # fedsim.runfacts.sends_per_round
    # fedsim.runfacts.sent_messages in round 0: a crash attack's peers and unsampled clients send nothing
    messages_round0: int | None = None
    memory: MemoryEstimate | None = None  # fedsim.limits.estimate_memory (whole: whole_plan.memory_estimate)
    available: int | None = None  # the machine's memory it was compared with
    work: Work | None = None  # fedsim.runfacts.training_work (whole: of whole_plan.sample_flop)


def plan_lines(sc: Scenario, plan: RunPlan) -> list[str]:
    """The plan as a few indented lines (``fedsim validate`` prints them after ``ok``)."""
    byz = sc.peers.num_byzantine
    attack = f", attack {sc.peers.attack.name}" if byz and sc.peers.attack.name != "none" else ""
    lines = [f"  peers: {sc.peers.count} ({sc.peers.count - byz} honest, {byz} Byzantine{attack}), {sc.mode}, "
             f"{sc.rounds} rounds"]
    if plan.in_degree_range is None:
        lines.append(f"  server: hears {plan.in_degree:g} clients per round; f = {plan.f}")
    else:
        lo, hi = plan.in_degree_range
        lines.append(f"  topology: {sc.topology.kind}, in-degree mean {plan.in_degree:.2f} (min {lo}, max {hi}) "
                     f"in round 0; f = {plan.f}")
    params = ", ".join(f"{k}={v!r}" for k, v in plan.rule_params.items())
    lines.append(f"  rule: {sc.strategy.name}({params})")
    if plan.largest_shard is not None:
        batch = "steps over the padded shards" if plan.shard_pad else "gathered minibatches"
        lines.append(f"  partition: {sc.partition.kind}, largest shard {plan.largest_shard} samples "
                     f"(batch_size {sc.training.batch_size}: {batch})")
    if plan.bytes_per_message is not None:
        sent = plan.sends_per_round * sc.peers.count if plan.messages_round0 is None else plan.messages_round0
        nominal = plan.sends_per_round * sc.peers.count
        fewer = "" if sent == nominal else f"; {sent:g} sent in round 0, the bytes the run records"
        lines.append(f"  messages: {human_bytes(plan.bytes_per_message)} each ({sc.engine.message_dtype}), "
                     f"{plan.sends_per_round:g} sent per peer per round{fewer}: "
                     f"{human_bytes(plan.bytes_per_message * sent)} in round 0")
    if plan.memory is not None:
        m = plan.memory
        stored = "" if sc.engine.head_dtype == "float32" else f" (stored in {sc.engine.head_dtype})"
        parts = ", ".join(f"{k}{stored if k == 'heads' else ''} {human_bytes(getattr(m, k))}"
                          for k in ("heads", "messages", "data", "topology", "processes", "batches", "checkpoint")
                          if k != "checkpoint" or m.checkpoint)
        machine = "" if plan.available is None else f"; this machine has {human_bytes(plan.available)}"
        lines.append(f"  memory: about {human_bytes(m.total)} at peak ({parts}){machine}")
        if m.device_aggregation:
            lines.append(f"  device aggregation: about {human_bytes(m.device_aggregation)} on {sc.engine.device} "
                         f"(a chunk of engine.aggregate_chunk receivers, not in the host's peak)")
    if plan.work is not None:
        w = plan.work
        lines.append(f"  training work: {w.samples_per_round:.3g} samples and {w.flop_per_round:.3g} FLOP "
                     f"per round, {w.flop_per_round * sc.rounds:.3g} FLOP in all")
    return lines
