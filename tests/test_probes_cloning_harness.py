"""The cloning probe's harness (fedsim.probes.run_cloning) on a synthetic trained federation (no
training run): a bottleneck target, defences before ranking with the defender's cost, repeats,
top-1 with value, stage-1 report, Markdown, validation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fedsim.probe_registry import summarize, validate_probe
from fedsim.probes import _Ctx, _plain, run_cloning
from fedsim.report_probes import format_probes
from fedsim.schema_sections import TrainingCfg

C, D, N_PEERS = 10, 24, 4


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def ctx(_one_thread) -> _Ctx:
    """Gaussian-mixture features (C overlapping classes: ~90% accuracy), 4 peers, a linear 'federated' head."""
    g = torch.Generator().manual_seed(0)
    means = 1.2 * torch.randn(C, D, generator=g, dtype=torch.float64)

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, C, (n,), generator=g)
        return means[y] + torch.randn(n, D, generator=g, dtype=torch.float64), y

    xtr, ytr = sample(1600)
    xte, yte = sample(600)
    w = means.clone()
    b = -0.5 * (means ** 2).sum(1)  # nearest-mean classifier: a linear head
    params = torch.cat([w.reshape(-1), b])
    return _Ctx(out_dir=None, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte,  # type: ignore[arg-type]
                train_idx=list(np.array_split(np.arange(1600), N_PEERS)), honest=np.ones(N_PEERS, bool),
                final_params=params.expand(N_PEERS, -1).clone(), layer_shape=(C, D), bias=True, seed=0,
                federated=False, topology=None,  # type: ignore[arg-type]  # cloning needs no graph
                training=TrainingCfg())


def _run(ctx: _Ctx, **cfg) -> dict:
    return _plain(run_cloning(0, validate_probe(0, {"kind": "cloning", **cfg}, N_PEERS), ctx))


@pytest.fixture(scope="module")
def bottleneck(ctx) -> dict:
    return _run(ctx, target_head={"kind": "bottleneck", "hidden": 3, "epochs": 200, "lr": 0.05},
                queries=[10, 40, 200, 1200], topk=[None, 1],
                defences=[{"kind": "noise", "sigma": 2.0}, {"kind": "rounding", "decimals": 0},
                          {"kind": "noise", "sigma": 2.0, "stage": "after_ranking"}, {"kind": "top1"}],
                repeats=[1, 4])


def test_bottleneck_stage1_recovers_hidden_size(bottleneck) -> None:
    st = bottleneck["stage1"]
    assert st["true_hidden_size"] == 3 and st["hidden_size"] == 3 and st["identifiable"]
    assert st["subspace_error"] < 1e-8 and len(st["singular_values"]) == C
    sv = st["singular_values"]
    assert sv[2] > 1e6 * sv[3]  # the drop after h
    assert bottleneck["target_head"]["train_samples"] == 1600
    none_full = {r["n_query_points"]: r for r in bottleneck["records"] if r["defence"] == "none" and r["topk"] is None}
    assert none_full[200]["agreement"] == 1.0 and none_full[200]["layer_relative_error"] < 1e-8
    assert none_full[10]["agreement"] < 1.0  # fewer than d + 1 queries
    top1 = [r for r in bottleneck["records"] if r["defence"] == "none" and r["topk"] == 1]
    assert all(r["queries"] == C * r["n_query_points"] for r in top1)  # logit bias: C queries per input
    assert max(top1, key=lambda r: r["n_query_points"])["agreement"] == 1.0
    json.dumps(bottleneck, allow_nan=False)


def test_defender_cost_and_repeats(bottleneck) -> None:
    cost = {(d["defence"], d["topk"], d["repeats"]): d for d in bottleneck["defence_cost"]}
    assert cost[("none", None, 1)]["defender_accuracy_cost"] == 0.0
    assert cost[("none", None, 1)]["queries_to_goal"] is not None
    noise = cost[("noise(2)", None, 1)]
    assert noise["defender_accuracy_cost"] > 0.0 and noise["served_accuracy"] < noise["undefended_accuracy"]
    # control: the same noise after an exact ranking costs the defender nothing
    assert cost[("noise(2)@after_ranking", None, 1)]["defender_accuracy_cost"] == 0.0
    # repeats: 4x the queries per input, a better clone at the same number of inputs
    r1 = [r for r in bottleneck["records"] if r["defence"] == "noise(2)" and r["topk"] is None and r["repeats"] == 1]
    r4 = [r for r in bottleneck["records"] if r["defence"] == "noise(2)" and r["topk"] is None and r["repeats"] == 4]
    a1, a4 = (max(rs, key=lambda r: r["n_query_points"]) for rs in (r1, r4))
    assert a4["queries"] == 4 * a1["queries"] and a4["kl_divergence"] < a1["kl_divergence"]
    assert ("rounding(0)", None, 4) not in cost  # repeats only against fresh noise
    assert cost[("top1", 1, 1)]["agreement_at_max"] < 1.0


def test_markdown_and_summary(bottleneck) -> None:
    md = format_probes([bottleneck])
    assert "bottleneck head trained by the probe" in md and "Stage 1 (SVD" in md
    assert "hidden size recovered 3" in md and "defender cost" in md and "noise(2) ×4 avg" in md
    s = summarize(bottleneck)
    assert s["hidden_size"]["recovered"] == 3 and s["hidden_size"]["true"] == 3
    assert s["defender_accuracy_cost"]["noise(2)/k=all"] > 0 and "noise(2)/k=all/r=4" in s["queries_to_99pct"]


def test_federated_linear_head_stage1_is_vacuous(ctx) -> None:
    e = _run(ctx, queries=[40, 200], topk=[None], defences=[])
    st = e["stage1"]
    assert st["true_hidden_size"] is None and not st["identifiable"] and st["hidden_size"] == C
    assert "not identifiable" in format_probes([e])


@pytest.mark.parametrize(("probe", "key"), [
    ({"target_head": {"kind": "wide"}}, "target_head"),
    ({"target_head": {"kind": "bottleneck", "hidden": 0}}, "target_head.hidden"),
    ({"target_head": {"kind": "bottleneck", "activation": "tanh"}}, "target_head.activation"),
    ({"target_head": {"kind": "bottleneck", "width": 3}}, "target_head.width"),
    ({"repeats": [0]}, "repeats"),
    ({"method": "svd"}, "method"),
    ({"defences": [{"kind": "noise", "stage": "late"}]}, "defences.0.stage"),
])
def test_validation(probe, key) -> None:
    with pytest.raises(ValueError, match=rf"^probes\.0\.{key}: "):
        validate_probe(0, {"kind": "cloning", **probe}, N_PEERS)


def test_bottleneck_wider_than_classes_is_an_error(ctx) -> None:
    with pytest.raises(ValueError, match=r"^probes\.0\.target_head\.hidden: must be < C - 1"):
        _run(ctx, target_head={"kind": "bottleneck", "hidden": C - 1}, queries=[8], topk=[None], defences=[])
