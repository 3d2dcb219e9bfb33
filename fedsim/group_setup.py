"""What one peer group (or the federated server) is given: :class:`GroupSetup`, plain data that
:func:`fedsim.prepare.prepare` builds once per group and that pickles to a Ray actor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fedsim.topology import Topology

if TYPE_CHECKING:
    from fedsim.schema_sections import AttackCfg, TrainingCfg


@dataclass
class GroupSetup:
    """Everything a group needs; plain data (numpy arrays, the typed scenario sections, a built
    ``Topology``) so it pickles to a Ray actor. ``training`` and ``attack`` are the scenario's own
    pydantic sections (``sc.training``, ``sc.peers.attack``), read by attribute; ``strategy`` is the
    resolved rule (``{"name", "params"}``, defaults filled in), not the scenario section."""

    first: int  # global id of the first hosted peer
    train_idx: list[np.ndarray]  # per hosted peer, indices into the training features
    val_idx: list[np.ndarray]
    byzantine: np.ndarray  # bool [N] over all peers
    num_peers: int
    num_classes: int
    dim: int
    seed: int
    rounds: int
    mode: str  # decentralized | federated
    training: TrainingCfg  # the scenario's training section (sc.training)
    strategy: dict[str, Any]  # name, params
    f: int  # Byzantine vectors a rule is told to expect among those it aggregates (scenario.resolve_f)
    received: int  # vectors an aggregation combines per round, as the rule's check sees it (an attack's ctx.n)
    attack: AttackCfg  # the scenario's attack section (sc.peers.attack): name, params, omniscient, collude
    topology: Topology  # built by fedsim.scenario.build_topology (prepare.prepare), never rebuilt here
    absent: np.ndarray | None = None  # bool [N]: peers that take no part (their messages never arrive)
    threads: int = 1  # torch intra-op threads of the hosting process (engine.cpus_per_actor)
    # > 0 where no peer of the run holds more than a minibatch of samples: every peer's shard is
    # zero-padded to this many samples and trained on draw-count weights (see PeerGroup.train).
    # One value for the whole run (prepare.prepare), so a peer's numbers never depend on its group.
    shard_pad: int = 0
    # bool [N, C]: the classes each peer holds (held_classes over the whole partition, prepare.prepare),
    # set when the rule needs "overlap"; None: each group derives its hosted peers' from their data
    classes: np.ndarray | None = None
    # the scenario's plugins (fedsim.plugins): imported in the hosting process before any rule or attack is built
    plugins: tuple[str, ...] = ()
    # global id of a peer whose first-epoch minibatch gradients are recorded (an unlearning probe's
    # leaver, prepare.prepare); None: nothing is recorded (no cost)
    record_gradients: int | None = None
    message_dtype: str = "float32"  # engine.message_dtype: precision of the sent heads (fedsim.routing)
    head_dtype: str = "float32"  # engine.head_dtype: precision of the stored heads and optimizer state (fedsim.peers)
    aggregate_chunk: int = 64  # engine.aggregate_chunk: receivers per vectorised rule call
    # the group's train() may send views of its heads (fedsim.routing.head_views): its return value is
    # copied out as the call ends (a Ray actor, decentralized: Simulation sets it from the backend)
    sends_views: bool = False
    # per hosted peer, its rows of the test features (dataset.domains: its own domain's test set,
    # fedsim.domain_shift); None: every peer is evaluated on the whole test set
    test_idx: list[np.ndarray] | None = None
    # engine.device (fedsim.device) of the linear-head path: where PeerGroup's heads, optimizer state,
    # shards and test set live. "cpu" for a model section's groups (theirs is the plan's, fedsim.whole)
    device: str = "cpu"
