"""What every built-in probe's ``run`` gets from the trained run: the :class:`ProbeContext`
(built by :func:`_context` from the runner's run and preparation), the hop helpers
(:func:`in_neighbors`, :func:`hop_distances`), the test-set split (:func:`heldout_split`), the
leaving peer's defaults and retraining (:func:`retrain_dir`, :func:`_retrain_without`), and the
``probes.json`` writer. The probes themselves are :mod:`fedsim.probe_unlearning`,
:mod:`fedsim.probe_cloning` and :mod:`fedsim.probe_fedunlearn` (:mod:`fedsim.probes` re-exports
the first two); this module never imports the runner.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from fedsim import canaries as canaries_mod
from fedsim import rng as crng
from fedsim import rundir
from fedsim.errors import probe_error
from fedsim.rundir import json_safe as _plain  # noqa: F401  (JSON-safe copies of the records)
from fedsim.topology import Topology

if TYPE_CHECKING:
    from fedsim.schema_sections import TrainingCfg

# peer -> the final heads [N, P] of the scenario retrained with that peer absent (the runner's
# Run.retrain_without, written under retrain_dir(run dir, peer)); None: no retraining available
Retrain = Callable[[int], np.ndarray]


def _err(i: int, key: str, msg: str) -> ValueError:
    return probe_error(i, key, msg)


# ----------------------------------------------------------------------------- shared context
@dataclass
class _Ctx:
    """What every probe needs from the trained run, as float64 torch tensors (``ProbeContext``)."""

    out_dir: Path | None  # the run's directory
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    train_idx: list[np.ndarray]  # per peer id
    honest: np.ndarray  # bool [N]
    final_params: Tensor  # [N, P] float64
    layer_shape: tuple[int, int]
    bias: bool
    seed: int
    federated: bool
    topology: Topology  # the run's (Prepared.topology)
    training: TrainingCfg  # the scenario's (sc.training)
    canaries: canaries_mod.Canaries | None = None
    rounds: int = 1
    retrain: Retrain | None = None
    recorded_gradients: np.ndarray | None = None  # the unlearning probe's leaver's first-epoch gradients [B, P]
    retrained: dict[int, np.ndarray] = field(default_factory=dict)
    # the trained federation's Simulation.state() (heads and optimizer buffers) and the runner's
    # Run.continue_without (the federated-unlearning probe continues training from it)
    final_state: dict[str, Any] | None = None
    continue_without: Callable[..., dict[int, np.ndarray]] | None = None
    # round -> the heads every peer sent [N, P] (the engine's messages, RoundRecord.messages), kept
    # for the rounds fedsim.runner.message_window names: every round for a probe with needs_messages
    # (gossip cloning), the last rollback_rounds for the unlearning probe's rollback; empty otherwise
    messages: dict[int, np.ndarray] = field(default_factory=dict)
    strategy: Any = None  # the scenario's strategy section (sc.strategy: name and parameters)

    @property
    def n(self) -> int:
        return len(self.train_idx)

    @property
    def num_classes(self) -> int:
        return self.layer_shape[0]

    def data(self, idx: np.ndarray, split: str = "train") -> tuple[Tensor, Tensor]:
        t = torch.from_numpy(np.asarray(idx, dtype=np.int64))
        return (self.x_train[t], self.y_train[t]) if split == "train" else (self.x_test[t], self.y_test[t])

    def peer_data(self, peers: list[int]) -> tuple[Tensor, Tensor]:
        idx = np.concatenate([self.train_idx[p] for p in peers]) if peers else np.empty(0, np.int64)
        return self.data(idx)

    def row(self, target: int | str) -> int:
        """Row of ``final_params`` holding ``target``'s model (any row is the global model in federated mode)."""
        return 0 if target == "global" else int(target)


ProbeContext = _Ctx  # the name a registered probe's run() sees


