"""What a run will ask of this machine, decided before anything starts: an estimate of its
memory against the machine's, and the CPUs its actors ask for against the CPUs there are.

Validation (:func:`fedsim.scenario.check_semantics`) calls :func:`memory_error` so a scenario
that cannot fit (50,000 peers in 3 GB) fails in a second with one line naming what to lower,
instead of being OOM-killed mid-run (or, on Ray, reported as a dead actor). The estimate counts
the arrays the engine allocates (see :mod:`fedsim.peers`), not every temporary: it is meant to
catch runs that are *clearly* too big, not to predict peak memory to the byte.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fedsim.threads import usable_cpus

if TYPE_CHECKING:
    from fedsim.schema import Scenario

FLOAT = 4  # bytes of a float32
INDEX = 8  # bytes of an int64 index
# Measured (PSS, Linux, torch 2.x CPU, Ray 2.x): a Python process with torch and fedsim imported,
# a Ray actor process hosting a PeerGroup, and Ray's own processes (GCS, raylet, agents).
PROCESS_BYTES = 250 * 2**20
RAY_ACTOR_BYTES = 200 * 2**20
RAY_SYSTEM_BYTES = 350 * 2**20
FINAL_SLICE_BYTES = 16 << 20
"""Bytes of a group's rows asked for (or handed over) in one call on Ray: the float32 heads of
:meth:`fedsim.simulation.Simulation.final_params`, a checkpoint's state (``Simulation.state``) and a
restore's (``Simulation.restore``)."""
NX_EDGE_BYTES = 300  # a networkx edge while a static graph is drawn (both adjacency entries + attr dict)


def machine_memory() -> int:
    """Bytes of memory this process may use: physical memory, or less where a cgroup limits it."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def machine_cpus() -> int:
    """CPUs this process may run on: :func:`fedsim.threads.usable_cpus` (its affinity mask where the OS has one)."""
    return usable_cpus()


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a run needs, by what needs them (each names the scenario field that scales it)."""

    heads: int  # every peer's head, optimizer state, gradient and sent copy
    messages: int  # the gathered heads each aggregating group holds (and forged copies)
    data: int  # features on the driver, each group's copies of its rows and of the test set
    topology: int  # the in-neighbour lists every group keeps, and the graph while it is drawn
    processes: int  # this process, Ray's processes and one per actor
    batches: int = 0  # one local step's minibatch in every group training at once (minibatch_bytes)
    checkpoint: int = 0  # a checkpoint's float32 copy of the heads and optimizer state (checkpoint.every)
    # on a non-CPU engine.device: one chunk of the batched aggregation (device_aggregation_bytes); the
    # device's memory, not the host's, so not in total (what validation compares with the machine)
    device_aggregation: int = 0

    @property
    def total(self) -> int:
        """The host's bytes (:attr:`device_aggregation`, on the device, apart)."""
        return self.heads + self.messages + self.data + self.topology + self.processes + self.batches + self.checkpoint

    def biggest(self) -> tuple[str, str]:
        """``(field, advice)``: the scenario field that scales the component needing the most, and
        what to lower."""
        parts = {
            ("peers.count", "peers.count (or use a backbone with fewer features)"):
                self.heads + self.messages + self.checkpoint,
            ("engine.num_actors", "engine.num_actors (each group copies the test set) or the dataset"): self.data,
            ("topology.kind", "the topology's degree (topology.kind, degree, p)"): self.topology,
            ("engine.num_actors", "engine.num_actors (each Ray actor is a process)"): self.processes,
            ("training.batch_size", "training.batch_size (each local step draws peers × batch_size samples)"):
                self.batches,
        }
        return max(parts, key=parts.__getitem__)


def ray_actor_processes(sc: Scenario, groups: int) -> int:
    """Ray actor processes of scenario ``sc`` on this machine (:func:`estimate_memory`'s
    ``ray_actors``): its ``groups`` peer groups and the federated server on a Ray fedsim starts
    here; 0 in-process or on a cluster (the actors' memory is the cluster's)."""
    on_ray = sc.engine.backend == "ray" and local_ray_cpus(sc) is not None
    return groups + (sc.mode == "federated") if on_ray else 0


