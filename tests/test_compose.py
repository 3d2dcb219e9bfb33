"""The pre-aggregators (nnm, arc, bucketing) report what the engine must do for them as their inner
rule does (``strategies._compose.PreAggregator``): per fact over every registered rule as inner,
and in the engine (Bristle's consolidated weights, the class sets, the message size). Also: the
gossip aggregation and validation ask one function whether the run forges (``runfacts.sends_forgeries``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attacks
import strategies
from fedsim import routing, runfacts
from fedsim.gossip import has_batched_form
from fedsim.peers import PeerGroup
from fedsim.prepare import prepare
from fedsim.runfiles import run_summary
from fedsim.scenario import ScenarioError, parse, parse_with_plan
from strategies._compose import build_inner

PRE = ("nnm", "arc", "bucketing")
# every registered rule as inner, at its defaults, and Bristle without CWR and without the class overlap
INNERS = [(n, {}) for n in sorted(strategies.REGISTRY)] + [("bristle", {"cwr": False}), ("bristle", {"classes": "all"})]
MIXES = {"nnm", "bucketing"}  # their rows are no sender's: an inner rule reading the overlap is refused


def _pair(name: str, inner: str, params: dict) -> tuple[strategies.Strategy, strategies.Strategy]:
    """The composed rule and its inner rule built alone, as the pre-aggregator builds it (arc and
    bucketing pass their include_own down; nnm does not)."""
    rule = strategies.build(name, {"inner": inner, "inner_params": params})
    return rule, build_inner(inner, params, None if name == "nnm" else True)


def _cases() -> list[tuple[str, str, dict]]:
    return [
        (name, inner, params)
        for name in PRE
        for inner, params in INNERS
        if not (name in MIXES and "overlap" in strategies.build(inner, params).needs)
    ]


@pytest.mark.parametrize(("name", "inner", "params"), _cases())
def test_a_composed_rule_reports_its_inner_rules_facts(name, inner, params):
    """Forwarded: exchanges, consolidated (Bristle's CWR), scores_whole_models. Combined: needs
    (plus bucketing's generator), reads_f (nnm's and arc's own steps read f; bucketing's does not).
    The composed rule's own: no float64 input and no batched form (its step is per peer)."""
    rule, alone = _pair(name, inner, params)
    assert rule.needs == alone.needs | ({"generator"} if name == "bucketing" else set())
    assert rule.exchanges == alone.exchanges
    assert rule.consolidated == alone.consolidated
    assert rule.scores_whole_models == alone.scores_whole_models
    assert rule.reads_f == (alone.reads_f or name in ("nnm", "arc"))
    assert not rule.float64_input and not rule.call_is_batched
    assert not has_batched_form(rule) and not has_batched_form(rule, torch.device("meta"))


def test_the_facts_differ_across_inner_rules():
    """The table above is not vacuous: each forwarded fact takes both values among the inner rules."""
    built = [strategies.build(n, p) for n, p in INNERS]
    for fact in ("exchanges", "consolidated", "scores_whole_models", "reads_f"):
        assert len({getattr(r, fact) for r in built}) == 2, fact


@pytest.mark.parametrize("name", sorted(MIXES))
def test_a_mixing_pre_aggregator_refuses_an_inner_rule_that_reads_each_senders_overlap(name):
    with pytest.raises(ValueError, match=rf"^inner: bristle reads each sender's claimed class overlap .* {name} "):
        strategies.build(name, {"inner": "bristle"})
    assert "\n" not in str(pytest.raises(ValueError, strategies.build, name, {"inner": "bristle"}).value)
    for classes in ("top", "all"):  # Bristle reads ctx.overlap only with classes="overlap"
        assert "overlap" not in strategies.build(name, {"inner": "bristle", "inner_params": {"classes": classes}}).needs
    arc = strategies.build("arc", {"inner": "bristle"})  # (ARC's row i is sender i's, clipped)
    assert "overlap" in arc.needs


def test_nested_composition_reports_the_innermost_rule():
    rule = strategies.build(
        "arc", {"inner": "bucketing", "inner_params": {"inner": "bristle", "inner_params": {"classes": "all"}}}
    )
    assert rule.consolidated and rule.exchanges == "output_layer" and "generator" in rule.needs


def test_float64_input_is_not_the_inner_rules():
    """ARC hands its inner rule rows in ``received``'s dtype, so float64 rows (the federated server's
    scratch, ``Strategy.float64_input``) would change what median computes: a composed rule must not
    claim the inner rule's ``float64_input``."""
    g = torch.Generator().manual_seed(0)
    own, x = torch.randn(50, generator=g), torch.randn(7, 50, generator=g) * 3
    ctx = strategies.AggregationContext(layer_shape=(5, 10), bias=False, f=2)
    arc = strategies.build("arc", {"inner": "median"})
    assert strategies.build("median").float64_input
    assert not torch.equal(arc(own, x, ctx), arc(own, x.double(), ctx).float())


# --------------------------------------------------------------------------- in the engine


def _scenario(small_scenario, strategy: dict, **over):
    return parse(
        small_scenario(
            **{
                "peers.count": 10,
                "partition.kind": "windows",
                "partition.window": 3,
                "topology.kind": "complete",
                "engine.num_actors": 1,
                "strategy": strategy,
                **over,
            }
        )
    )


def _group(sc) -> PeerGroup:
    prep = prepare(sc)
    f = prep.features
    return PeerGroup(
        prep.setups[0], {"x_train": f.x_train, "y_train": f.y_train, "x_test": f.x_test, "y_test": f.y_test}
    )


def _heads(sc, rounds: int = 2) -> torch.Tensor:
    g = _group(sc)
    for r in range(rounds):
        g.aggregate(r, g.train(r)[0])
    return torch.from_numpy(g.params())


def test_nnm_over_bristle_hands_bristle_the_trained_copy_and_keeps_the_consolidated_heads(small_scenario):
    """nnm(bristle) keeps consolidated weights as Bristle does: the head sent is the consolidated one
    (foreign rows untouched by training), the inner rule gets the trained copy as ``own``, and its
    result becomes the consolidated head."""
    sc = _scenario(
        small_scenario,
        {"name": "nnm", "params": {"include_own": False, "inner": "bristle", "inner_params": {"classes": "all"}}},
    )
    g = _group(sc)
    assert g.cwr
    g.w.normal_(generator=torch.Generator().manual_seed(0))
    before = g.w.clone()
    sent, _ = g.train(0)
    mine = g.local_classes
    w = torch.from_numpy(sent)[:, : g.layer_shape[0] * g.s.dim].reshape(g.p, g.layer_shape[0], -1)
    assert torch.equal(w[~mine], before[~mine])  # the consolidated head is sent: foreign rows untrained
    trained = strategies.flatten(g.tw.clone(), g.tb.clone() if g.bias else None)
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    inner = g.rule._inner

    def spy(own, received, ctx):
        out = inner(own, received, ctx)
        calls.append((own.clone(), out.clone()))
        return out

    g.rule._inner = spy
    g.aggregate(0, sent)
    assert len(calls) == g.p  # (every peer honest: one call each, per peer)
    for j, (own, out) in enumerate(calls):
        assert torch.equal(own, trained[j])  # the trained copy, not the sent head
        assert not torch.equal(own, torch.from_numpy(sent[j]))
        assert torch.equal(torch.from_numpy(g.params()[j]), out)  # the result: the new consolidated head


def test_arc_over_bristle_with_f_0_is_bristle(small_scenario):
    """ARC clips nothing when f = 0, so arc(bristle) must give Bristle's heads exactly: its consolidated
    weights and the class overlap its peers compare (before the pre-aggregators followed them, it had
    neither and differed)."""
    bristle = _heads(_scenario(small_scenario, {"name": "bristle"}))
    arc = _heads(_scenario(small_scenario, {"name": "arc", "params": {"inner": "bristle"}}))
    assert torch.equal(arc, bristle)
    plain = _heads(_scenario(small_scenario, {"name": "bristle", "params": {"cwr": False}}))
    assert not torch.equal(plain, bristle)  # (the control: the consolidated weights change the heads)


def test_the_run_sizes_messages_and_compares_class_sets_by_the_built_rule(small_scenario):
    """prepare, validation's plan and summary.json read the rule's instance: nnm(bristle) sends
    Bristle's output layer and arc(bristle) gets the class sets Bristle compares."""
    nnm = {"name": "nnm", "params": {"inner": "bristle", "inner_params": {"classes": "all"}}}
    over = {"backbone.name": "fmnist_cnn", "dataset.name": "mnist10k"}  # (a backbone: full_model counts it)
    sizes = {}
    for key, strategy in (("nnm", nnm), ("bristle", {"name": "bristle"}), ("median", {"name": "median"})):
        sc, plan = parse_with_plan(small_scenario(**{"strategy": strategy, **over}), require_data=True)
        summary = run_summary(sc, [], byzantine=0, f=0, num_params=1, timing={})
        sizes[key] = (plan.bytes_per_message, prepare(sc).bytes_per_message, summary["exchanges"])
    assert sizes["nnm"] == sizes["bristle"] and sizes["bristle"][2] == "output_layer"
    assert sizes["median"][0] > sizes["bristle"][0] and sizes["median"][2] == "full_model"
    assert (
        prepare(_scenario(small_scenario, {"name": "arc", "params": {"inner": "bristle"}})).setups[0].classes
        is not None
    )
    assert prepare(_scenario(small_scenario, nnm)).setups[0].classes is None  # (classes all: no overlap read)


# --------------------------------------------------------------------------- forging: one function


@pytest.mark.parametrize("count", [0, 1, 3])
def test_validation_and_the_groups_agree_whether_the_run_forges(small_scenario, count):
    """``runfacts.forges`` (validation's memory estimate, from the scenario) and the groups' decision
    (``runfacts.sends_forgeries`` of the mask prepare hands them) over every attack kind × Byzantine
    count: an update forger with a Byzantine peer to send its forgeries."""
    base = {"peers.byzantine": count, "peers.allow_idle_attack": True, "strategy.name": "median"}
    prep = prepare(parse(small_scenario(**base)))
    for kind in [None, *sorted(attacks.REGISTRY)]:
        attack = None if kind is None else attacks.build(kind, {})
        sc = parse(small_scenario(**base, **{"peers.attack.name": kind or "none"}))
        expect = isinstance(attack, attacks.UpdateForger) and count > 0
        assert runfacts.forges(sc, attack) == expect, kind
        for s in prep.setups:
            assert runfacts.sends_forgeries(attack, s.byzantine) == expect, kind


@pytest.mark.parametrize(("kind", "count"), [("sign_flip", 2), ("sign_flip", 0), ("label_swap", 2)])
def test_the_gossip_aggregation_concatenates_the_messages_exactly_when_the_run_forges(
    small_scenario, monkeypatch, kind, count
):
    sc = parse(
        small_scenario(
            **{
                "peers.byzantine": count,
                "peers.attack.name": kind,
                "peers.allow_idle_attack": True,
                "strategy.name": "median",
                "engine.num_actors": 1,
            }
        )
    )
    g = _group(sc)
    full = routing.Rows.full
    calls = []
    monkeypatch.setattr(routing.Rows, "full", lambda self: calls.append(1) or full(self))
    g.aggregate(0, g.train(0)[0])
    assert bool(calls) == runfacts.forges(sc, attacks.build(kind, {})) == (kind == "sign_flip" and count > 0)
    assert np.array_equal(g.s.byzantine, runfacts.byzantine_mask(sc))


def test_a_pre_aggregator_over_mozi_runs_on_whole_models_as_mozi_does(tmp_path):
    """MOZI scores candidates through ``ctx.val_logits`` (``scores_whole_models``), so nnm(mozi) is
    accepted on a whole model (it was refused as reading linear heads) and its groups hand it the logits."""
    from fedsim.whole import WholePeerGroup

    data = {
        "name": "mw", "seed": 3, "rounds": 2, "dataset": {"name": "sklearn_digits"},
        "backbone": {"name": "identity", "cache_dir": str(tmp_path / "cache")}, "partition": {"kind": "iid"},
        "peers": {"count": 4}, "topology": {"kind": "complete"},
        "strategy": {"name": "nnm", "params": {"inner": "mozi", "include_own": False}},
        "training": {"lr": 0.1, "momentum": 0.9, "batch_size": 8, "local_steps": 2},
        "model": {"trainable": "all", "hidden": [16], "init": "scratch"},
        "engine": {"backend": "local", "num_actors": 1},
    }  # fmt: skip
    prep = prepare(parse(data))
    f = prep.features
    g = WholePeerGroup(prep.setups[0], {"x_train": f.x_train, "y_train": f.y_train, "x_test": f.x_test,
                                        "y_test": f.y_test})  # fmt: skip
    assert g._ctx(0, 0, 0, None, 0).val_logits is not None
    g.aggregate(0, g.train(0)[0])
    with pytest.raises(ScenarioError, match="reads linear output layers"):  # (Bristle's CWR: still refused)
        parse(data | {"strategy": {"name": "arc", "params": {"inner": "bristle"}}})
