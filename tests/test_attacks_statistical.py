"""ALIE, IPM, Min-Max and Min-Sum against their papers' formulas on hand-checked inputs."""

import math

import pytest
import torch

from attacks import AttackContext, build
from attacks._math import alie_z, halving_search

# Φ⁻¹(0.6): n = 10, f = 2 → s = ⌊10/2 + 1⌋ − 2 = 4, (n − s)/n = 0.6.
Z_10_2 = 0.2533471031357998


def test_alie_z_for_n10_f2() -> None:
    assert alie_z(10, 2) == pytest.approx(Z_10_2, abs=1e-12)
    icdf = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(0.6, dtype=torch.float64))
    assert alie_z(10, 2) == pytest.approx(icdf.item(), abs=1e-12)
    # n = 50, f = 24: s = 26 − 24 = 2, Φ⁻¹(48/50)
    assert alie_z(50, 24) == pytest.approx(torch.distributions.Normal(0.0, 1.0).icdf(
        torch.tensor(0.96, dtype=torch.float64)).item(), abs=1e-12)


def test_alie_z_undefined() -> None:
    with pytest.raises(ValueError, match="z_max"):
        alie_z(4, 3)  # s = 3 − 3 = 0


def test_alie_formula_by_hand() -> None:
    honest = torch.tensor([[0.0, 4.0], [2.0, 4.0], [4.0, 10.0]], dtype=torch.float64)
    # μ = (2, 6); unbiased σ = (2, √12)
    out = build("alie").forge(honest, torch.zeros(2, 2, dtype=torch.float64), AttackContext(n=10, f=2))
    expected = torch.tensor([1.4933057937284004, 5.122379890836805], dtype=torch.float64)
    assert out.shape == (2, 2)
    assert torch.allclose(out, expected.expand(2, 2), atol=1e-12)


def test_alie_z_override_and_single_row() -> None:
    honest = torch.tensor([[0.0, 4.0], [2.0, 4.0], [4.0, 10.0]])
    out = build("alie", {"z": 1.0}).forge(honest, torch.zeros(1, 2), AttackContext(n=10, f=2))
    assert torch.allclose(out[0], torch.tensor([0.0, 6.0 - math.sqrt(12.0)]))
    one = torch.tensor([[1.0, -1.0]])
    assert torch.equal(build("alie").forge(one, one, AttackContext(n=10, f=1)), one)  # σ = 0


def test_alie_shifts_the_mean_by_f_z_sigma_over_n() -> None:
    torch.manual_seed(0)
    n, f = 10, 2
    honest = torch.randn(n - f, 50, dtype=torch.float64)
    forged = build("alie").forge(honest, torch.zeros(f, 50, dtype=torch.float64), AttackContext(n=n, f=f))
    shift = torch.cat([honest, forged]).mean(0) - honest.mean(0)
    assert torch.allclose(shift, -f * Z_10_2 * honest.std(0) / n, atol=1e-12)


def test_ipm_is_minus_eps_mean() -> None:
    honest = torch.tensor([[1.0, 2.0], [3.0, -4.0]])
    own = torch.zeros(3, 2)
    ctx = AttackContext(n=5, f=3)
    assert torch.allclose(build("ipm").forge(honest, own, ctx), torch.tensor([[-0.2, 0.1]] * 3))
    assert torch.allclose(build("ipm", {"eps": 2.0}).forge(honest, own, ctx), torch.tensor([[-4.0, 2.0]] * 3))


def test_omniscient_attacks_need_honest_vectors() -> None:
    for name in ["ipm", "min_max", "min_sum", "alie", "fang_krum", "fang_trimmed_mean"]:
        with pytest.raises(ValueError, match="honest"):
            build(name).forge(torch.zeros(0, 3), torch.zeros(1, 3), AttackContext(n=4, f=1))


