"""Cloning a non-neighbour's head from the gossip (``kind: gossip_cloning``, issue 17 item 4, the
federated variant): a passive, honest-behaving peer records the messages it receives every round
and, knowing the topology and the mixing rule, solves the linear system of Pasquini, Raynal and
Troncoso (IEEE S&P 2023) for the heads of peers it never hears (:mod:`attacks.probes.gossip_inversion`).

The messages are the engine's own (:attr:`fedsim.simulation.RoundRecord.messages`, kept by the run
because this kind has ``needs_messages``: :attr:`fedsim.runner.Run.messages`); the attacker ``a``
uses only round ``t``'s messages of itself and its in-neighbours in round ``t``'s graph. Its model
of the dynamics is fedsim's ``fedavg`` rule on the run's graph (``include_own`` as the scenario's
fedavg sets it); with another rule (``median``, ``bristle``, ...) that model is wrong and the probe
measures what the attack gives anyway.

For every attacker, every honest target at least ``min_hops`` hops away (hops along "j hears i"
edges from the target to the attacker, in round 0's graph) and every horizon ``τ`` of
``rounds_observed`` (the attacker has seen rounds ``0 .. τ-1``), the estimate of the target's head
of round ``τ-1`` (the message it sent then) is compared, in parameter space (relative error) and
function space (top-1 agreement and KL(target ‖ estimate) on the test set), with three controls
that need no attack: (a) the attacker's own head, (b) the mean of the heads it observes that round
(its in-neighbours'), (c) another honest non-neighbour's head (the mean of the metric over the
attacker's other targets: what "any model of the federation" gives). Effects are the paired
differences, mean and 95% bootstrap interval over (attacker, target) pairs, by hop distance.
At ``τ = T`` the deployed head (after the last aggregation, ``final_params``) is judged too.
Colluders (``colluders: k``, El Mrini, Cyffers and Bellet, ICML 2024): a coalition of ``k`` peers
(``placement``: ``placements`` random draws, or peers ``0 .. k-1``) pools every message any of them
receives into one system, with their own sent messages as known inputs (``own_messages``; the
attack: :func:`attacks.probes.gossip_inversion.coalition_reconstruct`), solved by least squares or
by their GLS estimator (``estimator``). Targets are the honest peers ``min_hops``+ hops from every
colluder; the "own head" control is the mean of the colluders' heads, the "observed mean" the mean
of the heads the coalition hears from non-colluders. A coalition counts as one attacker in the
pairs (``attacker``: its first peer, ``colluders``: all of them).
docs/probes.md, "gossip_cloning".
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from attacks.probes import gossip_inversion as gi
from fedsim import rng as crng
from fedsim.probe_context import _check_honest, _Ctx, _err, hop_distances, in_neighbors
from fedsim.probe_gossip_plan import gossip_problems

METRICS = ("rel_error", "agreement", "kl")
CONTROLS = ("own_head", "observed_mean", "other_peer")
HIGHER_IS_BETTER = {"rel_error": False, "agreement": True, "kl": False}
BOOTSTRAP = 2000


def assumed_include_own(cfg: dict[str, Any], ctx: _Ctx) -> bool:
    """The attacker's ``include_own``: the probe's, else the scenario's fedavg setting (default True)."""
    if cfg["include_own"] is not None:
        return bool(cfg["include_own"])
    st = ctx.strategy
    if st is not None and st.name == "fedavg":
        return bool(st.params.get("include_own", True))
    return True


def _effect(diffs: np.ndarray, gen: np.random.Generator) -> dict[str, Any]:
    """Mean of paired differences with a 95% percentile-bootstrap interval over the pairs."""
    d = diffs[np.isfinite(diffs)]
    if d.size == 0:
        return {"mean": None, "ci95": None, "pairs": 0}
    if d.size == 1:
        return {"mean": float(d[0]), "ci95": None, "pairs": 1}
    boot = d[gen.integers(0, d.size, size=(BOOTSTRAP, d.size))].mean(1)
    lo, hi = np.quantile(boot, [0.025, 0.975])
    return {"mean": float(d.mean()), "ci95": [float(lo), float(hi)], "pairs": int(d.size)}


def summarize_pairs(pairs: list[dict[str, Any]], gen: np.random.Generator) -> dict[str, Any]:
    """Means of the reconstruction and the controls, and the effect (reconstruction better than the
    control, signed so that > 0 means better: control − reconstruction for errors, the other way
    for agreement) against each control with its bootstrap CI."""
    out: dict[str, Any] = {"pairs": len(pairs)}
    if not pairs:
        return out
    out["reconstruction"] = {m: float(np.mean([p["reconstruction"][m] for p in pairs])) for m in METRICS}
    out["controls"] = {c: {m: float(np.nanmean([p[c][m] for p in pairs])) if any(np.isfinite(p[c][m]) for p in pairs)
                           else None for m in METRICS} for c in CONTROLS}
    eff: dict[str, Any] = {}
    for c in CONTROLS:
        eff[c] = {}
        for m in METRICS:
            rec = np.asarray([p["reconstruction"][m] for p in pairs])
            ctl = np.asarray([p[c][m] for p in pairs], dtype=np.float64)
            eff[c][m] = _effect(rec - ctl if HIGHER_IS_BETTER[m] else ctl - rec, gen)
    out["effect"] = eff
    ident = np.asarray([p["identifiable"] for p in pairs])
    out["identifiable"] = {"mean_residual": float(ident.mean()), "exact_share": float(np.mean(ident < 1e-6)),
                           "mean_deficiency": float(np.mean([p["deficiency"] for p in pairs]))}
    return out


