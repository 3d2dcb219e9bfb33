"""Federated mode's server (one Ray actor, or in-process with ``engine.backend: local``): the
global head, the Byzantine clients' forged messages (:func:`fedsim.messages.forge_messages`) and
the rule applied over every client (FLTrust's root update trained on the server's root set)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

import attacks
import strategies
from fedlib.heads import num_params
from fedsim import heads, mkl_branch, mkl_vml, plugins
from fedsim import rng as crng
from fedsim.group_setup import GroupSetup
from fedsim.messages import forge_messages


class Server:
    """Federated mode's server: holds the global model, forges the Byzantine clients' messages
    (the simulation's stand-in for them) and aggregates with the rule, ``own`` = current global.

    FLTrust's root update is the global model trained on the server's small trusted root set."""

    # its calls never overlap a group's: the simulation sends it a phase's work once every group's is
    # done. In-process with the groups side by side (fedsim.backend.LocalBackend) it runs in the
    # driver's thread with the run's threads in all (fedsim.threads.alone_threads), not on one group's share
    runs_alone = True

    def __init__(self, setup: GroupSetup, root_x: np.ndarray | None = None, root_y: np.ndarray | None = None) -> None:
        # first: a Ray actor's process has not imported the user's rules/attacks (the driver granted them)
        plugins.load(setup.plugins, granted=True)
        mkl_vml.warm()  # oneMKL's VML kernels chosen here, in one thread, before any call races for them
        # as a peer group sets its own (in-process the groups' count; a Ray actor: its own process's,
        # fedsim.threads.ray_server_threads, set by fedsim.simulation.Simulation; the Flower bridge's
        # server passes its process's own count, fedsim.flower.strategy)
        torch.set_num_threads(max(1, setup.threads))
        self.s = setup
        self.bias = setup.training.bias
        self.layer_shape = (setup.num_classes, setup.dim)
        self.global_params = np.zeros(num_params(self.layer_shape, self.bias), dtype=np.float32)
        self.attack = (
            attacks.build(setup.attack.name, setup.attack.params) if setup.attack.name != "none" else None
        )
        self.rule = strategies.build(setup.strategy["name"], setup.strategy.get("params"))
        self.stale_history: Tensor | None = None  # [h, k, P] (forge_messages), stale-model attack only
        self.root = None if root_x is None else (torch.tensor(root_x), torch.tensor(root_y))  # Ray arrays: read-only
        self.work: Tensor | None = None  # float64 [N, P] scratch of the rule's copy (strategies.aggregate(work=))

    def mkl_branch(self) -> str | None:
        """oneMKL's branch in this actor's process (:func:`fedsim.mkl_branch.current`)."""
        return mkl_branch.current()

    def torch_threads(self) -> int:
        """torch's intra-op threads in this actor's process (diagnostics; tests read it): on Ray
        :func:`fedsim.threads.ray_server_threads`."""
        return torch.get_num_threads()

    def get_global(self) -> np.ndarray:
        return self.global_params

    def aggregate_and_global(
        self, round_: int, *client_params: np.ndarray, sampled: np.ndarray | None = None
    ) -> tuple[dict[str, int], np.ndarray]:
        """:meth:`aggregate`, then the global model it leaves: the next round's training reads it
        straight from this call's reply (one actor call per round less than asking
        :meth:`get_global`; :meth:`fedsim.simulation.Simulation.step`)."""
        stats = self.aggregate(round_, *client_params, sampled=sampled)
        return stats, self.global_params

    def get_state(self) -> dict[str, Any]:
        """The global model (a tensor, so a checkpoint stores it without pickle) and the stale attack's history."""
        return {"global": torch.from_numpy(self.global_params.copy()), "stale_history": self.stale_history}

    def set_state(self, st: dict[str, Any]) -> None:
        """Restore :meth:`get_state`'s output (a tensor or an array for ``global``)."""
        g = st["global"]
        g = g.numpy() if isinstance(g, torch.Tensor) else np.asarray(g)
        self.global_params, self.stale_history = g.astype(np.float32, copy=True), st["stale_history"]

    def _root_update(self, round_: int, g: Tensor) -> Tensor | None:
        if "root_update" not in self.rule.needs or self.root is None:
            return None
        t = self.s.training
        w, b = strategies.unflatten(g[None].clone(), self.layer_shape, self.bias)
        w, b = w.contiguous(), (b.contiguous() if b is not None else torch.zeros(1, self.layer_shape[0]))
        opt = heads.OptimizerState.zeros(w, b, t.optimizer == "adam")
        x, y = self.root
        batches = []
        for k in range(t.local_steps):
            r = torch.from_numpy(
                crng.integers(len(y), self.s.seed, "root", round_, k, -1, np.arange(t.batch_size))
            )
            batches.append((x[r][None], y[r][None]))
        heads.local_steps(w, b, opt, batches, t, self.bias)
        return strategies.flatten(w, b if self.bias else None)[0]

    def _scratch(self, msgs: Tensor) -> Tensor | None:
        """The float64 scratch :func:`strategies.aggregate` converts the messages into for a rule
        with ``float64_input`` (None for others), kept across rounds while it is large enough: a
        fresh float64 copy of ``[N, P]`` per round (46 MB at N = 1,000) page-faulted 11,000 times
        and took 2.4x the conversion's time (docs/performance.md, "Where an in-process round goes")."""
        if not self.rule.float64_input:
            return None
        w = self.work
        if w is None or w.shape[0] < msgs.shape[0] or w.shape[1] != msgs.shape[1] or w.device != msgs.device:
            self.work = w = torch.empty(msgs.shape, dtype=torch.float64, device=msgs.device)
        return w

    def aggregate(self, round_: int, *client_params: np.ndarray, sampled: np.ndarray | None = None) -> dict[str, int]:
        """Aggregate the clients' heads ``[N, P]`` (concatenated over groups) into the global model.
        ``sampled`` (bool ``[N]``, client sampling): only those clients' messages arrive; the
        others are neither aggregated nor counted as dropped."""
        params = torch.from_numpy(np.concatenate(client_params))
        msgs, valid, self.stale_history = forge_messages(
            self.attack, self.s, round_, params, self.stale_history, sampled=sampled,
            server_own=torch.from_numpy(self.global_params),
        )
        arrived = int(valid.numel()) if sampled is None else int(sampled.sum())
        g = torch.from_numpy(self.global_params)
        ctx = strategies.AggregationContext(
            layer_shape=self.layer_shape,
            bias=self.bias,
            f=self.s.f,
            round=round_,
            total_rounds=self.s.rounds,
            root_update=self._root_update(round_, g),
            previous=g,  # the server's own model is the global one, before the clients train
            # the server's only local data is its trusted root set: rules that score candidates
            # (Bristle's integrator, MOZI) score them there
            val_x=None if self.root is None else self.root[0],
            val_y=None if self.root is None else self.root[1],
            generator=crng.torch_generator(self.s.seed, "strategy", round_, -1),
        )
        lost = arrived - int(valid.sum())  # forgeries that failed among the clients that sent
        try:
            new, dropped = strategies.aggregate(self.rule, g, msgs if bool(valid.all()) else msgs[valid], ctx,
                                                work=self._scratch(msgs))
        except strategies.CannotAggregateError:  # this round's vectors; anything else is a bug: raised
            return {"dropped": lost, "skipped": 1}
        self.global_params = new.numpy().astype(np.float32)
        return {"dropped": lost + dropped, "skipped": 0}
