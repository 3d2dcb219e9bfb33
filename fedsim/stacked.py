"""``p`` copies of one network trained as a single stacked model (:func:`torch.func`).

The peers' parameters live in one flat tensor ``θ [p, P]`` (each parameter in
``named_parameters`` order, row-major: the vector peers exchange, what strategies and attacks
see). A parameter dictionary of views into ``θ`` stacks them the way
:func:`torch.func.stack_module_state` does, and ``vmap(grad(loss))`` over the leading dimension
gives every peer's gradient of its own minibatch loss in one call — no Python loop of models:

    L_i(θ_i) = (1/B) Σ_b CE(f(x_ib; θ_i), y_ib),        g_i = ∇L_i(θ_i)          (per peer i)

``batching`` (scenario ``model.batching``, :func:`resolve_batching`) says how the ``g_i`` are
computed: ``vmap`` as above, or ``loop``: the same ``grad(loss)`` applied to each peer's row of
``θ`` and its minibatch in turn. Both read and write the same ``θ [p, P]`` and gradient ``[p, P]``
(the optimizer, exchange, aggregation and checkpoints see no difference); they agree to float
rounding, not to the bit (``vmap`` turns each convolution into one grouped convolution over the
peers and each matrix product into a batched one, whose kernels sum in another order). ``vmap``
pays on accelerators and for linear/MLP layers (batched GEMMs); on the CPU a convolution stacked
over peers ran 1.3–3.2× slower than one per peer (``docs/whole-model.md``, ``docs/performance.md``).

BatchNorm (issue 18): each peer has its own running statistics, stacked like the parameters
(``buffers`` ``[p, ...]``, what :func:`torch.func.stack_module_state` returns). During
:meth:`StackedModel.loss_and_grad` the BatchNorm layers run in train mode, as ``model.train()``
runs them: each peer's minibatch statistics normalise its forward pass and its running mean and
(unbiased) variance move by ``momentum`` in place — under ``vmap`` the batched buffers are written
through, under ``loop`` each peer's row is a view. Evaluation (:meth:`StackedModel.logits`) runs them
in eval mode, on the running statistics. Departure from ``model.train()``: only the BatchNorm layers
switch mode; dropout stays off (its random masks under ``vmap`` would need a seeded stream per peer,
not built). Buffers of other modules (``FeatureScale``'s constants) are never changed.

The optimizer is PyTorch's SGD (heavy-ball momentum, dampening 0, weight decay added to the
gradient of *every* parameter, as ``torch.optim.SGD`` does) or Adam (Kingma & Ba 2015, bias
corrected), applied to ``θ`` in place. Departure from :func:`fedsim.heads.step`: there weight
decay spares the bias; here it applies to all parameters, like ``torch.optim``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, stack_module_state, vmap


@dataclass
class FlatOptimizerState:
    """Per-peer optimizer buffers over flat parameters ``[p, P]``."""

    m: Tensor
    v: Tensor | None = None
    t: int = 0

    @classmethod
    def zeros(cls, theta: Tensor, adam: bool) -> FlatOptimizerState:
        return cls(torch.zeros_like(theta), torch.zeros_like(theta) if adam else None)


def optimizer_step(
    theta: Tensor,
    g: Tensor,
    state: FlatOptimizerState,
    *,
    optimizer: str,
    lr: float,
    momentum: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> None:
    """One in-place step on ``theta [p, P]`` with gradient ``g [p, P]`` (``torch.optim`` semantics):

    SGD: ``g ← g + λθ``, ``m ← μm + g``, ``θ ← θ − η m``; Adam: ``m ← β₁m + (1−β₁)g``,
    ``v ← β₂v + (1−β₂)g²``, ``θ ← θ − η m̂ / (√v̂ + ε)``."""
    if weight_decay:
        g = g + weight_decay * theta
    if optimizer == "sgd":
        if momentum:
            state.m.mul_(momentum).add_(g)
            g = state.m
        theta.sub_(lr * g)
        return
    assert state.v is not None
    b1, b2 = betas
    state.t += 1
    state.m.mul_(b1).add_((1 - b1) * g)
    state.v.mul_(b2).add_((1 - b2) * g * g)
    mhat, vhat = state.m / (1 - b1**state.t), state.v / (1 - b2**state.t)
    theta.sub_(lr * mhat / (vhat.sqrt() + eps))


BATCHING = ("auto", "vmap", "loop")
NORM = nn.modules.batchnorm._BatchNorm  # BatchNorm1d/2d/3d, SyncBatchNorm: train mode in local steps
STATS = ("running_mean", "running_var")  # the BatchNorm statistics peers may exchange (model.bn)
CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def resolve_batching(batching: str, module: nn.Module, device: torch.device | str) -> str:
    """``vmap`` or ``loop`` for scenario ``model.batching`` (a fixed rule, never a timing, so a run's
    results do not depend on the machine's load): ``auto`` is ``loop`` when ``module`` has a
    convolution with trainable parameters and runs on the CPU, else ``vmap`` (linear/MLP parts
    anywhere; everything on an accelerator)."""
    if batching not in BATCHING:
        raise ValueError(f"model.batching: must be one of {', '.join(BATCHING)}, got {batching!r}")
    if batching != "auto":
        return batching
    conv = any(isinstance(m, CONV) and any(p.requires_grad for p in m.parameters()) for m in module.modules())
    return "loop" if conv and torch.device(device).type == "cpu" else "vmap"


class StackedModel:
    """``p`` peers' copies of ``module`` (all starting from its parameters) as flat ``θ [p, P]``.

    ``device``: where ``θ`` and the computation live (scenario ``engine.device``, :mod:`fedsim.device`;
    every tensor is created there, inputs are moved there). ``batching``: how :meth:`loss_and_grad`
    computes the peers' gradients (module docstring; ``auto`` resolved by :func:`resolve_batching`
    into :attr:`batching`); the default ``vmap`` is for direct callers (benchmarks, the evaluating
    server), a scenario's groups pass ``model.batching`` (default ``auto``) from their plan."""

    def __init__(
        self, module: nn.Module, p: int, device: torch.device | str = "cpu", batching: str = "vmap"
    ) -> None:
        self.device = torch.device(device)
        self.batching = resolve_batching(batching, module, self.device)
        base = copy.deepcopy(module).eval().to(self.device)
        params, buffers = stack_module_state([base] * p)  # [p, ...] per parameter / buffer
        self.names = list(params)
        self.shapes = [tuple(params[n].shape[1:]) for n in self.names]
        self.sizes = [int(torch.Size(s).numel()) for s in self.shapes]
        self.p = p
        self.theta = torch.cat([params[n].reshape(p, -1) for n in self.names], dim=1).detach().contiguous()
        self.buffers = {k: v.detach() for k, v in buffers.items()}
        norms = [n for n, m in base.named_modules() if isinstance(m, NORM)]  # forward (registration) order
        self.stat_names = [f"{n}.{b}" if n else b for n in norms for b in STATS
                           if (f"{n}.{b}" if n else b) in self.buffers]
        owner = [n.rpartition(".")[0] for n in self.names]  # the module holding each parameter
        self.norm_params = torch.cat([torch.full((k,), o in norms) for o, k in zip(owner, self.sizes, strict=True)]
                                     ) if self.names else torch.zeros(0, dtype=torch.bool)
        self.base = base.to("meta")  # the structure only: parameters come from θ
        self._norms = [m for m in self.base.modules() if isinstance(m, NORM)]

        def loss_fn(params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
            out = functional_call(self.base, (params, buffers), (x,))
            return nn.functional.cross_entropy(out, y)

        self._grad_one = grad_and_value(loss_fn)
        self._grad = vmap(self._grad_one, in_dims=(0, 0, 0, 0))

    @property
    def num_params(self) -> int:
        return int(self.theta.shape[1])

    @property
    def num_stats(self) -> int:
        """How many BatchNorm running-statistic values one peer has (0: no BatchNorm tracking them)."""
        return sum(int(self.buffers[n][0].numel()) for n in self.stat_names)

    def stats(self, lo: int = 0, hi: int | None = None) -> Tensor:
        """The peers' BatchNorm running means and variances, flat ``[p, S]`` (``stat_names`` order); of
        the peers ``lo .. hi - 1`` only (each buffer sliced before the concatenation)."""
        n = len(range(self.p)[lo:hi])
        return torch.cat([self.buffers[k][lo:hi].reshape(n, -1) for k in self.stat_names], dim=1) \
            if self.stat_names else self.theta.new_zeros(n, 0)

    def set_stats(self, flat: Tensor) -> None:
        """Copy running statistics ``[p, S]`` (or one ``[1, S]`` row for every peer) in."""
        flat, off = flat.to(self.device).reshape(-1, self.num_stats), 0
        for n in self.stat_names:
            b = self.buffers[n]
            k = b[0].numel()
            b.copy_(flat[:, off : off + k].reshape(-1, *b.shape[1:]).expand_as(b))
            off += k

    def buffer_state(self, lo: int = 0, hi: int | None = None, device: str | torch.device = "cpu") -> Tensor:
        """Every stacked buffer (statistics, ``num_batches_tracked``, constants) as float64 ``[p, T]``
        on the CPU, exact for float32 values and counts below 2**53: what a checkpoint keeps; of the
        peers ``lo .. hi - 1`` only (each buffer sliced and moved before the concatenation: a new
        tensor of those rows). ``device`` ``"meta"``: its shape and dtype only, no rows copied."""
        n = len(range(self.p)[lo:hi])
        return torch.cat([self.buffers[k][lo:hi].to(device).reshape(n, -1).double() for k in self.buffers], dim=1) \
            if self.buffers else torch.zeros(n, 0, dtype=torch.float64, device=device)

    def checkpoint_buffers(
        self, lo: int = 0, hi: int | None = None, device: str | torch.device = "cpu"
    ) -> Tensor | None:
        """The buffers a checkpoint keeps: :meth:`buffer_state` (of the peers ``lo .. hi - 1``, on
        ``device``) with BatchNorm statistics, else None (checkpoints of models without BatchNorm
        keep no entry)."""
        return self.buffer_state(lo, hi, device) if self.stat_names else None

    def load_buffer_state(self, flat: Tensor) -> None:
        """:meth:`buffer_state` undone."""
        off = 0
        for b in self.buffers.values():
            k = b[0].numel()
            b.copy_(flat[:, off : off + k].reshape(b.shape).to(b.dtype))
            off += k

    def _views(self, theta: Tensor) -> dict[str, Tensor]:
        """Per-parameter views ``[p, *shape]`` of flat ``theta [p, P]``."""
        out, off = {}, 0
        for n, s, k in zip(self.names, self.shapes, self.sizes, strict=True):
            out[n] = theta[:, off : off + k].view(theta.shape[0], *s)
            off += k
        return out

    def loss_and_grad(self, x: Tensor, y: Tensor, theta: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Each peer's mean cross-entropy on its own minibatch ``x [p, B, ...]``, ``y [p, B]`` and its
        gradient, flat ``[p, P]`` (at ``theta``, default the current parameters). BatchNorm layers run
        in train mode and update the peers' running statistics (module docstring)."""
        theta = self.theta if theta is None else theta
        x, y = x.to(self.device), y.to(self.device)
        views = self._views(theta)
        for m in self._norms:  # train mode: batch statistics, running statistics updated in place
            m.train()
        try:
            if self.batching == "vmap":
                grads, loss = self._grad(views, self.buffers, x, y)
                return loss, torch.cat([grads[n].reshape(theta.shape[0], -1) for n in self.names], dim=1)
            g = torch.empty_like(theta)  # loop: one peer at a time, the same loss on its row of θ
            loss = theta.new_empty(theta.shape[0])
            for i in range(theta.shape[0]):
                gi, li = self._grad_one({n: v[i] for n, v in views.items()},
                                        {k: b[i] for k, b in self.buffers.items()}, x[i], y[i])
                g[i] = torch.cat([gi[n].reshape(-1) for n in self.names])
                loss[i] = li
            return loss, g
        finally:
            for m in self._norms:
                m.eval()

    @torch.no_grad()
    def logits(self, x: Tensor, rows: Tensor | None = None, chunk: int = 256) -> Tensor:
        """Logits ``[q, N, C]`` of the peers ``rows`` (default all) on shared inputs ``x [N, ...]``.

        One plain forward per peer, not ``vmap``: the inputs are shared, so there is no batch to
        stack, and a vmapped convolution over shared inputs ran 1.3–2.3× slower on CPU (measured)."""
        rows = torch.arange(self.p) if rows is None else rows
        out = []
        for i in rows.tolist():
            views = {k: v[0] for k, v in self._views(self.theta[i : i + 1]).items()}
            bufs = {k: v[i] for k, v in self.buffers.items()}
            parts = [functional_call(self.base, (views, bufs), (x[j : j + chunk].to(self.device),))
                     for j in range(0, len(x), chunk)]
            out.append(torch.cat(parts) if parts else x.new_zeros(0, 0))
        return torch.stack(out) if out else x.new_zeros(0, len(x), 0)

    @torch.no_grad()
    def logits_of(self, theta: Tensor, x: Tensor, row: int = 0) -> Tensor:
        """Logits ``[k, N, C]`` of any parameter vectors ``theta [k, P]`` (e.g. received models, for
        a rule that scores them) on inputs ``x [N, ...]``, with peer ``row``'s buffers."""
        theta = theta.to(self.device, self.theta.dtype)
        bufs = {k: v[row] for k, v in self.buffers.items()}
        x = x.to(self.device)
        return torch.stack([functional_call(self.base, ({k: v[0] for k, v in self._views(theta[i : i + 1]).items()},
                                                        bufs), (x,)) for i in range(theta.shape[0])])


@torch.no_grad()
def accuracy_and_loss(
    model: StackedModel, rows: Tensor, x: Tensor, y: Tensor, chunk: int = 16
) -> tuple[Tensor, Tensor]:
    """Test accuracy and mean cross-entropy ``[len(rows)]`` of peers ``rows`` on ``x [N, ...]``."""
    accs, losses = [torch.zeros(0)], [torch.zeros(0)]
    y = y.to(model.device)
    for i in range(0, len(rows), chunk):
        z = model.logits(x, rows[i : i + chunk])  # [q, N, C]
        accs.append((z.argmax(-1) == y).float().mean(1).cpu())
        ce = nn.functional.cross_entropy(z.transpose(1, 2), y.expand(len(z), -1), reduction="none")
        losses.append(ce.mean(1).cpu())
    return torch.cat(accs), torch.cat(losses)
