"""The strategy interface: what a peer (or a server) does with the output layers it heard.

A strategy is a small dataclass whose fields are its parameters, each declaring what it accepts
(``param(default, Real(lo=0.0))``, :mod:`fedlib.params`; the base class checks them in
``__post_init__`` with messages that name the parameter), and whose call is pure tensor math::

    new_params = strategy(own, received, ctx)      # Tensor[P], Tensor[n, P], AggregationContext

Parameter vectors are flattened output layers: the weight ``W`` of shape ``ctx.layer_shape``
``(C, d)`` in row-major order, followed by the bias ``b`` of shape ``(C,)`` when ``ctx.bias``.
``unflatten``/``flatten`` convert (the one layout, :mod:`fedlib.heads`). Strategies import torch
and the leaf :mod:`fedlib` only, never ``fedsim``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import ClassVar

import torch
from torch import Tensor

from fedlib.heads import flatten, num_params, unflatten
from fedlib.params import validate

__all__ = ["AggregationContext", "Sanitized", "Strategy", "aggregate", "aggregate_batch", "finite_rows", "flatten",
           "head_logits", "sanitize", "unflatten"]


@dataclass(frozen=True)
class AggregationContext:
    """What an aggregation rule may need besides the vectors (docs/architecture.md, "Interfaces").

    Attributes:
        layer_shape: ``(C, d)``, the output layer's weight shape (classes × features).
        bias: whether the flattened vector ends with a ``C``-long bias.
        f: number of Byzantine senders the rule must tolerate among ``received``.
        round: current round, 0-based.
        total_rounds: number of rounds in the run (BALANCE's shrinking threshold).
        val_x, val_y: the peer's local validation split (features ``[m, d]``, labels ``[m]``),
            for rules that score candidates (Bristle's integrator, MOZI/UBAR).
        local_classes: bool ``[C]``, classes present in the peer's local data (Bristle's
            "familiar" classes). Derived from ``val_y`` when omitted.
        root_update: ``Tensor[P]``, the model obtained by training ``own`` on a small trusted
            root set (FLTrust); its update is ``root_update - own``.
        generator: source of randomness for rules that sample (Bristle's prioritizer).
        val_mask: set only for :meth:`Strategy.aggregate_batch` (None in a per-peer call).
        overlap: int ``[n]``, one entry per row of ``received``: how many classes the sender
            claims to share with this peer, ``|F_i ∩ F_j|`` (what a private-set-intersection
            cardinality handshake tells two peers when they connect; a Byzantine sender may lie).
            Bristle's ``classes="overlap"`` scores sender ``j`` on that many classes. None: not
            known (every sender is then taken to hold all of this peer's classes).
        previous: ``Tensor[P]``, the peer's own vector *before* this round's local training (the
            result of its previous aggregation; a server: the current global model), for rules
            that judge candidates against it (MOZI's ``reference="previous"``: the paper's
            ``x_{i,k}`` and the authors' ``oldModel``). Supplied when the rule ``needs``
            ``"previous"``.
        val_logits: for vectors that are not a linear head (whole models, ``model.trainable``
            other than ``head``): maps candidate vectors ``[k, P]`` to their logits ``[k, m, C]``
            on the peer's local validation inputs (labels: ``val_y``; ``val_x`` is None then).
            Given only to rules with :attr:`Strategy.scores_whole_models`.

    In :meth:`Strategy.aggregate_batch` (``g`` peers at once) the per-peer fields carry a leading
    ``g``: ``val_x [g, m, d]`` and ``val_y [g, m]`` zero-padded to the longest split, ``val_mask``
    bool ``[g, m]`` marking the real samples, ``local_classes [g, C]``, ``overlap [g, n]``, ``previous [g, P]``;
    ``root_update`` and ``generator`` are None there.
    """

    layer_shape: tuple[int, int]
    bias: bool = True
    f: int = 0
    round: int = 0
    total_rounds: int = 1
    val_x: Tensor | None = None
    val_y: Tensor | None = None
    local_classes: Tensor | None = None
    root_update: Tensor | None = None
    generator: torch.Generator | None = None
    val_mask: Tensor | None = None
    overlap: Tensor | None = None
    previous: Tensor | None = None
    val_logits: Callable[[Tensor], Tensor] | None = None

    @property
    def num_params(self) -> int:
        return num_params(self.layer_shape, self.bias)

    def to(self, device: torch.device) -> AggregationContext:
        """This context with every tensor field on ``device`` (``generator`` and ``val_logits`` as
        they are: random draws stay where the caller made them). On the CPU, ``self`` unchanged."""
        if device.type == "cpu":
            return self
        moved = {f.name: v.to(device) for f in fields(self) if isinstance(v := getattr(self, f.name), Tensor)}
        return replace(self, **moved)


def head_logits(params: Tensor, x: Tensor, layer_shape: tuple[int, int], bias: bool) -> Tensor:
    """Logits of linear heads ``params [k, P]`` on features ``x [m, d]`` → ``[k, m, C]``."""
    w, b = unflatten(params, layer_shape, bias)
    out = torch.einsum("md,kcd->kmc", x, w)
    return out if b is None else out + b[:, None, :]


class Strategy:
    """Base class of aggregation rules.

    Subclasses are dataclasses registered with :func:`strategies.registry.register`. Class
    attributes:

    * ``needs``: context fields the rule reads (``"validation"``, ``"root_update"``,
      ``"generator"``); the engine supplies them.
    * ``exchanges``: ``"output_layer"`` (Bristle) or ``"full_model"`` (the usual baseline
      setting), used only for byte accounting.

    ``needs`` may also name ``"overlap"`` (``ctx.overlap``, the classes each sender shares with the
    peer) and ``"local_classes"``; :attr:`consolidated` asks the peer for Bristle's consolidated
    weights. :attr:`scores_whole_models`: the rule reads the validation set only through
    ``validation_logits`` (no per-class head structure), so it also runs on whole models, where the
    engine supplies ``ctx.val_logits``.

    :attr:`float64_input`: the rule reads ``received`` only through a float64 copy
    (``strategies._math.population`` / ``f64``, a no-op on float64 rows) and never writes into it,
    so float64 rows with the same values, shape and strides give the same result; a caller that
    aggregates every round (the federated server) then hands :func:`aggregate` a float64 scratch it
    keeps (``work=``) and the rows are converted into it instead of a fresh copy per call.

    :attr:`widens_received`: :meth:`aggregate_batch` reads ``received`` only by widening it exactly
    to float64 (copies into float64 tensors) and never writes into it, so it gives the
    same bits for half-precision rows as for their float32 conversion; :func:`aggregate_batch` then
    hands it the rows in their own dtype when that widens exactly to ``own``'s (the engine gathers
    half-precision messages without a float32 copy, ``fedsim.gossip``).

    :attr:`call_is_batched`: ``__call__`` already takes leading batch dimensions (``own [..., P]``,
    ``received [..., n, P]``, every operation over the last two), so it is the batched form itself:
    :meth:`aggregate_batch` calls it, no override restating it is needed.

    :attr:`batch_on_cpu`: whether an engine aggregating on the CPU uses :meth:`aggregate_batch`
    (True: the batched form is the faster one there). False: the batched form exists for a device
    (``engine.device``, where one call per chunk beats one per peer) but on a CPU the per-peer loop
    is faster (its working set stays in the cache), so a CPU engine loops; the results are the same.

    :attr:`reads_f`: whether ``f`` changes anything the rule does: its result (``ctx.f``) or the
    limits its ``check(n, f)`` enforces (a type check of ``f`` alone does not count). A scenario's
    ``strategy.f`` for a rule that does not (and a forger that does not either) is refused
    (``fedsim.validation``). True unless a rule says otherwise (a rule from before the declaration
    is taken to read it); an instance may set it from its parameters, as ``needs``.
    """

    name: ClassVar[str] = ""
    needs: ClassVar[frozenset[str]] = frozenset()
    scores_whole_models: ClassVar[bool] = False
    float64_input: ClassVar[bool] = False
    widens_received: ClassVar[bool] = False
    call_is_batched: ClassVar[bool] = False
    batch_on_cpu: ClassVar[bool] = True
    exchanges: ClassVar[str] = "full_model"
    reads_f: ClassVar[bool] = True

    def __post_init__(self) -> None:
        """Check every parameter against its declared constraint (:func:`fedlib.params.validate`).
        A subclass with more to set up calls ``super().__post_init__()`` first."""
        validate(self)

    @property
    def consolidated(self) -> bool:
        """Whether peers keep *consolidated* weights (CWR, Lomonaco & Maltoni 2017, as Bristle's
        peers do): each round the peer trains a copy of its head, copies back only the rows of the
        classes it holds, sends the consolidated head and hands the trained copy to the rule as
        ``own``; the rule's result becomes the consolidated head. False: one head, trained in place."""
        return False

    def check(self, n: int, f: int) -> None:
        """Raise ``ValueError`` if the rule cannot work with ``n`` received vectors of which ``f``
        may be Byzantine (e.g. Krum needs ``n > 2f + 2``). Called at scenario validation time."""

    def __call__(self, own: Tensor, received: Tensor, ctx: AggregationContext) -> Tensor:
        raise NotImplementedError

    def aggregate_batch(self, own: Tensor, received: Tensor, ctx: AggregationContext) -> Tensor | None:
        """Optional vectorised form of ``__call__`` for ``g`` peers that each heard ``n`` finite
        vectors: ``own [g, P]``, ``received [g, n, P]`` → ``[g, P]``; row ``i`` must equal
        ``self(own[i], received[i], ctx_i)`` (up to float rounding). With :attr:`call_is_batched`
        ``__call__`` itself; else ``None`` (the default): the engine calls ``__call__`` once per peer."""
        return self(own, received, ctx) if self.call_is_batched else None


@dataclass
class Sanitized:
    """Received vectors after dropping the unusable ones."""

    received: Tensor
    dropped: int = 0
    reasons: list[str] = field(default_factory=list)
    kept: Tensor | None = None  # indices of the kept rows among the input's; None: all were kept


def finite_rows(x: Tensor) -> Tensor:
    """Bool ``[n]``: which rows of ``x [n, P]`` hold only finite values. A NaN/Inf entry makes its
    row's sum non-finite, so only rows whose sum is not finite (those, or finite rows whose sum
    overflows) are checked entry by entry: one pass over ``x`` instead of a boolean copy of it."""
    if x.device.type != "cpu":  # (on a device: entry by entry in one kernel, no value read back to the host)
        return torch.isfinite(x).all(dim=1)
    finite = torch.isfinite(x.sum(dim=1))
    if not bool(finite.all()):
        suspect = torch.nonzero(~finite).flatten()
        finite[suspect] = torch.isfinite(x[suspect]).all(dim=1)
    return finite


def sanitize(received: Tensor | list[Tensor], num_params: int) -> Sanitized:
    """Drop received vectors of the wrong shape or with NaN/Inf entries.

    Accepts a stacked ``[n, P]`` tensor or a list of 1-D tensors (which may differ in length).
    """
    reasons: dict[int, str] = {}
    if isinstance(received, Tensor) and received.dim() == 2 and received.shape[1] == num_params:
        stacked, senders = received, None  # every row has the right shape
        n_in = received.shape[0]
    else:
        rows = list(received) if isinstance(received, list) else list(received.unbind(0)) if received.numel() else []
        n_in = len(rows)
        for i, r in enumerate(rows):
            if r.dim() != 1 or r.shape[0] != num_params:
                reasons[i] = f"shape {tuple(r.shape)} != ({num_params},)"
        senders = [i for i in range(len(rows)) if i not in reasons]
        stacked = torch.stack([rows[i] for i in senders]) if senders else torch.empty(0, num_params)
    finite = finite_rows(stacked)
    if not bool(finite.all()):
        for k in torch.nonzero(~finite).flatten().tolist():
            reasons[k if senders is None else senders[k]] = "non-finite values"
        stacked = stacked[finite]
    kept = torch.tensor([i for i in range(n_in) if i not in reasons], dtype=torch.long) if reasons else None
    return Sanitized(stacked, len(reasons), [f"sender {i}: {reasons[i]}" for i in sorted(reasons)], kept)


def aggregate(
    strategy: Strategy,
    own: Tensor,
    received: Tensor | list[Tensor],
    ctx: AggregationContext,
    fallback: Tensor | None = None,
    *,
    work: Tensor | None = None,
) -> tuple[Tensor, int]:
    """Sanitize ``received``, run ``strategy``, and fall back to ``fallback`` (default ``own``) if
    nothing usable is left or the rule produced non-finite values. Returns ``(new_params,
    n_dropped)``. A peer with consolidated weights passes its trained copy as ``own`` and its
    consolidated head as ``fallback``. Per-row context (``ctx.overlap``) follows the kept rows.

    ``work``: a float64 scratch ``[m, P]`` (``m`` at least the rows received) that the caller keeps
    between calls; for a rule with :attr:`Strategy.float64_input` the kept rows are converted into
    its first rows and handed to the rule as they are (the float64 copy the rule would make: same
    values, shape and strides, so the same result). Ignored for other rules and for rows that are
    not contiguous (the rule's own copy would keep their strides)."""
    keep = own if fallback is None else fallback
    s = sanitize(received, ctx.num_params)
    if s.received.shape[0] == 0:
        return keep.clone(), s.dropped
    if s.kept is not None and ctx.overlap is not None:
        ctx = replace(ctx, overlap=ctx.overlap[s.kept.to(ctx.overlap.device)])
    rows = s.received.to(own.dtype)
    if work is not None and strategy.float64_input and rows.is_contiguous():
        rows = _into_scratch(work, rows)
    out = strategy(own, rows, ctx)
    if out.shape != own.shape or not bool(torch.isfinite(out).all()):
        return keep.clone(), s.dropped
    return out, s.dropped


def _into_scratch(work: Tensor, rows: Tensor) -> Tensor:
    """``rows [k, P]`` converted into the first ``k`` rows of the float64 scratch ``work``."""
    k, p = rows.shape
    if work.dtype != torch.float64 or work.dim() != 2 or work.shape[0] < k or work.shape[1] != p \
            or work.device != rows.device or not work.is_contiguous():
        raise ValueError(f"work: must be a contiguous float64 [>= {k}, {p}] tensor on {rows.device}, "
                         f"got {work.dtype} {tuple(work.shape)} on {work.device}")
    return work[:k].copy_(rows)


def widens(strategy: Strategy) -> bool:
    """Whether ``strategy``'s own class declares :attr:`~Strategy.widens_received` (a subclass, e.g.
    a user's Bristle that overrides ``integrate``, does not inherit the promise: it must declare it)."""
    return bool(type(strategy).__dict__.get("widens_received", False))


def keeps_dtype(strategy: Strategy, received: Tensor, own: Tensor) -> bool:
    """Whether :func:`aggregate_batch` hands ``strategy`` the ``received`` rows in their own dtype:
    the rule :attr:`~Strategy.widens_received` and they widen exactly to ``own``'s floating dtype
    (half precision to float32 or float64, float32 to float64; never a narrowing)."""
    return (
        widens(strategy)
        and received.dtype.is_floating_point
        and own.dtype.is_floating_point
        and torch.promote_types(received.dtype, own.dtype) == own.dtype
    )


def aggregate_batch(
    strategy: Strategy, own: Tensor, received: Tensor, ctx: AggregationContext, fallback: Tensor | None = None
) -> Tensor | None:
    """The batched twin of :func:`aggregate` for ``g`` peers that each heard ``n`` finite vectors
    of the right shape (``own [g, P]``, ``received [g, n, P]``): runs
    :meth:`Strategy.aggregate_batch` and keeps a peer's ``fallback`` row (default: its own
    vector) where its result is not finite. ``None`` when the rule has no batched form for these
    inputs (call :func:`aggregate` per peer instead). Off the CPU (``engine.device``) the check
    never reads a value back to the host: the rows are always chosen on the device (the same values)."""
    rows = received if keeps_dtype(strategy, received, own) else received.to(own.dtype)  # (half precision: no copy)
    out = strategy.aggregate_batch(own, rows, ctx)
    if out is None:
        return None
    finite = finite_rows(out)
    if out.device.type == "cpu" and bool(finite.all()):  # (the usual case on the CPU: no [g, P] copy)
        return out
    return torch.where(finite[:, None], out, own if fallback is None else fallback)
