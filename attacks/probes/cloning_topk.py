"""Top-k leakage for the cloning attack (:mod:`attacks.probes.cloning`): full logits from top-k
log-probability outputs, and top-1 with a returned value plus logit bias."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from attacks.probes._records import Record
from attacks.probes.oracles import CountingOracle, Oracle, dense_from_topk

# --------------------------------------------------------------------------- top-k leakage


@dataclass
class TopKRecovery(Record):
    """Full logit vectors recovered from a top-``k`` API with a logit bias.

    Attributes:
        logits: ``[m, C]`` in the frame of the unbiased answer (exact logits for a logit API,
            exact log-probabilities for a log-prob API), or ``None`` (label-only API).
        queries: oracle rows used, the unbiased first query included.
        k: classes the API returns per query.
        complete: every entry was recovered.
        exact_possible: ``False`` for label-only outputs (``k = 1`` or no values).
        max_bias: the largest logit bias that had to be used.
        note: human-readable summary.
    """

    logits: Tensor | None = field(metadata={"json": False})
    queries: int
    k: int
    complete: bool
    exact_possible: bool
    max_bias: float
    note: str


def recover_full_logits_topk(
    oracle: Oracle,
    x: Tensor,
    num_classes: int,
    *,
    bias_value: float = 100.0,
    max_retries: int = 8,
    first: tuple[Tensor, Tensor] | None = None,
    values: str = "logits",
    bias_reference: bool = True,
) -> TopKRecovery:
    """Carlini et al. (2024) logit-bias attack on a top-``k`` oracle (see module docstring).

    1. Unbiased query: top-``k`` classes and values ``v⁰`` (frame of the answer); ``t`` is the
       argmax (reference class).
    2. The ``C − k`` unseen classes of each row are split into groups of ``k − 1``; for each
       group one query per row with bias ``B`` on the group. The answer contains the group and
       ``t``; ``ẑ_j = v_j − B − v_t + v⁰_t``. Rows where a biased class or ``t`` is missing
       (``B`` too small) are re-queried with ``4B`` up to ``max_retries`` times.

    ``bias_reference`` (default ``True``; a departure from Carlini et al., who leave ``t``
    unbiased): ``t`` gets the same bias ``B`` as the group, so ``ẑ_j = v_j − v_t + v⁰_t`` (``B``
    cancels) and the ``k`` answered classes are exactly the biased ones even when a defence
    rounds or noises the outputs before ranking (an unbiased ``t`` can then be pushed out of the
    answer by a tie or by noise, leaving the row incomplete). Identical on an undefended API.

    Top-1 *with its value* (``k = 1``; Carlini et al. §5, the single-token case): there is no
    reference class in the answer, but a raw-logit API (``values="logits"``) returns
    ``z_j + B`` when the bias ``B`` on class ``j`` makes it the argmax, so ``ẑ_j = v − B`` exactly;
    one biased query per class besides the argmax: ``C`` queries per input, unbiased one included
    (:func:`_top1_logit_bias`). A top-1 log-probability API (``values="logprobs"``) is not covered.

    ``first`` passes an already-made unbiased answer ``(indices, values)`` for ``x`` (its ``m``
    queries are still counted in ``queries``).
    """
    counter = CountingOracle(oracle)
    if first is None:
        idx0, v0 = counter(x, None)
        extra = 0
    else:
        idx0, v0 = first
        extra = int(x.shape[0])
    m, k = idx0.shape
    c = num_classes
    if not bool(torch.isfinite(v0).all()):
        return TopKRecovery(None, counter.count + extra, k, False, False, 0.0,
                            "label-only outputs: exact logit recovery is impossible with this attack; "
                            "fall back to distillation from labels (distill_student)")
    if k == 1:
        if values != "logits":
            return TopKRecovery(None, counter.count + extra, k, False, False, 0.0,
                                "top-1 log-probabilities: the biased class's value depends on the "
                                "unknown normaliser; not implemented (fall back to distillation)")
        return _top1_logit_bias(counter, x, idx0, v0, c, bias_value, max_retries, extra)
    dense0 = dense_from_topk(idx0, v0.to(torch.float64), c)
    if k >= c:
        return TopKRecovery(dense0, counter.count + extra, k, True, True, 0.0, "full logits returned")
    known = torch.isfinite(dense0)
    top = idx0[:, :1]
    unknown = torch.argsort(known.to(torch.int8), dim=1, stable=True)[:, : c - k]
    out = dense0.clone()
    ref0 = dense0.gather(1, top)
    complete, max_b = True, 0.0
    for s in range(0, c - k, k - 1):
        cols = unknown[:, s : s + k - 1]
        pending = torch.arange(m, device=x.device)
        b = torch.full((m,), float(bias_value), dtype=torch.float64, device=x.device)
        for _ in range(max_retries + 1):
            cp = cols[pending]
            lb = torch.zeros(pending.numel(), c, dtype=torch.float64, device=x.device)
            lb.scatter_(1, cp, b[pending, None].expand_as(cp).contiguous())
            if bias_reference:
                lb.scatter_(1, top[pending], b[pending, None])
            max_b = max(max_b, float(b[pending].max()))
            idx, vals = counter(x[pending], lb.to(v0.dtype))
            dense = dense_from_topk(idx, vals.to(torch.float64), c)
            got = dense.gather(1, cp)
            ref = dense.gather(1, top[pending])
            ok = torch.isfinite(got).all(1) & torch.isfinite(ref[:, 0])
            rec = got - ref + ref0[pending] - (0.0 if bias_reference else b[pending, None])
            rows = pending[ok]
            out[rows] = out[rows].scatter(1, cp[ok], rec[ok])
            pending = pending[~ok]
            if pending.numel() == 0:
                break
            b[pending] *= 4.0
        if pending.numel():
            complete = False
    note = "all logits recovered" if complete else "some logits missing (raise bias_value/max_retries)"
    return TopKRecovery(out, counter.count + extra, k, complete, True, max_b, note)


def _top1_logit_bias(counter: CountingOracle, x: Tensor, idx0: Tensor, v0: Tensor, c: int,
                     bias_value: float, max_retries: int, extra: int) -> TopKRecovery:
    """Logit-bias attack on a top-1-with-value raw-logit API: ``ẑ_j = v_j(B e_j) − B``.

    Row ``i`` is re-queried with ``4B`` while the biased class is not the returned argmax (at
    most ``max_retries`` times)."""
    m = idx0.shape[0]
    out = torch.full((m, c), float("nan"), dtype=torch.float64, device=x.device)
    out.scatter_(1, idx0[:, :1], v0[:, :1].to(torch.float64))
    others = torch.argsort((torch.arange(c, device=x.device)[None, :] == idx0[:, :1]).to(torch.int8),
                           dim=1, stable=True)[:, : c - 1]  # every class but the argmax
    complete, max_b = True, 0.0
    for s in range(c - 1):
        col = others[:, s]
        pending = torch.arange(m, device=x.device)
        b = torch.full((m,), float(bias_value), dtype=torch.float64, device=x.device)
        for _ in range(max_retries + 1):
            lb = torch.zeros(pending.numel(), c, dtype=torch.float64, device=x.device)
            lb[torch.arange(pending.numel()), col[pending]] = b[pending]
            max_b = max(max_b, float(b[pending].max()))
            idx, vals = counter(x[pending], lb.to(v0.dtype))
            ok = idx[:, 0] == col[pending]
            rows = pending[ok]
            out[rows, col[rows]] = vals[ok, 0].to(torch.float64) - b[rows]
            pending = pending[~ok]
            if pending.numel() == 0:
                break
            b[pending] *= 4.0
        if pending.numel():
            complete = False
    note = "all logits recovered (top-1 with value)" if complete else "some logits missing (raise bias_value)"
    return TopKRecovery(out, counter.count + extra, 1, complete, True, max_b, note)
