"""The run's data under a feature shift (``dataset.domains``; the transforms: :mod:`fedsim.data.domains`).

:func:`shift` is called by :func:`fedsim.runner.prepare` after the partition: every domain a peer
has is applied to the raw training and test images, the results go through the model's frozen
prefix by the code the unshifted run uses (:func:`fedsim.whole_plan.prefix_inputs`: normalised raw
inputs, or the prefix's activations cached per domain, keyed by the transformed images' contents),
and one training array and one test array are built holding, per domain, the rows its peers use.
Each peer's training and validation indices are moved to its domain's rows (the partition itself
is unchanged) and each peer gets ``test_idx``: its domain's whole test set, on which it is
evaluated (:meth:`fedsim.whole.WholePeerGroup.evaluate`; FedBN's protocol, each client on its own
domain's test set). Whole models only (:func:`fedsim.data.domains.domain_error`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from fedsim.data import domains as dom

if TYPE_CHECKING:
    from fedsim.features import Features
    from fedsim.models.trainable import ModelPlan
    from fedsim.scenario import Scenario


def shift(
    sc: Scenario, plan: ModelPlan | None, train: list[np.ndarray], val: list[np.ndarray],
    log: Callable[[str], None] | None = None,
) -> tuple[Features, list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """``(features, train, val, test_idx)`` of the shifted run: the inputs of every used domain
    back to back, each peer's training / validation indices into them, and its test rows."""
    from fedsim.data.datasets import Dataset, load
    from fedsim.features import Features
    from fedsim.models.trainable import split
    from fedsim.whole_plan import prefix_inputs

    if plan is None:
        raise ValueError("dataset.domains: needs a model section (whole-model training); see fedsim.data.domains")
    names = dom.peer_domains(sc.peers.count, sc.dataset.domains)
    ds = load(sc.dataset.name, sc.dataset.data_dir)
    prefix = split(plan)[0]
    xs_tr, ys_tr, xs_te, ys_te, keys = [], [], [], [], []
    new_train: list[np.ndarray] = [np.zeros(0, np.int64)] * len(names)
    new_val, test_idx = list(new_train), list(new_train)
    off_tr = off_te = 0
    for name in dom.used_domains(sc.peers.count, sc.dataset.domains):
        peers = [i for i, n in enumerate(names) if n == name]
        shifted = Dataset(f"{ds.name}@{name}", dom.transform(name, ds.x_train, sc.seed, "train"), ds.y_train,
                          dom.transform(name, ds.x_test, sc.seed, "test"), ds.y_test, ds.num_classes)
        if log:
            log(f"feature shift: domain {name} for peers {peers}")
        key, xtr, xte = prefix_inputs(shifted, sc, prefix, log)
        used = np.unique(np.concatenate([train[i] for i in peers] + [val[i] for i in peers])).astype(np.int64)
        for i in peers:
            new_train[i] = off_tr + np.searchsorted(used, train[i]).astype(np.int64)
            new_val[i] = off_tr + np.searchsorted(used, val[i]).astype(np.int64)
            test_idx[i] = off_te + np.arange(len(ds.y_test), dtype=np.int64)
        xs_tr.append(xtr[used])
        ys_tr.append(ds.y_train[used])
        xs_te.append(xte)
        ys_te.append(ds.y_test)
        keys.append(key)
        off_tr, off_te = off_tr + len(used), off_te + len(xte)
    feats = Features(np.concatenate(xs_tr), np.concatenate(ys_tr), np.concatenate(xs_te), np.concatenate(ys_te),
                     ds.num_classes, "+".join(keys))
    return feats, new_train, new_val, test_idx
