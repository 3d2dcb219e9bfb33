"""Peers that train more than a linear head (scenario ``model:``; issue 18).

The network (:mod:`fedsim.models.trainable`) is cut into a frozen prefix and a trainable part.
The prefix runs once over the dataset (:func:`prepare_features`); a group's peers train the
trainable part as one stacked model (:class:`fedsim.stacked.StackedModel`, ``torch.func``) on
their own minibatches, drawn exactly as the head path draws them (:meth:`PeerGroup._draw`).

What peers exchange (``model.exchange``):

* ``params`` — the trained parameters ``θ_i`` after ``training.local_steps`` steps (as today);
* ``dpsgd`` — combine-then-adapt gossip, decentralized only: D-PSGD (Lian et al., NeurIPS 2017,
  Algorithm 1: ``x_i ← Σ_j W_ij x_j − η ∇F_i(x_i; ξ_i)``, the gradient taken at the peer's model
  *before* mixing) and, with a robust rule in place of the average, BRIDGE (Fang, Yang & Bajwa,
  "Byzantine-resilient decentralized gradient descent": screen the neighbours' parameters, then the
  local gradient step). Each round a peer computes ``g_i = ∇L_i(θ_i)`` on one minibatch, sends ``θ_i``
  (unchanged), and after aggregation sets ``θ_i ← rule(θ_i, {θ_j}) − η g_i`` (one optimizer step,
  ``training`` as for the other modes). ``exchange: params`` with one local step is the other order,
  adapt-then-combine (``θ_i ← rule(θ_i − η g_i, {θ_j − η g_j})``): with FedAvg the two differ by
  ``η (W − I) g``; with a robust rule the own gradient always enters here, while adapt-then-combine
  may screen it away. Departure: the mixing is the rule over the in-neighbours and the peer itself
  (FedAvg: uniform weights ``1/(deg+1)``), not a given doubly stochastic ``W``.
* ``gradients`` — FedSGD (McMahan et al. 2017, "FedSGD"; Konečný et al. 2016): each round a peer
  computes ``g_i = ∇L_i(θ_i)`` on one minibatch and sends it; the rule aggregates the received
  gradients (own: ``g_i``) into ``ĝ_i`` and the peer applies one optimizer step ``θ_i ← θ_i − η ĝ_i``
  (with momentum / weight decay / Adam as ``training`` says). With FedAvg over ``p`` honest peers
  that all hear each other this is one SGD step on the union of their minibatches:
  ``(1/p) Σ_i (1/B) Σ_b ∇ℓ(x_ib) = (1/(pB)) Σ_{i,b} ∇ℓ(x_ib)``. The federated server keeps the
  global model and its optimizer state; its own vector for the rule is the zero update.

BatchNorm on exchange (``model.bn``; each peer keeps its own running statistics while it trains,
:mod:`fedsim.stacked`):

* ``exchanged`` (the default; FedAvg as usually run, e.g. the FedAvg baseline of FedBN's code, which
  averages the whole ``state_dict``): a message is the exchanged vector followed by the sender's
  running means and variances ``[θ_i or g_i, s_i]``; the rule aggregates the whole message, and the
  receiver loads the aggregated statistics (with ``gradients``: applies the gradient part, loads the
  statistics part). ``num_batches_tracked`` stays local (it matters only with ``momentum=None``;
  departure: FedBN's FedAvg copies client 0's).
* ``local`` (FedBN, Li et al. ICLR 2021: "local batch normalization", the BN layers' affine
  parameters and statistics are never averaged): a message is ``θ_i`` (or ``g_i``) without the
  BatchNorm parameters' coordinates; the receiver writes the aggregate into the other coordinates
  and keeps its own BatchNorm parameters (with ``gradients``: steps them with its own gradient) and
  statistics. Decentralized mode only: FedBN evaluates each client's own model, and the federated
  server here evaluates one global model, which has no BatchNorm of its own (refused).

:class:`Exchange` is the layout, the one place that packs and unpacks a message.

Forgers (ALIE, IPM, min-max, sign flip, ...) and rules act on the exchanged flat vectors, whatever
they hold; a message is ``4 ×`` its length in bytes (:func:`message_size`). Rules that score output layers
on validation data (Bristle, MOZI), FLTrust's root update, consolidated weights and the probes
read linear heads and are refused by :func:`fedsim.whole_plan.check_model` (Bristle exchanges only its output layer).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

import strategies
from fedsim.device import resolve
from fedsim.group_setup import GroupSetup
from fedsim.models.trainable import ModelPlan, split
from fedsim.peers import PeerGroup, counted_losses
from fedsim.server import Server
from fedsim.stacked import FlatOptimizerState, StackedModel, accuracy_and_loss, optimizer_step
from fedsim.whole_plan import Exchange

if TYPE_CHECKING:
    pass


@dataclass
class WholeSetup(GroupSetup):
    """A :class:`GroupSetup` with the model to train (``shard_pad`` is 0: batches are gathered)."""

    model: ModelPlan | None = None


def with_model(setup: GroupSetup, plan: ModelPlan) -> WholeSetup:
    """``setup`` as a :class:`WholeSetup` training ``plan`` (its fields shared, not copied)."""
    return WholeSetup(**{f.name: getattr(setup, f.name) for f in dataclasses.fields(setup)}, model=plan)


class WholePeerGroup(PeerGroup):
    """A :class:`PeerGroup` whose peers train the plan's trainable part (see the module docstring).

    Strategies and forgers see vectors of ``P`` trainable parameters: the context's
    ``layer_shape`` is ``(1, P)`` without bias."""

    def __init__(
        self, setup: WholeSetup, features: dict[str, np.ndarray], test: dict[str, np.ndarray] | None = None
    ) -> None:
        super().__init__(setup, features, test)
        assert setup.model is not None
        self.plan = setup.model
        self.device = resolve(self.plan.device)
        # the cached inputs live where the stacked model does, moved once (no-ops on the CPU)
        self.x_local, self.y_local = self.x_local.to(self.device), self.y_local.to(self.device)
        self.x_test, self.y_test = self.x_test.to(self.device), self.y_test.to(self.device)
        # dataset.domains: each peer's own rows of the test features (its domain's test set)
        self.test_rows = None if setup.test_idx is None else [
            torch.from_numpy(np.asarray(t, dtype=np.int64)).to(self.device) for t in setup.test_idx]
        self.model = StackedModel(split(self.plan)[1], self.p, self.device, self.plan.batching)
        self.exchange = Exchange.of(self.model, self.plan.bn)
        self.sample_shape = tuple(self.x_local.shape[1:])
        self.layer_shape = (1, self.exchange.size)
        self.bias = False
        self.w = self.b = self.tw = self.tb = torch.zeros(0)  # no linear heads here
        self.fopt = FlatOptimizerState.zeros(self.model.theta, setup.training.optimizer == "adam")
        self.gradients = self.plan.exchange == "gradients"
        self.dpsgd = self.plan.exchange == "dpsgd"  # send θ, step with the own gradient after combining
        self._own_grad: Tensor | None = None  # gradients / dpsgd: this round's own g [p, P] (bn: local: BN coordinates)

    # ------------------------------------------------------------------ state
    def params(self, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """Flat trainable parameters followed by the BatchNorm running statistics, ``[p, P + S]``
        (``S`` = 0 without BatchNorm): the same layout as a federated server's global model; of the
        hosted peers ``lo .. hi - 1`` only (:meth:`fedsim.peers.PeerGroup.params`)."""
        return torch.cat([self.model.theta[lo:hi], self.model.stats(lo, hi)], dim=1).cpu().numpy()

    def _message(self, flat: np.ndarray | Tensor) -> Tensor:
        """Aggregated messages ``[p, size]`` (or one ``[1, size]`` for every hosted peer) on the device."""
        t = flat.float() if isinstance(flat, Tensor) else torch.from_numpy(np.asarray(flat, dtype=np.float32))
        return t.reshape(-1, self.exchange.size).to(self.device)

    def _load(self, flat: np.ndarray | Tensor) -> None:
        part, stats = self.exchange.unpack(self._message(flat))
        self.model.theta.copy_(self.exchange.merge(part, self.model.theta))
        if stats is not None:
            self.model.set_stats(stats)

    def set_params(self, flat: np.ndarray | Tensor) -> None:
        """What the aggregation produced: parameters (``exchange: params``), or the aggregated
        gradients, applied as one optimizer step (``exchange: gradients``); with ``bn: exchanged`` also
        the aggregated BatchNorm statistics, loaded; ``bn: local`` keeps the BatchNorm coordinates (and
        steps them with the peer's own gradient)."""
        if self.dpsgd:  # combine, then adapt with the gradient taken at the sent θ (module docstring)
            self._load(flat)
            if self._own_grad is not None:
                optimizer_step(self.model.theta, self._own_grad, self.fopt, **self._opt_kw())
            return
        if not self.gradients:
            self._load(flat)
            return
        part, stats = self.exchange.unpack(self._message(flat))
        own = self._own_grad if self._own_grad is not None else torch.zeros_like(self.model.theta)
        optimizer_step(self.model.theta, self.exchange.merge(part, own).clone(), self.fopt, **self._opt_kw())
        if stats is not None:
            self.model.set_stats(stats)

    def _opt_kw(self) -> dict[str, Any]:
        t = self.s.training
        return dict(optimizer=t.optimizer, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)

    # "w": θ, "m_w"/"v_w": the optimizer's buffers, "buffers": the stacked module buffers (BatchNorm only)
    PER_PEER_STATE = PeerGroup.PER_PEER_STATE

    def get_state(self, device: str = "cpu", lo: int = 0, hi: int | None = None, shared: bool = True) -> dict[str, Any]:
        """Parameters and optimizer buffers as CPU tensors (a checkpoint resumes on any ``engine.device``);
        with BatchNorm also every module buffer (:meth:`fedsim.stacked.StackedModel.buffer_state`).
        ``device`` ``"meta"``: shapes and dtypes only; ``lo``, ``hi``, ``shared``: a slice of the
        per-peer entries, compact copies (:meth:`PeerGroup.get_state`)."""
        def rows(v: Tensor) -> Tensor:
            return v[lo:hi].to(device, copy=True)

        st = {"w": rows(self.model.theta), "m_w": rows(self.fopt.m)}
        if shared:
            st |= {"t": self.fopt.t, "stale_history": self.stale_history}
        if self.fopt.v is not None:
            st["v_w"] = rows(self.fopt.v)
        buffers = self.model.checkpoint_buffers(lo, hi, device)
        if buffers is not None:  # (BatchNorm only: older checkpoints)
            st["buffers"] = buffers  # (a new tensor of the rows asked, on device: compact; "meta": no copy)
        return st

    def _state_rows(self) -> dict[str, Tensor]:
        """θ and the optimizer's buffers, per peer (the BatchNorm buffers are restored whole)."""
        return {"w": self.model.theta, "m_w": self.fopt.m} | ({"v_w": self.fopt.v} if self.fopt.v is not None else {})

    def set_state(self, st: dict[str, Any], copied: Collection[str] = ()) -> None:
        if self.model.stat_names:
            self.model.load_buffer_state(st["buffers"])
        self._copy_rows(st, copied)  # (copied: written by stage_rows, PeerGroup's)
        self.fopt.t = st["t"]
        self.stale_history = st["stale_history"]

    # ------------------------------------------------------------------ training
    def _batch(self, round_: int, step: int) -> tuple[Tensor, Tensor]:
        """Each hosted peer's minibatch ``(x [p, B, ...], y [p, B])`` (draws: :meth:`PeerGroup._draw`)."""
        r = self._draw(round_, step)
        idx = torch.from_numpy(self.offsets[:, None] + r).reshape(-1).to(self.device)
        B = r.shape[1]
        x = self.x_local.index_select(0, idx).view(self.p, B, *self.sample_shape)
        return x, self.y_local.index_select(0, idx).view(self.p, B)

    def train(
        self, round_: int, global_params: np.ndarray | None = None, sampled: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``exchange: params``: ``local_steps`` optimizer steps, returns ``θ [p, P]``;
        ``gradients``: the gradient of one minibatch at ``θ``, returned unapplied. Also the losses
        of the honest hosted peers that trained (last step's minibatch; :func:`counted_losses`).
        ``sampled`` (bool ``[N]``, federated client sampling): the other hosted peers' parameters and
        optimizer buffers are restored after the (batched) step, so they are left as they were;
        their rows are still returned."""
        keep = None
        if sampled is not None and not bool(sampled[self.ids].all()):
            rows = torch.from_numpy(np.flatnonzero(~sampled[self.ids])).to(self.device)
            keep = (rows, self.model.theta[rows].clone(), self.fopt.m[rows].clone(),
                    None if self.fopt.v is None else self.fopt.v[rows].clone(),
                    {k: b[rows].clone() for k, b in self.model.buffers.items()})  # BatchNorm's statistics too
        if global_params is not None:
            self._load(global_params)
        trains = ~self.is_byz if sampled is None else ~self.is_byz & sampled[self.ids]
        try:
            return self._train(round_, trains)
        finally:
            if keep is not None:
                rows, theta, m, v, bufs = keep
                self.model.theta[rows], self.fopt.m[rows] = theta, m
                for k, b in bufs.items():
                    self.model.buffers[k][rows] = b
                if v is not None and self.fopt.v is not None:
                    self.fopt.v[rows] = v

    def _train(self, round_: int, counted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`train`'s step(s) for every hosted peer; the losses of ``counted`` (bool ``[p]``)."""
        steps = 1 if self.gradients or self.dpsgd else self.s.training.local_steps
        loss = torch.zeros(self.p)
        out: Tensor | None = None
        for k in range(steps):
            loss, g = self.model.loss_and_grad(*self._batch(round_, k))
            if self.gradients:
                out = g
            elif self.dpsgd:
                self._own_grad = g  # applied after the combination (set_params)
            else:
                optimizer_step(self.model.theta, g, self.fopt, **self._opt_kw())
        if not self.dpsgd:
            self._own_grad = out
        sent = self.exchange.pack(out if out is not None else self.model.theta, self.model.stats())
        msg = sent.detach().cpu().numpy().copy()
        return msg, counted_losses(loss, counted)

    # ------------------------------------------------------------------ aggregation contexts
    def _ctx(self, j: int, round_: int, f: int, root: Tensor | None, seed: int,
             overlap: Tensor | None = None) -> strategies.AggregationContext:
        ctx = super()._ctx(j, round_, f, root, seed, overlap)
        if not self.rule.scores_whole_models or ctx.val_x is None:
            return dataclasses.replace(ctx, val_x=None, val_y=None)
        vx = ctx.val_x  # the peer's validation inputs; the rule sees the candidates' logits on them
        return dataclasses.replace(ctx, val_x=None, val_logits=lambda theta: self.model.logits_of(theta, vx, j))

    def _batch_ctx(self, js: np.ndarray, round_: int, senders: np.ndarray) -> strategies.AggregationContext:
        return strategies.AggregationContext(
            layer_shape=self.layer_shape, bias=False, f=self.s.f, round=round_, total_rounds=self.s.rounds,
            local_classes=self.local_classes[torch.from_numpy(js)],
        )

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, sample: np.ndarray | None = None) -> dict[str, np.ndarray]:
        sel = ~self.is_byz
        if sample is not None:
            sel &= np.isin(self.ids, sample)
        rows = torch.from_numpy(np.flatnonzero(sel))
        if self.test_rows is None:
            acc, loss = accuracy_and_loss(self.model, rows, self.x_test, self.y_test)
        else:  # each peer on its own test rows (dataset.domains)
            scores = [accuracy_and_loss(self.model, rows[k : k + 1], self.x_test[self.test_rows[int(r)]],
                                        self.y_test[self.test_rows[int(r)]]) for k, r in enumerate(rows)]
            acc = torch.cat([a for a, _ in scores]) if scores else torch.zeros(0)
            loss = torch.cat([lo for _, lo in scores]) if scores else torch.zeros(0)
        return {"ids": self.ids[sel], "accuracy": acc.numpy(), "loss": loss.numpy()}


class WholeServer(Server):
    """Federated mode's server for :class:`WholePeerGroup` clients: the global model starts from the
    plan's initial parameters; with ``exchange: gradients`` it applies the aggregated gradient with
    its own optimizer state (the rule's own vector: the zero update)."""

    def __init__(self, setup: WholeSetup, root_x: np.ndarray | None = None, root_y: np.ndarray | None = None) -> None:
        super().__init__(setup, root_x, root_y)
        assert setup.model is not None
        self.plan = setup.model
        self.model = StackedModel(split(self.plan)[1], 1, resolve(self.plan.device))  # evaluates the global model
        self.exchange = Exchange.of(self.model, self.plan.bn)  # bn: exchanged (local is refused in federated mode)
        self.global_params = self.exchange.pack(self.model.theta, self.model.stats())[0].cpu().numpy().copy()
        self.layer_shape = (1, self.exchange.size)
        self.bias = False
        # the global model is updated on the CPU, in NumPy, as it is exchanged
        self.fopt = FlatOptimizerState.zeros(self.model.theta.cpu(), setup.training.optimizer == "adam")

    def get_state(self) -> dict[str, Any]:
        st = super().get_state() | {"m": self.fopt.m.clone(), "t": self.fopt.t}
        return st | ({"v": self.fopt.v.clone()} if self.fopt.v is not None else {})

    def set_state(self, st: dict[str, Any]) -> None:
        super().set_state({"global": st["global"], "stale_history": st["stale_history"]})
        self.fopt.m.copy_(st["m"])
        self.fopt.t = st["t"]
        if self.fopt.v is not None:
            self.fopt.v.copy_(st["v"])

    def aggregate(self, round_: int, *client_params: np.ndarray, **kw: Any) -> dict[str, int]:
        """:meth:`Server.aggregate` (``kw``: its keyword options, passed on), with ``exchange:
        gradients`` the aggregated gradient applied to the global model (and the aggregated BatchNorm
        statistics loaded; the rule's own vector for them: the current global statistics)."""
        if self.plan.exchange == "params":
            return super().aggregate(round_, *client_params, **kw)
        theta = self.global_params  # [θ, s]
        part, st = self.exchange.unpack(torch.from_numpy(theta.copy())[None])
        own = self.exchange.pack(torch.zeros_like(part), st if st is not None else part[:, :0])
        self.global_params = own[0].numpy()  # the rule's own vector: no update (and the statistics as they are)
        try:
            stats = super().aggregate(round_, *client_params, **kw)
            g, g_st = self.exchange.unpack(torch.from_numpy(self.global_params.copy())[None])
        finally:
            self.global_params = theta
        if not stats["skipped"]:
            t = part.clone()
            tr = self.s.training
            optimizer_step(t, g, self.fopt, optimizer=tr.optimizer, lr=tr.lr,
                           momentum=tr.momentum, weight_decay=tr.weight_decay)
            self.global_params = self.exchange.pack(t, g_st if g_st is not None else t[:, :0])[0].numpy()
        return stats

    def evaluate(self, features: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The global model's test accuracy and loss on ``features``' test split, ``[1]`` each."""
        part, st = self.exchange.unpack(torch.from_numpy(self.global_params)[None].to(self.model.device))
        self.model.theta.copy_(self.exchange.merge(part, self.model.theta))
        if st is not None:
            self.model.set_stats(st)
        x, y = (torch.as_tensor(np.array(features[k])).to(self.model.device) for k in ("x_test", "y_test"))
        acc, loss = accuracy_and_loss(self.model, torch.tensor([0]), x, y)
        return acc.numpy(), loss.numpy()
