"""Batched linear output layers: many peers' heads trained at once.

A group of ``p`` peers holds weights ``W [p, C, d]`` and biases ``b [p, C]``. One local step for
all of them is two ``bmm`` calls (forward logits, backward weight gradient) — no Python loop
over peers. The gradient of the mean cross-entropy of a linear softmax head is closed-form:
``∂L/∂W = (softmax(XWᵀ+b) − Y)ᵀ X / B``.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import Tensor

if TYPE_CHECKING:
    from fedsim.schema_sections import TrainingCfg


@dataclass
class OptimizerState:
    """Per-peer optimizer buffers (momentum, or Adam's moments and step count)."""

    m_w: Tensor
    m_b: Tensor
    v_w: Tensor | None = None
    v_b: Tensor | None = None
    t: int = 0

    @classmethod
    def zeros(cls, w: Tensor, b: Tensor, adam: bool) -> OptimizerState:
        z = cls(torch.zeros_like(w), torch.zeros_like(b))
        if adam:
            z.v_w, z.v_b = torch.zeros_like(w), torch.zeros_like(b)
        return z


def logits(w: Tensor, b: Tensor | None, x: Tensor) -> Tensor:
    """``x [p, B, d]`` under heads ``w [p, C, d]`` → class-major logits ``[p, C, B]``.

    ``W Xᵀ`` rather than ``X Wᵀ``: for these shapes (C ≈ 10 classes, B ≈ 32, d in the hundreds)
    the batched GEMM runs about twice as fast in this orientation (measured with MKL, 1 thread).
    """
    if b is None:
        return torch.bmm(w, x.transpose(1, 2))
    return torch.baddbmm(b[:, :, None], w, x.transpose(1, 2))


def ce_grad(
    w: Tensor, b: Tensor | None, x: Tensor, y: Tensor, weights: Tensor | None = None, *, out: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Mean cross-entropy per peer and its gradients w.r.t. ``w`` and ``b`` (closed form).

    ``x [p, n, d]``, ``y [p, n]``. ``weights [p, n]`` (optional): each sample's share of the
    minibatch (draw count / B, summing to 1 per peer) instead of the plain mean over the ``n``
    samples. ``out``: where to write the weight gradient (shaped like ``w``; default a new tensor)."""
    z = logits(w, b, x)  # [p, C, n]
    logp = torch.log_softmax(z, dim=1)
    nll = -logp.gather(1, y[:, None, :]).squeeze(1)  # [p, n]
    g = logp.exp()  # softmax − one-hot(y): ∂(per-sample loss)/∂z
    g.scatter_add_(1, y[:, None, :], torch.full_like(y[:, None, :], -1, dtype=g.dtype))
    if weights is None:
        loss = nll.mean(dim=1)
        g /= x.shape[1]
    else:
        loss = (nll * weights).sum(dim=1)
        g *= weights[:, None, :]
    return loss, torch.bmm(g, x, out=out), g.sum(dim=2)


def step(
    w: Tensor,
    b: Tensor,
    gw: Tensor,
    gb: Tensor,
    state: OptimizerState,
    *,
    optimizer: str,
    lr: float,
    momentum: float,
    weight_decay: float,
    bias: bool,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> None:
    """In-place SGD (with momentum and weight decay, PyTorch's convention) or Adam step.

    The gradients ``gw, gb`` are consumed: SGD overwrites them with the update ``lr · direction``
    instead of allocating it (at 10,000 peers a head-sized temporary is 115 MB per group, and
    allocating it cost 6× the arithmetic, measured); the numbers are those of ``w -= lr · direction``
    (with ``lr`` 1 the multiplication, exact, is skipped)."""
    if weight_decay:
        gw = gw + weight_decay * w
    if optimizer == "sgd":
        if momentum:
            state.m_w.mul_(momentum).add_(gw)
            state.m_b.mul_(momentum).add_(gb)
            upd_w, upd_b = state.m_w, state.m_b
            if lr != 1.0:  # (x · 1 = x exactly in IEEE arithmetic: lr 1 skips a pass over the heads)
                upd_w, upd_b = torch.mul(upd_w, lr, out=gw), torch.mul(upd_b, lr, out=gb)
        else:
            upd_w, upd_b = (gw, gb) if lr == 1.0 else (gw.mul_(lr), gb.mul_(lr))
        w.sub_(upd_w)
        if bias:
            b.sub_(upd_b)
        return
    b1, b2 = betas
    state.t += 1
    assert state.v_w is not None and state.v_b is not None
    for p, g, m, v, use in ((w, gw, state.m_w, state.v_w, True), (b, gb, state.m_b, state.v_b, bias)):
        if not use:
            continue
        m.mul_(b1).add_((1 - b1) * g)
        v.mul_(b2).add_((1 - b2) * g * g)
        mhat, vhat = m / (1 - b1**state.t), v / (1 - b2**state.t)
        p.sub_(lr * mhat / (vhat.sqrt() + eps))


# SGD steps in chunks of peers whose weight gradient fills at most this many bytes (local_steps
# chunked=True): every step's temporaries (logits, softmax, gradient) stay small and are reused
# from the heap, instead of head-sized tensors page-faulted in per group, round and step
TRAIN_CHUNK_BYTES = 4 << 20


class KeptBuffers(threading.local):
    """:func:`kept_buffer`'s buffers, one set per thread: in-process groups may run side by side
    (``engine.local_parallel``, :class:`fedsim.backend.LocalBackend`), each call of a group in one
    thread from start to end, so a thread's temporaries never overlap in time (a buffer shared by
    the process would be written by two groups at once)."""

    def __init__(self) -> None:
        self.buffers: dict[tuple[str, torch.dtype, torch.device], Tensor] = {}


_kept = KeptBuffers()


def kept_buffers() -> dict[tuple[str, torch.dtype, torch.device], Tensor]:
    """The calling thread's kept buffers by ``(slot, dtype, device)``."""
    return _kept.buffers


def kept_buffer(like: Tensor, slot: str = "grad") -> Tensor:
    """An uninitialized contiguous tensor shaped like ``like``, a view of one buffer kept for the
    calling thread (:class:`KeptBuffers`: on Ray and one after another in-process, the process's
    one) per ``slot``, dtype and device (grown to the largest size asked for, never shrunk): for
    a temporary that dies before the next call for the same slot asks again in the same thread,
    allocated (page-faulted in) once. Slots: ``"grad"`` (the weight gradient of :func:`local_steps`),
    ``"batch"`` (a chunk's gathered minibatch rows, :class:`PeerSlicedBatches`)."""
    return kept_empty(like.shape, like.dtype, like.device, slot)


def kept_empty(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype, device: torch.device, slot: str) -> Tensor:
    """:func:`kept_buffer` by shape, dtype and device."""
    numel = math.prod(shape)
    key = (slot, dtype, device)
    kept = kept_buffers()
    buf = kept.get(key)
    if buf is None or buf.numel() < numel:
        kept.pop(key, None)  # (the old one freed before the new one is allocated)
        buf = kept[key] = torch.empty(numel, dtype=dtype, device=device)
    return buf[:numel].view(shape)


@runtime_checkable
class PeerSlicedBatches(Protocol):
    """A round's minibatches that can be read a chunk of peers at a time
    (:class:`fedsim.minibatches.StepBatches`): iterating yields each step's batch for all peers
    (as a plain sequence of batches does); ``part(step, lo, hi)`` is step ``step``'s batch of peers
    ``lo .. hi - 1`` only, valid until the next ``part`` call (it may be written into
    :func:`kept_buffer`'s ``"batch"`` slot); ``steps`` is their number."""

    steps: int

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]: ...

    def part(self, step: int, lo: int, hi: int) -> tuple[Tensor, ...]: ...

    def row_bytes(self) -> int:
        """Bytes ``part`` writes per peer into the ``"batch"`` slot (0: it returns views)."""
        ...


class PeerRange:
    """Peers ``lo .. hi - 1`` of a :class:`PeerSlicedBatches`, itself one (:func:`upcast_steps`' chunks
    read the group's batches, drawn once: on the padded path views of the padded shards)."""

    def __init__(self, batches: PeerSlicedBatches, lo: int, hi: int) -> None:
        self.batches, self.lo, self.hi, self.steps = batches, lo, hi, batches.steps

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        return (self.part(k, 0, self.hi - self.lo) for k in range(self.steps))

    def part(self, step: int, lo: int, hi: int) -> tuple[Tensor, ...]:
        return self.batches.part(step, self.lo + lo, self.lo + hi)

    def row_bytes(self) -> int:
        return self.batches.row_bytes()


def step_peers(training: TrainingCfg, p: int, head_numel: int, itemsize: int) -> int:
    """Peers whose step temporaries and weight gradient exist at once in :func:`local_steps`
    ``(chunked=True)`` over ``p`` heads of ``head_numel`` weights of ``itemsize`` bytes: a chunk of
    :data:`TRAIN_CHUNK_BYTES` for SGD without weight decay, else all ``p`` (also what
    :mod:`fedsim.limits`' memory estimate counts; the chunk-major path of a
    :class:`PeerSlicedBatches` may take fewer, at most :data:`TRAIN_CHUNK_BYTES` of gathered rows)."""
    if training.optimizer != "sgd" or training.weight_decay:
        return p
    return min(p, chunk_peers(head_numel, itemsize))


def chunk_peers(head_numel: int, itemsize: int = 4) -> int:
    """Peers whose heads of ``head_numel`` values of ``itemsize`` bytes fill :data:`TRAIN_CHUNK_BYTES`
    (at least 1): the chunk of :func:`step_peers` and of :func:`upcast_steps`."""
    return max(1, TRAIN_CHUNK_BYTES // max(1, head_numel * itemsize))


# the float32 working copies of upcast_steps, by the stored tensor they stand for (kept_empty's slots)
_WORKING_SLOTS = ("head_w", "head_b", "head_m_w", "head_m_b", "head_v_w", "head_v_b")


def upcast_steps(
    w: Tensor,
    b: Tensor,
    state: OptimizerState,
    batches_for: Callable[[int, int, Tensor, Tensor], Any],
    steps: Callable[[Tensor, Tensor, OptimizerState, Any], Tensor],
    size: int,
) -> Tensor:
    """Local steps on heads stored in half precision (``engine.head_dtype``; ``w, b`` and the
    optimizer buffers of ``state`` in that dtype), in float32, ``size`` peers at a time: a chunk's
    heads and buffers are upcast (exactly) into float32 working copies (:func:`kept_empty`, one set
    per thread), ``steps(w32, b32, state32, batches_for(lo, hi, w32, b32))`` runs all the round's
    local steps on them (:func:`local_steps`: the float32 arithmetic, unchanged), and they are
    written back rounded to the nearest representable value (ties to even): **one rounding per
    peer and round, after its last local step**, not after every step (float16 keeps 11 significant
    bits, bfloat16 8: a step smaller than half a unit in the last place of a weight would be lost).
    Peak float32 bytes: one chunk. Returns the per-peer loss (float32). Peers are independent and
    ``batches_for`` gives a chunk's minibatches as drawn by peer id (:class:`PeerRange` of the
    group's, or its own), so the numbers do not depend on ``size`` or on which group hosts a peer.
    Adam's step count advances as in one call (``state.t``)."""
    p = w.shape[0]
    loss = torch.zeros(p, device=w.device)
    t0, t = state.t, state.t
    stored = (w, b, state.m_w, state.m_b, state.v_w, state.v_b)
    for lo in range(0, p, size) if p else [0]:  # (no peers: one empty call, Adam's count advances as before)
        k = slice(lo, min(p, lo + size))
        work = [
            None if a is None else kept_empty(a[k].shape, torch.float32, a.device, slot).copy_(a[k])
            for a, slot in zip(stored, _WORKING_SLOTS, strict=True)
        ]
        w32, b32, mw, mb, vw, vb = work
        sub = OptimizerState(mw, mb, vw, vb, t0)
        loss[k] = steps(w32, b32, sub, batches_for(k.start, k.stop, w32, b32))
        t = sub.t
        for a, a32 in zip(stored, work, strict=True):
            if a is not None:
                a[k].copy_(a32)  # (rounded to nearest, ties to even)
    state.t = t
    return loss


def local_steps(
    w: Tensor, b: Tensor, state: OptimizerState, batches, training: TrainingCfg, bias: bool, *, chunked: bool = False
) -> Tensor:
    """Run one optimizer step per ``(x, y)`` (or ``(x, y, weights)``, see :func:`ce_grad`) batch on
    heads ``w, b`` in place (``training`` is the scenario's training section,
    ``fedsim.schema_sections.TrainingCfg``); returns the last batch's per-head loss. ``chunked``
    (SGD without weight decay): each step runs over chunks of peers (:data:`TRAIN_CHUNK_BYTES`)
    with the weight gradient in :func:`kept_buffer`; the same numbers (peers are independent).
    ``batches`` a :class:`PeerSlicedBatches` (and ``chunked``, SGD without weight decay): each chunk
    of peers takes all its steps before the next chunk starts (:func:`_chunk_major_steps`), its
    rows gathered into a kept buffer; the same numbers again."""
    reuse = training.optimizer == "sgd" and not training.weight_decay
    p = w.shape[0]
    if chunked and p > 0:
        size = step_peers(training, p, w[0].numel(), w.element_size())
        if reuse and isinstance(batches, PeerSlicedBatches):
            size = min(size, max(1, TRAIN_CHUNK_BYTES // max(1, batches.row_bytes())))
            return _chunk_major_steps(w, b, state, batches, training, bias, size)
        if size < p:
            return _chunked_sgd_steps(w, b, state, batches, training, bias, size)
    loss = torch.zeros(p, device=w.device)
    # one weight-gradient buffer for all steps (step() consumes it): a head-sized tensor allocated
    # once per call, not once per step (a fresh 1 GB tensor is page-faulted in at every step)
    buf: Tensor | None = None
    for batch in batches:  # (x, y) or (x, y, weights): see ce_grad
        loss, gw, gb = ce_grad(w, b if bias else None, *batch, out=buf)
        buf = gw if reuse else None
        _sgd_or_adam(w, b, gw, gb, state, training, bias)
        del gw, gb  # (with a new gradient per step: one alive at a time, not two)
    return loss


def _sgd_or_adam(w: Tensor, b: Tensor, gw: Tensor, gb: Tensor, state: OptimizerState, training, bias: bool) -> None:
    step(
        w,
        b,
        gw,
        gb,
        state,
        optimizer=training.optimizer,
        lr=training.lr,
        momentum=training.momentum,
        weight_decay=training.weight_decay,
        bias=bias,
    )


def _chunked_sgd_steps(w: Tensor, b: Tensor, state: OptimizerState, batches, training, bias: bool, size: int) -> Tensor:
    """:func:`local_steps` (SGD, no weight decay) over chunks of ``size`` peers: views of ``w, b``,
    the momentum and the batch, the weight gradient in one kept chunk-sized buffer."""
    p = w.shape[0]
    loss = torch.zeros(p, device=w.device)
    buf = kept_buffer(w[:size])
    for batch in batches:
        for i in range(0, p, size):
            k = slice(i, i + size)
            part = OptimizerState(state.m_w[k], state.m_b[k])
            out = buf[: min(size, p - i)]
            loss[k], gw, gb = ce_grad(w[k], b[k] if bias else None, *(t[k] for t in batch), out=out)
            _sgd_or_adam(w[k], b[k], gw, gb, part, training, bias)
    return loss


def _chunk_major_steps(
    w: Tensor, b: Tensor, state: OptimizerState, batches: PeerSlicedBatches, training, bias: bool, size: int
) -> Tensor:
    """:func:`_chunked_sgd_steps` with the loops swapped: chunk by chunk of ``size`` peers, each
    through all its steps (``batches.part``), so a chunk's heads, gradient and gathered rows stay in
    cache from one step to the next, and no whole-group batch is gathered. Each peer's steps are the
    same operations in the same order: the same numbers."""
    p = w.shape[0]
    loss = torch.zeros(p, device=w.device)
    buf = kept_buffer(w[: min(size, p)])
    for i in range(0, p, size):
        k = slice(i, i + size)
        wk, bk = w[k], b[k]
        part = OptimizerState(state.m_w[k], state.m_b[k])
        out = buf[: wk.shape[0]]
        for step in range(batches.steps):
            loss[k], gw, gb = ce_grad(wk, bk if bias else None, *batches.part(step, i, i + wk.shape[0]), out=out)
            _sgd_or_adam(wk, bk, gw, gb, part, training, bias)
    return loss


@torch.no_grad()
def accuracy_and_loss(w: Tensor, b: Tensor | None, x: Tensor, y: Tensor, chunk: int = 64) -> tuple[Tensor, Tensor]:
    """Test accuracy and mean cross-entropy of each head in ``w [p, C, d]`` (any float dtype, computed in
    ``x``'s) on shared ``x [N, d]`` (``p = 0``, e.g. a group hosting only Byzantine peers: two empty tensors)."""
    accs, losses = [x.new_zeros(0)], [x.new_zeros(0)]
    for i in range(0, w.shape[0], chunk):
        wi = w[i : i + chunk].to(x.dtype)  # (heads stored in half precision: upcast a chunk at a time)
        z = torch.einsum("nd,pcd->pnc", x, wi)
        if b is not None:
            z = z + b[i : i + chunk, None, :].to(x.dtype)
        accs.append((z.argmax(-1) == y).float().mean(1))
        losses.append(
            torch.nn.functional.cross_entropy(z.transpose(1, 2), y.expand(len(wi), -1), reduction="none").mean(1)
        )
    return torch.cat(accs), torch.cat(losses)


def consolidate(w: Tensor, b: Tensor, tw: Tensor, tb: Tensor, own_classes: Tensor) -> None:
    """Copy the rows of each peer's own classes from the trained heads ``tw [p, C, d]``, ``tb [p, C]``
    into the consolidated heads ``w``, ``b`` in place (``own_classes``: bool ``[p, C]``); the other
    rows keep their consolidated values (CWR, Bristle's ``Node.updateCW``: foreign classes change
    only through integration). Written in place (``out=``): no head-sized temporary."""
    torch.where(own_classes[..., None], tw, w, out=w)
    torch.where(own_classes, tb, b, out=b)
