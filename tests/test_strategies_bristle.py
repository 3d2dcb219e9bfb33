"""Bristle: prioritizer sampling, class selection and integrator weights by hand, mean removal,
end-to-end integration, knowledge transfer through a neighbour that shares one class."""

from __future__ import annotations

import math

import pytest
import torch

from strategies import AggregationContext, aggregate, build, flatten
from strategies._math import per_class_f1, per_class_recall
from strategies.bristle import Bristle

C, D = 3, 3
# validation: e0 → class 0, e1 → class 1; class 2 is unfamiliar
VAL_X = torch.eye(3)[:2]
VAL_Y = torch.tensor([0, 1])
# fedsim's implementation before the authors' code was followed (docs/bristle-repro.md)
OLD = {
    "selection": "thirds", "k": 8, "e": 2, "classes": "all", "metric": "f1", "sequential_penalty": 0.0,
    "mean_removal": "feature", "cwr": False,
}


def ctx(**kw) -> AggregationContext:
    gen = torch.Generator().manual_seed(0)
    base = dict(layer_shape=(C, D), bias=True, val_x=VAL_X, val_y=VAL_Y, generator=gen)
    return AggregationContext(**{**base, **kw})


def sig(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def weight(score: float, certainty: float) -> float:
    return max(0.0, 10 * sig(score / 100) - 4) * certainty


def old(**over) -> Bristle:
    return build("bristle", {**OLD, **over})


# ------------------------------------------------------------------------------------ metrics


def test_per_class_recall_and_f1_by_hand():
    # labels 0, 0, 1, 2; predictions 0, 1, 1, 1 (argmax): recall (1/2, 1, 0), F1 (2/3, 2/4, 0)
    logits = torch.eye(3)[torch.tensor([0, 1, 1, 1])][None]
    y = torch.tensor([0, 0, 1, 2])
    assert per_class_recall(logits, y)[0].tolist() == pytest.approx([0.5, 1.0, 0.0])
    assert per_class_f1(logits, y)[0].tolist() == pytest.approx([2 / 3, 0.5, 0.0])
    # a padded sample counts for nothing; a class absent from y scores 0 (recall 0/0)
    mask = torch.tensor([True, True, True, False])
    assert per_class_recall(logits, y, mask)[0].tolist() == pytest.approx([0.5, 1.0, 0.0])


# ------------------------------------------------------------------------------------ class selection


def test_selected_classes_are_the_candidates_best_familiar_ones_ties_to_the_lower_class():
    fam = torch.tensor([True, True, True, False])
    m = torch.tensor([[0.2, 0.9, 0.5, 1.0], [0.5, 0.5, 0.5, 1.0], [0.0, 0.0, 0.0, 0.0], [0.3, 0.1, 0.9, 0.0]])
    sel = Bristle.selected(m, fam, torch.tensor([1, 2, 3, 9]))
    assert sel.int().tolist() == [
        [0, 1, 0, 0],  # the best familiar class (class 3 scores higher but is foreign)
        [1, 1, 0, 0],  # a three-way tie: the two lowest classes
        [1, 1, 1, 0],  # s_j = |F|: all familiar
        [1, 1, 1, 0],  # s_j > |F|: all familiar
    ]
    assert not Bristle.selected(m, fam, torch.zeros(4, dtype=torch.long)).any()


def test_counts_per_mode():
    ov = torch.tensor([0, 2, 5])
    assert build("bristle").counts(ov, (3,), 10, "cpu").tolist() == [0, 2, 5]  # classes="overlap"
    assert build("bristle").counts(None, (3,), 10, "cpu").tolist() == [10, 10, 10]  # unknown: all
    assert build("bristle", {"classes": "top", "top": 3}).counts(ov, (3,), 10, "cpu").tolist() == [3, 3, 3]
    assert build("bristle", {"classes": "all"}).counts(ov, (3,), 10, "cpu").tolist() == [10, 10, 10]


def test_a_neighbour_sharing_one_of_two_classes_is_scored_on_that_class_only():
    # own recall (1, 1); the neighbour shares class 1 (recall 1) and lacks class 0 (recall 0).
    # Scored on both ("all", fedsim before): certainty = mean 0.5 − std 0.5 = 0 → weight 0 everywhere.
    # Scored on the shared class (overlap 1, or top 1): d = 0 → score 0, certainty 1 − 0 = 1,
    # weight 10·sigmoid(0) − 4 = 1 on class 1, 0 on class 0, foreign weight (sum of scores 0) 1.
    own, cand = torch.tensor([1.0, 1.0]), torch.tensor([[0.0, 1.0]])
    w, u = build("bristle", {"classes": "all"}).class_weights(own, cand)
    assert w.tolist() == [[0.0, 0.0]] and u.tolist() == [0.0]
    for rule in (build("bristle"), build("bristle", {"classes": "top", "top": 1})):
        counts = torch.tensor([1]) if rule.classes == "overlap" else None
        w, u = rule.class_weights(own, cand, counts if counts is not None else torch.tensor([rule.top]))
        assert w.tolist() == [[0.0, 1.0]] and u.tolist() == [1.0]


def test_selected_class_weights_by_hand_for_a_better_candidate():
    # own (0.5, 0.5, 0.5), candidate (0.9, 0.6, 0.1), overlap 2 → S = {0, 1}:
    # scores 4^3.5, 1^3.5 = 1; certainty = mean 0.75 − std 0.15 = 0.6; class 2 not selected → 0;
    # foreign: the sum of the selected unbounded scores
    w, u = build("bristle").class_weights(
        torch.tensor([0.5, 0.5, 0.5]), torch.tensor([[0.9, 0.6, 0.1]]), torch.tensor([2])
    )
    s0, s1 = 4**3.5, 1.0
    assert w[0].tolist() == pytest.approx([weight(s0, 0.6), weight(s1, 0.6), 0.0])
    assert u.tolist() == pytest.approx([weight(s0 + s1, 0.6)])


def test_sequential_penalty_by_hand():
    # two candidates worse than own (0.5) on one class: the first gets −(10·0.1)^4.5 = −1; the
    # second −(10·0.1)^4.5 · (1 + 2·(0.5 − 0.4)) = −1.2 (the April code); 0 turns it off
    own, cand = torch.tensor([0.5]), torch.tensor([[0.4], [0.4]])
    _, u = build("bristle").class_weights(own, cand)
    assert u.tolist() == pytest.approx([weight(-1.0, 0.4), weight(-1.2, 0.4)])
    _, u0 = build("bristle", {"sequential_penalty": 0.0}).class_weights(own, cand)
    assert u0.tolist() == pytest.approx([weight(-1.0, 0.4), weight(-1.0, 0.4)])


# ------------------------------------------------------------------------------------ the old weights


def test_class_weights_by_hand_for_a_better_candidate():
    # own F1 (0.5, 0.5), candidate (0.9, 0.7): d = 4, 2; scores 4^3.5 = 128, 2^3.5;
    # certainty = mean 0.8 - std 0.1 = 0.7; unfamiliar: the sum of the scores
    w, u = old().class_weights(torch.tensor([0.5, 0.5]), torch.tensor([[0.9, 0.7]]))
    s0, s1 = 4**3.5, 2**3.5
    assert w.tolist() == [pytest.approx([weight(s0, 0.7), weight(s1, 0.7)])]
    assert u.tolist() == pytest.approx([weight(s0 + s1, 0.7)])
    assert all(v > 0 for v in w[0].tolist() + u.tolist())
    # unfamiliar_score="mean" averages the scores instead
    _, u = old(unfamiliar_score="mean").class_weights(torch.tensor([0.5, 0.5]), torch.tensor([[0.9, 0.7]]))
    assert u.tolist() == pytest.approx([weight((s0 + s1) / 2, 0.7)])


def test_class_weights_are_zero_for_a_clearly_worse_candidate():
    # own (0.5, 0.5), candidate (0.1, 0.1): d = 4, score -4^4.5 = -512 → floored at -100;
    # 10·sigmoid(-1) - 4 < 0 → weight 0 although certainty = 0.1 > 0
    w, u = build("bristle").class_weights(torch.tensor([0.5, 0.5]), torch.tensor([[0.1, 0.1]]))
    assert w.tolist() == [[0.0, 0.0]] and u.tolist() == [0.0]


def test_class_weights_tolerate_slightly_worse_and_equal_candidates():
    # the paper's transform is 0 only below score 100·ln(0.4/0.6) ≈ -40.5: a candidate that is
    # slightly worse (d = 0.5, score -0.5^4.5) keeps a positive weight, an equal one gets 1·certainty
    w, _ = old().class_weights(torch.tensor([0.5]), torch.tensor([[0.45], [0.5]]))
    assert w[0, 0].item() == pytest.approx(weight(-(0.5**4.5), 0.45))
    assert w[1, 0].item() == pytest.approx(0.5)


# ------------------------------------------------------------------------------------ integration


def head(w: list[list[float]], b: list[float]) -> torch.Tensor:
    return flatten(torch.tensor(w, dtype=torch.float32), torch.tensor(b, dtype=torch.float32))


def feature_mean_removed(p: torch.Tensor) -> torch.Tensor:
    w, b = p[: C * D].reshape(C, D), p[C * D :]
    return flatten(w - w.mean(dim=0, keepdim=True), b - b.mean())


def class_mean_removed(p: torch.Tensor) -> torch.Tensor:
    w, b = p[: C * D].reshape(C, D), p[C * D :]
    return flatten(w - w.mean(dim=1, keepdim=True), b)


OWN_GOOD = head([[1, 0, 0], [0, 1, 0], [0, 0, 1]], [0, 0, 0])  # F1 = recall = (1, 1)


def test_mean_removal_by_hand_on_each_axis():
    # identical candidates: the integration returns own, then the mean removal. Rows are classes:
    # "class" (Node.kt's per class column in DL4J's [features, classes]) takes each row's mean
    # over the features, "feature" (fedsim before) each column's mean over the classes.
    own = head([[3, 0, 0], [0, 6, 3], [1, 1, 1]], [1, 2, 6])
    same = torch.stack([own, own])
    by_class = build("bristle", {"mean_removal": "class"})(own, same, ctx())
    assert torch.allclose(by_class, head([[2, -1, -1], [-3, 3, 0], [0, 0, 0]], [1, 2, 6]))
    by_feature = build("bristle", {"mean_removal": "feature"})(own, same, ctx())
    assert torch.allclose(by_feature, head([[5 / 3, -7 / 3, -4 / 3], [-4 / 3, 11 / 3, 5 / 3], [-1 / 3, -4 / 3, -1 / 3]],
                                           [-2, -1, 3]))
    assert torch.allclose(build("bristle", {"mean_removal": "none"})(own, same, ctx()), own)


def test_worse_candidate_leaves_own_unchanged():
    # swaps classes 0 and 1 → metric (0, 0) → certainty 0 → all weights 0 (familiar and unfamiliar)
    swapped = head([[0, 1, 0], [1, 0, 0], [0, 0, 5]], [1, 1, 1])
    out = old(mean_removal="none")(OWN_GOOD, swapped[None], ctx())
    assert torch.equal(out, OWN_GOOD)
    assert torch.allclose(old()(OWN_GOOD, swapped[None], ctx()), feature_mean_removed(OWN_GOOD))
    assert torch.allclose(build("bristle")(OWN_GOOD, swapped[None], ctx()), class_mean_removed(OWN_GOOD))


def test_identical_candidates_leave_own_unchanged():
    own = torch.randn(C * D + C, generator=torch.Generator().manual_seed(3))
    out = old(mean_removal="none")(own, torch.stack([own, own]), ctx())
    assert torch.allclose(out, own, atol=1e-6)
    assert torch.allclose(old()(own, torch.stack([own, own]), ctx()), feature_mean_removed(own), atol=1e-6)


def test_better_candidate_integrated_column_by_column():
    # own predicts class 0 for e0 and e1: F1 = (2/3, 0). Candidate 2I with bias (0,0,0.5): F1 = (1, 1).
    own = head([[1, 1, 0], [0, 0, 0], [0, 0, 1]], [0, 0, 0])
    cand = head([[2, 0, 0], [0, 2, 0], [0, 0, 2]], [0, 0, 0.5])
    s0 = (10 / 3) ** (3 + 2 / 3)  # d = 10·(1 - 2/3), exponent 3 + F1_own
    s1 = 10.0**3  # d = 10, F1_own = 0
    w = [weight(s0, 1.0), weight(s1, 1.0), weight(s0 + s1, 1.0)]  # certainty = 1 - 0; class 2 unfamiliar
    ow, ob = own[: C * D].reshape(C, D), own[C * D :]
    cw, cb = cand[: C * D].reshape(C, D), cand[C * D :]
    exp_w = torch.stack([(ow[c] + w[c] * cw[c]) / (1 + w[c]) for c in range(C)])
    exp_b = torch.stack([(ob[c] + w[c] * cb[c]) / (1 + w[c]) for c in range(C)])
    expect = flatten(exp_w, exp_b)
    out = old(mean_removal="none")(own, cand[None], ctx())
    assert torch.allclose(out, expect, atol=1e-6)
    assert torch.allclose(old()(own, cand[None], ctx()), feature_mean_removed(expect), atol=1e-6)
    # ctx.local_classes overrides the classes seen in val_y: with all familiar, class 2 has F1 0/0 = 0
    # for both, d = 0 → weight (10·0.5 - 4)·certainty, certainty = mean(1,1,0) - std(1,1,0)
    cert = 2 / 3 - math.sqrt(2 / 9)
    all_familiar = ctx(local_classes=torch.ones(3, dtype=torch.bool))
    out = old(mean_removal="none")(own, cand[None], all_familiar)
    exp_row2 = (ow[2] + weight(0.0, cert) * cw[2]) / (1 + weight(0.0, cert))
    assert torch.allclose(out[2 * D : 3 * D], exp_row2, atol=1e-6)


def test_senders_sharing_no_class_are_left_out():
    # overlap 0: the authors' peers never send to each other. Alone, such a sender changes nothing
    # (not even the mean removal, which follows an integration); beside others it counts for nothing.
    cand = head([[2, 0, 0], [0, 2, 0], [0, 0, 2]], [0, 0, 0.5])
    rule = build("bristle")
    assert torch.equal(rule(OWN_GOOD, cand[None], ctx(overlap=torch.tensor([0]))), OWN_GOOD)
    junk = torch.full_like(cand, 7.0)
    both = rule(OWN_GOOD, torch.stack([junk, cand]), ctx(overlap=torch.tensor([0, 2])))
    assert torch.equal(both, rule(OWN_GOOD, cand[None], ctx(overlap=torch.tensor([2]))))
    # aggregate() keeps ctx.overlap aligned with the rows that survive sanitisation
    nan = torch.full_like(cand, float("nan"))
    out, dropped = aggregate(rule, OWN_GOOD, torch.stack([nan, junk, cand]), ctx(overlap=torch.tensor([2, 0, 2])))
    assert dropped == 1 and torch.equal(out, both)


def test_nan_candidates_never_propagate():
    cand = head([[2, 0, 0], [0, 2, 0], [0, 0, 2]], [0, 0, 0.5])
    inf = cand.clone()
    inf[4] = float("inf")
    bad = torch.stack([cand, torch.full_like(cand, float("nan")), inf])
    rule = build("bristle")
    out, dropped = aggregate(rule, OWN_GOOD, bad, ctx())
    assert dropped == 2 and bool(torch.isfinite(out).all())
    assert torch.equal(out, rule(OWN_GOOD, cand[None], ctx()))
    # a peer with consolidated weights falls back to its consolidated head, not the trained copy
    held = torch.zeros_like(OWN_GOOD)
    out, _ = aggregate(rule, OWN_GOOD, bad[1:], ctx(), fallback=held)
    assert torch.equal(out, held)


# ------------------------------------------------------------------------------------ knowledge transfer


def _digits(n_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Separable toy features in 6 dimensions: class c ≈ 2·e_c + noise (three classes)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(3).repeat_interleave(n_per_class)
    return 2 * torch.eye(3, 6)[y] + 0.3 * torch.randn(len(y), 6, generator=g), y


def _accuracy(params: torch.Tensor, x: torch.Tensor, y: torch.Tensor, c: int) -> float:
    w = params[:18].reshape(3, 6)
    pred = (x @ w.T).argmax(dim=1)
    return float((pred[y == c] == c).float().mean())


def test_a_neighbour_sharing_one_of_two_classes_transfers_its_other_class():
    # the receiver holds classes 0 and 1 and has never seen class 2 (its row 2 points away from it);
    # its neighbour holds classes 1 and 2 and knows both. Scored on the shared class (the overlap,
    # 1), the neighbour passes: after one integration the receiver recognises class 2. Scored on
    # both familiar classes ("all"), the neighbour's certainty is 0 and class 2 stays unknown.
    x_val, y_val = _digits(4, seed=1)
    keep = y_val < 2
    x_test, y_test = _digits(50, seed=2)
    away = 0.5 * (torch.eye(6)[5] - torch.eye(6)[2])  # zero mean: the class mean removal leaves it
    own = torch.cat([2 * torch.eye(3, 6)[:2], away[None]]).reshape(-1)
    neighbour = torch.cat([torch.zeros(1, 6), 2 * torch.eye(3, 6)[1:]]).reshape(-1)
    c = AggregationContext(layer_shape=(3, 6), bias=False, val_x=x_val[keep], val_y=y_val[keep],
                           overlap=torch.tensor([1]), generator=torch.Generator().manual_seed(0))
    before = _accuracy(own, x_test, y_test, 2)
    after = _accuracy(build("bristle")(own, neighbour[None], c), x_test, y_test, 2)
    unchanged = _accuracy(build("bristle", {"classes": "all"})(own, neighbour[None], c), x_test, y_test, 2)
    assert before < 0.2 and unchanged < 0.2 and after > 0.9
    # the receiver's own classes survive the integration
    out = build("bristle")(own, neighbour[None], c)
    assert min(_accuracy(out, x_test, y_test, k) for k in (0, 1)) > 0.9


# ------------------------------------------------------------------------------------ prioritizer


RECEIVED = torch.arange(30, dtype=torch.float32).flip(0)[:, None]  # distance to own=0 is the value
OWN0 = torch.zeros(1)


def test_sampling_is_deterministic_under_a_seeded_generator():
    for rule in (build("bristle", {"selection": sel}) for sel in ("thirds", "shuffle", "nearest_random")):
        a = rule.select(OWN0, RECEIVED, torch.Generator().manual_seed(42))
        b = rule.select(OWN0, RECEIVED, torch.Generator().manual_seed(42))
        assert torch.equal(a, b) and a.numel() == rule.limit() and a.unique().numel() == rule.limit()
        draws = {tuple(rule.select(OWN0, RECEIVED, torch.Generator().manual_seed(s)).tolist()) for s in range(5)}
        assert len(draws) > 1


def test_sampling_thirds_follow_alpha():
    values = RECEIVED[:, 0]
    def thirds(alpha: float) -> torch.Tensor:
        return build("bristle", {"selection": "thirds", "alpha": alpha}).select(
            OWN0, RECEIVED, torch.Generator().manual_seed(0)
        )

    near = thirds(0.0)
    assert sorted(values[near].tolist()) == list(range(10))  # only the nearest third (ranks 0-9)
    far = thirds(1.0)
    assert sorted(values[far].tolist()) == list(range(20, 30))
    # default α = 0.4: third probabilities 0.36 / 0.48 / 0.16
    counts = torch.zeros(3)
    rule = build("bristle", {"selection": "thirds"})
    for s in range(200):
        idx = rule.select(OWN0, RECEIVED, torch.Generator().manual_seed(s))
        counts += torch.bincount((values[idx] // 10).long(), minlength=3)
    assert counts[1] > counts[0] > counts[2]


def test_nearest_random_selection_and_small_inputs():
    rule = build("bristle", {"selection": "nearest_random", "k": 3, "e": 2})
    values = RECEIVED[:, 0]
    for s in range(5):
        idx = rule.select(OWN0, RECEIVED, torch.Generator().manual_seed(s))
        got = set(values[idx].tolist())
        assert {0.0, 1.0, 2.0} <= got and len(got) == 5
    # the April code's 20 nearest + 5 random (the default): all 25 when at most 25 arrived
    default = build("bristle")
    assert default.limit() == 25 and default.select(OWN0, RECEIVED[:25], None).tolist() == list(range(25))
    idx = default.select(OWN0, RECEIVED, torch.Generator().manual_seed(0))
    assert set(range(20)) <= set(values[idx].tolist())
    with pytest.raises(ValueError, match="generator"):
        default.select(OWN0, RECEIVED, None)


def test_shuffle_selection_is_uniform_over_distances():
    rule = build("bristle", {"selection": "shuffle"})
    counts = torch.zeros(3)
    for s in range(200):
        idx = rule.select(OWN0, RECEIVED, torch.Generator().manual_seed(s))
        counts += torch.bincount((RECEIVED[idx, 0] // 10).long(), minlength=3)
    assert counts.min() > 0.8 * counts.max()  # every third equally likely (thirds: 0.36 / 0.48 / 0.16)


def test_interface_and_parameter_errors():
    rule = build("bristle")
    assert rule.needs == frozenset({"validation", "generator", "overlap"}) and rule.exchanges == "output_layer"
    assert rule.consolidated and not build("bristle", {"cwr": False}).consolidated
    assert not build("fedavg").consolidated
    for params, field in [
        ({"num_candidates": 0}, "num_candidates"),
        ({"alpha": 1.5}, "alpha"),
        ({"selection": "random"}, "selection"),
        ({"k": -1}, "k"),
        ({"k": 0, "e": 0}, "k"),
        ({"classes": "some"}, "classes"),
        ({"top": 0}, "top"),
        ({"metric": "accuracy"}, "metric"),
        ({"sequential_penalty": -1}, "sequential_penalty"),
        ({"diff_scale": 0}, "diff_scale"),
        ({"score_floor": 1.0}, "score_floor"),
        ({"score_temperature": 0}, "score_temperature"),
        ({"unfamiliar_score": "max"}, "unfamiliar_score"),
        ({"mean_removal": "row"}, "mean_removal"),
        ({"cwr": "no"}, "cwr"),
    ]:
        with pytest.raises(ValueError, match=f"^{field}:"):
            build("bristle", params)
    with pytest.raises(ValueError, match="val_x"):
        rule(OWN_GOOD, OWN_GOOD[None], AggregationContext((C, D)))