def directed_edges(kind: str, n: int, degree: int, p: float, fanout: int) -> int:
    """Directed edges of the topology: the in-neighbour index entries of one CSR copy."""
    return {
        "complete": n * (n - 1),
        "ring": 2 * n,
        "k_regular": n * degree,
        "watts_strogatz": n * degree,
        "erdos_renyi": int(p * n * (n - 1)),
        "push_gossip": n * fanout,
    }.get(kind, 0)


def minibatch_bytes(*, per_group: int, batch: int, dim: int, num_classes: int, concurrent: int,
                    padded_to: int = 0, step_peers: int | None = None) -> int:
    """Bytes one local step's minibatch holds at its peak in each of ``concurrent`` groups training
    at once, ``per_group`` peers each (``fedsim.peers.PeerGroup._batch``, ``fedsim.heads.ce_grad``;
    ``fedsim.whole.WholePeerGroup._batch``): the drawn indices ``[p, B]`` (int64, twice while
    :func:`fedsim.rng.integers` hashes them; :func:`fedsim.runfacts.shard_pad`'s padded path adds
    their float32 draw counts), then over the step's ``n`` samples (``B`` gathered, or
    ``padded_to``, the zero-padded shards, which :func:`padded_bytes` counts with the data): the gathered
    inputs ``[p, n, dim]`` with their flat index and labels (none when padded), and the logits,
    log-softmax and gradient ``[p, num_classes, n]`` with the per-sample loss and weights (a whole
    model passes ``num_classes=0``: its logits are among its activations). ``step_peers``: the
    peers the logits, log-softmax and gradient span at once (:func:`fedsim.heads.step_peers`: a
    chunk of ``fedsim.heads.TRAIN_CHUNK_BYTES`` under SGD without weight decay; default
    ``per_group``, unchunked steps); the batch itself is drawn and gathered for the whole group (an upper
    bound: the chunk-major steps of ``fedsim.heads._chunk_major_steps`` gather one chunk's rows at a time).
    Summed, not overlapped: an upper bound of the step's temporaries (the indices of all steps
    drawn at once are at most ``PeerGroup.DRAW_AT_ONCE`` numbers, not counted)."""
    p, n = per_group, padded_to or batch
    chunk = p if step_peers is None else min(p, step_peers)
    draws = 2 * INDEX * p * batch + (FLOAT * p * batch if padded_to else 0)
    gathered = 0 if padded_to else p * n * (FLOAT * dim + 2 * INDEX)
    step = FLOAT * chunk * n * (3 * num_classes + 2)
    return concurrent * (draws + gathered + step)


# float64 tensors of the population's size [chunk, heard + 1, P] a batched rule holds at once
# (strategies._math.population, then the median's / trimmed mean's sort values and int64 indices, or
# centered clipping's differences and their clipped copies; fedavg and Krum hold fewer, Bristle one
# candidate at a time): an upper bound read from the code, not measured on a GPU
AGGREGATION_F64_COPIES = 3


def device_aggregation_bytes(*, chunk: int, heard: int, num_params: int, message_bytes: int) -> int:
    """Bytes the decentralized aggregation's batched path (:mod:`fedsim.gossip`) holds on a non-CPU
    ``engine.device`` for one chunk of ``chunk`` receivers (``engine.aggregate_chunk``; an in-process
    run's groups aggregate one after another) that each heard ``heard`` rows of ``num_params`` values:
    the heard rows and the chunk's sent heads, moved in the message dtype (``message_bytes`` a
    value) and converted to float32 there (:meth:`fedsim.routing.Rows.take`: one tensor when the
    messages are float32), the ``own`` rows and the result (float32), and
    :data:`AGGREGATION_F64_COPIES` float64 working tensors of the population ``[chunk, heard + 1, P]``.
    The context (validation splits, overlaps) is not counted."""
    moved = message_bytes + (FLOAT if message_bytes != FLOAT else 0)
    return chunk * num_params * ((heard + 1) * (moved + 8 * AGGREGATION_F64_COPIES) + 2 * FLOAT)


