"""Cloning probe: hidden size, exact layer recovery, logit-bias top-k recovery, distillation,
defences and cloning curves, on small synthetic heads with known answers."""

from __future__ import annotations

import json
import math

import pytest
import torch

from attacks.probes import (
    AveragingOracle,
    BottleneckHead,
    CountingOracle,
    HeadOracle,
    ModelOracle,
    clone_from_oracle,
    cloning_curve,
    dense_from_topk,
    distill_student,
    flatten,
    head_logits,
    hidden_size_from_logits,
    recover_full_logits_topk,
    recover_layer_known_features,
    recover_layer_unknown_features,
    with_gaussian_noise,
    with_rounding,
    with_top1,
)

C, D = 10, 4
SHAPE = (C, D)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def head():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(C, D, generator=g, dtype=torch.float64)
    b = torch.randn(C, generator=g, dtype=torch.float64)
    x = torch.randn(600, D, generator=g, dtype=torch.float64)
    return {"w": w, "b": b, "theta": flatten(w, b), "x": x}


def logits(head, x):
    return head_logits(head["theta"], x, SHAPE, True)


def test_known_features_exact(head) -> None:
    h = head["x"][: D + 1]
    rec = recover_layer_known_features(h, logits(head, h), true_params=head["theta"])
    assert rec.determined and rec.rank == D + 1 and rec.n_queries == D + 1
    assert rec.relative_error is not None and rec.relative_error < 1e-5
    # float32 logits: still exact to float precision
    rec32 = recover_layer_known_features(h.float(), logits(head, h).float(), true_params=head["theta"])
    assert rec32.relative_error < 1e-5
    # one query short: underdetermined, the min-norm solution is wrong
    few = recover_layer_known_features(h[:D], logits(head, h[:D]), true_params=head["theta"])
    assert not few.determined and few.relative_error > 1e-2
    nb = recover_layer_known_features(h, h @ head["w"].T, bias=False, true_params=flatten(head["w"], None))
    assert nb.relative_error < 1e-10
    json.dumps(rec.to_dict(), allow_nan=False)


def test_hidden_size(head) -> None:
    z = logits(head, head["x"][:50])
    est = hidden_size_from_logits(z)
    assert est.hidden_size == D and est.identifiable and est.gap_ratio > 1e6
    assert hidden_size_from_logits(z.float()).hidden_size == D
    # log-probabilities add a per-row constant; class-centering removes it
    lp = torch.log_softmax(z, -1)
    assert hidden_size_from_logits(lp, center_classes=True).hidden_size == D
    # too few queries: rank capped by n - 1
    few = hidden_size_from_logits(z[:D])
    assert not few.identifiable and few.hidden_size == D - 1
    # d >= C: logits span R^C, not identifiable
    g = torch.Generator().manual_seed(1)
    wide = head_logits(torch.randn(C * 16 + C, generator=g, dtype=torch.float64),
                       torch.randn(60, 16, generator=g, dtype=torch.float64), (C, 16), True)
    est = hidden_size_from_logits(wide)
    assert est.hidden_size == C and not est.identifiable
    json.dumps(est.to_dict(), allow_nan=False)


def test_unknown_features_subspace(head) -> None:
    z = logits(head, head["x"][:50])
    rec = recover_layer_unknown_features(z, true_weight=head["w"])
    assert rec.hidden_size == D and rec.basis.shape == (C, D)
    assert rec.subspace_error < 1e-8 and rec.reconstruction_error < 1e-10
    assert rec.max_principal_angle < 1e-6
    # W = W~ G with G invertible (h = d)
    assert torch.allclose(rec.basis @ rec.alignment, head["w"], atol=1e-8)
    assert abs(float(torch.linalg.det(rec.alignment))) > 1e-6
    # a wrong (random) subspace is far
    other = recover_layer_unknown_features(torch.randn(50, C, dtype=torch.float64), D, true_weight=head["w"])
    assert other.subspace_error > 0.1


