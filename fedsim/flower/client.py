"""A Flower ClientApp that is one fedsim peer.

The peer is fedsim's own :class:`fedsim.peers.PeerGroup` hosting a single peer: the same
partition (``fedsim.partition`` with the scenario's seed, via ``fedsim.prepare.prepare``), the same
frozen backbone features, the same batched head training (:mod:`fedsim.heads`) and the same
counter-based minibatch stream keyed by the partition id (:mod:`fedsim.rng`). So device ``i``
draws exactly the minibatches simulated peer ``i`` draws, and a run through Flower reproduces
fedsim's federated mode. The optimizer state (momentum, Adam moments) lives in the node's
``context.state`` between rounds, as it lives in the simulated peer. When the server checkpoints
(``checkpoint.every``), the device also keeps that state for the last ``checkpoint.every + 1``
rounds on disk, keyed by the server's run key (:func:`persist_round_state`): a resumed run is a new
Flower run with an empty ``context.state``, and the device picks its state up where the server's
checkpoint left off, so momentum and Adam resume exactly. A train message whose config says
``eval-received`` (the server's ``eval-piggyback``) also has the device score the head it received —
the global head after the previous round — on its local validation split before training, and
return the scores (``val-accuracy``, ``val-loss``, ``val-num-examples``) with its update.

Node config (``flower-supernode --node-config '...'``, Flower's convention):

* ``partition-id`` (int) and ``num-partitions`` (int, must equal the scenario's ``peers.count``).
* ``data-dir`` (str, optional): where this device keeps the scenario dataset's files (for
  datasets that are not embedded in fedsim, e.g. ``mnist``, ``cifar10``).
* ``local-data`` (str, optional): an ``.npz`` (``x_train, y_train[, x_test, y_test]`` or ``x, y``)
  with the device's own samples, used instead of a partition of the scenario dataset.
* ``cache-dir`` (str, optional): the feature cache on the device.
* ``state-dir`` (str, optional): where the device keeps its optimizer state of the last rounds for a
  resumed run (default ``<feature cache>/../flower-state``; written only when the scenario has
  ``checkpoint.every``).
* ``attack`` (str, optional): run this attack on this device (``"none"``: stay honest), whatever
  the scenario's Byzantine placement says; parameters come from ``peers.attack.params`` when the
  names match.

Importing this module imports flwr, torch, numpy and light fedsim modules only; ray and
matplotlib are never imported on this path (``tests/test_flower.py`` checks it).
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsim.codehash import code_fingerprint
from fedsim.flower import common
from fedsim.flower.common import LOG, BridgeError
from fedsim.flower.devicestate import STATE_ARRAYS, STATE_META, persist_round_state, restore_round_state, state_file
from fedsim.scenario import (
    Scenario,
    build_topology,
    byzantine_mask,
    received_per_aggregation,
    resolve_f,
    strategy_params,
)
from fedsim.version import __version__


class FedsimPeer:
    """One fedsim peer on a device: builds its :class:`~fedsim.peers.PeerGroup` of size one."""

    def __init__(self, sc: Scenario, setup: Any, features: dict[str, np.ndarray], attack_side: str) -> None:
        from fedsim.peers import PeerGroup

        self.sc = sc
        self.group = PeerGroup(setup, features)
        self.pid = int(setup.first)
        self.attack_side = attack_side
        self.history: torch.Tensor | None = None  # its own models of the last rounds [h, 1, P] (stale attack only)
        self._initial = self.group.get_state()  # zero head and optimizer buffers, as a simulated peer starts

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(
        cls,
        sc: Scenario,
        node_config: dict[str, Any],
        attack_side: str = "client",
        layer: tuple[int, int] | None = None,
    ) -> FedsimPeer:
        """The peer named by ``node_config`` (see the module docstring). ``layer`` = the server's
        ``(num_classes, dim)``, checked against the device's data."""
        if attack_side not in common.ATTACK_SIDES:
            raise BridgeError(f"run config 'attack-side': got {attack_side!r}; allowed: client, server")
        n = sc.peers.count
        pid = _int_key(node_config, "partition-id")
        if not 0 <= pid < n:
            raise BridgeError(f"node config 'partition-id': {pid} is not in 0..{n - 1} (peers.count = {n})")
        if "num-partitions" in node_config and _int_key(node_config, "num-partitions") != n:
            raise BridgeError(
                f"node config 'num-partitions': {node_config['num-partitions']} != the scenario's peers.count ({n})"
            )
        if node_config.get("cache-dir"):
            backbone = sc.backbone.model_copy(update={"cache_dir": str(node_config["cache-dir"])})
            sc = sc.model_copy(update={"backbone": backbone})
        if node_config.get("local-data"):
            setup, feats = _local_setup(sc, pid, str(node_config["local-data"]), layer)
        else:
            if node_config.get("data-dir"):
                dataset = sc.dataset.model_copy(update={"data_dir": str(node_config["data-dir"])})
                sc = sc.model_copy(update={"dataset": dataset})
            setup, feats = _partition_setup(sc, pid)
            if layer is not None and (setup.num_classes, setup.dim) != tuple(layer):
                raise BridgeError(
                    f"partition {pid}: this device's head is {setup.num_classes}×{setup.dim}, the server's "
                    f"{layer[0]}×{layer[1]}; device and server must use the same dataset and backbone"
                )
        setup = _with_attack_override(setup, node_config, attack_side)
        return cls(sc, setup, feats, attack_side)

    # ------------------------------------------------------------------ state between rounds
    def load_state(self, state: RecordDict) -> None:
        """Restore the optimizer buffers kept in ``context.state`` (fresh zeros on the first round)."""
        if STATE_ARRAYS not in state:  # the first round of this run on this node
            self.group.set_state(self._initial)
            self.history = None
            return
        arrays = state[STATE_ARRAYS]
        meta = state[STATE_META]
        st: dict[str, Any] = {k: torch.from_numpy(arrays[k].numpy().copy()) for k in arrays.keys() if k != "history"}
        st["t"] = int(meta["t"])
        st["stale_history"] = None
        self.group.set_state(st)
        self.history = torch.from_numpy(arrays["history"].numpy().copy()) if "history" in arrays else None

    def save_state(self, state: RecordDict) -> None:
        st = self.group.get_state()
        arrays = {k: Array(v.numpy()) for k, v in st.items() if isinstance(v, torch.Tensor)}
        if self.history is not None:
            arrays["history"] = Array(self.history.numpy())
        state[STATE_ARRAYS] = ArrayRecord(arrays)
        state[STATE_META] = ConfigRecord({"t": int(st["t"])})

    # ------------------------------------------------------------------ work
    @property
    def byzantine(self) -> bool:
        return bool(self.group.is_byz[0])

    @property
    def num_train(self) -> int:
        return int(self.group.sizes[0])

    def train(self, round_: int, global_head: np.ndarray) -> tuple[np.ndarray | None, float]:
        """Local steps from the global head (``round_`` is 0-based, as in fedsim); returns the
        message to send (``None``: this Byzantine device stays silent) and the train loss."""
        params, loss = self.group.train(round_, common.as_head(global_head)[None])
        own = torch.from_numpy(params[0].copy())
        return self._forge(round_, own), float(loss.sum())  # its own loss; 0.0 for a Byzantine device

    def _forge(self, round_: int, own: torch.Tensor) -> np.ndarray | None:
        import attacks
        from fedsim import rng as crng

        atk = self.group.attack
        if self.attack_side != "client" or not self.byzantine or not isinstance(atk, attacks.UpdateForger):
            return own.numpy()
        from fedsim.messages import stale_step

        s = self.group.s
        previous, self.history = stale_step(self.history, own[None].float(), atk.lookback)
        ctx = attacks.AttackContext(
            n=s.received,
            f=int(s.byzantine.sum()),
            f_received=s.f,
            round=round_,
            layer_shape=self.group.layer_shape,
            bias=self.group.bias,
            num_classes=s.num_classes,
            generator=crng.torch_generator(s.seed, "attack", round_, self.pid, -1),
            previous=previous,
        )
        # A device knows only its own vector: the non-omniscient view (fedsim's omniscient: false).
        out = atk.forge(own[None], own[None], ctx)
        if out is None:
            return None
        out = torch.as_tensor(out)
        row = out[0] if out.dim() == 2 and out.shape[0] == 1 else out.reshape(-1)
        return row.detach().numpy()

    def evaluate(self, global_head: np.ndarray) -> dict[str, float]:
        """Accuracy and loss of the global head on this device's local validation split."""
        from fedsim import heads

        g = self.group
        g.set_params(common.as_head(global_head)[None])
        vx, vy = g.val[0]
        if len(vy) == 0:
            return {"num-examples": 0, "val-accuracy": 0.0, "val-loss": 0.0}
        acc, loss = heads.accuracy_and_loss(g.w, g.b if g.bias else None, vx, vy)
        return {"num-examples": int(len(vy)), "val-accuracy": float(acc[0]), "val-loss": float(loss[0])}


