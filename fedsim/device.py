"""Where the batched trainable part of a run lives (scenario ``engine.device``; issue 18).

``cpu`` (the default) or ``cuda`` / ``cuda:N``: the stacked parameters of a whole-model run
(:class:`fedsim.stacked.StackedModel`, :class:`fedsim.whole.WholePeerGroup`), their optimizer
state and the group's cached training and test inputs (the frozen prefix's activations) are moved
to the device once; messages, aggregation and attacks stay on the CPU in NumPy, as they are
exchanged. One code path: with ``cpu`` nothing moves (a run is byte-identical to one without
the field). Not on a device: the linear-head path (:mod:`fedsim.heads`, the default model section)
and Ray actors (they are started without GPUs); :func:`device_error` refuses both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

PATTERN = r"^(cpu|cuda(:[0-9]{1,3})?)$"


def device_error(name: str, *, whole: bool, backend: str) -> str | None:
    """Why ``engine.device: name`` cannot run here (one line naming the field), or None.

    ``whole``: the scenario trains more than the linear head (``model`` section); ``backend``:
    ``engine.backend``."""
    if name == "cpu":
        return None
    if not whole:
        return (f"engine.device: {name!r} applies to the model section's trainable part (model.trainable / "
                "hidden / init / exchange); the default linear-head path runs on the CPU: use engine.device: cpu")
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
