"""The built-in probe kinds, ``unlearning``, ``cloning``, ``federated_unlearning`` and ``gossip_cloning``,
as registered probes: their keys
declared once as :mod:`fedlib.params` tables (default, constraint, one line of help: the schema,
``fedsim validate`` and ``fedsim list probe NAME`` all read them), the few checks that tie keys
together, and their ``summary.json`` form (all without torch, so the schema and ``fedsim list``
read them cheaply). What they do is :mod:`fedsim.probes` (imported
when one runs); ``docs/probes.md`` and ``docs/probes-cloning.md`` say what they report.
"""

from __future__ import annotations

from typing import Any

from fedlib.params import AnyOf, Boolean, Index, Integer, ListOf, Options, Real, Tagged, param
from fedsim import canaries
from fedsim.errors import probe_error
from fedsim.probe_base import Probe, register_probe

POSITIVE = Real(lo=0.0, lo_open=True)
FRACTION = Real(lo=0.0, hi=1.0, lo_open=True, hi_open=True)
PEER = Index(of="peers.count", noun="a peer id", null=True)
PEER_OR_GLOBAL = Index(of="peers.count", noun="a peer id", extra=("global",), null=True)

UNLEARNING_PARAMS: dict[str, Any] = {
    "peer": param(None, PEER, doc="default: the honest peer with the most training samples"),
    "target": param(None, PEER_OR_GLOBAL,
                    doc="default: the leaver's first honest in-neighbour; federated: the global model"),
    "lr": param(0.5, POSITIVE,
                doc="ascent step length in parameter space (normalised steps; the last one is bisected)"),
    "max_steps": param(1000, Integer(minimum=1)),
    "heldout_fraction": param(0.5, FRACTION),
    "lira_shadows": param(0, AnyOf(options=(Integer(minimum=0, maximum=0), Integer(minimum=2)),
                                   what="0 (off) or an integer >= 2")),
    "retrain": param(True, Boolean()),
    "mode": param("first_epoch", Options(choices=("first_epoch", "iterative"))),
    "tol": param(1e-3, POSITIVE),
    "criterion": param("membership", Options(choices=("membership", "loss", "accuracy", "either")),
                       doc="ascent stopping rule: class-matched KS at its null level, or loss/accuracy/either"),
    "alpha": param(0.05, FRACTION, doc="level of the membership criterion's null threshold c_α"),
    "stop_groups": param("separate", Options(choices=("pooled", "separate")),
                         doc="with calibration canaries: separate (canaries and natural data each tested at α/2) "
                         "or pooled (one statistic, the reference re-weighted to the forget set's canary/natural "
                         "and class mix)"),
    "path_every": param(10, Integer(minimum=0),
                        doc="record the ascent path (stopping statistic, KL to the retrained head) every k steps"),
    "canaries": param(None, canaries.CANARIES,
                      doc="e.g. {count: 50, kind: mislabelled}: planted in the leaver's shard (fedsim.canaries)"),
    "permutations": param(999, Integer(minimum=99), doc="label permutations of every membership null distribution"),
    "newton_damping": param(1e-3, POSITIVE, doc="L2 damping λ of the retained Hessian in the Newton removal"),
    "newton_steps": param(1, Integer(minimum=1, maximum=100),
                          doc="Newton steps on the removal equation (1: the classic influence step)"),
    "newton_search_max": param(8, Integer(minimum=1, maximum=1000),
                               doc="newton_calibrated: most multiples of the Newton step searched along its "
                               "direction"),
    "rollback_rounds": param(40, Integer(minimum=0, maximum=100000),
                             doc="gossip_rollback: last rounds (at most all) whose messages the peers keep and "
                             "replay without the leaver's (0: off; decentralized fedavg, no Byzantine peers)"),
    "finetune_steps": param(50, Integer(minimum=0),
                            doc="full-batch gradient steps of the fine-tune-on-retained baseline"),
    "finetune_lr": param(0.5, POSITIVE),
}
TARGET_HEAD_KINDS: dict[str, dict[str, Any]] = {  # cloning's target_head: {kind: ..., <its keys>}
    "federated": {},
    "bottleneck": {
        "hidden": param(6, Integer(minimum=1)),
        "activation": param("linear", Options(choices=("linear", "relu"))),
        "train_on": param("federation", Options(choices=("federation", "target"))),
        "epochs": param(300, Integer(minimum=1)),
        "lr": param(0.01, POSITIVE),
        "weight_decay": param(0.0, Real(lo=0.0)),
    },
}
_STAGE = Options(choices=("before_ranking", "after_ranking"))
DEFENCE_KINDS: dict[str, dict[str, Any]] = {  # cloning's defences: each {kind: ..., <its keys>}
    "rounding": {"decimals": param(1, Integer(minimum=0, maximum=12)), "stage": param("before_ranking", _STAGE)},
    "noise": {"sigma": param(0.1, Real(lo=0.0)), "stage": param("before_ranking", _STAGE)},
    "top1": {},
}
CLONING_PARAMS: dict[str, Any] = {
    "target": param(None, PEER_OR_GLOBAL, doc="default: the first honest peer; federated: the global model"),
    "target_head": param(factory=lambda: {"kind": "federated"},
                         check=Tagged(kinds=TARGET_HEAD_KINDS, noun="target_head"),
                         doc="or {kind: bottleneck, hidden, ...}: the target_head.* keys"),
    "queries": param(factory=lambda: [8, 32, 128, 512, 2048],
                     check=ListOf(item=Integer(minimum=1), min_len=1, dedupe=True, sort=True)),
    "topk": param(factory=lambda: [None, 5, 2, 1], check=ListOf(item=Integer(minimum=1, null=True), min_len=1,
                                                                 dedupe=True),
                  doc="null: full logits; 1: top-1 label with its value"),
    "defences": param(factory=lambda: [{"kind": "rounding", "decimals": 1}, {"kind": "noise", "sigma": 0.1},
                                       {"kind": "top1"}],
                      check=ListOf(item=Tagged(kinds=DEFENCE_KINDS, noun="defence"))),
    "repeats": param(factory=lambda: [1], check=ListOf(item=Integer(minimum=1), min_len=1, dedupe=True, sort=True),
                     doc="against noise defences: each query asked r times, answers averaged"),
    "method": param("ridge", Options(choices=("ridge", "least_squares", "distill")),
                    doc="stage 2 from leaked logits: ridge (GCV) | least_squares | distill"),
    "query_pool": param("peers", Options(choices=("peers", "heldout"))),
}
FEDERATED_UNLEARNING_PARAMS: dict[str, Any] = {
    "peer": param(None, PEER, doc="the leaver; default: the honest peer with the most training samples"),
    "arms": param(factory=lambda: [0, 1, 2, "all"],
                  check=ListOf(item=AnyOf(options=(Integer(minimum=0), Options(choices=("all",)))), min_len=1,
                               distinct=True,
                               what="a non-empty list of distinct hop counts >= 0 (0: nobody) or 'all'"),
                  doc="who unlearns: 0 nobody (control), k within k hops, all (federated: the server)"),
    "rounds_after": param(factory=lambda: [0, 5, 20], check=ListOf(item=Integer(minimum=0), min_len=1),
                          doc="rounds of normal training without the leaver after the unlearning"),
    "method": param("newton", Options(choices=("newton", "finetune_retain", "gossip_rollback")),
                    doc="newton (damped Newton/influence removal) or finetune_retain on each unlearner's head, or "
                    "gossip_rollback (the unlearners replay the last rounds without the leaver's messages)"),
    "rollback_rounds": UNLEARNING_PARAMS["rollback_rounds"],
    "newton_damping": param(1e-3, POSITIVE, doc="L2 damping λ of the Newton removal"),
    "finetune_steps": param(50, Integer(minimum=0),
                            doc="finetune_retain: full-batch gradient steps on the retained data"),
    "finetune_lr": param(0.5, POSITIVE),
    "heldout_fraction": param(0.5, FRACTION,
                              doc="the test split is the rest of the test set (the unlearning probe's split)"),
    "canaries": param(None, canaries.CANARIES,
                      doc="e.g. {count: 50, kind: ood}: planted in the leaver's shard (fedsim.canaries)"),
    "permutations": param(199, Integer(minimum=99),
                          doc="label permutations of each canary membership null (per peer, arm and R)"),
}