def _context(run: Any, prep: Any, final_params: np.ndarray, retrain: Retrain | None) -> _Ctx:
    f = prep.features
    train_idx: list[np.ndarray] = []
    for s in sorted(prep.setups, key=lambda s: s.first):
        train_idx += [np.asarray(t, dtype=np.int64) for t in s.train_idx]
    return _Ctx(
        out_dir=Path(run.dir),
        retrain=retrain,
        recorded_gradients=getattr(run, "recorded_gradients", None),
        final_state=getattr(run, "final_state", None),
        continue_without=getattr(run, "continue_without", None),
        messages=dict(getattr(run, "messages", None) or {}),
        strategy=run.sc.strategy,
        x_train=torch.from_numpy(np.asarray(f.x_train)).to(torch.float64),
        y_train=torch.from_numpy(np.asarray(f.y_train)).long(),
        x_test=torch.from_numpy(np.asarray(f.x_test)).to(torch.float64),
        y_test=torch.from_numpy(np.asarray(f.y_test)).long(),
        train_idx=train_idx,
        honest=~np.asarray(prep.byzantine, dtype=bool),
        final_params=torch.from_numpy(np.asarray(final_params)).to(torch.float64),
        layer_shape=(int(f.num_classes), int(f.dim)),
        bias=bool(run.sc.training.bias),
        seed=int(run.sc.seed),
        federated=run.sc.mode == "federated",
        topology=prep.topology,
        canaries=prep.canaries,
        training=run.sc.training,
        rounds=int(run.sc.rounds),
    )


def _check_honest(i: int, key: str, peer: int, ctx: _Ctx) -> None:
    if not ctx.honest[peer]:
        raise _err(i, key, f"peer {peer} is Byzantine in this run (Byzantine ids: "
                   f"{np.flatnonzero(~ctx.honest).tolist()}); choose an honest peer")


def in_neighbors(topo: Topology, round_: int = 0) -> list[np.ndarray]:
    """Every peer's in-neighbours (who it hears) in round ``round_`` of the run's topology
    (``Prepared.topology``, the graph the peers used)."""
    indptr, indices = topo.in_neighbors(round_)
    return [indices[indptr[j] : indptr[j + 1]] for j in range(topo.n)]


def hop_distances(neighbors: list[np.ndarray], source: int) -> np.ndarray:
    """Hops from ``source`` along "j hears i" edges (i → j), by breadth-first search; -1 if unreachable."""
    n = len(neighbors)
    out_edges: list[list[int]] = [[] for _ in range(n)]
    for j, senders in enumerate(neighbors):
        for s in senders:
            out_edges[int(s)].append(j)
    dist = np.full(n, -1, dtype=np.int64)
    dist[source] = 0
    todo = deque([source])
    while todo:
        u = todo.popleft()
        for v in out_edges[u]:
            if dist[v] < 0:
                dist[v] = dist[u] + 1
                todo.append(v)
    return dist


def heldout_split(n_test: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split test indices (deterministic from ``seed``) into ``(calibration, mia, test)``.

    A ``fraction`` of the test set is held out and halved into a calibration part (unlearning's
    stopping reference, LiRA's shadow pool) and an MIA part (non-members); the rest measures test
    accuracy. Each part keeps at least one example.
    """
    if n_test < 3:
        raise ValueError(f"the test set has {n_test} examples; the probes need at least 3")
    perm = crng.numpy_generator(seed, "probes_heldout").permutation(n_test)
    h = min(max(int(round(fraction * n_test)), 2), n_test - 1)
    cal = h // 2
    return np.sort(perm[:cal]), np.sort(perm[cal:h]), np.sort(perm[h:])




# ----------------------------------------------------------------------------- a peer leaves
def retrain_dir(run_dir: Path, peer: int) -> Path:
    """Where the federation retrained without ``peer`` is written (the runner's retraining)."""
    return Path(run_dir) / "probes" / f"retrain-without-{peer}"


def _retrain_without(i: int, ctx: _Ctx, peer: int) -> np.ndarray:
    """Final heads ``[N, P]`` of the scenario retrained with ``peer`` absent (``ctx.retrain``, cached per peer)."""
    if peer not in ctx.retrained:
        if ctx.retrain is None:
            raise _err(i, "retrain", "no retraining is available here (run the probe from a run); set retrain: false")
        ctx.retrained[peer] = np.asarray(ctx.retrain(peer))
    return ctx.retrained[peer]


def _default_leaver(ctx: _Ctx) -> int:
    sizes = np.asarray([len(t) if h else -1 for t, h in zip(ctx.train_idx, ctx.honest, strict=True)])
    return int(np.argmax(sizes))


def _default_unlearn_target(i: int, ctx: _Ctx, peer: int) -> int | str:
    if ctx.federated:
        return "global"
    for j in in_neighbors(ctx.topology)[peer]:
        if ctx.honest[j] and j != peer:
            return int(j)
    raise _err(i, "target", f"peer {peer} has no honest in-neighbour; name a target")


# ----------------------------------------------------------------------------- output
def _write_json(path: Path, obj: Any) -> None:
    rundir.atomic_write(path, (json.dumps(obj, indent=1, allow_nan=False) + "\n").encode())