# ---------------------------------------------------------------------- set-ups
def _int_key(cfg: dict[str, Any], key: str) -> int:
    if key not in cfg:
        raise BridgeError(
            f"node config {key!r} is missing: start the SuperNode with "
            "--node-config 'partition-id=I num-partitions=N' (or `fedsim flower client`)"
        )
    v = cfg[key]
    if isinstance(v, bool) or not isinstance(v, int | float | str) or not str(v).lstrip("-").isdigit():
        raise BridgeError(f"node config {key!r}: expected an integer, got {v!r}")
    return int(v)


def _partition_setup(sc: Scenario, pid: int) -> tuple[Any, dict[str, np.ndarray]]:
    """Simulated peer ``pid``'s set-up, taken from the very function the simulator uses."""
    from fedsim.prepare import prepare

    prep = prepare(sc)
    for s in prep.setups:
        if s.first <= pid < s.first + len(s.train_idx):
            j = pid - s.first
            setup = replace(s, first=pid, train_idx=[s.train_idx[j]], val_idx=[s.val_idx[j]])
            break
    else:  # pragma: no cover - prepare covers every peer
        raise BridgeError(f"partition {pid} not found")
    f = prep.features
    return setup, {"x_train": f.x_train, "y_train": f.y_train, "x_test": f.x_test, "y_test": f.y_test}


