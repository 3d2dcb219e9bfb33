"""Feature shift (``dataset.domains``; issue 18, FedBN): each peer is assigned a domain and sees
all its images — training, its own validation split and its own test set — through that
domain's fixed transform, applied to the raw images before the model.

FedBN (Li, Jiang, Zhang, Kamp, Dou, ICLR 2021, "FedBN: Federated Learning on Non-IID Features via
Local Batch Normalization") measures "feature shift non-iid" on its Digits benchmark: five
clients, each one dataset (MNIST, SVHN, USPS, SynthDigits, MNIST-M), each client evaluated on
its own dataset's test set. **Departure:** those datasets are not available offline, so this is a
synthetic stand-in: one dataset (e.g. the embedded MNIST) is partitioned among the peers as
``partition`` says, and peer ``i`` sees it through domain ``domains[i % len(domains)]`` (labels
and the partition unchanged: only the input distribution shifts). The transforms (``DOMAINS``):

* ``identity`` — the images as they are;
* ``invert`` — inverted intensity, ``255 − x``;
* ``rot90`` — rotated by 90° counter-clockwise (square images only);
* ``noise`` — fixed additive Gaussian noise, σ = 64 grey levels, clipped to [0, 255]; the noise of
  image ``j`` of a split is a pure function of ``(seed, split, j)`` (:mod:`fedsim.rng`), so it is
  the same in every run with that seed;
* ``blur`` — Gaussian blur, σ = 1 pixel (5-tap kernel, edges reflected);
* ``contrast`` — contrast scaled to 30 % around mid-grey, ``0.3 x + 0.35 · 255``.

Every transform maps uint8 images ``[N, H, W]`` or ``[N, H, W, 3]`` to uint8 of the same shape
(feature vectors, e.g. an ``npz`` of features, are refused: :func:`domain_error`). Which peers
each domain gets is :func:`peer_domains`. Running them through the model's frozen prefix and
giving each peer its own rows is :mod:`fedsim.domain_shift`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from fedsim import rng as crng

NOISE_SIGMA = 64.0  # grey levels
BLUR_SIGMA = 1.0  # pixels
CONTRAST = 0.3  # scale around mid-grey


def _identity(x: np.ndarray, seed: int, split: str) -> np.ndarray:
    return x.copy()


def _invert(x: np.ndarray, seed: int, split: str) -> np.ndarray:
    return (255 - x.astype(np.int16)).astype(np.uint8)


def _rot90(x: np.ndarray, seed: int, split: str) -> np.ndarray:
    return np.ascontiguousarray(np.rot90(x, 1, axes=(1, 2)))


def _noise(x: np.ndarray, seed: int, split: str) -> np.ndarray:
    z = crng.numpy_generator(seed, "domain_noise", _SPLITS[split]).normal(0.0, NOISE_SIGMA, size=x.shape)
    return np.clip(np.rint(x + z), 0, 255).astype(np.uint8)


def _blur(x: np.ndarray, seed: int, split: str) -> np.ndarray:
    t = np.arange(-2, 3, dtype=np.float64)
    k = np.exp(-0.5 * (t / BLUR_SIGMA) ** 2)
    k /= k.sum()
    out = x.astype(np.float64)
    for axis in (1, 2):  # separable: rows, then columns
        pad = [(0, 0)] * out.ndim
        pad[axis] = (2, 2)
        p = np.pad(out, pad, mode="reflect")
        n = out.shape[axis]
        out = sum(w * np.take(p, np.arange(i, i + n), axis=axis) for i, w in enumerate(k))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _contrast(x: np.ndarray, seed: int, split: str) -> np.ndarray:
    return np.clip(np.rint(CONTRAST * x.astype(np.float64) + (1 - CONTRAST) / 2 * 255), 0, 255).astype(np.uint8)


DOMAINS: dict[str, Callable[[np.ndarray, int, str], np.ndarray]] = {
    "identity": _identity,
    "invert": _invert,
    "rot90": _rot90,
    "noise": _noise,
    "blur": _blur,
    "contrast": _contrast,
}
_SPLITS = {"train": 0, "test": 1}


def transform(name: str, x: np.ndarray, seed: int, split: str) -> np.ndarray:
    """Images ``x`` (uint8 ``[N, H, W]`` or ``[N, H, W, 3]``, a whole split in dataset order) as
    domain ``name`` shows them; ``split`` (``train`` | ``test``) and ``seed`` key the noise."""
    if name not in DOMAINS:
        raise ValueError(f"dataset.domains: unknown domain {name!r}; known: {', '.join(DOMAINS)}")
    if split not in _SPLITS:
        raise ValueError(f"split must be train or test, got {split!r}")
    return DOMAINS[name](x, seed, split)


def check_names(names: Sequence[str]) -> list[str]:
    """``names`` if every one is a known domain; else ``ValueError``, one line with the closest name."""
    from fedlib.registry import did_you_mean

    for n in names:
        if n not in DOMAINS:
            raise ValueError(f"unknown domain {n!r}{did_you_mean(n, list(DOMAINS))}; known: {', '.join(DOMAINS)}")
    return list(names)


def peer_domains(num_peers: int, domains: Sequence[str]) -> list[str]:
    """The domain of every peer: peer ``i`` gets ``domains[i % len(domains)]`` (round robin, so each
    domain's peers are spread over the ids and any contiguous block of peers mixes domains)."""
    return [domains[i % len(domains)] for i in range(num_peers)]


def used_domains(num_peers: int, domains: Sequence[str]) -> list[str]:
    """The domains some peer has, each once, in order of first peer (none without a shift): the
    shifted run holds one copy of the test set per domain (:func:`fedsim.domain_shift.shift`), and
    the memory estimate counts them (:func:`fedsim.whole_plan.memory_estimate`)."""
    return list(dict.fromkeys(peer_domains(num_peers, domains))) if domains else []


def domain_error(domains: Sequence[str], *, whole: bool, mode: str, peers: int,
                 sample_shape: tuple[int, ...] | None = None, dtype: str | None = None) -> str | None:
    """Why ``dataset.domains`` cannot apply to this scenario (one line), or None. ``sample_shape``
    and ``dtype``: one input of the dataset (:class:`fedsim.data.datasets.DatasetInfo`), when known."""
    if not domains:
        return None
    if not whole:
        return ("dataset.domains: a feature shift transforms the raw images before the model, but the default "
                "linear head trains on cached frozen-backbone features of the untransformed images; add a model "
                "section that trains from the images (e.g. model: {trainable: all, init: scratch}) or remove "
                "dataset.domains")
    if mode != "decentralized":
        return ("dataset.domains: each peer is evaluated on its own domain's test set (FedBN's protocol); the "
                "federated server evaluates one global model on one test set: use mode: decentralized with "
                "topology.kind: complete and strategy fedavg (FedAvg with every client each round)")
    if len(domains) > peers:
        return f"dataset.domains: {len(domains)} domains for {peers} peers leaves a domain without a peer"
    if sample_shape is not None:
        images = dtype == np.dtype(np.uint8).str and (
            len(sample_shape) == 2 or (len(sample_shape) == 3 and sample_shape[-1] == 3))
        if not images:
            return (f"dataset.domains: the transforms act on uint8 images [H, W] or [H, W, 3]; this dataset's inputs "
                    f"are {dtype} {list(sample_shape)}")
        if "rot90" in domains and sample_shape[0] != sample_shape[1]:
            return f"dataset.domains: rot90 needs square images, these are {sample_shape[0]}×{sample_shape[1]}"
    return None
