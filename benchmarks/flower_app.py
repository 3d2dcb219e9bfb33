"""The vs_flower workload written for Flower's own simulation engine (Message API, flwr 1.41/1.42).

Each Flower client (one virtual SuperNode per fedsim peer) trains the same linear softmax head
that a fedsim peer trains, on the same frozen-backbone features, with the same minibatches: the
batch indices come from :func:`fedsim.rng.integers` keyed by (seed, "batch", round, step, peer,
slot), exactly as :meth:`fedsim.peers.PeerGroup._draw` draws them, and the step is
:func:`fedsim.heads.ce_grad` + :func:`fedsim.heads.step` (plain SGD). The server runs Flower's
own ``FedAvg`` with equal client weights (fedsim's federated FedAvg is the unweighted mean of the
clients' heads), so both engines compute the same thing.

The features and the partition are written once by the driver to an ``.npz`` (path in the train
config) and each Ray actor loads it once, the usual Flower pattern of a per-process data cache.
This module is imported by reference in Flower's Ray actors (Flower puts the driver's
``sys.path`` into the actors' ``PYTHONPATH``), so keep it importable as ``flower_app``.

The whole-model workload (``benchmarks/vs_flower_whole.py``, issue 18): ``whole_client_app``
trains a plain ``torch.nn.Module`` per client — a fresh copy of fedsim's network for the plan
(:func:`fedsim.models.trainable.split`, the same CNN and initial weights) — with
``torch.optim.SGD`` and ``loss.backward()`` on the same minibatches (the same counter-based
draws); the server's evaluation is :func:`fedsim.stacked.accuracy_and_loss`, the function
fedsim's federated server evaluates with.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedsim import heads
from fedsim import rng as crng

_DATA: dict[str, Any] = {}


def _local(path: str, pid: int) -> tuple[torch.Tensor, torch.Tensor]:
    if _DATA.get("path") != path:
        with np.load(path) as z:
            _DATA.clear()
            _DATA.update(path=path, x=torch.from_numpy(z["x"]), y=torch.from_numpy(z["y"]), offsets=z["offsets"])
    o = _DATA["offsets"]
    return _DATA["x"][o[pid] : o[pid + 1]], _DATA["y"][o[pid] : o[pid + 1]]


def _draws(n_local: int, cfg: Any, pid: int, k: int) -> torch.Tensor:
    """Step ``k``'s minibatch indices into client ``pid``'s shard: :meth:`fedsim.peers.PeerGroup._draw`."""
    r, B, seed = int(cfg["server-round"]) - 1, int(cfg["batch_size"]), int(cfg["seed"])
    return torch.from_numpy(crng.integers(n_local, seed, "batch", r, k, pid, np.arange(B)))


client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    torch.set_num_threads(1)
    cfg = msg.content["config"]
    pid = int(context.node_config["partition-id"])
    x, y = _local(str(cfg["data"]), pid)
    w_np, b_np = msg.content["arrays"].to_numpy_ndarrays()
    w, b = torch.from_numpy(w_np.copy())[None], torch.from_numpy(b_np.copy())[None]
    opt = heads.OptimizerState.zeros(w, b, False)
    loss = torch.zeros(1)
    for k in range(int(cfg["local_steps"])):
        idx = _draws(len(y), cfg, pid, k)
        loss, gw, gb = heads.ce_grad(w, b, x[idx][None], y[idx][None])
        heads.step(w, b, gw, gb, opt, optimizer="sgd", lr=float(cfg["lr"]), momentum=0.0, weight_decay=0.0, bias=True)
    content = RecordDict(
        {
            "arrays": ArrayRecord([w[0].numpy(), b[0].numpy()]),
            "metrics": MetricRecord({"weight": 1.0, "train_loss": float(loss[0])}),
        }
    )
    return Message(content, reply_to=msg)


whole_client_app = ClientApp()
_NET: dict[str, Any] = {}


def _template(plan_json: str) -> torch.nn.Module:
    """fedsim's trainable network for the plan (built once per process; each client deep-copies it)."""
    if _NET.get("plan") != plan_json:
        from fedsim.models.trainable import ModelPlan, split

        d = json.loads(plan_json)
        _NET.update(plan=plan_json, net=split(ModelPlan(**(d | {"hidden": tuple(d["hidden"])})))[1])
    return _NET["net"]


