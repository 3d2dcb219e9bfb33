"""Prediction APIs ("oracles") of a model, and the output defences that wrap them.

An oracle is any callable ``oracle(x_batch, logit_bias) -> (topk_indices, topk_values)``:

* ``x_batch [m, d]`` — the queried inputs (features; the backbone is public and frozen);
* ``logit_bias`` — ``None``, ``[C]`` (one bias for the whole batch) or ``[m, C]`` (one per
  query): added to the logits before anything else, like OpenAI's ``logit_bias`` parameter
  that Carlini et al. 2024 exploit;
* returns the ``k`` best classes per row, best first (``[m, k]`` int64), and their values
  (``[m, k]``: logits, or log-probabilities for ``output="logprobs"``; ``NaN`` when the API
  returns labels only). ``k = 1`` with a value is the "top-1 with its value" API.

Every oracle has a ``queries`` attribute: rows answered so far (one API call per input, as in
Carlini et al., who count queries per prompt).

Defences (each returns a new oracle, so the attacker's cost can be measured with and without):
:func:`with_rounding` (values rounded to ``r`` decimals), :func:`with_gaussian_noise` (additive
``N(0, σ²)``), :func:`with_top1` (label only: the argmax index, no values). Rounding and noise
perturb the *whole* output vector **before** the top-``k`` is taken (``stage="before_ranking"``,
the default), so the served ranking — and the served label, hence the defender's own accuracy —
is that of the perturbed outputs: a defence that protects the values also costs the defender.
``stage="after_ranking"`` perturbs only the returned values after an exact ranking (the labels
stay exact and free), which is not a deployable defence; it is kept to show the difference.
Wrappers compose: ``with_gaussian_noise(with_rounding(o, 1), 0.5)`` rounds, then adds noise,
then ranks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

from attacks.probes._head import head_logits

Perturb = Callable[[Tensor], Tensor]
STAGES = ("before_ranking", "after_ranking")


class Oracle(Protocol):
    """``(x_batch [m, d], logit_bias None|[C]|[m, C]) -> (indices [m, k], values [m, k])``."""

    queries: int

    def __call__(self, x: Tensor, logit_bias: Tensor | None = None) -> tuple[Tensor, Tensor]: ...


def _compose(first: Perturb | None, then: Perturb | None) -> Perturb | None:
    if first is None:
        return then
    if then is None:
        return first
    return lambda v: then(first(v))


class ModelOracle:
    """The API of any model ``x ↦ z(x) ∈ R^C``: top-``k`` logits or log-probabilities.

    Args:
        model: ``[m, d] → [m, C]`` logits (e.g. :meth:`BottleneckHead.logits
            <attacks.probes.bottleneck.BottleneckHead.logits>`).
        num_classes: ``C``.
        k: classes returned per query (``None``: all ``C``, i.e. full logits; ``1``: the top-1
            label with its value).
        output: ``"logits"`` (raw ``z + logit_bias``) or ``"logprobs"``
            (``log_softmax(z + logit_bias)``, what LLM APIs return).
    """

    def __init__(self, model: Callable[[Tensor], Tensor], num_classes: int, k: int | None = None,
                 output: str = "logits") -> None:
        if output not in {"logits", "logprobs"}:
            raise ValueError(f"output must be 'logits' or 'logprobs', got {output!r}")
        if k is not None and not 1 <= k <= num_classes:
            raise ValueError(f"k must be in [1, {num_classes}], got {k}")
        self.model, self._num_classes = model, int(num_classes)
        self.k, self.output, self.queries = (num_classes if k is None else k), output, 0

    @property
    def num_classes(self) -> int:
        return self._num_classes

    def answer(self, x: Tensor, logit_bias: Tensor | None = None, perturb: Perturb | None = None,
               post: Perturb | None = None) -> tuple[Tensor, Tensor]:
        """The answer with ``perturb`` applied to all ``C`` output values before ranking and
        ``post`` to the ``k`` returned values after it (what the defence wrappers pass in)."""
        z = self.model(x)
        if logit_bias is not None:
            z = z + logit_bias.to(z.dtype)
        if self.output == "logprobs":
            z = torch.log_softmax(z, dim=-1)
        if perturb is not None:
            z = perturb(z)
        self.queries += int(x.shape[0])
        vals, idx = torch.topk(z, self.k, dim=-1)
        return idx, (vals if post is None else post(vals))

    def __call__(self, x: Tensor, logit_bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.answer(x, logit_bias)


class HeadOracle(ModelOracle):
    """The API of a linear head ``z = W x + b``.

    Args:
        params: the head ``[P]`` (flattened ``W [C, d]`` row-major, then ``b [C]``).
        layer_shape, bias: its layout.
        k, output: as in :class:`ModelOracle`.
    """

    def __init__(self, params: Tensor, layer_shape: tuple[int, int], bias: bool = True,
                 k: int | None = None, output: str = "logits") -> None:
        self.params, self.layer_shape, self.bias = params.detach(), layer_shape, bias
        super().__init__(lambda x: head_logits(self.params, x, self.layer_shape, self.bias),
                         layer_shape[0], k, output)


class _Wrapped:
    """Base of oracle wrappers: forwards ``queries`` (and ``num_classes``) to the inner oracle,
    and passes perturbations through to the innermost :class:`ModelOracle`."""

    def __init__(self, inner: Oracle) -> None:
        self.inner = inner

    @property
    def queries(self) -> int:
        return int(self.inner.queries)

    @property
    def num_classes(self) -> int | None:
        return getattr(self.inner, "num_classes", None)

    def answer(self, x: Tensor, logit_bias: Tensor | None = None, perturb: Perturb | None = None,
               post: Perturb | None = None) -> tuple[Tensor, Tensor]:
        inner_answer = getattr(self.inner, "answer", None)
        if inner_answer is None:  # a plain callable oracle: perturbations can only act afterwards
            idx, vals = self.inner(x, logit_bias)
            f = _compose(perturb, post)
            return idx, (vals if f is None else f(vals))
        return inner_answer(x, logit_bias, perturb, post)

    def __call__(self, x: Tensor, logit_bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.answer(x, logit_bias)


class CountingOracle(_Wrapped):
    """Counts the rows *this* wrapper forwarded (``queries``), independently of the inner count."""

    def __init__(self, inner: Oracle) -> None:
        super().__init__(inner)
        self.count = 0

    @property
    def queries(self) -> int:  # type: ignore[override]
        return self.count

    def answer(self, x: Tensor, logit_bias: Tensor | None = None, perturb: Perturb | None = None,
               post: Perturb | None = None) -> tuple[Tensor, Tensor]:
        self.count += int(x.shape[0])
        return super().answer(x, logit_bias, perturb, post)


class _Perturbing(_Wrapped):
    """A defence that maps output values ``v ↦ f(v)``, before (default) or after the ranking."""

    def __init__(self, inner: Oracle, stage: str = "before_ranking") -> None:
        super().__init__(inner)
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
        self.stage = stage

    def perturb(self, v: Tensor) -> Tensor:
        raise NotImplementedError

    def answer(self, x: Tensor, logit_bias: Tensor | None = None, perturb: Perturb | None = None,
               post: Perturb | None = None) -> tuple[Tensor, Tensor]:
        if self.stage == "before_ranking":  # inner wrappers' perturbations act first
            return super().answer(x, logit_bias, _compose(self.perturb, perturb), post)
        return super().answer(x, logit_bias, perturb, _compose(self.perturb, post))


class RoundedOracle(_Perturbing):
    """Defence: values rounded to ``decimals`` decimal places (``round(v · 10^r) / 10^r``);
    ties in the rounded values are ranked by class index (``torch.topk``)."""

    def __init__(self, inner: Oracle, decimals: int, stage: str = "before_ranking") -> None:
        super().__init__(inner, stage)
        self.decimals = decimals

    def perturb(self, v: Tensor) -> Tensor:
        return torch.round(v, decimals=self.decimals)


class NoisyOracle(_Perturbing):
    """Defence: values ``v + σ ε`` with ``ε ~ N(0, 1)`` i.i.d. per value and per query (fresh
    noise on every call, so an attacker can average repeated queries)."""

    def __init__(self, inner: Oracle, sigma: float, generator: torch.Generator | None = None,
                 stage: str = "before_ranking") -> None:
        super().__init__(inner, stage)
        if sigma < 0:
            raise ValueError("sigma must be >= 0")
        self.sigma, self.generator = sigma, generator

    def perturb(self, v: Tensor) -> Tensor:
        eps = torch.randn(v.shape, generator=self.generator, dtype=v.dtype, device="cpu").to(v.device)
        return v + self.sigma * eps


class LabelOnlyOracle(_Wrapped):
    """Defence: top-1 label only (index ``[m, 1]``, value ``NaN``)."""

    def answer(self, x: Tensor, logit_bias: Tensor | None = None, perturb: Perturb | None = None,
               post: Perturb | None = None) -> tuple[Tensor, Tensor]:
        idx, vals = super().answer(x, logit_bias, perturb, post)
        return idx[:, :1], torch.full_like(vals[:, :1], float("nan"))


class AveragingOracle(_Wrapped):
    """Attacker side: ask every query ``repeats`` times and average the answers.

    Values are averaged per class over the repeats that returned it (``nanmean`` of the dense
    answers); the ``k`` classes with the largest averages among those returned at least once are
    given back. Label-only answers (``NaN`` values): the most frequent label. Against fresh
    i.i.d. noise of std ``σ`` the average has std ``σ/√r``; against rounding it changes nothing.
    The inner oracle sees ``r`` rows per input (the query cost includes the repeats).
    """

    def __init__(self, inner: Oracle, repeats: int) -> None:
        super().__init__(inner)
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        self.repeats = int(repeats)

    def answer(self, x: Tensor, logit_bias: Tensor | None = None, perturb: Perturb | None = None,
               post: Perturb | None = None) -> tuple[Tensor, Tensor]:
        if self.repeats == 1:
            return super().answer(x, logit_bias, perturb, post)
        answers = [super(AveragingOracle, self).answer(x, logit_bias, perturb, post) for _ in range(self.repeats)]
        k = answers[0][0].shape[1]
        if not bool(torch.isfinite(answers[0][1]).all()):
            labels = torch.stack([a[0][:, 0] for a in answers], 1)
            return torch.mode(labels, dim=1).values[:, None], answers[0][1]
        c = int(max(int(a[0].max()) for a in answers)) + 1
        c = max(c, self.num_classes or 0)
        dense = torch.stack([dense_from_topk(i, v, c) for i, v in answers])  # [r, m, C]
        mean = torch.nanmean(dense, dim=0)
        vals, idx = torch.topk(torch.nan_to_num(mean, nan=float("-inf")), k, dim=-1)
        return idx, vals


def with_rounding(oracle: Oracle, decimals: int, stage: str = "before_ranking") -> RoundedOracle:
    """Wrap ``oracle`` so its values are rounded to ``decimals`` decimals (before ranking by default)."""
    return RoundedOracle(oracle, decimals, stage)


def with_gaussian_noise(oracle: Oracle, sigma: float, generator: torch.Generator | None = None,
                        stage: str = "before_ranking") -> NoisyOracle:
    """Wrap ``oracle`` so its values carry additive Gaussian noise of std ``sigma`` (before ranking
    by default)."""
    return NoisyOracle(oracle, sigma, generator, stage)


def with_top1(oracle: Oracle) -> LabelOnlyOracle:
    """Wrap ``oracle`` so it returns the top-1 label only."""
    return LabelOnlyOracle(oracle)


def dense_from_topk(indices: Tensor, values: Tensor, num_classes: int) -> Tensor:
    """Scatter top-``k`` answers into ``[m, C]`` with ``NaN`` for the classes not returned."""
    out = torch.full((indices.shape[0], num_classes), float("nan"), dtype=values.dtype, device=values.device)
    return out.scatter(1, indices, values)