# The unit square: μ = (1, 1), max pairwise squared distance 8 (the diagonal), every honest
# vector's sum of squared distances 16, Σ‖μ − h‖² = 8. Along ∇p ∝ −(1, 1) both constraints
# become tight exactly at the origin: 2(1 + t)² ≤ 8 (min-max) and 8 + 4·2t² ≤ 16 (min-sum)
# with t = γ·|∇p_j|, so t = 1 and the forged vector is (0, 0) for every perturbation.
SQUARE = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]], dtype=torch.float64)
GAMMA = {"sign": 1.0, "unit_vec": math.sqrt(2.0), "std": math.sqrt(3.0) / 2}  # σ = 2/√3
TAU = 1e-5


@pytest.mark.parametrize("name", ["min_max", "min_sum"])
@pytest.mark.parametrize("perturbation", ["sign", "unit_vec", "std"])
def test_min_max_min_sum_by_hand(name: str, perturbation: str) -> None:
    attack = build(name, {"perturbation": perturbation})
    gamma, mu, _ = attack.search(SQUARE)
    assert torch.equal(mu, torch.tensor([1.0, 1.0], dtype=torch.float64))
    assert GAMMA[perturbation] - 2 * TAU <= gamma <= GAMMA[perturbation]
    out = attack.forge(SQUARE, torch.zeros(2, 2, dtype=torch.float64), AttackContext(n=6, f=2))
    assert out.shape == (2, 2)
    assert torch.allclose(out, torch.zeros(2, 2, dtype=torch.float64), atol=1e-4)


def _max_dist(c: torch.Tensor, h: torch.Tensor) -> float:
    return (h - c).norm(dim=1).max().item()


def _sum_sq(c: torch.Tensor, h: torch.Tensor) -> float:
    return (h - c).square().sum().item()


@pytest.mark.parametrize("perturbation", ["sign", "unit_vec", "std"])
def test_min_max_largest_gamma_within_honest_diameter(perturbation: str) -> None:
    torch.manual_seed(1)
    honest = torch.randn(7, 30, dtype=torch.float64) + 0.5
    attack = build("min_max", {"perturbation": perturbation})
    gamma, mu, p = attack.search(honest)
    diameter = torch.cdist(honest, honest).max().item()
    out = attack.forge(honest, torch.zeros(1, 30, dtype=torch.float64), AttackContext(n=8, f=1))[0]
    assert torch.allclose(out, mu + gamma * p)
    assert _max_dist(out, honest) <= diameter + 1e-12
    assert gamma > 0 and _max_dist(mu + (gamma + 2 * TAU) * p, honest) > diameter  # maximal up to τ


@pytest.mark.parametrize("perturbation", ["sign", "unit_vec", "std"])
def test_min_sum_largest_gamma_closed_form(perturbation: str) -> None:
    torch.manual_seed(2)
    honest = torch.randn(6, 40, dtype=torch.float64) + 0.3
    attack = build("min_sum", {"perturbation": perturbation})
    gamma, mu, p = attack.search(honest)
    sums = torch.cdist(honest, honest).square().sum(1)
    # Σ_i‖μ + γp − h_i‖² = Σ_i‖μ − h_i‖² + m γ²‖p‖² (the cross term vanishes around the mean)
    exact = math.sqrt((sums.max().item() - _sum_sq(mu, honest)) / (len(honest) * p.square().sum().item()))
    assert exact - 2 * TAU <= gamma <= exact
    assert _sum_sq(mu + gamma * p, honest) <= sums.max().item() + 1e-9


def test_min_sum_min_score_is_stricter() -> None:
    torch.manual_seed(3)
    honest = torch.randn(6, 10, dtype=torch.float64)
    g_max, _, _ = build("min_sum").search(honest)
    g_min, mu, p = build("min_sum", {"score": "min"}).search(honest)
    sums = torch.cdist(honest, honest).square().sum(1)
    assert g_min < g_max and _sum_sq(mu + g_min * p, honest) <= sums.min().item() + 1e-9


def test_halving_search_edges() -> None:
    assert halving_search(lambda g: g <= 3.0, 10.0, 1e-6) == pytest.approx(3.0, abs=2e-6)
    assert halving_search(lambda g: False, 10.0, 1e-6) == 0.0
    assert halving_search(lambda g: True, 10.0, 1e-6) == pytest.approx(20.0, abs=2e-6)  # capped at 2γ_init
