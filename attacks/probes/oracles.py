"""Prediction APIs ("oracles") of a linear head, and the output defences that wrap them.

An oracle is any callable ``oracle(x_batch, logit_bias) -> (topk_indices, topk_values)``:

* ``x_batch [m, d]`` — the queried inputs (features; the backbone is public and frozen);
* ``logit_bias`` — ``None``, ``[C]`` (one bias for the whole batch) or ``[m, C]`` (one per
  query): added to the logits before anything else, like OpenAI's ``logit_bias`` parameter
  that Carlini et al. 2024 exploit;
* returns the ``k`` best classes per row, best first (``[m, k]`` int64), and their values
  (``[m, k]``: logits, or log-probabilities for ``output="logprobs"``; ``NaN`` when the API
  returns labels only).

Every oracle has a ``queries`` attribute: rows answered so far (one API call per input, as in
Carlini et al., who count queries per prompt).

Defences (each returns a new oracle, so the attacker's cost can be measured with and without):
:func:`with_rounding` (values rounded to ``r`` decimals), :func:`with_gaussian_noise` (additive
``N(0, σ²)`` on the values), :func:`with_top1` (label only: the argmax index, no values).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from attacks.probes._head import head_logits


class Oracle(Protocol):
    """``(x_batch [m, d], logit_bias None|[C]|[m, C]) -> (indices [m, k], values [m, k])``."""

    queries: int

    def __call__(self, x: Tensor, logit_bias: Tensor | None = None) -> tuple[Tensor, Tensor]: ...


class HeadOracle:
    """The API of a linear head ``z = W x + b``: top-``k`` logits or log-probabilities.

    Args:
        params: the head ``[P]`` (flattened ``W [C, d]`` row-major, then ``b [C]``).
        layer_shape, bias: its layout.
        k: classes returned per query (``None``: all ``C``, i.e. full logits).
        output: ``"logits"`` (raw ``z + logit_bias``) or ``"logprobs"``
            (``log_softmax(z + logit_bias)``, what LLM APIs return).
    """

    def __init__(self, params: Tensor, layer_shape: tuple[int, int], bias: bool = True,
                 k: int | None = None, output: str = "logits") -> None:
        if output not in {"logits", "logprobs"}:
            raise ValueError(f"output must be 'logits' or 'logprobs', got {output!r}")
        c = layer_shape[0]
        if k is not None and not 1 <= k <= c:
            raise ValueError(f"k must be in [1, {c}], got {k}")
        self.params, self.layer_shape, self.bias = params.detach(), layer_shape, bias
        self.k, self.output, self.queries = (c if k is None else k), output, 0

    @property
    def num_classes(self) -> int:
        return self.layer_shape[0]

    def __call__(self, x: Tensor, logit_bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z = head_logits(self.params, x, self.layer_shape, self.bias)
        if logit_bias is not None:
            z = z + logit_bias.to(z.dtype)
        if self.output == "logprobs":
            z = torch.log_softmax(z, dim=-1)
        self.queries += int(x.shape[0])
        vals, idx = torch.topk(z, self.k, dim=-1)
        return idx, vals


class _Wrapped:
    """Base of oracle wrappers: forwards ``queries`` (and ``num_classes``) to the inner oracle."""

    def __init__(self, inner: Oracle) -> None:
        self.inner = inner

    @property
    def queries(self) -> int:
        return int(self.inner.queries)

    @property
    def num_classes(self) -> int | None:
        return getattr(self.inner, "num_classes", None)


class CountingOracle(_Wrapped):
    """Counts the rows *this* wrapper forwarded (``queries``), independently of the inner count."""

    def __init__(self, inner: Oracle) -> None:
        super().__init__(inner)
        self.count = 0

    @property
    def queries(self) -> int:  # type: ignore[override]
        return self.count

    def __call__(self, x: Tensor, logit_bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self.count += int(x.shape[0])
        return self.inner(x, logit_bias)


class RoundedOracle(_Wrapped):
    """Defence: values rounded to ``decimals`` decimal places (``round(v · 10^r) / 10^r``)."""

    def __init__(self, inner: Oracle, decimals: int) -> None:
        super().__init__(inner)
        self.decimals = decimals

    def __call__(self, x: Tensor, logit_bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
        idx, vals = self.inner(x, logit_bias)
        return idx, torch.round(vals, decimals=self.decimals)


class NoisyOracle(_Wrapped):
    """Defence: values ``v + σ ε`` with ``ε ~ N(0, 1)`` i.i.d. per returned value."""

    def __init__(self, inner: Oracle, sigma: float, generator: torch.Generator | None = None) -> None:
        super().__init__(inner)
        if sigma < 0:
            raise ValueError("sigma must be >= 0")
        self.sigma, self.generator = sigma, generator

    def __call__(self, x: Tensor, logit_bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
        idx, vals = self.inner(x, logit_bias)
        eps = torch.randn(vals.shape, generator=self.generator, dtype=vals.dtype, device="cpu")
        eps = eps.to(vals.device)
        return idx, vals + self.sigma * eps


class LabelOnlyOracle(_Wrapped):
    """Defence: top-1 label only (index ``[m, 1]``, value ``NaN``)."""

    def __call__(self, x: Tensor, logit_bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
        idx, vals = self.inner(x, logit_bias)
        return idx[:, :1], torch.full_like(vals[:, :1], float("nan"))


def with_rounding(oracle: Oracle, decimals: int) -> RoundedOracle:
    """Wrap ``oracle`` so its values are rounded to ``decimals`` decimals."""
    return RoundedOracle(oracle, decimals)


def with_gaussian_noise(oracle: Oracle, sigma: float,
                        generator: torch.Generator | None = None) -> NoisyOracle:
    """Wrap ``oracle`` so its values carry additive Gaussian noise of std ``sigma``."""
    return NoisyOracle(oracle, sigma, generator)


def with_top1(oracle: Oracle) -> LabelOnlyOracle:
    """Wrap ``oracle`` so it returns the top-1 label only."""
    return LabelOnlyOracle(oracle)


def dense_from_topk(indices: Tensor, values: Tensor, num_classes: int) -> Tensor:
    """Scatter top-``k`` answers into ``[m, C]`` with ``NaN`` for the classes not returned."""
    out = torch.full((indices.shape[0], num_classes), float("nan"), dtype=values.dtype, device=values.device)
    return out.scatter(1, indices, values)