# ----------------------------------------------------------------------------- summary.json
def _summarize_unlearning(entry: dict[str, Any]) -> dict[str, Any]:
    rep = entry["records"][0]
    models = [m for m in ("before", "after", "retrained") if rep.get(m)]

    def pick(metric: str) -> dict[str, Any]:
        return {m: rep[m][metric] for m in models}

    return {
        "kind": "unlearning", "peer": entry["peer"], "target": entry["target"],
        "calibrated": (rep.get("trace") or {}).get("calibrated"), "steps": (rep.get("trace") or {}).get("steps"),
        "mia_advantage": pick("mia_advantage"), "forget_accuracy": pick("forget_accuracy"),
        "test_accuracy": pick("test_accuracy"),
        "influence_mia_by_hop": {f"{r['model']}:{r['hop']}": r["mia_advantage_mean"] for r in entry["influence"]},
        "membership": {f"{m}:{a}": {k: t[k] for k in ("advantage", "null_q95", "p_value", "tpr_at_1pct_fpr")}
                       for m, res in (entry.get("membership") or {}).items() for a, t in res.items()},
    }


def _summarize_federated_unlearning(entry: dict[str, Any]) -> dict[str, Any]:
    """Per arm, R and hop: the mean forget-set KL to the retrained federation and its difference to the control."""
    out: dict[str, Any] = {}
    for arm, rec in entry["records"].items():
        for r, groups in rec["rounds"].items():
            for g, cell in groups.items():
                out[f"{arm}:R={r}:hop={g}"] = {"kl_forget": cell["kl_to_retrained"]["forget"],
                                               "kl_forget_minus_control": (cell.get("kl_minus_control") or {})
                                               .get("forget")}
    return {"kind": "federated_unlearning", "peer": entry["peer"], "method": entry["method"], "by_arm": out,
            "skipped_methods": entry.get("skipped_methods") or {}}


