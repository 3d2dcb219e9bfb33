"""A device's optimizer state across a server resume: after each round the ClientApp keeps its
state of the last ``keep-rounds`` rounds in a file of its own (``state-dir``), and a resumed run's
first message restores the round the server's checkpoint resumes after (``docs/flower.md``)."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, RecordDict

from fedsim.flower.common import LOG

if TYPE_CHECKING:
    from fedsim.flower.client import FedsimPeer

STATE_ARRAYS = "fedsim.peer"
STATE_META = "fedsim.meta"


def state_file(peer: FedsimPeer, context: Context, cfg: ConfigRecord) -> Path | None:
    """Where this device keeps its state of the last rounds for the server's run (None: the server
    writes no checkpoints, so nothing is kept)."""
    key, keep = str(cfg.get("run-key", "")), int(cfg.get("keep-rounds", 0))
    if keep <= 0 or not re.fullmatch(r"[0-9a-f]{8,64}", key):
        return None
    from fedsim.features import cache_dir

    nc = context.node_config
    base = nc.get("state-dir") or cache_dir(nc.get("cache-dir") or peer.sc.backbone.cache_dir).parent / "flower-state"
    return Path(str(base)).expanduser() / f"{key}-p{peer.pid}.pt"


def _read_states(path: Path) -> dict[int, dict[str, Any]]:
    if not path.is_file():
        return {}
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        rounds = data["rounds"]
        if not isinstance(rounds, dict):
            raise TypeError("not a mapping")
        return {int(r): st for r, st in rounds.items()}
    except Exception as e:  # noqa: BLE001 - a damaged file only costs the resumed state
        LOG.warning("ignored the saved device state %s: %s", path, e)
        return {}


def persist_round_state(path: Path, round_: int, state: RecordDict, keep: int) -> None:
    """Keep this device's state after ``round_`` (and the ``keep - 1`` rounds before) in ``path``,
    atomically; states of later rounds (a timeline the server abandoned by resuming) are dropped."""
    from fedsim import rundir

    rounds = {r: st for r, st in _read_states(path).items() if r < round_}
    arrays = state[STATE_ARRAYS]
    rounds[round_] = {"arrays": {k: torch.from_numpy(arrays[k].numpy().copy()) for k in arrays.keys()},
                      "t": int(state[STATE_META]["t"])}
    rounds = {r: rounds[r] for r in sorted(rounds)[-keep:]}
    buf = io.BytesIO()
    torch.save({"rounds": rounds}, buf)
    path.parent.mkdir(parents=True, exist_ok=True)
    rundir.atomic_write(path, buf.getvalue())


def restore_round_state(path: Path, round_: int, state: RecordDict) -> bool:
    """Put the saved state after ``round_`` into ``state`` (a new run's empty ``context.state``)."""
    st = _read_states(path).get(round_)
    if not isinstance(st, dict) or not isinstance(st.get("arrays"), dict):
        LOG.warning("no saved state of round %d in %s: this device's optimizer state starts from zero", round_, path)
        return False
    state[STATE_ARRAYS] = ArrayRecord({k: Array(v.numpy()) for k, v in st["arrays"].items()})
    state[STATE_META] = ConfigRecord({"t": int(st["t"])})
    return True