def test_topk_logit_bias_exact(head) -> None:
    x = head["x"][:30]
    k = 3
    rec = recover_full_logits_topk(HeadOracle(head["theta"], SHAPE, True, k=k), x, C)
    assert rec.complete and rec.exact_possible and rec.k == k
    assert (rec.logits - logits(head, x)).abs().max() < 1e-10
    assert rec.queries == 30 * (1 + math.ceil((C - k) / (k - 1)))
    # a log-prob API: recovers the log-probabilities exactly
    lp = recover_full_logits_topk(HeadOracle(head["theta"], SHAPE, True, k=k, output="logprobs"), x, C)
    assert (lp.logits - torch.log_softmax(logits(head, x), -1)).abs().max() < 1e-8
    # float32 API
    r32 = recover_full_logits_topk(HeadOracle(head["theta"].float(), SHAPE, True, k=4), x.float(), C)
    assert (r32.logits - logits(head, x)).abs().max() < 1e-4
    # bias too small at first: rows are retried with a larger bias, still exact
    small = recover_full_logits_topk(HeadOracle(head["theta"], SHAPE, True, k=k), x, C, bias_value=0.01)
    assert small.complete and small.max_bias > 0.01 and small.queries > rec.queries
    assert (small.logits - logits(head, x)).abs().max() < 1e-10


def test_label_only_cannot_be_recovered(head) -> None:
    x = head["x"][:20]
    oracle = with_top1(HeadOracle(head["theta"], SHAPE, True))
    rec = recover_full_logits_topk(oracle, x, C)
    assert rec.logits is None and not rec.exact_possible and "distill" in rec.note
    assert rec.queries == 20 and oracle.queries == 20


def test_rounding_and_noise_increase_error(head) -> None:
    x = head["x"][:30]
    truth = logits(head, x)

    def err(oracle) -> float:  # a row left incomplete (rounding ties pushed the reference out) counts as inf
        return float(torch.nan_to_num((recover_full_logits_topk(oracle, x, C).logits - truth).abs(),
                                      nan=math.inf).max())

    clean = err(HeadOracle(head["theta"], SHAPE, True, k=3))
    rounded = err(with_rounding(HeadOracle(head["theta"], SHAPE, True, k=3), 1))
    gen = torch.Generator().manual_seed(0)
    noisy = err(with_gaussian_noise(HeadOracle(head["theta"], SHAPE, True, k=3), 0.1, gen))
    assert clean < 1e-10 < 1e-3 < rounded and noisy > 1e-2
    # and on the recovered layer (full logits, known features)
    h = head["x"][:20]
    exact = recover_layer_known_features(h, truth[:20], true_params=head["theta"]).relative_error
    _, zr = with_rounding(HeadOracle(head["theta"], SHAPE, True), 1)(h)
    idx, _ = HeadOracle(head["theta"], SHAPE, True)(h)
    zr_dense = torch.empty_like(zr).scatter(1, idx, zr)
    coarse = recover_layer_known_features(h, zr_dense, true_params=head["theta"]).relative_error
    assert coarse > 100 * exact and coarse > 1e-4


def test_distill_student(head) -> None:
    pub, test = head["x"][:300], head["x"][300:]
    tpred = logits(head, test).argmax(-1)

    def agree(student):
        return float((head_logits(student, test, SHAPE, True).argmax(-1) == tpred).double().mean())

    soft, info = distill_student(HeadOracle(head["theta"], SHAPE, True), pub, C, epochs=300, lr=0.1)
    assert info.targets == "soft_full" and info.queries == 300 and agree(soft) > 0.95
    topk, info = distill_student(HeadOracle(head["theta"], SHAPE, True, k=3), pub, C, epochs=300, lr=0.1)
    assert info.targets == "soft_topk" and agree(topk) > 0.9
    lab, info = distill_student(with_top1(HeadOracle(head["theta"], SHAPE, True)), pub, C, epochs=300, lr=0.1)
    assert info.targets == "labels" and info.k == 1 and agree(lab) > 0.8
    json.dumps(info.to_dict(), allow_nan=False)


