"""Partitioners: which training-sample indices each peer holds, plus its local validation split.

All are deterministic given the seed. Kinds: ``iid``; ``dirichlet`` (label skew, Hsu et al. 2019:
per class, shares over peers ~ Dir(α)); ``classes`` (k classes per peer); ``windows`` (Bristle:
peer i holds classes i..i+w−1 mod C); ``quantity`` (iid labels, sizes ~ Dir(β)).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Partition:
    train: list[np.ndarray]  # per peer, indices into the dataset's training arrays
    val: list[np.ndarray]  # per peer, its local validation indices (disjoint from train)

    @property
    def num_peers(self) -> int:
        return len(self.train)


def _split_among(idx: np.ndarray, holders: np.ndarray, rng: np.random.Generator, out: list[list[np.ndarray]]) -> None:
    """Shuffle ``idx`` and split it as evenly as possible among ``holders``."""
    if len(holders) == 0:
        return
    idx = idx.copy()
    rng.shuffle(idx)
    for h, part in zip(holders, np.array_split(idx, len(holders)), strict=True):
        out[h].append(part)


def iid(y: np.ndarray, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    idx = rng.permutation(len(y))
    return list(np.array_split(idx, n))


def dirichlet(
    y: np.ndarray, n: int, rng: np.random.Generator, alpha: float, min_size: int = 2, max_tries: int = 1000
) -> list[np.ndarray]:
    """Label skew: for each class c, proportions p_c ~ Dir(α·1_n) over peers; redrawn until every
    peer holds at least ``min_size`` samples."""
    if len(y) < n * min_size:
        raise ValueError(f"peers.count={n}: {n} peers need ≥ {n * min_size} samples (partition.min_size), "
                         f"the training set has {len(y)}")
    classes = np.unique(y)
    for _ in range(max_tries):
        drawn, sizes = [], np.zeros(n, dtype=np.int64)
        for c in classes:
            idx = rng.permutation(np.flatnonzero(y == c))
            cuts = (np.cumsum(rng.dirichlet(np.full(n, alpha))) * len(idx)).astype(int)[:-1]
            drawn.append((idx, cuts))
            # the sizes np.split(idx, cuts) gives, without making n arrays: a failed draw stays cheap
            sizes += np.diff(np.clip(np.concatenate([[0], cuts, [len(idx)]]), 0, len(idx)))
        if sizes.min() < min_size:
            continue
        parts: list[list[np.ndarray]] = [[] for _ in range(n)]
        for idx, cuts in drawn:
            for i, part in enumerate(np.split(idx, cuts)):
                parts[i].append(part)
        return [np.concatenate(p) for p in parts]
    raise ValueError(
        f"partition.alpha={alpha}: could not give each of {n} peers ≥ {min_size} samples in "
        f"{max_tries} draws; raise alpha or lower partition.min_size or peers.count"
    )


def _by_class_sets(y: np.ndarray, holdings: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """Given the classes each peer holds, split each class's samples evenly among its holders."""
    n = len(holdings)
    parts: list[list[np.ndarray]] = [[] for _ in range(n)]
    for c in np.unique(y):
        holders = np.asarray([i for i, h in enumerate(holdings) if c in h], dtype=np.int64)
        _split_among(np.flatnonzero(y == c), holders, rng, parts)
    return [np.concatenate(p) if p else np.empty(0, np.int64) for p in parts]


def classes_per_peer(y: np.ndarray, n: int, rng: np.random.Generator, k: int) -> list[np.ndarray]:
    """Each peer holds k distinct classes: peer i gets π(ik), …, π(ik+k−1) (mod C) for a seeded
    permutation π of the classes, so every class is held when n·k ≥ C and holders are balanced."""
    return _by_class_sets(y, _holdings("classes", y, n, rng, k, 0), rng)


def windows(y: np.ndarray, n: int, rng: np.random.Generator, w: int) -> list[np.ndarray]:
    """Bristle's sliding class windows: peer i holds classes i, i+1, …, i+w−1 (mod C)."""
    return _by_class_sets(y, _holdings("windows", y, n, rng, 0, w), rng)


