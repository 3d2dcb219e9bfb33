"""A target head whose logits live in a low-dimensional subspace: the regime of Carlini et al. 2024.

Carlini et al. 2024 ("Stealing Part of a Production Language Model", ICML, §4) steal the last
layer of a language model whose hidden dimension ``h`` (a few thousand) is far below its
vocabulary ``C`` (tens of thousands): every logit vector ``z = W g(x)`` lies in the ``h``-dim
column space of ``W ∈ R^{C×h}``, so the singular values of a stack of logit vectors drop to
zero after ``h`` and the right singular vectors span ``col W``. fedsim's heads are linear on
``d = 576`` features with ``C = 10`` classes (``d ≥ C``): their logits span ``R^C`` and that
SVD stage says nothing. A :class:`BottleneckHead` restores the regime:

    ``u = A x + a``  (``A ∈ R^{h×d}``),  ``z = V φ(u) + c``  (``V ∈ R^{C×h}``, ``h < C − 1``)

with ``φ`` the identity (a rank-``h`` linear head) or ReLU (a one-hidden-layer MLP). Centered
logits have rank ``≤ h`` (``= h`` generically): ``V`` is "the output projection" the probe
recovers up to an ``h×h`` linear map.

Departure from fedsim's federations (named in the scenario as ``target_head: {kind:
bottleneck}``): the engine trains linear heads only, so the probe trains this target itself,
on the honest peers' training features (``train_on: federation``) or on the target peer's own
(``train_on: target``), by full-batch Adam on cross-entropy from a seeded initialisation. It
stands for "a model the federation deployed whose last hidden layer is narrower than its output";
it is not the federated head itself (that one is reported separately as ``target_head:
{kind: federated}``, where the SVD stage is vacuous).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from attacks.probes._head import flatten

ACTIVATIONS = ("linear", "relu")


@dataclass
class BottleneckHead:
    """``z = V φ(A x + a) + c``; tensors float64. ``V`` ``[C, h]`` is the output projection."""

    A: Tensor
    a: Tensor
    V: Tensor
    c: Tensor
    activation: str = "linear"

    @property
    def hidden(self) -> int:
        return int(self.V.shape[1])

    @property
    def num_classes(self) -> int:
        return int(self.V.shape[0])

    def logits(self, x: Tensor) -> Tensor:
        """``[m, d] → [m, C]`` (computed in float64)."""
        u = x.to(torch.float64) @ self.A.T + self.a
        if self.activation == "relu":
            u = torch.relu(u)
        return u @ self.V.T + self.c

    def linear_params(self) -> Tensor | None:
        """The equivalent linear head ``[vec(VA), Va + c]`` (identity ``φ`` only; ``None`` for ReLU)."""
        if self.activation != "linear":
            return None
        return flatten(self.V @ self.A, self.V @ self.a + self.c)


def train_bottleneck_head(
    x: Tensor,
    y: Tensor,
    num_classes: int,
    hidden: int,
    *,
    activation: str = "linear",
    epochs: int = 300,
    lr: float = 0.01,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> BottleneckHead:
    """Train a :class:`BottleneckHead` on ``(x [n, d], y [n])`` by full-batch Adam on the mean
    cross-entropy (plus ``weight_decay/2 · (‖A‖² + ‖V‖²)``).

    Initialisation (seeded): ``A, V ~ N(0, 1/fan_in)``, biases 0 — a zero start, as fedsim's
    linear heads use, would leave the bilinear ``V A`` at a saddle point.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    if not 1 <= hidden:
        raise ValueError(f"hidden must be >= 1, got {hidden}")
    g = torch.Generator().manual_seed(int(seed))
    xd = x.detach().to(torch.float64)
    d = xd.shape[1]
    A = (torch.randn(hidden, d, generator=g, dtype=torch.float64) / d ** 0.5).requires_grad_(True)
    a = torch.zeros(hidden, dtype=torch.float64, requires_grad=True)
    V = (torch.randn(num_classes, hidden, generator=g, dtype=torch.float64) / hidden ** 0.5).requires_grad_(True)
    c = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    head = BottleneckHead(A, a, V, c, activation)
    opt = torch.optim.Adam([A, a, V, c], lr=lr)
    with torch.enable_grad():
        for _ in range(epochs):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(head.logits(xd), y)
            if weight_decay:
                loss = loss + 0.5 * weight_decay * (A.pow(2).sum() + V.pow(2).sum())
            loss.backward()
            opt.step()
    return BottleneckHead(A.detach(), a.detach(), V.detach(), c.detach(), activation)
