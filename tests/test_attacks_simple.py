"""Sign flipping, random noise and the faulty behaviours (crash, stale, nan, wrong shape)."""

import pytest
import torch

from attacks import AttackContext, build

OWN = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
HONEST = torch.tensor([[1.0, 1.0, 1.0]])
CTX = AttackContext(n=5, f=2)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_sign_flip() -> None:
    assert torch.equal(build("sign_flip").forge(HONEST, OWN, CTX), -OWN)
    out = build("sign_flip", {"scale": 2.5}).forge(HONEST, OWN, CTX)
    assert torch.allclose(out, torch.tensor([[-2.5, 5.0, -1.25], [0.0, -7.5, 2.5]]))


def test_gaussian_deterministic_under_seed() -> None:
    g = build("gaussian", {"mean": 1.0, "std": 0.5})
    a = g.forge(HONEST, OWN, AttackContext(n=5, f=2, generator=gen(3)))
    b = g.forge(HONEST, OWN, AttackContext(n=5, f=2, generator=gen(3)))
    c = g.forge(HONEST, OWN, AttackContext(n=5, f=2, generator=gen(4)))
    assert a.shape == OWN.shape and a.dtype == OWN.dtype
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])  # every Byzantine peer draws its own row


def test_gaussian_moments() -> None:
    own = torch.zeros(4, 20_000)
    ctx = AttackContext(n=5, f=4, generator=gen(0))
    out = build("gaussian", {"mean": 3.0, "std": 2.0}).forge(own, own, ctx)
    assert abs(out.mean().item() - 3.0) < 0.05 and abs(out.std().item() - 2.0) < 0.05


def test_random_matrices_in_scale() -> None:
    own = torch.zeros(3, 10_000)
    ctx = AttackContext(n=5, f=3, generator=gen(1))
    out = build("gaussian", {"mode": "random", "scale": 0.5}).forge(own, own, ctx)
    assert out.abs().max() <= 0.5 and out.min() < -0.49 and out.max() > 0.49
    ctx = AttackContext(n=5, f=3, generator=gen(1))
    again = build("gaussian", {"mode": "random", "scale": 0.5}).forge(own, own, ctx)
    assert torch.equal(out, again)


def test_crash_is_silent() -> None:
    assert build("crash").forge(HONEST, OWN, CTX) is None


def test_stale_sends_previous_else_own() -> None:
    stale = build("stale", {"delay": 3})
    prev = torch.full_like(OWN, 7.0)
    assert torch.equal(stale.forge(HONEST, OWN, AttackContext(n=5, f=2, previous=prev)), prev)
    assert torch.equal(stale.forge(HONEST, OWN, CTX), OWN)
    with pytest.raises(ValueError, match="previous"):
        stale.forge(HONEST, OWN, AttackContext(n=5, f=2, previous=prev[:1]))


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_nan_rows_are_non_finite(value: str) -> None:
    out = build("nan", {"value": value}).forge(HONEST, OWN, CTX)
    assert out.shape == OWN.shape and not torch.isfinite(out).any()


@pytest.mark.parametrize(("delta", "width"), [(1, 4), (-1, 2)])
def test_wrong_shape(delta: int, width: int) -> None:
    out = build("wrong_shape", {"delta": delta}).forge(HONEST, OWN, CTX)
    assert out.shape == (2, width)