def local_data_file(path: str | Path) -> Path:
    """The ``.npz`` a device's ``local-data`` names: the file, or the one ``.npz`` in a folder (``~``
    expanded); else :class:`BridgeError` in one line. ``fedsim flower client`` checks it at start with
    this function, the ClientApp reads it with it."""
    p = Path(path).expanduser()
    if p.is_dir():
        files = sorted(p.glob("*.npz"))
        if len(files) != 1:
            raise BridgeError(f"node config 'local-data': {p} must hold exactly one .npz file, found {len(files)}")
        p = files[0]
    if not p.is_file():
        raise BridgeError(f"node config 'local-data': {p} does not exist")
    return p


def _local_setup(
    sc: Scenario, pid: int, path: str, layer: tuple[int, int] | None
) -> tuple[Any, dict[str, np.ndarray]]:
    """The device's own data: all of it is this peer's, split into train and local validation."""
    from fedsim import rng as crng
    from fedsim.data.npz import npz
    from fedsim.features import features_for
    from fedsim.group_setup import GroupSetup
    from fedsim.partition import make_partition

    p = local_data_file(path)
    feats = features_for(npz(p), sc.backbone.name, sc.backbone.cache_dir)
    c, d = layer if layer is not None else (feats.num_classes, feats.dim)
    if feats.dim != d:
        raise BridgeError(
            f"local data {p}: backbone {sc.backbone.name!r} gives {feats.dim} features, the server expects {d}"
        )
    if max(int(feats.y_train.max()), int(feats.y_test.max()) if len(feats.y_test) else 0) >= c:
        raise BridgeError(f"local data {p}: labels must be in 0..{c - 1} (the scenario's classes)")
    part = make_partition("iid", feats.y_train, 1, crng.derive_seed(sc.seed, "local_data", pid),
                          val_fraction=sc.partition.val_fraction)
    topo = build_topology(sc)  # these: the functions prepare.prepare and validation call
    f, in_degree = resolve_f(sc, topo)
    setup = GroupSetup(
        first=pid,
        train_idx=[part.train[0]],
        val_idx=[part.val[0]],
        byzantine=byzantine_mask(sc),
        num_peers=sc.peers.count,
        num_classes=c,
        dim=d,
        seed=sc.seed,
        rounds=sc.rounds,
        mode="federated",
        training=sc.training,
        strategy={"name": sc.strategy.name, "params": strategy_params(sc)},
        f=f,
        received=received_per_aggregation(in_degree),
        attack=sc.peers.attack,
        topology=topo,
        plugins=tuple(sc.plugins),
    )
    return setup, {"x_train": feats.x_train, "y_train": feats.y_train, "x_test": feats.x_test, "y_test": feats.y_test}


def _with_attack_override(setup: Any, node_config: dict[str, Any], attack_side: str) -> Any:
    name = node_config.get("attack")
    if name is None:
        return setup
    import attacks

    byz = setup.byzantine.copy()
    if name == "none":
        byz[setup.first] = False
        return replace(setup, byzantine=byz)
    params = setup.attack.params if setup.attack.name == name else {}
    try:
        atk = attacks.build(str(name), params)
    except ValueError as e:
        raise BridgeError(f"node config 'attack': {e}") from None
    if attack_side == "server" and isinstance(atk, attacks.UpdateForger):
        raise BridgeError(
            "node config 'attack' names an update forger but the run has attack-side=server (the server "
            "forges for the scenario's Byzantine peers); use --run-config 'attack-side=\"client\"'"
        )
    byz[setup.first] = True
    attack = setup.attack.model_copy(update={"name": str(name), "params": dict(params or {})})
    return replace(setup, byzantine=byz, attack=attack)


# ---------------------------------------------------------------------- the ClientApp
_CACHE: OrderedDict[str, FedsimPeer] = OrderedDict()
_CACHE_SIZE = 16