def _by_hop(pairs: list[dict[str, Any]], gen: np.random.Generator) -> dict[str, Any]:
    hops = sorted({p["hops"] for p in pairs})
    out = {str(h): summarize_pairs([p for p in pairs if p["hops"] == h], gen) for h in hops}
    out["all"] = summarize_pairs(pairs, gen)
    return out


NAN = {m: float("nan") for m in METRICS}


def _rows(d: dict[str, Tensor]) -> list[dict[str, float]]:
    """``{metric: [k]}`` → ``k`` dicts ``{metric: float}``."""
    k = next(iter(d.values())).numel()
    return [{m: float(d[m].reshape(-1)[q]) for m in METRICS} for q in range(k)]


def _mean_control(ref: gi.HeadSet, heads: gi.HeadSet, peers: list[int], k: int,
                  xs: tuple[Any, ...]) -> list[dict[str, float]]:
    """The mean head of ``peers`` judged against each of the ``k`` reference heads (NaN without peers)."""
    if not peers:
        return [NAN] * k
    return _rows(gi.head_distances(ref, gi.HeadSet.of(heads.params[peers].mean(0, keepdim=True), *xs)))


def _judged(heads: gi.HeadSet, est: gi.HeadSet, tk: list[int], coalition: list[int], heard: list[int],
            pairwise: dict[str, Tensor], xs: tuple[Any, ...]) -> dict[str, list[dict[str, float]]]:
    """For targets ``tk`` of a coalition: the estimates and the three controls, each against the
    targets' true heads ``heads[tk]`` (``pairwise[m][k, j]``: metric of head ``j`` against head ``k``;
    ``xs``: the test features, layer shape and bias the function-space metrics use). The coalition's
    own head is the mean of its colluders' heads (one attacker: its head)."""
    idx = torch.as_tensor(tk)
    ref = heads[idx]
    other = []
    for k in tk:
        others = torch.as_tensor([j for j in tk if j != k], dtype=torch.long)
        other.append({m: float(pairwise[m][k, others].mean()) for m in METRICS} if others.numel() else NAN)
    return {"reconstruction": _rows(gi.head_distances(ref, est)),
            "own_head": _mean_control(ref, heads, coalition, len(tk), xs),
            "observed_mean": _mean_control(ref, heads, heard, len(tk), xs), "other_peer": other}


def _pairwise(heads: gi.HeadSet) -> dict[str, Tensor]:
    """``{metric: [n, n]}``: row ``k``, column ``j`` = head ``j`` judged against head ``k``."""
    n = heads.params.shape[0]
    ref = gi.HeadSet(heads.params[:, None].expand(n, n, -1), heads.logp[:, None])
    est = gi.HeadSet(heads.params[None].expand(n, n, -1), heads.logp[None])
    return gi.head_distances(ref, est)


def _pairs_at(tau: int, cfg: dict[str, Any], ctx: _Ctx, mixing: list[Tensor], nbrs: list[list[np.ndarray]],
              msgs: list[Tensor], coalitions: list[list[int]], targets: list[list[int]],
              hops_to: dict[int, np.ndarray], final_pairs: list[dict[str, Any]] | None,
              xs: tuple[Any, ...]) -> list[dict[str, Any]]:
    """Every (coalition, target) pair's record at horizon ``tau`` (rounds ``0 .. tau-1`` observed);
    with ``final_pairs`` (the last horizon) also the deployed heads' records appended there."""
    last = gi.HeadSet.of(msgs[tau - 1], *xs)
    last_pw = _pairwise(last)
    fin = fin_pw = None
    if final_pairs is not None:
        fin = gi.HeadSet.of(ctx.final_params, *xs)
        fin_pw = _pairwise(fin)
    eye = torch.eye(ctx.n, dtype=torch.float64)
    opts = {"updates": cfg["updates"], "common_scale": cfg["common_scale"], "estimator": cfg["estimator"],
            "own": cfg["own_messages"], "rcond": cfg["rcond"]}
    pairs = []
    for col, tk in zip(coalitions, targets, strict=True):
        if not tk:
            continue
        heard = gi.coalition_heard([nbrs[tau - 1]], col)[0]
        hops = [int(min(hops_to[k][a] for a in col)) for k in tk]
        base = {"attacker": col[0], "colluders": col}
        for target, out, hs, pw in ((eye[tk], pairs, last, last_pw),
                                    (mixing[tau - 1][tk], final_pairs, fin, fin_pw)):  # after the last aggregation
            if out is None or hs is None or pw is None:
                continue
            rec = gi.coalition_reconstruct(mixing[:tau], msgs[:tau], col, nbrs[:tau], target, **opts)
            judged = _judged(hs, gi.HeadSet.of(rec.estimate, *xs), tk, col, heard, pw, xs)
            for q, k in enumerate(tk):
                out.append(base | {"target": k, "hops": hops[q], "identifiable": float(rec.identifiable[q]),
                                   "deficiency": rec.deficiency} | {c: judged[c][q] for c in judged})
    return pairs


