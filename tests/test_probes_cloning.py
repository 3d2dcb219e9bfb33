"""Cloning probe: hidden size, exact layer recovery, logit-bias top-k recovery, distillation,
defences and cloning curves, on small synthetic heads with known answers."""

from __future__ import annotations

import json
import math

import pytest
import torch

from attacks.probes import (
    CountingOracle,
    HeadOracle,
    clone_from_oracle,
    cloning_curve,
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