def peer_for(context: Context, layer: tuple[int, int] | None = None) -> FedsimPeer:
    """Build (or reuse, where Flower keeps the process alive) the peer of this node and run."""
    rc = context.run_config
    key = hashlib.sha256(
        json.dumps([context.run_id, context.node_id, dict(rc), dict(context.node_config)], sort_keys=True,
                   default=str).encode()
    ).hexdigest()
    peer = _CACHE.get(key)
    if peer is None:
        sc = common.scenario_from_run_config(rc, dict(context.node_config))
        peer = FedsimPeer.from_config(
            sc, dict(context.node_config), str(common.run_config_value(rc, "attack-side")), layer
        )
        _CACHE[key] = peer
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    _CACHE.move_to_end(key)
    peer.load_state(context.state)
    return peer


def _global_head(msg: Message) -> tuple[np.ndarray, ConfigRecord]:
    content = msg.content
    arrays = content[common.ARRAYS]
    cfg = content[common.CONFIG] if common.CONFIG in content else ConfigRecord()
    return arrays[common.HEAD].numpy(), cfg


def _layer(cfg: ConfigRecord) -> tuple[int, int] | None:
    if "num-classes" in cfg and "dim" in cfg:
        return int(cfg["num-classes"]), int(cfg["dim"])
    return None


_MISMATCH_ALLOWED: set[str] = set()  # the server fingerprints a warning was logged for (once each)


def check_server_code(cfg: ConfigRecord, run_config: Any) -> None:
    """Refuse (:class:`BridgeError`, one line naming both fingerprints and versions) a message from
    a server whose fedsim code (:func:`fedsim.codehash.code_fingerprint`, config ``fedsim-code``)
    is not this device's, or that sends none (a fedsim older than this check): the partition, the
    minibatches and the local steps are fedsim's code on both sides, and ``fedsim.__version__``
    alone cannot tell two checkouts apart. Run config ``allow-version-mismatch=true``: a warning
    (once per server fingerprint) instead."""
    why = common.other_code(cfg, code_fingerprint(), device=True)
    if why is None:
        return
    if common.run_config_bool(run_config, "allow-version-mismatch"):
        common.allow_other_code(why, cfg, _MISMATCH_ALLOWED)
        return
    raise BridgeError(why)


def handle_train(msg: Message, context: Context) -> Message:
    g, cfg = _global_head(msg)
    check_server_code(cfg, context.run_config)  # before any set-up: a different fedsim computes otherwise
    peer = peer_for(context, _layer(cfg))
    round_ = int(cfg.get("server-round", 1)) - 1
    path = state_file(peer, context, cfg)
    if path is not None and round_ > 0 and STATE_ARRAYS not in context.state:  # a resumed run's first round here
        if restore_round_state(path, round_ - 1, context.state):
            peer.load_state(context.state)
    scores: dict[str, float] = {}
    if bool(cfg.get("eval-received", False)):  # piggy-backed: score the received global head before training
        ev = peer.evaluate(g)
        scores = {"val-accuracy": ev["val-accuracy"], "val-loss": ev["val-loss"],
                  "val-num-examples": ev["num-examples"]}
    vec, loss = peer.train(round_, g)
    peer.save_state(context.state)
    if path is not None:
        persist_round_state(path, round_, context.state, int(cfg["keep-rounds"]))
    metrics = MetricRecord({"num-examples": peer.num_train, "train-loss": loss, "partition-id": peer.pid} | scores)
    content = RecordDict({common.METRICS: metrics, common.CONFIG: device_code()})
    if vec is not None:
        content[common.ARRAYS] = ArrayRecord({common.HEAD: Array(np.ascontiguousarray(vec))})
    else:
        LOG.info("partition %d (Byzantine) stays silent in round %d", peer.pid, round_)
    return Message(content=content, reply_to=msg)


def handle_evaluate(msg: Message, context: Context) -> Message:
    g, cfg = _global_head(msg)
    check_server_code(cfg, context.run_config)
    peer = peer_for(context, _layer(cfg))
    metrics = peer.evaluate(g) | {"partition-id": peer.pid}
    return Message(content=RecordDict({common.METRICS: MetricRecord(metrics), common.CONFIG: device_code()}),
                   reply_to=msg)


def device_code() -> ConfigRecord:
    """This device's fedsim code in its reply (``fedsim-code``, ``fedsim-version``): the server
    refuses a reply without it or with another (:meth:`fedsim.flower.replies.ReplyCheck.code_reason`),
    so a device older than the device-side check cannot train unnoticed either."""
    return ConfigRecord({common.SERVER_CODE: code_fingerprint(), common.SERVER_VERSION: __version__})


def make_client_app() -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return handle_train(msg, context)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return handle_evaluate(msg, context)

    return app
