"""Where a run's batched training lives (scenario ``engine.device``; issues 18 and 19).

``cpu`` (the default) or ``cuda`` / ``cuda:N``, with ``engine.backend: local`` (in-process; Ray
actors are started without GPUs, so Ray is refused). Two paths, one placement each, moved once:

* the linear-head path (:class:`fedsim.peers.PeerGroup`, the default model section; issue 19): the
  heads ``w, b``, their optimizer state and CWR copies, the group's training shards (plain or
  zero-padded), every minibatch gather and local step, and the test set for evaluation. The
  minibatch indices are still drawn on the CPU (:mod:`fedsim.rng`) and moved, so a device run
  differs from a CPU run by float rounding only. The messages are CPU NumPy arrays, copied off the
  device once per round by :func:`fedsim.routing.encode_head`; the decentralized aggregation's
  batched path (:mod:`fedsim.gossip`: rules with ``aggregate_batch``) moves each chunk's heard rows
  there and computes there, its per-peer fallback stays on the CPU (the module docstring of
  :mod:`fedsim.gossip` says what runs where), as do the federated server (:mod:`fedsim.server`)
  and the checkpoints.
* a model section's stacked trainable part (:class:`fedsim.stacked.StackedModel`,
  :class:`fedsim.whole.WholePeerGroup`; issue 18): its parameters, optimizer state and the group's
  cached training and test inputs (the frozen prefix's activations); messages, aggregation and
  attacks stay on the CPU in NumPy.

One code path: with ``cpu`` nothing moves (a run is byte-identical to one without the field,
``tests/test_device.py``, ``tests/test_device_aggregation.py``). Not yet run on a GPU: no machine
with one was available when this was written; the CUDA path is checked on the CPU only (placement
of every tensor, by the tests), and ``benchmarks/gpu_check.sh`` is the measurement to run where a GPU is lent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

PATTERN = r"^(cpu|cuda(:[0-9]{1,3})?)$"


def device_error(name: str, *, backend: str) -> str | None:
    """Why ``engine.device: name`` cannot run here (one line naming the field), or None.

    ``backend``: ``engine.backend``."""
    if name == "cpu":
        return None
    if backend != "local":
        return (f"engine.device: {name!r} needs engine.backend: local (Ray actors are started without GPUs); "
                f"got engine.backend: {backend}")
    import torch

    if not torch.cuda.is_available():
        built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "built without CUDA"
        return (f"engine.device: {name!r} requested but torch.cuda.is_available() is False on this machine "
                f"(torch {torch.__version__}, {built}); use engine.device: cpu")
    index, count = int(name.partition(":")[2] or 0), torch.cuda.device_count()
    if index >= count:
        return f"engine.device: {name!r}: this machine has {count} CUDA device(s) (cuda:0 .. cuda:{count - 1})"
    return None


def resolve(name: str) -> torch.device:
    """``engine.device`` as a :class:`torch.device` (validated by :func:`device_error` already)."""
    import torch

    return torch.device(name)