@whole_client_app.train()
def train_whole(msg: Message, context: Context) -> Message:
    torch.set_num_threads(1)
    cfg = msg.content["config"]
    pid = int(context.node_config["partition-id"])
    x, y = _local(str(cfg["data"]), pid)
    net = copy.deepcopy(_template(str(cfg["plan"])))
    with torch.no_grad():
        for p, a in zip(net.parameters(), msg.content["arrays"].to_numpy_ndarrays(), strict=True):
            p.copy_(torch.from_numpy(a))
    opt = torch.optim.SGD(net.parameters(), lr=float(cfg["lr"]))
    loss = torch.zeros(())
    for k in range(int(cfg["local_steps"])):
        idx = _draws(len(y), cfg, pid, k)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
        loss.backward()
        opt.step()
    content = RecordDict(
        {
            "arrays": ArrayRecord([p.detach().numpy().copy() for p in net.parameters()]),
            "metrics": MetricRecord({"weight": 1.0, "train_loss": float(loss)}),
        }
    )
    return Message(content, reply_to=msg)


def make_server_app(
    cfg: dict[str, Any],
    init: list[np.ndarray],
    evaluate_arrays: Callable[[list[np.ndarray]], tuple[float, float]],
    train_config: dict[str, Any],
    out: dict[str, Any],
) -> ServerApp:
    """A ServerApp running Flower's FedAvg for ``cfg['rounds']`` rounds over all ``cfg['n']``
    clients from the arrays ``init``, sending ``train_config`` to the clients and evaluating the
    global arrays with ``evaluate_arrays`` (-> accuracy, loss); ``out`` receives the final model
    (flat, the arrays concatenated), per-round timestamps and the evaluations."""
    server_app = ServerApp()
    n, rounds = int(cfg["n"]), int(cfg["rounds"])
    out.update(stamps=[], eval_seconds=[], accuracy={})

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        # called before round 1 and after every round: stamps[r] - stamps[r-1] - eval_seconds[r-1]
        # is round r's time
        out["stamps"].append(time.perf_counter())
        t0 = time.perf_counter()
        acc, loss = evaluate_arrays(arrays.to_numpy_ndarrays())
        out["accuracy"][server_round] = acc
        out["eval_seconds"].append(time.perf_counter() - t0)
        return MetricRecord({"accuracy": acc, "loss": loss})

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=n,
            min_available_nodes=n,
            weighted_by_key="weight",
        )
        result = strategy.start(
            grid=grid, initial_arrays=ArrayRecord(init), num_rounds=rounds, train_config=ConfigRecord(train_config),
            evaluate_fn=evaluate,
        )
        out["final"] = np.concatenate([a.reshape(-1) for a in result.arrays.to_numpy_ndarrays()]).astype(np.float32)

    return server_app


def head_server_app(cfg: dict[str, Any], x_test: np.ndarray, y_test: np.ndarray, out: dict[str, Any]) -> ServerApp:
    """:func:`make_server_app` for the linear-head workload: zero-initialised head, evaluated with
    :func:`fedsim.heads.accuracy_and_loss`."""
    xt, yt = torch.from_numpy(x_test), torch.from_numpy(y_test)

    def evaluate(arrays: list[np.ndarray]) -> tuple[float, float]:
        w, b = (torch.from_numpy(a) for a in arrays)
        acc, loss = heads.accuracy_and_loss(w[None].contiguous(), b[None], xt, yt)
        return float(acc[0]), float(loss[0])

    c, d = int(cfg["classes"]), int(cfg["dim"])
    init = [np.zeros((c, d), np.float32), np.zeros(c, np.float32)]
    train_config = {k: cfg[k] for k in ("data", "seed", "lr", "batch_size", "local_steps")}
    return make_server_app(cfg, init, evaluate, train_config, out)
