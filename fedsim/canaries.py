"""Canaries for the unlearning probe's membership inference (issue 17, part 1).

After Carlini et al. 2019, "The Secret Sharer" (USENIX Security), and the canary audits of
Jagielski et al. 2020 / Steinke et al. 2023 ("Privacy Auditing with One (1) Training Run"):
membership is measured on examples *planted* in the leaving peer's training data before training,
against *matched* held-out canaries built the same way and never trained on. Because members and
non-members come from one construction (and one random draw, split at random), any difference in
the target's behaviour on them is caused by training on the members — no class prior, shard
distribution or difficulty confound (the problem of the leaver's natural data: its class mix
differs from the held-out data's).

Kinds (``probes[i].canaries.kind``), with ``C`` classes and training features ``X``:

* ``mislabelled`` — a training example ``x`` of *another* peer (never the leaver's), copied with a
  wrong label ``y' = (y + U{1..C−1}) mod C``. The member copy is added to the leaver's shard (the
  original, correctly labelled, stays where it was); a held-out canary is the same construction on
  a different source example, so members and non-members alike have their clean source in the
  federation.
* ``ood`` (out-of-distribution, feature noise) — ``x = μ + s·σ ⊙ z``, ``z ~ N(0, I_d)``, with
  ``μ, σ`` the per-feature mean and standard deviation of ``X`` and ``s = scale``; the label is
  uniform over the classes.

Everything is deterministic from the scenario seed (stream ``"canaries"``). Member canaries are
appended to the training arrays (new indices ``n_train .. n_train+count−1``) and to the leaver's
training indices *after* the partition is drawn, so the other peers' data is unchanged; the
held-out canaries are kept aside (:class:`Canaries`), never given to any peer, and split at random
once more (``calibration``): one part joins the unlearning stopping rule's reference set (so the
rule can see canaries against matched non-members, :mod:`fedsim.probes`), the rest are the
membership tests' non-members; no held-out canary serves both. The run retrained
without the leaver builds the same canaries; its leaver is absent, so there every canary is a
non-member.

Departures from the sources: canaries are made in feature space (the backbone is frozen and
public, so a feature-space canary is what the trainable head sees); one copy per canary
(``Secret Sharer`` varies the number of insertions; ``repeats`` is not offered).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedlib.params import Integer, Mapping, Options, Real, param
from fedsim import rng as crng
from fedsim.features import Features

KINDS = ("mislabelled", "ood")
PARAMS: dict[str, Any] = {  # the keys of a probe's ``canaries:`` mapping (fedlib.params declarations)
    "count": param(50, Integer(minimum=2), doc="member canaries planted in the leaver's shard"),
    "kind": param("mislabelled", Options(choices=KINDS)),
    "heldout": param(1000, Integer(minimum=2), doc="held-out canaries (non-members), never trained on; split by "
                     "calibration"),
    "calibration": param(None, Integer(minimum=0, null=True),
                         doc="held-out canaries given to the unlearning stopping rule's reference (null: half of "
                         "heldout); the other heldout - calibration are the membership tests' non-members"),
    "scale": param(1.0, Real(lo=0.0, lo_open=True), doc="ood only: noise scale s in units of the per-feature "
                   "standard deviation"),
}


def _calibration(where: str, out: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """``calibration`` against ``heldout`` (null: half of it, keeping 2 for evaluation)."""
    cal = out["calibration"]
    if cal is None:
        cal = min(out["heldout"] // 2, out["heldout"] - 2)
    if not 0 <= cal <= out["heldout"] - 2:
        raise ValueError(f"{where}.calibration: must be an integer in [0, heldout - 2] = [0, {out['heldout'] - 2}] "
                         f"(at least 2 held-out canaries stay for evaluation) or null, got {cal!r}")
    out["calibration"] = int(cal)
    return out


# a probe's ``canaries`` key: off (null) or a mapping of PARAMS
CANARIES = Mapping(keys=PARAMS, after=_calibration, null=True,
                   what="a mapping like {count: 50, kind: mislabelled} or null")

@dataclass
class Canaries:
    """The planted canaries of one run.

    Attributes:
        peer: the leaving peer whose shard holds the members.
        kind: ``mislabelled`` or ``ood``.
        member_idx: indices of the member canaries in the (augmented) training arrays.
        heldout_x, heldout_y: the *evaluation* held-out canaries ``[m, d]``, ``[m]`` (never trained
            on): the membership tests' non-members and the canary LiRA's population.
        calibration_x, calibration_y: the *calibration* held-out canaries ``[k, d]``, ``[k]`` (never
            trained on, disjoint from the evaluation ones): they join the unlearning stopping rule's
            reference set and are used for nothing else.
    """

    peer: int
    kind: str
    member_idx: np.ndarray
    heldout_x: np.ndarray
    heldout_y: np.ndarray
    calibration_x: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 0), np.float32))
    calibration_y: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))


def validate(where: str, v: Any) -> dict[str, Any] | None:
    """Check a ``canaries`` mapping (``None``/absent: off) against :data:`CANARIES`; errors name
    ``<where>.<key>``."""
    return CANARIES.check(where, v)


PLANTING_KINDS = ("unlearning", "federated_unlearning")  # probe kinds whose ``canaries`` key plants them


def plan(probes: list[Any]) -> tuple[int, dict[str, Any], int | None] | None:
    """``(probe index, canary config, named leaver or None)`` of the one probe (of :data:`PLANTING_KINDS`)
    with canaries."""
    found = []
    for i, p in enumerate(probes):
        p = p.settings() if hasattr(p, "settings") else p  # a scenario's typed entry (fedsim.probe_registry)
        if isinstance(p, dict) and p.get("kind") in PLANTING_KINDS and p.get("canaries") is not None:
            found.append((i, validate(f"probes.{i}.canaries", p["canaries"]), p.get("peer")))
    if len(found) > 1:
        raise ValueError(f"probes.{found[1][0]}.canaries: only one unlearning probe may plant canaries "
                         f"(probes.{found[0][0]} already does)")
    return found[0] if found else None  # type: ignore[return-value]


def default_leaver(train: list[np.ndarray], byzantine: np.ndarray) -> int:
    """The honest peer with the most training samples (the unlearning probe's default leaver)."""
    sizes = np.asarray([len(t) if not b else -1 for t, b in zip(train, byzantine, strict=True)])
    return int(np.argmax(sizes))


def _leaver(i: int, named: int | None, train: list[np.ndarray], byzantine: np.ndarray) -> int:
    """The peer whose shard takes probe ``i``'s member canaries: ``named``, else :func:`default_leaver`."""
    peer = default_leaver(train, byzantine) if named is None else int(named)
    if not 0 <= peer < len(train):
        raise ValueError(f"probes.{i}.peer: must be a peer id in [0, {len(train) - 1}], got {peer!r}")
    return peer


def planted_sizes(train: list[np.ndarray], byzantine: np.ndarray, probes: list[Any]) -> np.ndarray:
    """Each peer's training-shard size once :func:`plant` has run (the leaver's grows by ``count``
    member canaries), without making the canaries: what validation knows of the shards the groups
    will hold (``fedsim.runfacts.largest_shard``). Errors: :func:`plant`'s (:func:`plan`'s, the leaver's)."""
    sizes = np.asarray([len(t) for t in train], dtype=np.int64)
    p = plan(probes)
    if p is not None:
        i, cfg, named = p
        sizes[_leaver(i, named, train, byzantine)] += cfg["count"]
    return sizes


def plant(feats: Features, train: list[np.ndarray], byzantine: np.ndarray, probes: list[Any],
          seed: int) -> tuple[Features, list[np.ndarray], Canaries | None]:
    """Plant the scenario's canaries (if any probe asks for them) → ``(features, train, canaries)``.

    ``train`` is the partition's per-peer training indices; the leaver's gets the member canaries.
    Without canaries the inputs come back unchanged (and ``None``).
    """
    p = plan(probes)
    if p is None:
        return feats, train, None
    i, cfg, named = p
    peer = _leaver(i, named, train, byzantine)
    gen = crng.numpy_generator(seed, "canaries")
    c = int(feats.num_classes)
    count, m = cfg["count"], cfg["heldout"]
    x_tr, y_tr = np.asarray(feats.x_train), np.asarray(feats.y_train)
    if cfg["kind"] == "mislabelled":
        pool = np.setdiff1d(np.arange(len(y_tr)), train[peer])
        if len(pool) < count + m:
            raise ValueError(f"probes.{i}.canaries: {count} + {m} held-out mislabelled canaries need as many "
                             f"source examples outside peer {peer}'s shard; there are {len(pool)}")
        src = gen.choice(pool, size=count + m, replace=False)
        x = x_tr[src].copy()
        y = (y_tr[src] + gen.integers(1, c, size=count + m)) % c
    else:
        mu, sd = x_tr.mean(0), x_tr.std(0)
        x = (mu + cfg["scale"] * sd * gen.standard_normal((count + m, x_tr.shape[1]))).astype(x_tr.dtype)
        y = gen.integers(0, c, size=count + m)
    order = gen.permutation(count + m)  # which draws become members: a random split of one population
    mem, held = order[:count], order[count:]
    cal, held = held[: cfg["calibration"]], held[cfg["calibration"] :]  # one random split, no overlap
    n0 = len(y_tr)
    new = dataclasses.replace(
        feats,
        x_train=np.concatenate([x_tr, x[mem].astype(x_tr.dtype)]),
        y_train=np.concatenate([y_tr, y[mem].astype(y_tr.dtype)]),
    )
    member_idx = np.arange(n0, n0 + count, dtype=np.int64)
    train = [np.concatenate([t, member_idx]) if j == peer else t for j, t in enumerate(train)]
    can = Canaries(peer=peer, kind=cfg["kind"], member_idx=member_idx, heldout_x=x[held].astype(x_tr.dtype),
                   heldout_y=y[held].astype(y_tr.dtype), calibration_x=x[cal].astype(x_tr.dtype),
                   calibration_y=y[cal].astype(y_tr.dtype))
    return new, train, can



def stopping_reference(can: Canaries | None, forget_idx: np.ndarray, forget_y: np.ndarray, ref_x: np.ndarray,
                       ref_y: np.ndarray, num_classes: int
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The unlearning stopping rule's reference set and the strata that match it to the forget set.

    ``forget_idx``/``forget_y`` are the leaver's training indices and labels (member canaries
    included), ``(ref_x, ref_y)`` the natural calibration split. With calibration canaries
    (``can.calibration_y`` non-empty) the reference is the natural calibration split followed by
    them, and both sets' strata are ``class + num_classes·[canary]`` (the statistic re-weights the
    reference to the forget set's canary/natural and class mix). Without them the reference is the
    natural split and the strata are ``None`` (match on classes only, as before canaries).

    Returns ``(x, y, forget_strata, reference_strata)``.
    """
    if can is None or len(can.calibration_y) == 0:
        return ref_x, ref_y, None, None
    x = np.concatenate([ref_x, can.calibration_x.astype(ref_x.dtype)])
    y = np.concatenate([ref_y, can.calibration_y.astype(ref_y.dtype)])
    forget_canary = np.isin(forget_idx, can.member_idx)
    ref_canary = np.r_[np.zeros(len(ref_y), bool), np.ones(len(can.calibration_y), bool)]
    return (x, y, np.asarray(forget_y, np.int64) + num_classes * forget_canary,
            y.astype(np.int64) + num_classes * ref_canary)