def _summarize_cloning(entry: dict[str, Any]) -> dict[str, Any]:
    def key(d: dict[str, Any]) -> str:
        r = d.get("repeats", 1)
        return f"{d['defence']}/k={d['topk'] or 'all'}" + (f"/r={r}" if r != 1 else "")

    st = entry.get("stage1") or {}
    return {
        "kind": "cloning", "target": entry["target"],
        "target_head": (entry.get("target_head") or {}).get("kind", "federated"),
        "hidden_size": {"true": st.get("true_hidden_size"), "recovered": st.get("hidden_size"),
                        "identifiable": st.get("identifiable"), "subspace_error": st.get("subspace_error")},
        "agreement_at_max": {key(d): d["agreement_at_max"] for d in entry["defence_cost"]},
        "queries_to_99pct": {key(d): d["queries_to_goal"] for d in entry["defence_cost"]},
        "defender_accuracy_cost": {key(d): d.get("defender_accuracy_cost") for d in entry["defence_cost"]},
    }


# ----------------------------------------------------------------------------- the kinds
@register_probe("unlearning")
class Unlearning(Probe):
    """A peer leaves and asks to be forgotten: membership tests against nulls (canaries, LiRA),
    unlearning methods judged against a model retrained without it (docs/probes.md).

    What it does, what each number means and its limits: docs/probes.md (code: ``fedsim.probes``).
    """

    params = UNLEARNING_PARAMS

    def validate(self, i: int, cfg: dict[str, Any], num_peers: int | None = None) -> dict[str, Any]:
        cfg = super().validate(i, cfg, num_peers)
        if cfg["peer"] is not None and cfg["peer"] == cfg["target"]:
            raise probe_error(i, "target", f"must differ from probes.{i}.peer (the leaver's own model is not audited)")
        return cfg

    def run(self, i: int, cfg: dict[str, Any], ctx: Any) -> dict[str, Any]:
        from fedsim.probes import run_unlearning

        return run_unlearning(i, cfg, ctx)

    def summarize(self, entry: dict[str, Any]) -> dict[str, Any]:
        return _summarize_unlearning(entry)


@register_probe("cloning")
class Cloning(Probe):
    """A peer's deployed head answers queries: hidden size by SVD, layer recovery, logit-bias
    attacks, defences and their cost, query cost to 99% agreement (docs/probes-cloning.md).

    What it does, what each number means and its limits: docs/probes-cloning.md (code: ``fedsim.probes``).
    """

    params = CLONING_PARAMS

    def run(self, i: int, cfg: dict[str, Any], ctx: Any) -> dict[str, Any]:
        from fedsim.probes import run_cloning

        return run_cloning(i, cfg, ctx)

    def summarize(self, entry: dict[str, Any]) -> dict[str, Any]:
        return _summarize_cloning(entry)


