"""What the built-in probes do: the unlearning and cloning probes (over the pure-torch
:mod:`attacks.probes`) against a trained federation, and the :class:`ProbeContext` every probe's
``run`` gets. Their keys, value checks and ``summary.json`` form are
:mod:`fedsim.probe_builtins` (registered kinds, :mod:`fedsim.probe_registry`);
:func:`fedsim.probe_runs.run_probes` runs a scenario's probes after the last round and writes
``<run>/probes.json``, handed the retraining as a callable (this module never imports the
runner); :func:`fedsim.report.format_probes` renders ``probes.json`` as Markdown.

Unlearning (``kind: unlearning``) — a peer leaves and asks that its data be forgotten:

* forget set = the leaving peer's training samples; retained set = the other honest peers'
  training samples; the test set is split once (deterministically from the seed) into a
  held-out part (``heldout_fraction``) and the rest (test accuracy). The held-out part is halved
  again: a *calibration* half (the gradient ascent's stopping reference — with canaries joined by
  the calibration canaries, :func:`fedsim.canaries.stopping_reference` — and the shadow pool of
  offline LiRA) and an *MIA* half (the non-members of every membership-inference number), so the
  attack is never scored on the data the calibration or the shadows used.
* the target's head (the leaver's first honest in-neighbour by default; the global model in
  federated mode) is unlearned by calibrated first-epoch gradient ascent
  (:func:`attacks.probes.unlearn_gradient_ascent`), replaying the leaver's real first-epoch
  minibatch gradients, recorded by its peer group during training (``GroupSetup.record_gradients``:
  ``ceil(shard / batch_size)`` steps, each at the head that step started from; only when an
  unlearning probe runs). Without them (a resumed run) the first epoch's gradient is replayed at
  ``θ = 0`` (fedsim's heads start at zero); ``trace.mode`` says which (``recorded`` or
  ``first_epoch_initial``). Beside it, the baselines of :mod:`attacks.probes.retrain_gap`, all judged
  against the retrained head in function space (``methods``, docs/probes.md);
* canaries (``canaries``, :mod:`fedsim.canaries`) and membership tests against nulls
  (``membership``, :mod:`attacks.probes.membership`);
* gold standard: the same scenario retrained with the peer absent, in
  ``<run>/probes/retrain-without-<peer>/`` (``retrain: false`` skips it);
* influence spread: loss-threshold MIA advantage and forget-set accuracy of every honest peer,
  grouped by hop distance from the leaver (breadth-first search along "who hears whom" in round
  0's graph), before unlearning and in the retrained federation.

Cloning (``kind: cloning``) — a peer's deployed head answers queries; the attacker knows the
public frozen backbone, so it holds the features of its own images (the training features of the
*other* peers, or half of the test set with ``query_pool: heldout``), queries the target's
prediction API (full logits, top-``k``, or top-1 with its value, optionally behind a defence that
perturbs the outputs *before* ranking) and clones the head (:func:`attacks.probes.cloning_curve`:
stage 1 SVD of the logits → hidden size and output projection; stage 2 ridge with GCV on the
known features). ``target_head: {kind: bottleneck, hidden: h}`` replaces the federated linear head
(``d ≥ C``: its logits span ``R^C`` and stage 1 is vacuous) by a head with an ``h``-unit
bottleneck that the probe trains itself on the federation's (or the target's) training features
(:mod:`attacks.probes.bottleneck`). One record per (defence, k, repeats, query budget);
agreement, KL and clone accuracy are measured on test inputs the attacker never queried; each
defence's cost to the defender is its served top-1 accuracy vs the undefended one. See
``docs/probes-cloning.md``.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from attacks import probes as ap
from attacks.probes._records import to_plain
from fedsim import canaries as canaries_mod
from fedsim import rng as crng
from fedsim import rundir
from fedsim.errors import probe_error
from fedsim.rundir import json_safe as _plain  # noqa: F401  (JSON-safe copies of the records)
from fedsim.topology import Topology

# peer -> the final heads [N, P] of the scenario retrained with that peer absent (the runner's
# Run.retrain_without, written under retrain_dir(run dir, peer)); None: no retraining available
Retrain = Callable[[int], np.ndarray]

AGREEMENT_GOAL = 0.99  # "cost to the attacker": oracle queries until the clone agrees this often


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
    canaries: canaries_mod.Canaries | None = None
    training: dict[str, Any] = field(default_factory=dict)
    rounds: int = 1
    retrain: Retrain | None = None
    recorded_gradients: np.ndarray | None = None  # the unlearning probe's leaver's first-epoch gradients [B, P]
    retrained: dict[int, np.ndarray] = field(default_factory=dict)
    # the trained federation's Simulation.state() (heads and optimizer buffers) and the runner's
    # Run.continue_without (the federated-unlearning probe continues training from it)
    final_state: dict[str, Any] | None = None
    continue_without: Callable[..., dict[int, np.ndarray]] | None = None

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
        training=run.sc.training.model_dump(),
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


# ----------------------------------------------------------------------------- unlearning
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


def _per_peer_mia(ctx: _Ctx, params: Tensor, forget: tuple[Tensor, Tensor],
                  heldout: tuple[Tensor, Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """Loss-threshold MIA advantage and forget-set accuracy of every head in ``params [N, P]``."""
    zf = ap.head_logits(params, forget[0], ctx.layer_shape, ctx.bias)  # [N, nf, C]
    zh = ap.head_logits(params, heldout[0], ctx.layer_shape, ctx.bias)
    lf = torch.logsumexp(zf, -1) - zf.gather(-1, forget[1].expand(zf.shape[0], -1).unsqueeze(-1)).squeeze(-1)
    lh = torch.logsumexp(zh, -1) - zh.gather(-1, heldout[1].expand(zh.shape[0], -1).unsqueeze(-1)).squeeze(-1)
    adv = np.asarray([ap.loss_threshold_mia(lf[j], lh[j]) for j in range(params.shape[0])])
    acc = (zf.argmax(-1) == forget[1]).to(torch.float64).mean(-1).numpy()
    return adv, acc


def _influence(ctx: _Ctx, model: str, params: Tensor, hops: np.ndarray, peers: np.ndarray,
               forget: tuple[Tensor, Tensor], heldout: tuple[Tensor, Tensor]) -> list[dict[str, Any]]:
    """Influence records of ``peers`` grouped by hop distance from the leaver."""
    adv, acc = _per_peer_mia(ctx, params, forget, heldout)
    out = []
    for h in sorted({int(x) for x in hops[peers]}):
        sel = peers[hops[peers] == h]
        out.append({
            "model": model, "hop": h, "peers": len(sel), "peer_ids": sel.tolist(),
            "mia_advantage_mean": float(adv[sel].mean()), "mia_advantage_max": float(adv[sel].max()),
            "forget_accuracy_mean": float(acc[sel].mean()),
        })
    return out


def _canary_shadows(i: int, cfg: dict[str, Any], ctx: _Ctx, peer: int, pop_x: Tensor, pop_y: Tensor,
                    natural: np.ndarray) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """LiRA shadows for the canary population ``(pop_x, pop_y)`` (members then held-out canaries),
    trained the way a peer trains its head: the scenario's SGD (lr, momentum, weight decay, batch
    size) for ``rounds × local_steps`` steps on a shard the size of the leaver's natural shard,
    drawn from the federation's natural training data, plus each canary with probability ½ (shadow
    pairs are complementary on the canaries, so every canary is *in* half the shadows).

    Returns ``(shadow heads [S, P], in-mask on the population [S, m], setup record)``. Departure:
    no gossip averaging is emulated (a shadow is one peer's local training, not a federation)."""
    t = ctx.training
    s_count = int(cfg["lira_shadows"])
    gen = crng.torch_generator(ctx.seed, "probes_canary_shadows", i)
    nat_x, nat_y = ctx.data(natural)
    shard = len(ctx.train_idx[peer]) - len(ctx.canaries.member_idx)  # type: ignore[union-attr]
    m = pop_x.shape[0]
    masks = []
    for k in range(s_count):
        if k % 2 == 0:
            half = torch.zeros(m, dtype=torch.bool)
            half[torch.randperm(m, generator=gen)[: m // 2]] = True
        else:
            half = ~masks[-1][1]
        nat = torch.zeros(nat_x.shape[0], dtype=torch.bool)
        nat[torch.randperm(nat_x.shape[0], generator=gen)[:shard]] = True
        masks.append((nat, half))
    in_mask = torch.stack([torch.cat([a, b]) for a, b in masks])
    heads = ap.train_heads_sgd(torch.cat([nat_x, pop_x]), torch.cat([nat_y, pop_y]), in_mask, ctx.num_classes,
                               steps=ctx.rounds * int(t["local_steps"]), batch_size=int(t["batch_size"]),
                               lr=float(t["lr"]), momentum=float(t["momentum"]),
                               weight_decay=float(t["weight_decay"]), bias=ctx.bias, generator=gen)
    info = {"shadows": s_count, "shard_size": shard, "steps": ctx.rounds * int(t["local_steps"]),
            "optimizer": "sgd", "target_optimizer": t["optimizer"], "batch_size": int(t["batch_size"]),
            "lr": float(t["lr"]), "momentum": float(t["momentum"]), "fixed_variance": s_count // 2 < 64}
    return heads, in_mask[:, nat_x.shape[0]:], info


def _membership(i: int, cfg: dict[str, Any], ctx: _Ctx, peer: int, models: dict[str, Tensor],
                mia: tuple[Tensor, Tensor]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Membership tests of every model (``before``/``after``/``retrained``) against their nulls
    (:func:`attacks.probes.membership_test`): the leaver's natural data vs the MIA half of the
    test split (loss threshold, with the class-matched null), and with canaries the member
    canaries vs the held-out ones (loss threshold; online and offline LiRA with ``lira_shadows``).
    """
    shape, bias, perms = ctx.layer_shape, ctx.bias, cfg["permutations"]
    can = ctx.canaries if ctx.canaries is not None and ctx.canaries.peer == peer else None
    if cfg["canaries"] is not None and can is None:
        raise _err(i, "canaries", f"no canaries were planted in peer {peer}'s shard (the run's leaver)")
    natural = np.setdiff1d(ctx.train_idx[peer], can.member_idx) if can is not None else ctx.train_idx[peer]
    nat_m = ctx.data(natural)
    info: dict[str, Any] = {"natural_members": len(natural), "natural_nonmembers": int(mia[1].numel()),
                            "permutations": perms}
    pop = shadows = None
    if can is not None:
        cx, cy = ctx.data(can.member_idx)
        pop = (torch.cat([cx, torch.from_numpy(can.heldout_x).to(torch.float64)]),
               torch.cat([cy, torch.from_numpy(can.heldout_y).long()]))
        nm = len(can.member_idx)
        info["canaries"] = {"kind": can.kind, "members": nm, "heldout": len(can.heldout_y),
                            "calibration": len(can.calibration_y)}
        if cfg["lira_shadows"]:
            others = np.concatenate([np.setdiff1d(ctx.train_idx[j], can.member_idx)
                                     for j in range(ctx.n) if ctx.honest[j]])
            shadows = _canary_shadows(i, cfg, ctx, peer, *pop, others)
            info["lira"] = shadows[2]
    out: dict[str, dict[str, Any]] = {}
    for name, theta in models.items():
        gen = crng.torch_generator(ctx.seed, "probes_membership", i)
        res: dict[str, Any] = {}
        lm = ap.ce_losses(ap.head_logits(theta, nat_m[0], shape, bias), nat_m[1])
        ln = ap.ce_losses(ap.head_logits(theta, mia[0], shape, bias), mia[1])
        res["natural_loss"] = ap.membership_test(-lm, -ln, attack="loss_threshold", data="natural",
                                                 permutations=perms, generator=gen, member_y=nat_m[1],
                                                 nonmember_y=mia[1]).to_dict()
        if pop is not None:
            z = ap.head_logits(theta, pop[0], shape, bias)
            lc = ap.ce_losses(z, pop[1])
            res["canary_loss"] = ap.membership_test(-lc[:nm], -lc[nm:], attack="loss_threshold", data="canaries",
                                                    permutations=perms, generator=gen).to_dict()
            if shadows is not None:
                heads, in_mask, _ = shadows
                phi_obs = ap.logit_confidence(z, pop[1])
                phi_sh = ap.logit_confidence(ap.head_logits(heads, pop[0], shape, bias), pop[1])
                for online in (True, False):
                    sc = ap.lira_scores(phi_obs, phi_sh, in_mask, online=online)
                    key = "canary_lira_" + ("online" if online else "offline")
                    res[key] = ap.membership_test(sc[:nm], sc[nm:], attack=key[7:], data="canaries",
                                                  permutations=perms, generator=gen).to_dict()
        out[name] = res
    return out, info


def to_plain_path(path: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ascent path as plain JSON values (non-finite numbers become ``None``)."""
    return [to_plain(p) for p in path]


@dataclass
class _StopRef:
    """The stopping rule's reference: the natural calibration split plus the calibration canaries
    (:func:`fedsim.canaries.stopping_reference`), and the strata that match it to the forget set
    (``forget_strata``/``reference_strata`` keyword arguments; empty: match on classes)."""

    x: Tensor
    y: Tensor
    strata: dict[str, Tensor]

    def statistic(self, forget_losses: Tensor, forget_y: Tensor, reference_losses: Tensor,
                  alpha: float) -> tuple[float, float]:
        """``(D⁺, c_α)`` as the ascent computes it with these keyword arguments."""
        k = self.strata
        if "forget_groups" in k:
            return ap.grouped_membership_statistic(forget_losses, k["forget_strata"], k["forget_groups"],
                                                   reference_losses, k["reference_strata"], k["reference_groups"],
                                                   alpha)
        return ap.membership_statistic(forget_losses, k.get("forget_strata", forget_y), reference_losses,
                                       k.get("reference_strata", self.y), alpha)


def _stop_reference(cfg: dict[str, Any], ctx: _Ctx, peer: int, forget: tuple[Tensor, Tensor],
                    cal: tuple[Tensor, Tensor]) -> _StopRef:
    can = ctx.canaries if ctx.canaries is not None and ctx.canaries.peer == peer else None
    x, y, fs, rs = canaries_mod.stopping_reference(can, ctx.train_idx[peer], forget[1].numpy(), cal[0].numpy(),
                                                   cal[1].numpy(), ctx.num_classes)
    strata: dict[str, Tensor] = {}
    if fs is not None and rs is not None:
        strata = {"forget_strata": torch.from_numpy(fs), "reference_strata": torch.from_numpy(rs)}
        if cfg["stop_groups"] == "separate":  # canaries and natural data tested apart (Bonferroni α/2)
            strata |= {"forget_groups": strata["forget_strata"] // ctx.num_classes,
                       "reference_groups": strata["reference_strata"] // ctx.num_classes}
    return _StopRef(torch.from_numpy(x), torch.from_numpy(y), strata)


def _methods(cfg: dict[str, Any], ctx: _Ctx, before: Tensor, after: Tensor, retrained: Tensor | None,
             forget: tuple[Tensor, Tensor], retain: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor],
             cal: tuple[Tensor, Tensor], recorded: Tensor | None = None, stop: _StopRef | None = None,
             extra_splits: dict[str, Tensor] | None = None) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Every unlearning method beside the gradient ascent, judged against the retrained head in
    function space (:mod:`attacks.probes.retrain_gap`): ``none`` (do nothing), ``gradient_ascent``
    (the probe's calibrated ascent), ``bias_only_ascent`` (the same ascent and stopping rule on the
    class biases only), ``finetune_retain`` and ``newton`` (damped Newton/influence removal).
    Without a retrained head only accuracies are reported. ``stop``: the membership rule's reference
    (default: the natural calibration split ``cal``); ``extra_splits``: more ``{name: features}`` to
    judge on (the forget set's natural examples and canaries)."""
    shape, bias = ctx.layer_shape, ctx.bias
    stop = stop or _StopRef(cal[0], cal[1], {})
    heads: dict[str, Tensor] = {"none": before, "gradient_ascent": after}
    info: dict[str, dict[str, Any]] = {}
    if bias:
        grads = recorded if recorded is not None else ap.ce_gradient(torch.zeros_like(before), forget[0], forget[1],
                                                                     shape, bias)[None]
        g0 = torch.stack([ap.bias_only(g, shape, bias) for g in grads])
        heads["bias_only_ascent"], tr = ap.unlearn_gradient_ascent(
            before, shape, bias, forget[0], forget[1], stop.x, stop.y, cfg["lr"], cfg["max_steps"],
            recorded_gradients=g0, tol=cfg["tol"], criterion=cfg["criterion"], alpha=cfg["alpha"], **stop.strata)
        info["bias_only_ascent"] = {"steps": tr.steps, "stop_reason": tr.stop_reason}
    heads["finetune_retain"] = ap.finetune_on_retain(before, shape, bias, retain, steps=cfg["finetune_steps"],
                                                     lr=cfg["finetune_lr"])
    info["finetune_retain"] = {"steps": cfg["finetune_steps"], "lr": cfg["finetune_lr"]}
    heads["newton"], info["newton"] = ap.newton_removal(before, shape, bias, forget, retain,
                                                        damping=cfg["newton_damping"], steps=cfg["newton_steps"])
    heads["newton_retain"], info["newton_retain"] = ap.newton_removal(
        before, shape, bias, forget, retain, damping=cfg["newton_damping"], steps=cfg["newton_steps"],
        target="retain_minimiser")
    # line search on the stopping statistic along the Newton removal direction: θ + s·(θ_newton − θ),
    # s on a grid of quarter steps up to newton_search_max, the crossing bisected (the ascent's machinery)
    direction = heads["newton"] - before
    quarter = float(direction.norm()) / 4
    if quarter > 0:
        heads["newton_calibrated"], tr = ap.unlearn_gradient_ascent(
            before, shape, bias, forget[0], forget[1], stop.x, stop.y, quarter, 4 * cfg["newton_search_max"],
            recorded_gradients=direction, criterion=cfg["criterion"], alpha=cfg["alpha"], tol=cfg["tol"],
            **stop.strata)
        info["newton_calibrated"] = {"multiple": (tr.steps - 1 + tr.final_fraction) / 4 if tr.steps else 0.0,
                                     "stop_reason": tr.stop_reason}
    if cfg["criterion"] != "loss":  # the mean-loss rule beside the chosen one (it stops at 0 steps with canaries)
        heads["ascent_loss_rule"], tr = ap.unlearn_gradient_ascent(
            before, shape, bias, forget[0], forget[1], cal[0], cal[1], cfg["lr"], cfg["max_steps"],
            mode=cfg["mode"], initial_params=torch.zeros_like(before), tol=cfg["tol"], recorded_gradients=recorded)
        info["ascent_loss_rule"] = {"steps": tr.steps, "stop_reason": tr.stop_reason}
    splits = {"forget": forget[0], "retain": retain[0], "test": test[0], **(extra_splits or {})}
    ref = None if retrained is None else ap.function_gap(retrained, before, splits, shape, bias)
    out: dict[str, Any] = {}
    for name, theta in heads.items():
        rec: dict[str, Any] = {
            "test_accuracy": ap.accuracy(ap.head_logits(theta, test[0], shape, bias), test[1]),
            "forget_accuracy": ap.accuracy(ap.head_logits(theta, forget[0], shape, bias), forget[1]),
            **info.get(name, {}),
        }
        if retrained is not None and ref is not None:
            gap = ap.function_gap(retrained, theta, splits, shape, bias)
            rec.update(gap, kl_gap_closed=ap.gap_closed(ref, gap))
        rec["selection"] = _selection_numbers(cfg, ctx, before, theta, forget, cal, stop)
        out[name] = rec
    return out, heads


SELECTION_RULE = ("among the methods (doing nothing included) whose forget-vs-calibration membership statistic D+ "
                  "is at its null level (D+ <= c_alpha) and whose calibration accuracy is within 1 point of the "
                  "trained head's, the one that moves the head's outputs least on the calibration split (smallest "
                  "KL(trained || method) there); stated before any run, uses no retrained model")


def _selection_numbers(cfg: dict[str, Any], ctx: _Ctx, before: Tensor, theta: Tensor,
                       forget: tuple[Tensor, Tensor], cal: tuple[Tensor, Tensor], stop: _StopRef) -> dict[str, float]:
    """What the unlearner itself can see of a method (no retrained model): the membership statistic
    ``D⁺`` and its threshold ``c_α`` (forget vs the stopping reference ``stop``), accuracy and the
    output change ``KL(trained ‖ method)`` on the natural calibration split ``cal``."""
    shape, bias = ctx.layer_shape, ctx.bias
    lf = ap.ce_losses(ap.head_logits(theta, forget[0], shape, bias), forget[1])
    zc = ap.head_logits(theta, cal[0], shape, bias)
    ls = ap.ce_losses(ap.head_logits(theta, stop.x, shape, bias), stop.y)
    stat, thr = stop.statistic(lf, forget[1], ls, cfg["alpha"])
    kl, _ = ap.kl_and_disagreement(before, theta, cal[0], shape, bias)
    return {"statistic": stat, "threshold": thr, "calibration_accuracy": ap.accuracy(zc, cal[1]),
            "calibration_kl_from_trained": kl}


def choose_method(methods: dict[str, Any]) -> str | None:
    """The method :data:`SELECTION_RULE` picks from ``methods`` (``None`` if none qualifies)."""
    base = methods["none"]["selection"]["calibration_accuracy"]
    ok = [(r["selection"]["calibration_kl_from_trained"], name != "none", name) for name, r in methods.items()
          if r["selection"]["statistic"] <= r["selection"]["threshold"]
          and r["selection"]["calibration_accuracy"] >= base - 0.01]
    return min(ok)[2] if ok else None  # a tie with doing nothing (a 0-step method) is doing nothing


def run_unlearning(i: int, cfg: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
    """One unlearning probe → its ``probes.json`` entry (see the module docstring)."""
    peer = _default_leaver(ctx) if cfg["peer"] is None else cfg["peer"]
    _check_honest(i, "peer", peer, ctx)
    target = cfg["target"]
    if target is None or (ctx.federated and target != "global"):
        target = _default_unlearn_target(i, ctx, peer) if target is None else "global"
    if target == "global" and not ctx.federated:
        raise _err(i, "target", "'global' exists in federated mode only; name a peer id")
    if target != "global":
        _check_honest(i, "target", int(target), ctx)
        if int(target) == peer:
            raise _err(i, "target", f"must differ from the leaving peer ({peer})")
    shape, bias = ctx.layer_shape, ctx.bias
    forget = ctx.peer_data([peer])
    retain = ctx.peer_data([j for j in range(ctx.n) if ctx.honest[j] and j != peer])
    cal_i, mia_i, test_i = heldout_split(len(ctx.y_test), cfg["heldout_fraction"], ctx.seed)
    cal, mia, test = ctx.data(cal_i, "test"), ctx.data(mia_i, "test"), ctx.data(test_i, "test")
    stop = _stop_reference(cfg, ctx, peer, forget, cal)  # natural calibration split + calibration canaries
    shadows = None
    if cfg["lira_shadows"]:
        shadows = ap.train_shadow_heads(cal[0], cal[1], shape, bias, cfg["lira_shadows"],
                                        generator=crng.torch_generator(ctx.seed, "probes_lira", i))
    before = ctx.final_params[ctx.row(target)]
    rec = ctx.recorded_gradients  # the leaver's real first-epoch gradients (fedsim.peers)
    recorded = None if rec is None or cfg["mode"] != "first_epoch" else torch.from_numpy(rec).to(torch.float64)
    retrained_all = torch.from_numpy(_retrain_without(i, ctx, peer)).to(torch.float64) if cfg["retrain"] else None
    retrained = None if retrained_all is None else retrained_all[ctx.row(target)]
    splits = {"forget": forget[0], "retain": retain[0], "test": test[0]}
    if ctx.canaries is not None and ctx.canaries.peer == peer:  # the forget set's two parts, judged apart too
        is_can = torch.from_numpy(np.isin(ctx.train_idx[peer], ctx.canaries.member_idx))
        splits |= {"forget_natural": forget[0][~is_can], "forget_canaries": forget[0][is_can]}

    def observe(theta: Tensor) -> dict[str, Any]:  # the path's judge: recorded, never used to stop
        out: dict[str, Any] = {"test_accuracy": ap.accuracy(ap.head_logits(theta, test[0], shape, bias), test[1])}
        if retrained is not None:
            out.update(ap.function_gap(retrained, theta, splits, shape, bias))
        return out

    after, trace = ap.unlearn_gradient_ascent(
        before, shape, bias, forget[0], forget[1], stop.x, stop.y, cfg["lr"], cfg["max_steps"],
        mode=cfg["mode"], initial_params=torch.zeros_like(before), tol=cfg["tol"], recorded_gradients=recorded,
        criterion=cfg["criterion"], alpha=cfg["alpha"], path_every=cfg["path_every"], observe=observe,
        **stop.strata,
    )
    report = ap.evaluate_unlearning(before, after, retrained, forget, retain, test, mia, layer_shape=shape,
                                    bias=bias, shadows=shadows, trace=trace)
    methods, heads = _methods(cfg, ctx, before, after, retrained, forget, retain, test, cal, recorded, stop,
                              {k: v for k, v in splits.items() if k.startswith("forget_")})
    methods["gradient_ascent"].update(steps=trace.steps, stop_reason=trace.stop_reason, criterion=trace.criterion,
                                      path=to_plain_path(trace.path))
    extra = {k: v for k, v in heads.items() if k not in ("none", "gradient_ascent")}
    models = {"before": before, "after": after, **extra, **({"retrained": retrained} if retrained is not None else {})}
    membership, membership_info = _membership(i, cfg, ctx, peer, models, mia)
    influence: list[dict[str, Any]] = []
    if not ctx.federated:
        hops = hop_distances(in_neighbors(ctx.topology), peer)
        honest = np.flatnonzero(ctx.honest)
        influence = _influence(ctx, "before", ctx.final_params, hops, honest, forget, mia)
        if retrained_all is not None:
            others = honest[honest != peer]  # the absent peer only trained locally: not part of the federation
            influence += _influence(ctx, "retrained", retrained_all, hops, others, forget, mia)
    return {
        "kind": "unlearning",
        "peer": peer,
        "target": target,
        "forget_samples": len(forget[1]),
        "retain_samples": len(retain[1]),
        "split": {"calibration": len(cal_i), "mia_nonmembers": len(mia_i), "test": len(test_i),
                  "calibration_canaries": len(stop.y) - len(cal_i)},
        "lira_shadows": cfg["lira_shadows"],
        "retrained_dir": (str(retrain_dir(ctx.out_dir, peer)) if cfg["retrain"] and ctx.out_dir else None),
        "records": [report.to_dict()],
        "methods": methods,
        "chosen": {"rule": SELECTION_RULE, "method": choose_method(methods)},
        "membership": membership,
        "membership_setup": membership_info,
        "influence": influence,
    }


# ----------------------------------------------------------------------------- cloning
def _defence_label(d: dict[str, Any] | None) -> str:
    if d is None:
        return "none"
    late = "@after_ranking" if d.get("stage") == "after_ranking" else ""
    if d["kind"] == "rounding":
        return f"rounding({d['decimals']}){late}"
    if d["kind"] == "noise":
        return f"noise({d['sigma']:g}){late}"
    return "top1"


def _oracle(model: Any, c: int, k: int | None, defence: dict[str, Any] | None, gen: torch.Generator) -> Any:
    o: Any = ap.ModelOracle(model, c, k=k)
    if defence is None:
        return o
    if defence["kind"] == "rounding":
        return ap.with_rounding(o, defence["decimals"], stage=defence["stage"])
    if defence["kind"] == "noise":
        return ap.with_gaussian_noise(o, defence["sigma"], generator=gen, stage=defence["stage"])
    return ap.with_top1(o)


def _query_pool(i: int, cfg: dict[str, Any], ctx: _Ctx, target: int | str) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """The attacker's query features (shuffled) and the evaluation split ``(x, y)`` it never queries."""
    gen = crng.numpy_generator(ctx.seed, "probes_cloning_pool", i)
    if cfg["query_pool"] == "heldout":
        perm = gen.permutation(len(ctx.y_test))
        half = len(perm) // 2
        return ctx.x_test[torch.from_numpy(perm[:half])], ctx.data(np.sort(perm[half:]), "test")
    others = [j for j in range(ctx.n) if j != target]  # federated ('global'): every client's images
    qx, _ = ctx.peer_data(others)
    return qx[torch.from_numpy(gen.permutation(qx.shape[0]))], (ctx.x_test, ctx.y_test)


@dataclass
class _Target:
    """The model behind the API: its logits, linear params (if linear) and output projection."""

    model: Any
    params: Tensor | None
    projection: Tensor | None
    description: dict[str, Any]


def _target_model(i: int, cfg: dict[str, Any], ctx: _Ctx, target: int | str) -> _Target:
    """The federated head itself, or a bottleneck head the probe trains (``target_head``)."""
    th = cfg["target_head"]
    c = ctx.num_classes
    if th["kind"] == "federated":
        params = ctx.final_params[ctx.row(target)]
        return _Target(lambda x: ap.head_logits(params, x.to(torch.float64), ctx.layer_shape, ctx.bias), params,
                       None, {"kind": "federated", "hidden": None})
    if th["hidden"] >= c - 1:
        raise _err(i, "target_head.hidden", f"must be < C - 1 = {c - 1} (class-centered logits span at most "
                   f"C - 1 dimensions, so a wider bottleneck is not one), got {th['hidden']}")
    honest = [j for j in range(ctx.n) if ctx.honest[j]]
    x, y = ctx.peer_data(honest if th["train_on"] == "federation" or target == "global" else [int(target)])
    net = ap.train_bottleneck_head(x, y, c, th["hidden"], activation=th["activation"], epochs=th["epochs"],
                                   lr=th["lr"], weight_decay=th["weight_decay"],
                                   seed=int(crng.numpy_generator(ctx.seed, "probes_cloning_target", i).integers(2**31)))
    desc = {**th, "train_samples": int(x.shape[0])}
    return _Target(net.logits, net.linear_params(), net.V, desc)


def _defence_costs(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (defence, k, repeats): oracle queries the attacker needs before its clone agrees with the target on
    at least ``AGREEMENT_GOAL`` of the evaluation inputs *at every larger budget too* (a noisy curve can
    touch the goal early and fall back), how that compares with no defence at the same k (``query_factor``;
    ``None`` when either never gets there), and the defender's own cost: the defended API's top-1 test
    accuracy vs the undefended one."""
    groups: dict[tuple[str, Any, int], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["defence"], r["topk"], r.get("repeats", 1)), []).append(r)

    def needed(rs: list[dict[str, Any]]) -> int | None:
        """Oracle queries of the smallest budget from which every larger budget reaches the goal."""
        best = None
        for r in sorted(rs, key=lambda r: r["n_query_points"], reverse=True):
            if (r["agreement"] or 0) < AGREEMENT_GOAL:
                break
            best = r["queries"]
        return best

    out = []
    for (dname, k, reps), rs in groups.items():
        base = groups.get(("none", k, 1)) or groups.get(("none", None, 1)) or []
        q, qb = needed(rs), needed(base)
        last = max(rs, key=lambda r: r["n_query_points"])
        served, clean = rs[0].get("served_accuracy"), rs[0].get("undefended_accuracy")
        out.append({
            "defence": dname, "topk": k, "repeats": reps, "agreement_goal": AGREEMENT_GOAL, "queries_to_goal": q,
            "query_factor": (q / qb) if (q is not None and qb) else None,
            "agreement_at_max": last["agreement"], "kl_at_max": last.get("kl_divergence"),
            "clone_accuracy_at_max": last["clone_accuracy"],
            "layer_relative_error_at_max": last["layer_relative_error"],
            "served_accuracy": served, "undefended_accuracy": clean,
            "defender_accuracy_cost": (clean - served) if (served is not None and clean is not None) else None,
        })
    return out


def _stage1(records: list[dict[str, Any]], target: _Target) -> dict[str, Any] | None:
    """Stage 1 of the undefended full-logit attack at its largest budget (hidden size, spectrum, subspace)."""
    full = [r for r in records if r["defence"] == "none" and r["topk"] is None and r.get("singular_values")]
    if not full:
        return None
    r = max(full, key=lambda r: r["n_query_points"])
    return {"n_query_points": r["n_query_points"], "singular_values": r["singular_values"],
            "hidden_size": r["hidden_size"], "identifiable": r["hidden_size_identifiable"],
            "true_hidden_size": target.description.get("hidden"), "subspace_error": r["subspace_error"],
            "max_principal_angle": r["max_principal_angle"]}


def run_cloning(i: int, cfg: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
    """One cloning probe → its ``probes.json`` entry (see the module docstring)."""
    target = cfg["target"]
    if ctx.federated:
        target = "global"
    elif target is None:
        target = int(np.flatnonzero(ctx.honest)[0])
    elif target == "global":
        raise _err(i, "target", "'global' exists in federated mode only; name a peer id")
    else:
        _check_honest(i, "target", int(target), ctx)
    c = ctx.num_classes
    bad = [k for k in cfg["topk"] if k is not None and k > c]
    if bad:
        raise _err(i, "topk", f"k={bad[0]} exceeds the number of classes ({c})")
    tgt = _target_model(i, cfg, ctx, target)
    qx, (ex, ey) = _query_pool(i, cfg, ctx, target)
    counts = sorted({min(q, qx.shape[0]) for q in cfg["queries"]})
    gen = crng.torch_generator(ctx.seed, "probes_cloning_noise", i)
    records: list[dict[str, Any]] = []
    clean_acc = float((tgt.model(ex).argmax(-1) == ey).to(torch.float64).mean())
    for defence in [None, *cfg["defences"]]:
        if defence is not None and defence["kind"] == "top1":
            ks: list[int | None] = [1]
        else:  # k = 1 is the top-1 label *with its value*
            ks = cfg["topk"]
        noisy = defence is not None and defence["kind"] == "noise"
        for k in ks:
            k_eff = None if k is None or k >= c else k
            for reps in cfg["repeats"] if noisy else [1]:  # averaging helps against fresh noise only
                oracle = _oracle(tgt.model, c, k_eff, defence, gen)
                served = float((oracle(ex, None)[0][:, 0] == ey).to(torch.float64).mean())
                method = "auto" if cfg["method"] == "ridge" else cfg["method"]
                if method == "least_squares" and (defence or {}).get("kind") == "top1":
                    method = "auto"  # labels only: distillation is the only option
                reps_out = ap.cloning_curve(
                    oracle, qx, counts, c, test_x=ex, test_y=ey, target_params=tgt.params, target_model=tgt.model,
                    true_projection=tgt.projection, bias=ctx.bias, method=method, repeats=reps,
                    noise_sigma=defence["sigma"] if noisy else None)
                for rep in reps_out:
                    records.append({"defence": _defence_label(defence), "topk": k_eff, **rep.to_dict(),
                                    "served_accuracy": served, "undefended_accuracy": clean_acc})
    return {
        "kind": "cloning",
        "target": target,
        "target_head": tgt.description,
        "query_pool": cfg["query_pool"],
        "query_pool_size": int(qx.shape[0]),
        "eval_samples": int(ey.shape[0]),
        "feature_dim": ctx.layer_shape[1],
        "num_classes": c,
        "records": records,
        "stage1": _stage1(records, tgt),
        "defence_cost": _defence_costs(records),
    }

# ----------------------------------------------------------------------------- output
def _write_json(path: Path, obj: Any) -> None:
    rundir.atomic_write(path, (json.dumps(obj, indent=1, allow_nan=False) + "\n").encode())