def coalitions_of(i: int, cfg: dict[str, Any], ctx: _Ctx) -> list[list[int]]:
    """The attacking coalitions: with ``colluders: 1`` every peer of ``attackers`` (default all) alone;
    with ``colluders: k > 1`` ``placements`` uniform draws of ``k`` distinct peers (``placement:
    random``, the seeded ``probes_gossip_placement`` stream keyed by ``k``, so probes with the same
    ``k`` attack with the same coalitions and pair up; El Mrini et al.'s experiments take ids
    ``0 .. k-1`` of a random graph, the same in law) or the one set ``0 .. k-1`` (``placement: first``,
    their scripts' literal choice)."""
    k, n = cfg["colluders"], ctx.n
    if k == 1:
        attackers = list(range(n)) if cfg["attackers"] is None else [int(a) for a in cfg["attackers"]]
        for a in attackers:
            _check_honest(i, "attackers", a, ctx)
        return [[a] for a in attackers]
    if cfg["attackers"] is not None:
        raise _err(i, "attackers", "lists single attackers; with colluders > 1 the coalitions come from "
                   "placement (random | first)")
    if k >= n:
        raise _err(i, "colluders", f"at most {n - 1} of the run's {n} peers (someone must be attacked), got {k}")
    if cfg["placement"] == "first":
        return [list(range(k))]
    gen = crng.numpy_generator(ctx.seed, "probes_gossip_placement", k)  # by k: same coalitions in every probe
    return [sorted(int(a) for a in gen.choice(n, size=k, replace=False)) for _ in range(cfg["placements"])]


def run_gossip_cloning(i: int, cfg: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
    """One ``gossip_cloning`` probe → its ``probes.json`` entry (module docstring)."""
    T, n = ctx.rounds, ctx.n
    gossip_problems(i, cfg, T, ctx.federated, int((~np.asarray(ctx.honest, dtype=bool)).sum()))  # as validation
    missing = [r for r in range(T) if r not in ctx.messages]
    if missing:
        raise _err(i, "kind", f"gossip_cloning needs every round's messages; rounds {missing[:5]} were not kept "
                   "(a resumed run keeps only the rounds it ran: run the scenario from scratch)")
    horizons = sorted({int(h) for h in cfg["rounds_observed"]} | {T})
    shape, bias = ctx.layer_shape, ctx.bias
    include_own = assumed_include_own(cfg, ctx)
    nbrs = [in_neighbors(ctx.topology, t) for t in range(T)]
    mixing = [gi.fedavg_mixing(nb, include_own) for nb in nbrs]
    hops_to = {k: hop_distances(nbrs[0], k) for k in range(n)}  # hops_to[k][a]: from target k to a
    coalitions = coalitions_of(i, cfg, ctx)
    targets = [[k for k in range(n) if k not in col and min(hops_to[k][a] for a in col) >= cfg["min_hops"]]
               for col in coalitions]
    if not any(targets):
        raise _err(i, "min_hops", f"no honest peer is {cfg['min_hops']}+ hops from every colluder of any "
                   "coalition in this topology")
    msgs = [torch.from_numpy(np.asarray(ctx.messages[t])).to(torch.float64) for t in range(T)]
    x = ctx.x_test
    gen = crng.numpy_generator(ctx.seed, "probes_gossip", i)

    by_rounds: dict[str, Any] = {}
    final_pairs: list[dict[str, Any]] = []
    pair_table: list[dict[str, Any]] = []
    for tau in horizons:
        pairs = _pairs_at(tau, cfg, ctx, mixing, nbrs, msgs, coalitions, targets, hops_to,
                          final_pairs if tau == T else None, (x, shape, bias))
        by_rounds[str(tau)] = _by_hop(pairs, gen)
        if tau == T:
            pair_table = [{k: p[k] for k in ("attacker", "colluders", "target", "hops", "identifiable", "deficiency")}
                          | {m: p["reconstruction"][m] for m in ("rel_error", "agreement")} for p in pairs]
    return {
        "kind": "gossip_cloning", "rounds": T, "attackers": sorted({a for col in coalitions for a in col}),
        "colluders": cfg["colluders"], "coalitions": coalitions, "placement": cfg["placement"],
        "estimator": cfg["estimator"], "own_messages": cfg["own_messages"], "min_hops": cfg["min_hops"],
        "updates": cfg["updates"], "assumed_rule": "fedavg", "assumed_include_own": include_own,
        "run_rule": None if ctx.strategy is None else ctx.strategy.name,
        "rounds_observed": horizons, "metrics": list(METRICS), "controls": list(CONTROLS),
        "test_samples": int(x.shape[0]), "records": by_rounds, "final_head": _by_hop(final_pairs, gen),
        "pairs": pair_table,
    }