@register_probe("federated_unlearning")
class FederatedUnlearning(Probe):
    """A peer leaves a federation: its neighbours, peers within k hops or everyone unlearn it,
    training goes on without it, and every head is judged against the federation retrained
    without it, by hop (docs/probes.md, "federated_unlearning").

    What it does and what it measured: docs/probes.md, "kind: federated_unlearning" (code: ``fedsim.probe_fedunlearn``).
    """

    params = FEDERATED_UNLEARNING_PARAMS

    def run(self, i: int, cfg: dict[str, Any], ctx: Any) -> dict[str, Any]:
        from fedsim.probe_fedunlearn import run_federated_unlearning

        return run_federated_unlearning(i, cfg, ctx)

    def summarize(self, entry: dict[str, Any]) -> dict[str, Any]:
        return _summarize_federated_unlearning(entry)

    def markdown(self, entry: dict[str, Any]) -> str:
        """Per arm and R: the mean KL(retrained ‖ θ) per hop on the forget set's parts and test, and
        with canaries the canary membership advantage [null q95]; the methods skipped and why."""
        splits = [s for s in ("forget_natural", "forget_canaries", "test") if s in entry["splits"]] or ["forget"]
        arms, rounds = entry["arms"], [str(r) for r in entry["rounds_after"]]
        head = (f"Federated unlearning: leaver {entry['peer']}, method {entry['method']}, trained "
                f"{entry['trained_rounds']} rounds")
        skipped = [f"Skipped: {m}: {why}" for m, why in (entry.get("skipped_methods") or {}).items()]
        if not arms:
            return "\n".join([head + "; no arm measured", "", *skipped])
        recs = entry["records"]
        groups = list(recs[arms[0]]["rounds"][rounds[0]])
        top = "| arm | R | " + " | ".join(f"hop {g}" for g in groups) + " |"
        lines = [f"{head}; mean KL(retrained || model) per hop, {' / '.join(splits)}", "", top,
                 "|---" * (2 + len(groups)) + "|"]
        for arm in arms:
            for r in rounds:
                cells = [" / ".join(f"{recs[arm]['rounds'][r][g]['kl_to_retrained'][s]:.4f}"
                                    for s in splits) for g in groups]
                lines.append(f"| {arm} | {r} | " + " | ".join(cells) + " |")
        if "canary_membership" in recs[arms[0]]["rounds"][rounds[0]][groups[0]]:
            lines += ["", "Canary membership advantage [null q95] per hop", "", top, "|---" * (2 + len(groups)) + "|"]
            for arm in arms:
                for r in rounds:
                    cm = [recs[arm]["rounds"][r][g]["canary_membership"] for g in groups]
                    lines.append(f"| {arm} | {r} | " + " | ".join(f"{c['advantage']:+.3f} [{c['null_q95']:.3f}]"
                                                                  for c in cm) + " |")
        if skipped:
            lines += ["", *skipped]
        return "\n".join(lines)


GOSSIP_CLONING_PARAMS: dict[str, Any] = {
    "attackers": param(None, ListOf(item=Index(of="peers.count", noun="a peer id"), min_len=1, dedupe=True,
                                    sort=True, null=True),
                       doc="the passive peers that record what they receive; default: every peer"),
    "min_hops": param(2, Integer(minimum=1), doc="targets: honest peers at least this many hops from the attacker"),
    "rounds_observed": param(factory=lambda: [5, 10, 20], check=ListOf(item=Integer(minimum=1), min_len=1,
                                                                      dedupe=True, sort=True),
                             doc="horizons τ: the attacker has seen rounds 0..τ-1 (the run's last round is added)"),
    "updates": param("per_round", Options(choices=("per_round", "common", "constant", "drifting")),
                     doc="unknowns: per_round (the paper's system) | common (+ a free round mean) | constant "
                     "(El Mrini et al.'s constant updates) | drifting (constant + least-norm per-round deviations)"),
    "common_scale": param(1e3, POSITIVE,
                          doc="updates=common|drifting: column scale of the free parts (≈ unpenalised)"),
    "include_own": param(None, Boolean(null=True),
                         doc="the attacker's fedavg mixing keeps the own model; default: the scenario's fedavg "
                         "setting"),
    "rcond": param(1e-10, POSITIVE, doc="pseudo-inverse cut-off (relative to the largest singular value)"),
    "colluders": param(1, Integer(minimum=1),
                       doc="peers per attacking coalition, pooling what they receive (El Mrini et al. 2024); 1: "
                       "every peer of attackers alone"),
    "placement": param("random", Options(choices=("random", "first")),
                       doc="colluders > 1: random (placements uniform draws of colluders peers) | first "
                       "(peers 0..colluders-1, El Mrini et al.'s scripts)"),
    "placements": param(16, Integer(minimum=1), doc="placement=random: how many coalitions are drawn"),
    "estimator": param("ls", Options(choices=("ls", "gls")),
                       doc="ls (least-norm least squares) | gls (El Mrini et al.'s GLS: noise = i.i.d. per-round "
                       "update deviations of the unknown peers, propagated by the gossip)"),
    "own_messages": param("known", Options(choices=("known", "modelled")),
                          doc="known (the colluders' sent messages are inputs, El Mrini et al.) | modelled "
                          "(departure: their updates follow the updates model, their messages are rows)"),
}


