"""Counter-based randomness: every random number is a pure function of
``(seed, stream, *counters)``, computed with SplitMix64 over numpy uint64 arrays.

Why not one stateful generator: peers are spread over Ray actors in any layout; drawing a
peer's minibatch from ``hash(seed, round, step, peer)`` makes the draw independent of which
actor hosts the peer, so a 4-actor run equals a 1-actor run bit for bit, and a resumed run
equals an uninterrupted one without saving generator states.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch only for torch_generator (the topology and `fedsim list` need none)
    import torch

_M1, _M2, _GOLD = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15)


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser (Steele, Lea & Flood 2014), elementwise, wrapping uint64 arithmetic."""
    with np.errstate(over="ignore"):
        z = z + _GOLD
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def _stream_id(stream: str) -> int:
    return zlib.crc32(stream.encode())


def bits(seed: int, stream: str, *counters: int | np.ndarray) -> np.ndarray:
    """64 random bits for each element of the broadcast of ``counters``."""
    h = _mix(np.asarray([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64) ^ np.uint64(_stream_id(stream)))
    for c in counters:
        h = _mix(h ^ _mix(np.asarray(c, dtype=np.int64).astype(np.uint64)))
    return h


def uniform(seed: int, stream: str, *counters: int | np.ndarray) -> np.ndarray:
    """Float64 uniforms in [0, 1)."""
    return (bits(seed, stream, *counters) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def integers(high: np.ndarray | int, seed: int, stream: str, *counters: int | np.ndarray) -> np.ndarray:
    """Integers in ``[0, high)`` (``high`` broadcast with the counters)."""
    return np.minimum((uniform(seed, stream, *counters) * high).astype(np.int64), np.asarray(high) - 1)


def derive_seeds(seed: int, stream: str, *counters: int | np.ndarray) -> np.ndarray:
    """63-bit seeds for stateful generators (numpy/torch), one per element of the counters' broadcast."""
    return bits(seed, stream, *counters) >> np.uint64(1)


def derive_seed(seed: int, stream: str, *counters: int) -> int:
    """A 63-bit seed for a stateful generator (numpy/torch), derived from the counters."""
    return int(derive_seeds(seed, stream, *counters)[0])


def torch_generator(seed: int, stream: str, *counters: int) -> torch.Generator:
    import torch

    return torch.Generator().manual_seed(derive_seed(seed, stream, *counters))


def numpy_generator(seed: int, stream: str, *counters: int) -> np.random.Generator:
    return np.random.default_rng(derive_seed(seed, stream, *counters))
