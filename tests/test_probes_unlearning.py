"""Unlearning probe: calibrated gradient ascent and the before/after/retrained report."""

from __future__ import annotations

import json

import pytest
import torch

from attacks.probes import (
    evaluate_unlearning,
    head_logits,
    train_heads,
    train_shadow_heads,
    unlearn_gradient_ascent,
)
from attacks.probes._head import ce_gradient, ce_losses

C, D = 5, 40
SHAPE = (C, D)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def case():
    g = torch.Generator().manual_seed(0)
    means = torch.randn(C, D, generator=g) * 0.35

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, C, (n,), generator=g)
        return means[y] + torch.randn(n, D, generator=g), y

    train, reference, heldout, test, pool = sample(100), sample(200), sample(200), sample(300), sample(200)
    forget = (train[0][:25], train[1][:25])
    retain = (train[0][25:], train[1][25:])
    target = train_heads(train[0], C, y=train[1], epochs=300, lr=0.05)[0]
    retrained = train_heads(retain[0], C, y=retain[1], epochs=300, lr=0.05)[0]
    return {"train": train, "forget": forget, "retain": retain, "reference": reference,
            "heldout": heldout, "test": test, "pool": pool, "target": target, "retrained": retrained}


def mean_loss(params: torch.Tensor, ds: tuple[torch.Tensor, torch.Tensor]) -> float:
    return float(ce_losses(head_logits(params, ds[0].double(), SHAPE, True), ds[1]).mean())


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"initial_params": torch.zeros(C * D + C)},
        {"mode": "iterative"},
        {"mode": "iterative", "batch_size": 8, "generator": torch.Generator().manual_seed(1)},
        {"mode": "iterative", "normalize": False, "lr": 5.0},
    ],
)
def test_ascent_stops_at_reference_loss(case, kw) -> None:
    tol = 1e-3
    kw = {"lr": 0.5, **kw}
    f, r = case["forget"], case["reference"]
    before = mean_loss(case["target"], f)
    assert before < mean_loss(case["target"], r) - 1.0  # memorised
    new, tr = unlearn_gradient_ascent(case["target"], SHAPE, True, *f, *r, max_steps=500, tol=tol, **kw)
    assert tr.calibrated and tr.stop_reason == "loss_reached_reference"
    after, ref_after = mean_loss(new, f), mean_loss(new, r)
    assert after > before + 1.0
    assert 0.0 <= after - ref_after <= tol  # reached the reference, never past it by > tol
    assert after == pytest.approx(tr.final_forget_loss)
    assert ref_after == pytest.approx(tr.final_reference_loss)
    # the crossing step was cut back: a whole step would have overshot the tolerance
    assert tr.final_fraction < 1.0 and tr.bisections > 0
    assert all(fl < rl for fl, rl in zip(tr.forget_loss[:-1], tr.reference_loss[:-1], strict=True))
    json.dumps(tr.to_dict(), allow_nan=False)


def test_first_epoch_replays_gradients(case) -> None:
    f, r = case["forget"], case["reference"]
    _, tr = unlearn_gradient_ascent(case["target"], SHAPE, True, *f, *r, lr=0.5, max_steps=500)
    assert tr.mode == "first_epoch" and tr.gradient_evaluations == 1 and tr.steps > 1
    _, it = unlearn_gradient_ascent(case["target"], SHAPE, True, *f, *r, lr=0.5, max_steps=500,
                                    mode="iterative")
    assert it.gradient_evaluations == it.steps
    g0 = ce_gradient(torch.zeros(C * D + C, dtype=torch.float64), f[0].double(), f[1], SHAPE, True)
    new_r, rec = unlearn_gradient_ascent(case["target"], SHAPE, True, *f, *r, lr=0.5, max_steps=500,
                                         recorded_gradients=g0)
    new_i, ini = unlearn_gradient_ascent(case["target"], SHAPE, True, *f, *r, lr=0.5, max_steps=500,
                                         initial_params=torch.zeros(C * D + C))
    assert rec.mode == "recorded" and rec.gradient_evaluations == 0
    assert ini.mode == "first_epoch_initial" and ini.gradient_evaluations == 1
    assert torch.allclose(new_r, new_i, atol=1e-6)  # same direction, same calibrated point


def test_accuracy_criterion(case) -> None:
    f, r = case["forget"], case["reference"]
    _, tr = unlearn_gradient_ascent(case["target"], SHAPE, True, *f, *r, lr=0.5, max_steps=500,
                                    criterion="accuracy")
    assert tr.calibrated and tr.stop_reason == "accuracy_reached_reference"
    assert tr.forget_accuracy[-1] <= tr.reference_accuracy[-1]
    assert tr.forget_accuracy[-2] > tr.reference_accuracy[-2]


def test_already_calibrated_and_budget(case) -> None:
    r = case["reference"]
    new, tr = unlearn_gradient_ascent(case["target"], SHAPE, True, *r, *r, lr=0.5, max_steps=10)
    assert tr.stop_reason == "already_calibrated" and tr.steps == 0 and torch.equal(new, case["target"])
    _, tr = unlearn_gradient_ascent(case["target"], SHAPE, True, *case["forget"], *r, lr=1e-4, max_steps=3)
    assert not tr.calibrated and tr.stop_reason == "max_steps" and tr.steps == 3
    with pytest.raises(ValueError, match="criterion"):
        unlearn_gradient_ascent(case["target"], SHAPE, True, *r, *r, lr=0.5, max_steps=1, criterion="x")


def test_report(case) -> None:
    f, r = case["forget"], case["reference"]
    new, tr = unlearn_gradient_ascent(case["target"], SHAPE, True, *f, *r, lr=0.5, max_steps=500)
    shadows = train_shadow_heads(*case["pool"], SHAPE, True, 8, epochs=300, lr=0.05,
                                 generator=torch.Generator().manual_seed(2))
    rep = evaluate_unlearning(case["target"], new, case["retrained"], f, case["retain"], case["test"],
                              case["heldout"], shadows=shadows, trace=tr)
    assert rep.before.forget_accuracy == 1.0 and rep.before.mia_advantage > 0.5
    assert rep.after.forget_loss > rep.before.forget_loss + 1.0
    assert rep.after.mia_advantage < rep.before.mia_advantage
    assert rep.retrained is not None and rep.retrained.forget_accuracy < 1.0
    assert rep.before.lira_advantage is not None and rep.before.lira_auc is not None
    assert rep.after_minus_retrained["forget_accuracy"] == pytest.approx(
        rep.after.forget_accuracy - rep.retrained.forget_accuracy)
    d = rep.to_dict()
    assert set(d) == {"before", "after", "retrained", "after_minus_retrained", "trace"}
    json.dumps(d, allow_nan=False)
    no_retrain = evaluate_unlearning(case["target"], new, None, f, case["retain"], case["test"],
                                     case["heldout"])
    assert no_retrain.retrained is None and no_retrain.after_minus_retrained == {}
    assert no_retrain.before.lira_advantage is None