def padded_bytes(*, peers: int, pad: int, dim: int, train_rows: int) -> int:
    """Bytes the zero-padded shards (:func:`fedsim.runfacts.shard_pad`, ``PeerGroup.padded``) hold
    beyond the training rows the data copies count: every peer's shard padded to ``pad`` rows of
    ``dim`` float32 features (``peers × pad`` rows in place of the ``train_rows`` the peers hold,
    whose unpadded copies are then freed) and their int64 labels. Up to ``pad / mean shard`` times the
    rows: a skewed partition with every shard at most ``training.batch_size`` pads most peers."""
    rows = peers * pad
    return FLOAT * dim * max(0, rows - train_rows) + INDEX * rows


def estimate_memory(
    *,
    peers: int,
    num_params: int,
    dim: int,
    n_train: int,
    n_test: int,
    groups: int,
    concurrent: int,
    adam: bool,
    consolidated: bool,
    forged: bool,
    edges: int,
    ray_actors: int,
    message_bytes: int = FLOAT,
    concatenated: bool = True,
    batches: int = 0,
    padded: int = 0,
    server_float64: bool = False,
    gradient_peers: int | None = None,
    head_bytes: int = FLOAT,
    working_peers: int = 0,
    checkpoints: bool = False,
    state_bytes: int = 0,
    training_concurrent: int | None = None,
) -> MemoryEstimate:
    """Memory of a run from its sizes. ``groups`` peer groups (actors), of which ``concurrent``
    aggregate at once and ``training_concurrent`` (default ``concurrent``) train at once
    (:func:`fedsim.threads.groups_at_once`: all on Ray; in-process one aggregates at a time and
    :func:`fedsim.threads.local_workers` train side by side);
    ``ray_actors`` Ray actor processes (0: in-process); ``edges`` directed topology edges;
    ``message_bytes`` bytes of a sent value (``engine.message_dtype``); ``concatenated``: each
    aggregating group concatenates every message (the server, or a forging attack; decentralized
    groups otherwise gather heard rows only, :class:`fedsim.routing.Rows`); ``batches``:
    :func:`minibatch_bytes`; ``padded``: :func:`padded_bytes` (counted with the data);
    ``server_float64``: the federated server keeps a float64 ``[N, P]`` scratch of the messages for
    its rule (``Strategy.float64_input``, ``fedsim.server.Server._scratch``); ``gradient_peers``: the
    peers whose gradient exists at once in each of the ``training_concurrent`` groups
    (:func:`fedsim.heads.step_peers`: chunked local steps keep one chunk-sized gradient buffer per
    thread that runs groups, ``fedsim.heads.kept_buffer``; default every peer's); ``head_bytes``:
    bytes of a stored value of the heads, their optimizer state and CWR copy (``engine.head_dtype``);
    ``working_peers``: with half-precision heads, the peers whose float32 working copies (heads and
    optimizer state) exist at once in each of the ``training_concurrent`` groups
    (:func:`fedsim.heads.upcast_steps`; 0 with float32 heads, trained where they are stored);
    ``checkpoints``: the run writes checkpoints (``checkpoint.every``), each needing a float32 copy of
    every peer's heads and optimizer state (:meth:`fedsim.simulation.Simulation.state`, whatever
    ``head_bytes``) besides the groups' ``get_state`` copies then alive: one group's in-process, on
    Ray one slice of :data:`FINAL_SLICE_BYTES` of a group's rows at a time (counted thrice: in the
    actor, Ray's object store and the driver); ``state_bytes``: bytes of a peer's further per-peer state in those
    copies (a whole model's stacked buffers with BatchNorm, float64: :meth:`fedsim.whole.WholePeerGroup.get_state`).
    A resume needs no more (measured in-process and on Ray): :meth:`fedsim.simulation.Simulation.restore`
    holds the loaded checkpoint, the fresh shapes on the ``meta`` device (no group's copy) and, on Ray,
    one slice of a group's rows at a time, all freed before the first round (docs/performance.md).
    Counted on top of the round's transients (a checkpoint is written
    between rounds, so this over-counts: the peak is the larger of the two). Not counted for Ctrl-C's
    one checkpoint of a run with ``checkpoint.every: 0`` (:class:`fedsim.callbacks.Interrupt`): it
    would add this term to every such run (+0.64 GiB on a 1.36 GiB peak at 10,000 peers) for a
    one-off at the end that peaked 0.09 GiB above the estimate without it (docs/performance.md)."""
    stored = 2 + int(adam) + int(consolidated)  # w+b, momentum; Adam's v; CWR copy (engine.head_dtype)
    training = concurrent if training_concurrent is None else training_concurrent
    gradients = peers if gradient_peers is None else min(peers, gradient_peers * training)
    working = min(peers, working_peers * training) * (2 + int(adam))  # float32 copies of a chunk's w+b, m, v
    # + the sent copy, the gradients and the working copies, float32
    heads = num_params * (head_bytes * peers * stored + FLOAT * (peers + gradients + working))
    messages = num_params * peers * (message_bytes + FLOAT * concurrent * (int(concatenated) + int(forged))
                                     + 2 * FLOAT * int(server_float64))
    data = FLOAT * dim * (2 * n_train + n_test * (1 + groups)) + padded  # driver, group rows, test copies
    topology = INDEX * edges * (groups + 1) + NX_EDGE_BYTES * edges // 2
    processes = PROCESS_BYTES + (RAY_SYSTEM_BYTES + RAY_ACTOR_BYTES * ray_actors if ray_actors else 0)
    per_peer = FLOAT * num_params * (2 + int(adam)) + state_bytes  # w+b, m, v; (whole models) buffers
    largest = -(-peers // max(groups, 1))
    # merged + the largest group's copy (in-process) or one slice of its rows, in the actor, Ray's
    # object store and the driver (Ray)
    state_rows = peers + (3 * min(largest, max(1, FINAL_SLICE_BYTES // max(per_peer, 1))) if ray_actors else largest)
    checkpoint = per_peer * state_rows if checkpoints else 0
    return MemoryEstimate(heads, messages, data, topology, processes, batches, checkpoint=checkpoint)


@dataclass(frozen=True)
class Work:
    """The local steps' arithmetic of one round (:func:`training_work`)."""

    samples_per_round: int  # minibatch samples drawn: peers × local_steps × batch_size
    flop_per_round: int  # each step's columns × the FLOP of one column (head_flop; a whole model's sample_flop)


# the local steps' effective rate measured by benchmarks/scale.py in-process on a 2-core machine (10,000
# peers, padded shards: 5.8e9 FLOP a round, train phase 0.93 s a round, load 0.9); small heads run slower
# (20 digit heads, 10,000 local steps of 32: 1.6e10 FLOP a round in 10-13 s, load 5): the warning's time
# is a lower bound
LOCAL_STEPS_FLOP_PER_S = 6e9
# A warning, not a refusal, above this many FLOP of local steps in a whole run: at that rate about half
# an hour of training arithmetic alone (minutes on a machine ten times faster), where the shipped
# linear-head scenarios need at most 4.4e9 (attack_matrix.yaml)
WORK_WARN_FLOP = 10**13


def head_flop(num_classes: int, dim: int) -> int:
    """FLOP of a linear head's local step per column: two ``bmm`` of ``2 · classes · dim``
    (:func:`fedsim.heads.ce_grad`: logits and weight gradient; the softmax and update, linear in
    the head, not counted)."""
    return 4 * num_classes * dim


def training_work(*, peers: int, local_steps: int, batch: int, columns: int, flop_per_column: int) -> Work:
    """The local steps per round: ``peers × local_steps`` steps of ``batch`` drawn samples each over
    ``columns`` samples (``batch`` gathered, or a linear head's padded shard,
    :func:`fedsim.runfacts.shard_pad`), each column ``flop_per_column`` FLOP (:func:`head_flop`; a
    whole model's forward and backward pass of one sample, :func:`fedsim.whole_plan.sample_flop`)."""
    steps = peers * local_steps
    return Work(steps * batch, steps * columns * flop_per_column)


def work_warning(work: Work, rounds: int, threshold: int = WORK_WARN_FLOP) -> str | None:
    """A warning when the run's local steps need more than ``threshold`` FLOP (:data:`WORK_WARN_FLOP`)."""
    total = work.flop_per_round * rounds
    if total <= threshold:
        return None
    return (
        f"training.local_steps: the local steps need about {total:.2g} FLOP ({work.flop_per_round:.2g} per round × "
        f"{rounds} rounds, {work.samples_per_round:.3g} samples per round), above {threshold:.0e}: at least "
        f"{total / LOCAL_STEPS_FLOP_PER_S / 3600:.1f} h of training at the {LOCAL_STEPS_FLOP_PER_S / 1e9:g} GFLOP/s "
        "measured on 2 CPU cores; lower training.local_steps, training.batch_size, peers.count or rounds if unintended"
    )


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def memory_error(est: MemoryEstimate, available: int | None = None) -> str | None:
    """One line saying what to lower when ``est`` exceeds the machine's memory, else None."""
    available = machine_memory() if available is None else available
    if est.total <= available:
        return None
    return (
        f"needs about {gib(est.total)} of memory (peer heads and optimizer state {gib(est.heads)}, "
        f"gathered messages {gib(est.messages)}, data copies {gib(est.data)}, topology {gib(est.topology)}, "
        f"processes {gib(est.processes)}, minibatches {gib(est.batches)}"
        + (f", checkpoint copy {gib(est.checkpoint)}" if est.checkpoint else "")
        + f"), this machine has {gib(available)}; "
        f"lower {est.biggest()[1]}"
    )


def local_ray_cpus(sc: Scenario) -> int | None:
    """CPUs of the Ray instance a run starts on this machine (None: it attaches to
    ``engine.address``): the CPUs this process may use (:func:`machine_cpus`), or more where the
    actors ask for more, so every actor is scheduled. Federated mode's server actor asks for
    ``cpus_per_actor`` too; without it in the count the server would never be scheduled where
    ``machine_cpus() <= num_actors`` and round 0 would wait forever."""
    if sc.engine.address:
        return None
    actors = sc.engine.num_actors + (1 if sc.mode == "federated" else 0)
    return max(machine_cpus(), math.ceil(actors * sc.engine.cpus_per_actor))


def batch_warning(batch_size: int, largest_shard: int) -> str | None:
    """A warning (drawing with replacement makes it legal) when ``training.batch_size`` exceeds
    every peer's shard: each step draws ``batch_size`` samples from at most ``largest_shard``."""
    if batch_size <= largest_shard:
        return None
    return (
        f"training.batch_size: {batch_size} exceeds the largest peer's training shard ({largest_shard} samples): "
        "minibatches are drawn with replacement, so each step repeats samples (legal; the same expected gradient "
        f"as batch_size {largest_shard}, for more work)"
    )


def cpu_warning(num_actors: int, cpus_per_actor: float, ray_cpus: int | None, cpus: int | None = None) -> str | None:
    """A warning when a locally started Ray instance would be given more CPUs than the machine
    has (``ray_cpus``: what the run gives Ray, None when it attaches to a cluster): every actor
    is a process of its own, so 40 actors on 2 CPUs cost 40 processes' memory and share 2 CPUs."""
    cpus = machine_cpus() if cpus is None else cpus
    if ray_cpus is None or ray_cpus <= cpus:
        return None
    fit = max(1, math.floor(cpus / cpus_per_actor))
    return (
        f"engine.num_actors: {num_actors} actors × {cpus_per_actor:g} CPUs give Ray {ray_cpus} CPUs on a machine "
        f"with {cpus}: the actors share {cpus} CPUs, each a process of about {RAY_ACTOR_BYTES // 2**20} MiB; "
        f"set engine.num_actors <= {fit} to give each actor a CPU of its own"
    )