def _holdings(kind: str, y: np.ndarray, n: int, rng: np.random.Generator, k: int, w: int) -> list[np.ndarray]:
    """The class sets of :func:`classes_per_peer` (``kind="classes"``) or :func:`windows`."""
    if kind == "windows":
        C = int(y.max()) + 1
        return [(i + np.arange(w)) % C for i in range(n)]
    classes = rng.permutation(np.unique(y))
    return [classes[(i * k + np.arange(k)) % len(classes)] for i in range(n)]


def _exactly_per_class(
    y: np.ndarray, holdings: list[np.ndarray], per_class: int, val_fraction: float, rng: np.random.Generator
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each peer gets ``per_class`` distinct samples of every class it holds (no sample twice), and
    keeps ``round(per_class·val_fraction)`` of each class (at least 1 when ``val_fraction > 0`` and
    ``per_class >= 2``) as its validation split: Bristle's runs hold 2 training and 2 test samples
    of each class per peer."""
    nv = int(round(per_class * val_fraction)) if val_fraction > 0 else 0
    nv = max(nv, 1) if (val_fraction > 0 and per_class >= 2) else nv
    train: list[list[np.ndarray]] = [[] for _ in holdings]
    val: list[list[np.ndarray]] = [[] for _ in holdings]
    for c in np.unique(y):
        holders = [i for i, h in enumerate(holdings) if c in h]
        idx = rng.permutation(np.flatnonzero(y == c))
        if len(holders) * per_class > len(idx):
            raise ValueError(
                f"partition.per_class={per_class}: class {c} has {len(idx)} samples, "
                f"{len(holders)} peers need {len(holders) * per_class}; lower it or use fewer peers"
            )
        for h, part in zip(holders, idx[: len(holders) * per_class].reshape(len(holders), per_class), strict=True):
            val[h].append(part[:nv])
            train[h].append(part[nv:])
    cat = [np.sort(np.concatenate(p)) if p else np.empty(0, np.int64) for p in train]
    return cat, [np.sort(np.concatenate(p)) if p else np.empty(0, np.int64) for p in val]


def class_sets(
    kind: str,
    y: np.ndarray,
    n: int,
    rng: np.random.Generator,
    *,
    k: int,
    window: int,
    per_class: int | None,
    all_classes: np.ndarray | None,
    val_fraction: float,
) -> Partition:
    """A class-set partition (``kind`` ``classes`` or ``windows``) with Bristle's options: the peers in
    ``all_classes`` (bool ``[n]``) hold every class and the kind's class sets go to the others in
    id order (Bristle's attackers hold all classes beside 10 honest windows); ``per_class`` gives
    each peer exactly that many samples of each class it holds (see :func:`_exactly_per_class`)."""
    if kind not in ("classes", "windows"):
        raise ValueError(f"partition.kind={kind!r}: per_class and byzantine_classes need kind windows or classes")
    full = np.zeros(n, dtype=bool) if all_classes is None else np.asarray(all_classes, dtype=bool)
    sets = iter(_holdings(kind, y, int((~full).sum()), rng, k, window))
    everything = np.unique(y)
    holdings = [everything if full[i] else next(sets) for i in range(n)]
    if per_class is not None:
        return Partition(*_exactly_per_class(y, holdings, per_class, val_fraction, rng))
    return _carve_validation(_by_class_sets(y, holdings, rng), val_fraction, rng)


def _carve_validation(parts: list[np.ndarray], val_fraction: float, rng: np.random.Generator) -> Partition:
    """Each peer's local validation split: ``val_fraction`` of its samples, at least 1 when it holds ≥ 2."""
    train, val = [], []
    for p in parts:
        p = rng.permutation(p)
        nv = int(round(len(p) * val_fraction)) if val_fraction > 0 else 0
        nv = max(nv, 1) if (val_fraction > 0 and len(p) >= 2) else nv
        val.append(np.sort(p[:nv]))
        train.append(np.sort(p[nv:]))
    return Partition(train, val)


def quantity(y: np.ndarray, n: int, rng: np.random.Generator, beta: float, min_size: int = 2) -> list[np.ndarray]:
    """Quantity skew: iid labels, peer sizes ∝ Dir(β) with at least ``min_size`` each."""
    N = len(y)
    if N < n * min_size:
        raise ValueError(f"partition.min_size={min_size}: {n} peers need ≥ {n * min_size} samples, dataset has {N}")
    extra = N - n * min_size
    sizes = min_size + np.floor(rng.dirichlet(np.full(n, beta)) * extra).astype(int)
    sizes[: N - sizes.sum()] += 1
    idx = rng.permutation(N)
    return list(np.split(idx, np.cumsum(sizes)[:-1]))


def check_bounds(kind: str, n: int, n_train: int, num_classes: int, *, k: int, window: int, min_size: int) -> None:
    """Refuse, before any work, parameters the data cannot satisfy (``ValueError`` naming the
    field): ``partition.k`` / ``partition.window`` above the number of classes (a peer cannot
    hold more distinct classes than exist; a huge k would allocate k indices per peer), and more
    peers than training samples allow: ``min_size`` each for ``dirichlet`` and ``quantity``, one
    each for the other kinds. Validation and :func:`make_partition` both call it."""
    if kind == "classes" and k > num_classes:
        raise ValueError(f"partition.k={k}: a peer cannot hold more classes than the dataset's {num_classes}")
    if kind == "windows" and window > num_classes:
        raise ValueError(f"partition.window={window}: at most the dataset's {num_classes} classes")
    need = min_size if kind in ("dirichlet", "quantity") else 1
    if n * need > n_train:
        what = f"≥ {need} samples each (partition.min_size)" if need > 1 else "at least one sample each"
        raise ValueError(
            f"peers.count={n}: {n} peers need {what}, the training set has {n_train}; use at most "
            f"{n_train // need} peers" + (" or lower partition.min_size" if need > 1 else "")
        )


def make_partition(
    kind: str,
    y: np.ndarray,
    n: int,
    seed: int,
    *,
    alpha: float = 0.5,
    k: int = 2,
    window: int = 3,
    beta: float = 0.5,
    min_size: int = 2,
    val_fraction: float = 0.1,
    per_class: int | None = None,
    all_classes: np.ndarray | None = None,
) -> Partition:
    """Partition labels ``y`` among ``n`` peers and carve each peer's local validation split
    (``val_fraction`` of its samples, at least 1 when it holds ≥ 2). ``per_class`` and
    ``all_classes`` (kinds ``classes``, ``windows``): see :func:`class_sets`."""
    check_bounds(kind, n, len(y), int(y.max(initial=-1)) + 1, k=k, window=window, min_size=min_size)
    rng = np.random.default_rng(seed)
    if per_class is not None or all_classes is not None:
        return class_sets(
            kind, y, n, rng, k=k, window=window, per_class=per_class, all_classes=all_classes,
            val_fraction=val_fraction,
        )
    if kind == "iid":
        parts = iid(y, n, rng)
    elif kind == "dirichlet":
        parts = dirichlet(y, n, rng, alpha, min_size)
    elif kind == "classes":
        parts = classes_per_peer(y, n, rng, k)
    elif kind == "windows":
        parts = windows(y, n, rng, window)
    elif kind == "quantity":
        parts = quantity(y, n, rng, beta, min_size)
    else:
        raise ValueError(f"unknown partition kind {kind!r}")
    return _carve_validation(parts, val_fraction, rng)


KINDS = {
    "iid": "uniformly random, equal sizes",
    "dirichlet": "label skew, class shares over peers ~ Dir(alpha)",
    "classes": "k classes per peer (partition.k)",
    "windows": "Bristle's sliding windows: peer i holds classes i..i+window-1 mod C",
    "quantity": "iid labels, peer sizes ~ Dir(beta)",
}