def _summarize_gossip_cloning(entry: dict[str, Any]) -> dict[str, Any]:
    last = entry["records"][str(entry["rounds"])]["all"]
    eff = last.get("effect", {})
    return {
        "kind": "gossip_cloning", "rounds": entry["rounds"], "updates": entry["updates"], "pairs": last["pairs"],
        "colluders": entry.get("colluders", 1), "estimator": entry.get("estimator", "ls"),
        "rel_error": (last.get("reconstruction") or {}).get("rel_error"),
        "rel_error_gain_vs": {c: (eff.get(c) or {}).get("rel_error", {}).get("mean") for c in eff},
        "agreement_gain_vs": {c: (eff.get(c) or {}).get("agreement", {}).get("mean") for c in eff},
    }


@register_probe("gossip_cloning")
class GossipCloning(Probe):
    """A passive peer reconstructs non-neighbours' heads from the gossip messages it receives over
    rounds (Pasquini et al. S&P 2023), against the heads it could use without the attack
    (docs/probes.md, "gossip_cloning").

    What it does and what it measured: docs/probes.md, "kind: gossip_cloning" (code: ``fedsim.probe_gossip``).
    """

    params = GOSSIP_CLONING_PARAMS
    needs_messages = True

    def validate(self, i: int, cfg: dict[str, Any], num_peers: int | None = None) -> dict[str, Any]:
        """Also what the scenario alone decides about the coalitions (``coalitions_of`` checks the
        same at run time): single ``attackers`` only with ``colluders: 1``, and someone left to attack."""
        cfg = super().validate(i, cfg, num_peers)
        k = cfg["colluders"]
        if k > 1 and cfg["attackers"] is not None:
            raise probe_error(i, "attackers", "lists single attackers; with colluders > 1 the coalitions come "
                              "from placement (random | first)")
        if num_peers is not None and k >= num_peers:
            raise probe_error(i, "colluders", f"at most {num_peers - 1} of the run's {num_peers} peers (someone "
                              f"must be attacked), got {k}")
        return cfg

    def check_scenario(self, i: int, cfg: dict[str, Any], sc: Any) -> None:
        """Before the rounds run: a decentralized run without Byzantine peers whose ``rounds`` reach
        every horizon of ``rounds_observed`` (:func:`fedsim.probe_gossip_plan.gossip_problems`; before,
        ``--set rounds=2`` trained, then failed in the probe as an internal error)."""
        from fedsim.probe_gossip_plan import gossip_problems

        gossip_problems(i, cfg, sc.rounds, sc.mode == "federated", sc.peers.num_byzantine)

    def run(self, i: int, cfg: dict[str, Any], ctx: Any) -> dict[str, Any]:
        from fedsim.probe_gossip import run_gossip_cloning

        return run_gossip_cloning(i, cfg, ctx)

    def summarize(self, entry: dict[str, Any]) -> dict[str, Any]:
        return _summarize_gossip_cloning(entry)

    def markdown(self, entry: dict[str, Any]) -> str:
        """Per horizon and hop: relative error and agreement of the reconstruction and the controls."""
        lines = [f"Gossip cloning ({entry['updates']} updates, {entry.get('estimator', 'ls')}, "
                 f"{entry.get('colluders', 1)} colluder(s), assumed fedavg, run rule {entry['run_rule']}): "
                 "relative error / test agreement to the target's head; gain = control − reconstruction "
                 "(error) with 95% CI over (attacker, target) pairs", "",
                 "| τ | hops | pairs | reconstruction | own head | observed mean | other peer | error gain vs "
                 "observed mean | error gain vs other peer |", "|---" * 9 + "|"]
        for tau, by_hop in entry["records"].items():
            for h, cell in by_hop.items():
                if not cell["pairs"]:
                    continue
                r, c, e = cell["reconstruction"], cell["controls"], cell["effect"]

                def ra(d: dict[str, Any] | None) -> str:
                    if d is None or d["rel_error"] is None:
                        return "–"
                    return f"{d['rel_error']:.3f} / {d['agreement']:.3f}"

                def gain(d: dict[str, Any]) -> str:
                    g = d["rel_error"]
                    if g["mean"] is None:
                        return "–"
                    ci = "" if g["ci95"] is None else f" [{g['ci95'][0]:.3f}, {g['ci95'][1]:.3f}]"
                    return f"{g['mean']:.3f}{ci}"

                lines.append(f"| {tau} | {h} | {cell['pairs']} | {ra(r)} | {ra(c['own_head'])} | "
                             f"{ra(c['observed_mean'])} | {ra(c['other_peer'])} | {gain(e['observed_mean'])} | "
                             f"{gain(e['other_peer'])} |")
        return "\n".join(lines)