def test_clone_and_curve(head) -> None:
    pool, test = head["x"][:200], head["x"][300:]
    y = logits(head, test).argmax(-1)  # labels = target's predictions: target accuracy 1
    reports = cloning_curve(HeadOracle(head["theta"], SHAPE, True), pool, [3, D + 1, 50], C,
                            test_x=test, test_y=y, target_params=head["theta"], method="least_squares")
    few, exact, many = reports
    assert few.queries == 3 and few.layer_relative_error > 0.1 and few.agreement < 0.9
    for r in (exact, many):
        assert r.method == "least_squares" and r.layer_relative_error < 1e-8 and r.agreement == 1.0
        assert r.kl_divergence < 1e-12
        assert r.clone_accuracy == 1.0 and r.target_accuracy == 1.0 and r.output == "full"
    assert many.hidden_size == D and many.hidden_size_identifiable and many.subspace_error < 1e-8
    # top-k with logit bias: same clone, more queries
    (tk,) = cloning_curve(HeadOracle(head["theta"], SHAPE, True, k=3, output="logprobs"), pool, [50], C,
                          test_x=test, test_y=y, target_params=head["theta"])
    assert tk.output == "topk" and tk.topk_complete and tk.queries == 50 * 5
    assert tk.method == "ridge" and tk.ridge_lambda == 0.0  # noiseless: GCV picks plain least squares
    assert tk.layer_relative_error < 1e-8 and tk.agreement == 1.0
    # label only: distillation, no logits, a worse clone
    lab_oracle = with_top1(HeadOracle(head["theta"], SHAPE, True))
    clone, lab = clone_from_oracle(lab_oracle, pool, C, test_x=test, test_y=y, target_params=head["theta"],
                                   distill_epochs=300, distill_lr=0.1)
    assert lab.method == "distillation_labels" and lab.hidden_size is None and lab.k == 1
    assert 0.8 < lab.agreement < 1.0 and lab.queries == 200 and clone.shape == head["theta"].shape
    # defences cost the attacker accuracy of the stolen layer
    (rounded,) = cloning_curve(with_rounding(HeadOracle(head["theta"], SHAPE, True), 0), pool, [50], C,
                               test_x=test, target_params=head["theta"])
    assert rounded.layer_relative_error > 100 * many.layer_relative_error
    for r in (*reports, tk, lab, rounded):
        json.dumps(r.to_dict(), allow_nan=False)


def test_oracle_counting(head) -> None:
    base = HeadOracle(head["theta"], SHAPE, True, k=2)
    counted = CountingOracle(with_rounding(base, 2))
    idx, vals = counted(head["x"][:7], torch.zeros(C, dtype=torch.float64))
    assert idx.shape == (7, 2) and vals.shape == (7, 2)
    assert counted.queries == 7 and base.queries == 7
    with_rounding(base, 2)(head["x"][:3])
    assert counted.queries == 7 and base.queries == 10
    with pytest.raises(ValueError):
        HeadOracle(head["theta"], SHAPE, True, k=C + 1)


# ------------------------------------------------------------ the regime where SVD matters
def _bottleneck(d: int, h: int, c: int, activation: str = "linear", seed: int = 0) -> BottleneckHead:
    g = torch.Generator().manual_seed(seed)
    return BottleneckHead(torch.randn(h, d, generator=g, dtype=torch.float64) / d ** 0.5,
                          torch.randn(h, generator=g, dtype=torch.float64),
                          torch.randn(c, h, generator=g, dtype=torch.float64),
                          torch.randn(c, generator=g, dtype=torch.float64), activation)


