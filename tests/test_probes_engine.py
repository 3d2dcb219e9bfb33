"""The probes' harness (fedsim.probes) on a tiny decentralized run: probes.json, unlearning with
the retrained-without gold standard and influence spread, cloning, Markdown tables, validation."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedsim.probe_registry import validate_probe
from fedsim.probe_runs import run_probes
from fedsim.probes import choose_method, heldout_split, hop_distances
from fedsim.report_probes import format_probes
from fedsim.runner import Run
from fedsim.scenario import parse

D = 64  # sklearn_digits through the identity backbone
PROBES = [
    # alpha 0.5: a lower null threshold c_α, so the ascent has steps to take on this small run (at 0.05 the
    # target's membership statistic, 0.115, is already below it and the ascent rightly stops at step 0)
    {"kind": "unlearning", "lira_shadows": 4, "permutations": 99, "alpha": 0.5, "path_every": 2},
    {"kind": "cloning", "queries": [8, 200, 1000], "topk": [None, 3],
     "defences": [{"kind": "rounding", "decimals": 1}, {"kind": "top1"}]},
]


def _scenario(tmp: Path, **over: Any) -> dict[str, Any]:
    """The conftest ``small_scenario`` settings (sklearn digits, identity backbone, local engine),
    trained harder so the leaver's data leaves a membership signal worth unlearning."""
    d: dict[str, Any] = {
        "name": "probes",
        "seed": 3,
        "rounds": 10,
        "dataset": {"name": "sklearn_digits"},
        "backbone": {"name": "identity", "cache_dir": str(tmp / "cache")},
        "partition": {"kind": "dirichlet", "alpha": 1.0},
        "peers": {"count": 8},
        "topology": {"kind": "k_regular", "degree": 4},
        "training": {"lr": 0.5, "momentum": 0.9, "batch_size": 16, "local_steps": 5},
        "engine": {"backend": "local", "num_actors": 2},
        "output": {"dir": str(tmp / "runs")},
        "probes": PROBES,
    }
    d.update(over)
    return d


@pytest.fixture(scope="module")
def done(tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, dict[str, Any], list[dict[str, Any]]]:
    """One trained run with both probes: ``(run, summary, parsed probes.json)``."""
    tmp = tmp_path_factory.mktemp("probes")
    run = Run(parse(_scenario(tmp)))
    run.create_dir(overwrite=True)
    summary = run.execute()
    return run, summary, json.loads((run.dir / "probes.json").read_text())


