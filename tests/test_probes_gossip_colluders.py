"""Colluding attackers and the GLS estimator of the gossip-inversion attack (El Mrini, Cyffers and
Bellet, ICML 2024, ``AbdellahElmrini/decAttack``) on small synthetic gossip systems with known mixing:
a coalition recovers exactly what one attacker cannot, GLS is least squares under the identity
covariance and the minimum-variance unbiased estimate under the D-GD noise covariance (which is
their ``build_cov_target_only``), and more colluders never leave more unknowns unpinned."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from attacks.probes import gossip_inversion as gi


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def graph(n: int, edges: list[tuple[int, int]]) -> list[np.ndarray]:
    nb: list[list[int]] = [[] for _ in range(n)]
    for a, b in edges:
        nb[a].append(b)
        nb[b].append(a)
    return [np.array(sorted(x)) for x in nb]


def ring(n: int) -> list[np.ndarray]:
    return graph(n, [(i, (i + 1) % n) for i in range(n)])


def simulate(w: list[torch.Tensor], u: list[torch.Tensor]) -> list[torch.Tensor]:
    """Θ^t = X^t + U^t, X^{t+1} = W_t Θ^t, X^0 = 0."""
    x, out = torch.zeros_like(u[0]), []
    for t, ut in enumerate(u):
        out.append(x + ut)
        x = w[t] @ out[-1]
    return out


# Two mirror-image branches hanging off peer 1: 0 - 1 - {2, 3}, 2 - 4 - 6, 3 - 5 - 7. Seen from
# peer 0 alone, swapping the branches changes nothing it observes, so peers 2 and 3 (2 hops away)
# cannot be told apart; a colluder at 6 breaks the symmetry.
MIRROR = graph(8, [(0, 1), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7)])
T, P = 12, 5


@pytest.fixture
def mirror_constant():
    g = torch.Generator().manual_seed(0)
    u0 = torch.randn(8, P, generator=g, dtype=torch.float64)
    w = [gi.fedavg_mixing(MIRROR)] * T
    return w, simulate(w, [u0] * T)


def coalition(w, thetas, colluders, targets, nbrs=MIRROR, **kw):
    n = w[0].shape[0]
    tgt = torch.eye(n, dtype=torch.float64)[targets]
    return gi.coalition_reconstruct(w, thetas, colluders, [nbrs] * len(thetas), tgt, **kw)


@pytest.mark.parametrize("estimator", ["ls", "gls"])
@pytest.mark.parametrize("own", ["known", "modelled"])
def test_coalition_recovers_what_one_attacker_cannot(mirror_constant, estimator, own):
    w, thetas = mirror_constant
    truth = thetas[T - 1][[2, 3]]
    alone = coalition(w, thetas, [0], [2, 3], updates="constant", estimator=estimator, own=own)
    assert alone.identifiable.min() > 0.1 and alone.deficiency > 0
    assert (alone.estimate - truth).norm(dim=1).min() > 0.1 * truth.norm(dim=1).min()
    both = coalition(w, thetas, [0, 6], [2, 3], updates="constant", estimator=estimator, own=own)
    assert both.identifiable.max() < 1e-8 and both.deficiency == 0
    assert torch.allclose(both.estimate, truth, atol=1e-6)


def test_known_colluder_messages_need_not_follow_the_model():
    """decAttack's setting: the colluders' own messages are inputs, so their updates may be anything
    (here fresh every round) while the targets' are constant; ``own="modelled"`` (the colluders'
    updates forced into the constant model) is then wrong."""
    g = torch.Generator().manual_seed(5)
    u0 = torch.randn(8, P, generator=g, dtype=torch.float64)
    u = []
    for _ in range(T):
        ut = u0.clone()
        ut[[0, 6]] = torch.randn(2, P, generator=g, dtype=torch.float64)
        u.append(ut)
    w = [gi.fedavg_mixing(MIRROR)] * T
    thetas = simulate(w, u)
    truth = thetas[T - 1][[2, 3]]
    known = coalition(w, thetas, [0, 6], [2, 3], updates="constant")
    assert torch.allclose(known.estimate, truth, atol=1e-6)
    modelled = coalition(w, thetas, [0, 6], [2, 3], updates="constant", own="modelled")
    assert (modelled.estimate - truth).norm() > 1e-2 * truth.norm()


def test_final_head_target_after_the_last_averaging(mirror_constant):
    w, thetas = mirror_constant
    rec = gi.coalition_reconstruct(w, thetas, [0, 6], [MIRROR] * T, w[T - 1][[2, 3]], "constant")
    assert torch.allclose(rec.estimate, w[T - 1][[2, 3]] @ thetas[T - 1], atol=1e-6)


def test_single_attacker_per_round_is_the_earlier_system():
    """One attacker, the paper's per-round unknowns: taking its own messages as known inputs gives
    the same estimate as modelling its updates (the system is consistent; the probe's earlier numbers)."""
    g = torch.Generator().manual_seed(1)
    n = 8
    u = [torch.randn(n, P, generator=g, dtype=torch.float64) for _ in range(T)]
    w = [gi.fedavg_mixing(ring(n))] * T
    thetas = simulate(w, u)
    a = coalition(w, thetas, [0], [3, 4], nbrs=ring(n))
    b = coalition(w, thetas, [0], [3, 4], nbrs=ring(n), own="modelled")
    assert torch.allclose(a.estimate, b.estimate, atol=1e-8)
    rows = gi.propagation(w, T, "per_round")
    obs = [[0, 1, n - 1]] * T
    old = gi.reconstruct(rows, obs, [thetas[t][obs[t]] for t in range(T)], rows[T - 1][[3, 4]])
    assert torch.allclose(a.estimate, old.estimate, atol=1e-8)


def test_gls_is_least_squares_under_the_identity():
    g = torch.Generator().manual_seed(2)
    w = [gi.fedavg_mixing(ring(8))] * T
    rows = gi.propagation(w, T, "constant")
    obs = [[0, 1, 7]] * T
    msgs = [torch.randn(3, P, generator=g, dtype=torch.float64) for _ in range(T)]  # inconsistent: a real fit
    ls = gi.reconstruct(rows, obs, msgs, rows[T - 1][4])
    gls = gi.reconstruct(rows, obs, msgs, rows[T - 1][4], cov=torch.eye(3 * T, dtype=torch.float64))
    assert torch.allclose(ls.estimate, gls.estimate, atol=1e-10)
    assert torch.allclose(ls.coefficients, gls.coefficients, atol=1e-10)


def decattack_cov(w_tt: np.ndarray, neighbors: list[int], n_iter: int, sigma: float = 1.0) -> np.ndarray:
    """``ReconstructOptim.build_cov_target_only`` (decAttack ``src/optim.py``) transcribed, with the
    neighbour index shifted to the targets-only matrix (their loop indexes ``W_TT`` by the node id;
    attackers are ids ``0 .. n_a-1`` there, so ``W_TT[node - n_a]`` is meant)."""
    m = n_iter * len(neighbors)
    cov = np.zeros((m, m))
    i = 0
    for it1 in range(n_iter):
        for nb1 in neighbors:
            j = it1 * len(neighbors)
            for it2 in range(it1, n_iter):
                for nb2 in neighbors:
                    s = sum(np.linalg.matrix_power(w_tt, it1 + it2 - 2 * t)[nb1, nb2] for t in range(it1 + 1))
                    cov[i, j] = cov[j, i] = sigma**2 * s
                    j += 1
            i += 1
    return cov


def test_noise_covariance_is_decattacks():
    n, na, rounds = 9, 2, 6
    nbrs = ring(n)
    w = gi.fedavg_mixing(nbrs)  # symmetric on a ring (1/3 each): their formula assumes W_TT = W_TTᵀ
    heard = gi.coalition_heard([nbrs] * rounds, range(na))
    ours = gi.noise_covariance(gi.propagation([w] * rounds, rounds, "per_round", known=range(na)), heard)
    theirs = decattack_cov(w[na:, na:].numpy(), [j - na for j in heard[0]], rounds)
    assert torch.allclose(ours, torch.from_numpy(theirs), atol=1e-12)


def test_gls_is_the_minimum_variance_unbiased_estimate(mirror_constant):
    """Constant updates plus i.i.d. per-round noise (the D-GD model): both estimates are unbiased
    (their coefficients reproduce the target row), GLS's variance g Σ gᵀ is the smaller one
    (Gauss–Markov), and on noisy runs its error to what both estimate (the colluders' part ``B`` of the
    head plus the constant updates' part ``c u``) is smaller."""
    w, _ = mirror_constant
    nb = [MIRROR] * T
    col = [0, 6]
    heard = gi.coalition_heard(nb, col)
    rows = gi.propagation(w, T, "constant", known=col)
    cov = gi.noise_covariance(gi.propagation(w, T, "per_round", known=col), heard)
    c = rows[T - 1][2]
    zeros = [torch.zeros(len(h), 1, dtype=torch.float64) for h in heard]
    ls = gi.reconstruct(rows, heard, zeros, c)
    gls = gi.reconstruct(rows, heard, zeros, c, cov=cov)
    a = torch.cat([r[h] for r, h in zip(rows, heard, strict=True)])
    for rec in (ls, gls):
        assert torch.allclose(rec.coefficients @ a, c, atol=1e-8)
    v_ls, v_gls = ls.coefficients @ cov @ ls.coefficients, gls.coefficients @ cov @ gls.coefficients
    assert v_gls < 0.9 * v_ls
    sinv = torch.linalg.inv(cov)
    blue = c @ torch.linalg.pinv(a.T @ sinv @ a) @ c  # Gauss–Markov: the least variance of any unbiased estimate
    assert float(v_gls) == pytest.approx(float(blue), rel=1e-8)
    g = torch.Generator().manual_seed(7)
    u0 = torch.randn(8, 1, generator=g, dtype=torch.float64)
    err = {"ls": 0.0, "gls": 0.0}
    for _ in range(200):
        thetas = simulate(w, [u0 + 0.3 * torch.randn(8, 1, generator=g, dtype=torch.float64) for _ in range(T)])
        wanted = gi.known_offsets(w, col, [th[col] for th in thetas])[T - 1][2] + c @ u0
        for est in err:
            r = coalition(w, thetas, col, [2], updates="constant", estimator=est)
            err[est] += float((r.estimate - wanted).pow(2).sum())
    assert err["gls"] < err["ls"]  # expected ratio v_gls / v_ls = 0.85 here; 200 draws


def random_graph(n: int = 12) -> list[np.ndarray]:
    perm = np.random.default_rng(0).permutation(n)
    return graph(n, [(int(perm[i]), int(perm[(i + 1) % n])) for i in range(n)]
                 + [(int(perm[i]), int(perm[(i + 4) % n])) for i in range(0, n, 2)])


@pytest.mark.parametrize("updates", ["per_round", "constant"])
@pytest.mark.parametrize("own", ["known", "modelled"])
def test_more_colluders_never_increase_the_rank_deficiency(updates, own):
    """Nested coalitions, colluders added one at a time (per-round updates on a random graph; constant
    updates on the mirror graph, where one attacker leaves the branches' difference unpinned)."""
    nbrs = random_graph() if updates == "per_round" else MIRROR
    n = len(nbrs)
    w = [gi.fedavg_mixing(nbrs)] * 8
    thetas = [torch.zeros(n, 1, dtype=torch.float64)] * 8
    rest = [int(a) for a in np.random.default_rng(1).permutation(n) if a != 0]
    order = [0, *rest] if updates == "per_round" else [0, 7, 1, 4, 6, 5, 3, 2]
    deficiencies = [coalition(w, thetas, order[:k], [order[-1]], nbrs=nbrs, updates=updates, own=own).deficiency
                    for k in range(1, n - 1)]
    assert all(b <= a for a, b in itertools.pairwise(deficiencies)), deficiencies
    assert deficiencies[0] > deficiencies[-1]


def test_bad_input_one_line_errors(mirror_constant):
    w, thetas = mirror_constant
    with pytest.raises(ValueError, match="estimator must be one of ls, gls"):
        coalition(w, thetas, [0], [2], estimator="blue")
    with pytest.raises(ValueError, match="own must be one of known, modelled"):
        coalition(w, thetas, [0], [2], own="guessed")
    with pytest.raises(ValueError, match="at least one colluder"):
        coalition(w, thetas, [], [2])
    rows = gi.propagation(w, 2)
    with pytest.raises(ValueError, match=r"cov must be \[4, 4\]"):
        gi.reconstruct(rows, [[0, 1]] * 2, [torch.zeros(2, 3)] * 2, rows[1][2], cov=torch.eye(3))
    with pytest.raises(ValueError, match="not positive definite"):
        gi.reconstruct(rows, [[0, 0]] * 2, [torch.zeros(2, 3)] * 2, rows[1][2], cov=torch.zeros(4, 4))



def test_coalition_gls_whitens_with_the_known_colluders_covariance(mirror_constant):
    """``coalition_reconstruct``'s GLS uses the noise of the *non-colluders* only (the colluders'
    messages are known inputs, their deviations no noise): its coefficients attain the Gauss–Markov
    variance under that covariance (a covariance built without ``known`` does not)."""
    w, thetas = mirror_constant
    col, nb = [0, 6], [MIRROR] * T
    heard = gi.coalition_heard(nb, col)
    rows = gi.propagation(w, T, "constant", known=col)
    cov = gi.noise_covariance(gi.propagation(w, T, "per_round", known=col), heard)
    a = torch.cat([r[h] for r, h in zip(rows, heard, strict=True)])
    c = rows[T - 1][2]
    blue = c @ torch.linalg.pinv(a.T @ torch.linalg.inv(cov) @ a) @ c
    g = coalition(w, thetas, col, [2], updates="constant", estimator="gls").coefficients[0]
    assert float(g @ cov @ g) == pytest.approx(float(blue), rel=1e-8)