@pytest.mark.parametrize("activation", ["linear", "relu"])
def test_svd_detects_bottleneck_exactly(activation) -> None:
    d, h, c = 30, 4, 16
    net = _bottleneck(d, h, c, activation)
    x = torch.randn(80, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    z = net.logits(x)
    est = hidden_size_from_logits(z)
    assert est.hidden_size == h and est.identifiable and est.gap_ratio > 1e6
    assert est.singular_values[h - 1] > 1e-3 * est.singular_values[0] > est.singular_values[h] * 1e6
    # the output projection is recovered up to an h x h map: no principal angle
    sub = recover_layer_unknown_features(z, true_weight=net.V)
    assert sub.hidden_size == h and sub.subspace_error < 1e-8 and sub.max_principal_angle < 1e-6
    # log-probabilities (per-row normaliser): class-centering keeps h
    lp = torch.log_softmax(z, -1)
    assert hidden_size_from_logits(lp, center_classes=True).hidden_size == h
    # control: random full-rank logits report h = C, no false bottleneck
    rnd = torch.randn(80, c, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    r = hidden_size_from_logits(rnd)
    assert r.hidden_size == c and not r.identifiable
    assert recover_layer_unknown_features(rnd, h, true_weight=net.V).subspace_error > 0.3


def test_noise_edge_rule_detects_bottleneck() -> None:
    d, h, c, sigma = 30, 4, 16, 0.3
    net = _bottleneck(d, h, c)
    x = torch.randn(400, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    z = net.logits(x) + sigma * torch.randn(400, c, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert not hidden_size_from_logits(z).identifiable  # the gap rule sees no drop of 100x
    est = hidden_size_from_logits(z, noise_sigma=sigma)
    assert est.hidden_size == h and est.identifiable
    # pure noise: nothing above the edge
    noise = sigma * torch.randn(400, c, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert hidden_size_from_logits(noise, noise_sigma=sigma).hidden_size == 1


def test_top1_with_value_logit_bias_exact(head) -> None:
    x = head["x"][:25]
    rec = recover_full_logits_topk(HeadOracle(head["theta"], SHAPE, True, k=1), x, C)
    assert rec.complete and rec.exact_possible and rec.k == 1
    assert rec.queries == 25 * C  # O(C): one unbiased + one biased query per other class
    assert (rec.logits - logits(head, x)).abs().max() < 1e-10
    small = recover_full_logits_topk(HeadOracle(head["theta"], SHAPE, True, k=1), x, C, bias_value=1e-3)
    assert small.complete and small.queries > rec.queries and (small.logits - logits(head, x)).abs().max() < 1e-10
    # end to end: the exact clone from a top-1-with-value API
    test = head["x"][300:]
    (r,) = cloning_curve(HeadOracle(head["theta"], SHAPE, True, k=1), head["x"][:40], [40], C, test_x=test,
                         target_params=head["theta"])
    assert r.output == "topk" and r.k == 1 and r.queries == 40 * C
    assert r.agreement == 1.0 and r.layer_relative_error < 1e-8
    # a top-1 log-prob API is not covered; a label-only API (value hidden) cannot be
    lp = recover_full_logits_topk(HeadOracle(head["theta"], SHAPE, True, k=1, output="logprobs"), x, C,
                                  values="logprobs")
    assert lp.logits is None and "not implemented" in lp.note


def test_exact_clone_of_linear_bottleneck_target() -> None:
    d, h, c = 30, 3, 12
    net = _bottleneck(d, h, c)
    g = torch.Generator().manual_seed(5)
    pool, test = (torch.randn(n, d, generator=g, dtype=torch.float64) for n in (200, 500))
    oracle = ModelOracle(net.logits, c)
    reps = cloning_curve(oracle, pool, [d + 1, 100], c, test_x=test, target_model=net.logits,
                         target_params=net.linear_params(), true_projection=net.V, method="least_squares")
    for r in reps:
        assert r.hidden_size == h and r.hidden_size_identifiable and r.subspace_used
        assert r.subspace_error < 1e-8 and r.agreement == 1.0 and r.layer_relative_error < 1e-8
        assert r.kl_divergence < 1e-12 and len(r.singular_values) == c
    (ridge,) = cloning_curve(oracle, pool, [100], c, test_x=test, target_model=net.logits,
                             target_params=net.linear_params())
    assert ridge.method == "ridge" and ridge.ridge_lambda == 0.0 and ridge.layer_relative_error < 1e-8


def _noisy_clone(n: int, method: str, sigma: float = 1.0, seed: int = 0, **kw):
    d, c = 100, 10
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(c, d, generator=g, dtype=torch.float64)
    theta = flatten(w, torch.randn(c, generator=g, dtype=torch.float64))
    pool, test = (torch.randn(m, d, generator=g, dtype=torch.float64) for m in (n, 2000))
    oracle = with_gaussian_noise(HeadOracle(theta, (c, d), True), sigma, torch.Generator().manual_seed(seed + 1))
    return clone_from_oracle(oracle, pool, c, test_x=test, target_params=theta, method=method, **kw)[1]


def test_ridge_beats_least_squares_near_d_queries() -> None:
    # d = 100, sigma = 1 noise: at n = d + 1 .. d + 10 the unregularised solve explodes
    for n in (101, 105, 110):
        ls, rd = _noisy_clone(n, "least_squares"), _noisy_clone(n, "ridge")
        assert rd.ridge_lambda > 0
        assert rd.layer_relative_error < 0.35 < 0.55 < ls.layer_relative_error
        assert rd.agreement > ls.agreement + 0.1 and rd.kl_divergence < ls.kl_divergence / 2
    # far from d the two agree (GCV shrinks little)
    ls, rd = _noisy_clone(2000, "least_squares"), _noisy_clone(2000, "ridge")
    assert abs(rd.agreement - ls.agreement) < 0.02


def test_repeats_average_noise_and_cost_queries() -> None:
    one = _noisy_clone(300, "ridge", sigma=2.0)
    four = _noisy_clone(300, "ridge", sigma=2.0, repeats=4)
    assert one.queries == 300 and four.queries == 1200 and four.repeats == 4
    assert four.layer_relative_error < 0.7 * one.layer_relative_error
    assert four.agreement > one.agreement


def test_subspace_projection_denoises_bottleneck_logits() -> None:
    d, h, c, sigma = 40, 3, 30, 1.0
    net = _bottleneck(d, h, c)
    g = torch.Generator().manual_seed(6)
    pool, test = (torch.randn(n, d, generator=g, dtype=torch.float64) for n in (200, 1000))

    def run(sub):
        oracle = with_gaussian_noise(ModelOracle(net.logits, c), sigma, torch.Generator().manual_seed(7))
        return clone_from_oracle(oracle, pool, c, test_x=test, target_model=net.logits,
                                 target_params=net.linear_params(), noise_sigma=sigma, subspace=sub)[1]

    proj, plain = run("auto"), run(False)
    assert proj.hidden_size == h and proj.subspace_used and not plain.subspace_used
    assert proj.layer_relative_error < 0.6 * plain.layer_relative_error
    assert proj.kl_divergence < plain.kl_divergence


def _served_accuracy(oracle, x, y) -> float:
    return float((oracle(x)[0][:, 0] == y).double().mean())


def test_defences_act_before_ranking_and_cost_the_defender(head) -> None:
    x = head["x"]
    y = logits(head, x).argmax(-1)  # labels = the undefended predictions: clean accuracy 1
    gen = torch.Generator().manual_seed(0)
    clean = _served_accuracy(HeadOracle(head["theta"], SHAPE, True), x, y)
    noisy = _served_accuracy(with_gaussian_noise(HeadOracle(head["theta"], SHAPE, True), 1.0, gen), x, y)
    assert clean == 1.0 and noisy < 0.95  # noise flips labels near the decision boundary
    rounded = _served_accuracy(with_rounding(HeadOracle(head["theta"], SHAPE, True), 0), x, y)
    assert rounded < 1.0  # ties after rounding go to the lower class index
    # the values the attacker sees are the perturbed ones, ranked: top-k values descend
    idx, vals = with_gaussian_noise(HeadOracle(head["theta"], SHAPE, True, k=3), 1.0, gen)(x)
    assert bool((vals[:, :-1] >= vals[:, 1:]).all())
    # control: perturbing after an exact ranking costs the defender nothing
    after = with_gaussian_noise(HeadOracle(head["theta"], SHAPE, True), 1.0, gen, stage="after_ranking")
    assert _served_accuracy(after, x, y) == 1.0
    with pytest.raises(ValueError, match="stage"):
        with_rounding(HeadOracle(head["theta"], SHAPE, True), 1, stage="later")


def test_averaging_oracle_counts_and_averages(head) -> None:
    x = head["x"][:50]
    base = HeadOracle(head["theta"], SHAPE, True)
    noisy = with_gaussian_noise(base, 1.0, torch.Generator().manual_seed(0))
    avg = AveragingOracle(noisy, 16)
    idx, vals = avg(x)
    assert base.queries == 50 * 16
    err = (dense_from_topk(idx, vals, C) - logits(head, x)).std()
    assert 0.15 < float(err) < 0.35  # sigma / sqrt(16) = 0.25
    lab_idx, _ = AveragingOracle(with_top1(with_gaussian_noise(base, 0.5, torch.Generator().manual_seed(1))), 9)(x)
    assert lab_idx.shape == (50, 1)
    with pytest.raises(ValueError):
        AveragingOracle(base, 0)


def test_biased_reference_keeps_topk_rows_complete_under_rounding(head) -> None:
    x = head["x"][:200]
    truth = logits(head, x)

    def rec(**kw):
        return recover_full_logits_topk(with_rounding(HeadOracle(head["theta"], SHAPE, True, k=3), 0), x, C, **kw)

    biased, unbiased = rec(), rec(bias_reference=False)
    assert biased.complete and not unbiased.complete  # ties push an unbiased reference out of the answer
    assert (biased.logits - truth).abs().max() <= 1.5 + 1e-9  # three values rounded to 0 decimals
    clean = recover_full_logits_topk(HeadOracle(head["theta"], SHAPE, True, k=3), x, C, bias_reference=False)
    assert (clean.logits - truth).abs().max() < 1e-10  # Carlini et al.'s unbiased reference: exact undefended


def test_noise_edge_accounts_for_topk_recovery_noise() -> None:
    # top-k + logit bias: each recovered entry combines three noisy values (noise sqrt(3) sigma);
    # an edge at sigma would count noise directions as hidden units (h = 5 here instead of 3)
    d, h, c, sigma = 30, 3, 16, 0.5
    net = _bottleneck(d, h, c)
    g = torch.Generator().manual_seed(6)
    pool, test = (torch.randn(n, d, generator=g, dtype=torch.float64) for n in (400, 500))
    oracle = with_gaussian_noise(ModelOracle(net.logits, c, k=4), sigma, torch.Generator().manual_seed(7))
    _, r = clone_from_oracle(oracle, pool, c, test_x=test, target_model=net.logits, noise_sigma=sigma)
    assert r.output == "topk" and r.hidden_size == h and r.hidden_size_identifiable