def _entry(probes: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return next(e for e in probes if e["kind"] == kind)


def test_probes_json_and_summary(done) -> None:
    run, summary, probes = done
    assert [e["kind"] for e in probes] == ["unlearning", "cloning"]
    assert [s["kind"] for s in summary["probes"]] == ["unlearning", "cloning"]
    assert json.loads((run.dir / "summary.json").read_text())["probes"] == summary["probes"]
    rep = _entry(probes, "unlearning")["records"][0]
    for model in ("before", "after", "retrained"):
        for f in ("forget_accuracy", "retain_accuracy", "test_accuracy", "mia_advantage", "lira_advantage"):
            assert isinstance(rep[model][f], float), (model, f)
    for r in _entry(probes, "cloning")["records"]:
        for f in ("queries", "agreement", "clone_accuracy", "k", "defence", "topk", "layer_relative_error"):
            assert f in r


def test_unlearning_ascends_and_is_calibrated(done) -> None:
    _, _, probes = done
    e = _entry(probes, "unlearning")
    rep, tr = e["records"][0], e["records"][0]["trace"]
    sizes = [len(t) for s in done[0].prepared.setups for t in s.train_idx]
    assert e["peer"] == int(np.argmax(sizes)) and e["target"] != e["peer"]
    assert tr["calibrated"] and tr["stop_reason"] == "membership_at_null" and tr["steps"] >= 1
    assert rep["after"]["forget_loss"] >= rep["before"]["forget_loss"]
    assert tr["statistic"][-1] <= tr["threshold"][-1] and tr["statistic"][0] > tr["threshold"][0]
    assert rep["after"]["forget_accuracy"] <= rep["before"]["forget_accuracy"]
    # the gold standard ran, in a subfolder, without the leaver
    sub = Path(e["retrained_dir"])
    assert sub.name == f"retrain-without-{e['peer']}" and (sub / "summary.json").exists()
    assert 0.0 <= rep["retrained"]["mia_advantage"] <= 1.0
    assert set(rep["after_minus_retrained"]) >= {"mia_advantage", "forget_accuracy", "test_accuracy"}
    assert sum(e["split"].values()) == len(done[0].prepared.features.y_test)


MEMBERSHIP_KEYS = {"advantage", "null_q95", "p_value", "tpr_at_1pct_fpr", "tpr_at_1pct_fpr_ci", "tpr_at_0_1pct_fpr",
                   "tpr_at_0_1pct_fpr_ci", "class_matched_q95", "class_matched_p_value", "significant", "auc"}


def test_probes_json_contract_membership_and_methods(done) -> None:
    """docs/probes.md: every membership result beside its null; every method judged against the
    retrained head in function space."""
    e = _entry(done[2], "unlearning")
    models = ["before", "after", "bias_only_ascent", "finetune_retain", "newton", "newton_retain", "newton_calibrated",
              "gossip_rollback", "ascent_loss_rule", "retrained"]
    assert list(e["membership"]) == models
    for m in models:
        t = e["membership"][m]["natural_loss"]
        assert MEMBERSHIP_KEYS <= set(t) and 0 < t["p_value"] <= 1 and t["permutations"] == 99
        assert t["tpr_at_1pct_fpr_ci"][0] <= t["tpr_at_1pct_fpr"] <= t["tpr_at_1pct_fpr_ci"][1]
        assert t["class_matched_q95"] is not None  # natural data: the class-prior null is always run
    methods = e["methods"]
    assert list(methods) == ["none", "gradient_ascent", "bias_only_ascent", "finetune_retain", "newton",
                             "newton_retain", "newton_calibrated", "gossip_rollback", "ascent_loss_rule"]
    assert methods["gossip_rollback"]["rounds"] == 10 and e["skipped_methods"] == {}
    for m, r in methods.items():
        for key in ("kl_to_retrained", "disagreement_to_retrained", "kl_gap_closed"):
            assert set(r[key]) == {"forget", "retain", "test"}, (m, key)
        assert all(v >= -1e-12 for v in r["kl_to_retrained"].values())
    assert methods["none"]["kl_gap_closed"]["forget"] == pytest.approx(0.0)  # doing nothing closes nothing
    rep = e["records"][0]
    assert methods["gradient_ascent"]["test_accuracy"] == pytest.approx(rep["after"]["test_accuracy"])
    path = methods["gradient_ascent"]["path"]
    assert path[0]["step"] == 0 and len(path) >= 2
    for pt in path:
        assert set(pt) == {"step", "forget_loss", "reference_loss", "statistic", "threshold", "test_accuracy",
                           "kl_to_retrained", "disagreement_to_retrained"}
        assert set(pt["kl_to_retrained"]) == {"forget", "retain", "test"}
    assert path[0]["kl_to_retrained"] == methods["none"]["kl_to_retrained"]
    assert path[-1]["kl_to_retrained"] == methods["gradient_ascent"]["kl_to_retrained"]
    assert e["chosen"]["method"] in (None, *methods) and "no retrained model" in e["chosen"]["rule"]
    for r in methods.values():
        assert set(r["selection"]) == {"statistic", "threshold", "calibration_accuracy", "calibration_kl_from_trained"}


def test_messages_recorded_for_the_gossip_rollback(done) -> None:
    """The engine keeps every round's messages (rollback_rounds 40 > 10 rounds): each final head is
    the fedavg mean of the last round's messages it heard, and a one-round rollback is that mean
    without the leaver's message (what the retrained federation's last average does)."""
    import torch

    from attacks.probes import gossip_rollback
    from fedsim.probes import in_neighbors

    run, _, probes = done
    e = _entry(probes, "unlearning")
    msgs, final = run.messages, np.asarray(run.final_params)
    assert sorted(msgs) == list(range(10)) and msgs[9].shape == final.shape
    nb = [[int(i) for i in a] for a in in_neighbors(run.prepared.topology, 9)]
    for k, heard in enumerate(nb):
        np.testing.assert_allclose(final[k], msgs[9][[k, *heard]].mean(0), rtol=0, atol=1e-5)
    one = gossip_rollback(torch.from_numpy(final).double(), [torch.from_numpy(msgs[9])], [nb], e["peer"]).numpy()
    k = e["target"]
    np.testing.assert_allclose(one[k], msgs[9][[i for i in [k, *nb[k]] if i != e["peer"]]].mean(0), atol=1e-5)


def test_leaver_first_epoch_gradients_recorded_and_replayed(done) -> None:
    """The engine records the leaver's minibatch gradients over its first local epoch; the ascent
    replays them (mode "recorded"). Row 0 is taken at the zero head, so its bias part is
    ``1/C − (class counts in one minibatch of B)/B``: B·(1/C − g_b) are integers summing to B."""
    run, _, probes = done
    e = _entry(probes, "unlearning")
    g = run.recorded_gradients
    n_leaver = len([t for s in sorted(run.prepared.setups, key=lambda s: s.first) for t in s.train_idx][e["peer"]])
    assert g.shape == (-(-n_leaver // 16), 10 * D + 10)
    counts = 16 * (0.1 - g[0, -10:])
    assert np.allclose(counts, np.round(counts), atol=1e-4) and round(counts.sum()) == 16 and (counts > -1e-4).all()
    assert not np.allclose(g[0], g[-1])  # per-step gradients, not one replayed gradient
    assert e["records"][0]["trace"]["mode"] == "recorded"


def test_influence_spread_by_hop(done) -> None:
    _, _, probes = done
    e = _entry(probes, "unlearning")
    inf = e["influence"]
    for r in inf:
        assert {"hop", "peers", "mia_advantage_mean", "forget_accuracy_mean"} <= set(r)
        assert 0.0 <= r["mia_advantage_mean"] <= 1.0 and r["peers"] == len(r["peer_ids"]) >= 1
    before = {r["hop"]: r for r in inf if r["model"] == "before"}
    retrained = {r["hop"]: r for r in inf if r["model"] == "retrained"}
    assert before[0]["peer_ids"] == [e["peer"]] and 0 not in retrained  # the absent leaver is not in it
    assert sum(r["peers"] for r in before.values()) == 8
    assert set(retrained) == set(before) - {0}


def test_cloning_recovers_layer_from_full_and_topk_logits(done) -> None:
    _, _, probes = done
    recs = _entry(probes, "cloning")["records"]
    exact = [r for r in recs if r["defence"] == "none" and r["topk"] in (None, 3) and r["n_query_points"] >= D + 1]
    assert len(exact) == 4
    for r in exact:
        assert r["method"] == "ridge" and r["ridge_lambda"] == 0.0 and r["agreement"] == 1.0  # noiseless: GCV picks 0
        # digits' corner pixels are (almost) always 0: a few hundred images leave some weight
        # directions barely constrained; with most of the attacker's pool the solve is exact
        assert r["layer_relative_error"] < (1e-8 if r["n_query_points"] == 1000 else 1e-2)
    full = [r for r in exact if r["topk"] is None]
    assert all(r["queries"] == r["n_query_points"] for r in full)  # one oracle row per image
    labels = [r for r in recs if r["defence"] == "top1"]
    assert {r["method"] for r in labels} == {"distillation_labels"} and all(r["k"] == 1 for r in labels)
    assert not any(r["defence"] == "rounding(1)" and r["topk"] == 1 for r in recs)
    cost = {(c["defence"], c["topk"]): c for c in _entry(probes, "cloning")["defence_cost"]}
    assert cost[("none", None)]["queries_to_goal"] == 200


def test_format_probes_tables(done) -> None:
    _, _, probes = done
    md = format_probes(probes)
    assert "### Unlearning" in md and "### Cloning" in md
    assert "| metric | before | after | retrained | after − retrained |" in md
    assert "| hop | peers |" in md and "| defence | k | 8 | 200 | 1000 |" in md
    assert "| model | attack | advantage | null q95 | class-matched q95 | p |" in md
    assert "| method | KL forget |" in md
    assert format_probes([]) == ""


@pytest.mark.parametrize(
    ("probe", "key"),
    [
        ({"kind": "unlearning", "lr": 0}, "lr"),
        ({"kind": "unlearning", "heldout_fraction": 1.5}, "heldout_fraction"),
        ({"kind": "unlearning", "peer": 8}, "peer"),
        ({"kind": "unlearning", "peer": 3, "target": 3}, "target"),
        ({"kind": "unlearning", "target": "all"}, "target"),
        ({"kind": "unlearning", "lira_shadows": 1}, "lira_shadows"),
        ({"kind": "unlearning", "retrain": "yes"}, "retrain"),
        ({"kind": "unlearning", "forget": 3}, "forget"),
        ({"kind": "unlearning", "permutations": 10}, "permutations"),
        ({"kind": "unlearning", "newton_damping": 0}, "newton_damping"),
        ({"kind": "unlearning", "criterion": "prior"}, "criterion"),
        ({"kind": "unlearning", "alpha": 1.0}, "alpha"),
        ({"kind": "unlearning", "path_every": -1}, "path_every"),
        ({"kind": "unlearning", "canaries": {"kind": "x"}}, "canaries.kind"),
        ({"kind": "unlearning", "canaries": {"heldout": 10, "calibration": 9}}, "canaries.calibration"),
        ({"kind": "unlearning", "stop_groups": "both"}, "stop_groups"),
        ({"kind": "cloning", "queries": []}, "queries"),
        ({"kind": "cloning", "topk": [0]}, "topk"),
        ({"kind": "cloning", "defences": [{"kind": "noise", "sigma": -1}]}, "defences.0.sigma"),
        ({"kind": "cloning", "defences": [{"kind": "blur"}]}, "defences.0"),
    ],
)
def test_validate_probe_names_the_key(probe: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError, match=rf"^probes\.0\.{key}: "):
        validate_probe(0, probe, num_peers=8)


def test_validate_probe_accepts_the_edges() -> None:
    """The declared bounds are inclusive where the old checks were: peer 7 of 8, lira_shadows 0 or
    2, target 'global', newton_steps 100, alpha just below 1, canaries calibration heldout - 2."""
    cfg = validate_probe(0, {"kind": "unlearning", "peer": 7, "target": "global", "lira_shadows": 0,
                             "newton_steps": 100, "alpha": 0.99, "canaries": {"heldout": 10, "calibration": 8}}, 8)
    assert cfg["peer"] == 7 and cfg["target"] == "global" and cfg["canaries"]["calibration"] == 8
    assert validate_probe(0, {"kind": "unlearning", "lira_shadows": 2, "target": 0}, 8)["target"] == 0
    assert validate_probe(0, {"kind": "unlearning", "canaries": {"heldout": 10}}, 8)["canaries"]["calibration"] == 5
    assert validate_probe(0, {"kind": "cloning", "topk": [None, 5, None, 5]}, 8)["topk"] == [None, 5]


def test_validate_probe_fills_defaults() -> None:
    cfg = validate_probe(1, {"kind": "cloning", "queries": [32, 8, 8]})
    assert cfg["queries"] == [8, 32] and cfg["topk"] == [None, 5, 2, 1] and len(cfg["defences"]) == 3


def test_bad_parameters_at_run_time(done, tmp_path: Path) -> None:
    run, _, _ = done
    prep, params = run.prepared, run.final_params

    def probe_run(probes: list[dict[str, Any]]) -> Run:
        return Run(parse(_scenario(tmp_path, probes=probes)), tmp_path / "r")

    with pytest.raises(ValueError, match=r"probes\.0\.topk: k=11 exceeds"):
        run_probes(probe_run([{"kind": "cloning", "topk": [11]}]), prep, params)
    byz = np.zeros(8, dtype=bool)
    byz[0] = True
    with pytest.raises(ValueError, match=r"probes\.0\.target: peer 0 is Byzantine"):
        run_probes(probe_run([{"kind": "cloning", "target": 0}]), dataclasses.replace(prep, byzantine=byz), params)
    with pytest.raises(ValueError, match=r"probes\.0\.max_steps: "):
        run_probes(probe_run([{"kind": "unlearning", "max_steps": 0}]), prep, params)


def test_hops_and_split() -> None:
    ring = [np.array([(i - 1) % 6, (i + 1) % 6]) for i in range(6)]
    assert hop_distances(ring, 0).tolist() == [0, 1, 2, 3, 2, 1]
    directed = [np.array([], dtype=np.int64), np.array([0]), np.array([1])]  # 0 → 1 → 2, nobody hears 2
    assert hop_distances(directed, 2).tolist() == [-1, -1, 0]
    cal, mia, test = heldout_split(101, 0.5, seed=7)
    assert (len(cal), len(mia), len(test)) == (25, 25, 51)
    assert sorted(np.concatenate([cal, mia, test]).tolist()) == list(range(101))
    again = heldout_split(101, 0.5, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip((cal, mia, test), again, strict=True))


@pytest.mark.slow
def test_canaries_planted_detected_and_absent_after_retraining(tmp_path: Path) -> None:
    """End to end: 40 out-of-distribution canaries in the leaver's shard; the trained federation's
    target shows them (canary LiRA/loss significant), the federation retrained without the leaver
    does not (the control)."""
    probe = {"kind": "unlearning", "lira_shadows": 8, "permutations": 199,
             "canaries": {"count": 40, "kind": "ood", "scale": 10.0, "heldout": 400}}
    run = Run(parse(_scenario(tmp_path, probes=[probe])))
    run.create_dir(overwrite=True)
    run.execute()
    e = json.loads((run.dir / "probes.json").read_text())[0]
    can = run.prepared.canaries
    shards = [t for s in sorted(run.prepared.setups, key=lambda s: s.first) for t in s.train_idx]
    assert can is not None and can.peer == e["peer"] and np.isin(can.member_idx, shards[can.peer]).all()
    assert e["membership_setup"]["canaries"] == {"kind": "ood", "members": 40, "heldout": 200, "calibration": 200}
    before, retrained = e["membership"]["before"], e["membership"]["retrained"]
    b = before["canary_loss"]
    assert b["p_value"] < 0.01 and b["advantage"] > b["null_q95"]
    for attack in ("canary_loss", "canary_lira_online", "canary_lira_offline"):
        assert retrained[attack]["p_value"] > 0.01, attack


def test_choose_method_rule() -> None:
    """The rule stated in advance: at the null, within 1 point of calibration accuracy, least output change."""
    def m(stat: float, acc: float, kl: float) -> dict[str, Any]:
        return {"selection": {"statistic": stat, "threshold": 0.1, "calibration_accuracy": acc,
                              "calibration_kl_from_trained": kl}}

    methods = {"none": m(0.3, 0.90, 0.0), "a": m(0.05, 0.895, 0.02), "b": m(0.05, 0.90, 0.01),
               "c": m(0.2, 0.90, 0.001), "d": m(0.0, 0.85, 0.0001)}
    assert choose_method(methods) == "b"  # c: still a signal; d: costs 5 points; a: moves more than b
    assert choose_method({**methods, "none": m(0.05, 0.90, 0.0)}) == "none"  # nothing to remove
    # a method that took 0 steps ties with doing nothing: the rule names doing nothing, not the method
    assert choose_method({"ascent": m(0.05, 0.90, 0.0), "none": m(0.05, 0.90, 0.0)}) == "none"
    assert choose_method({"none": m(0.3, 0.9, 0.0), "c": m(0.2, 0.9, 0.0)}) is None
