"""Pretrain a backbone on its source dataset (``fedsim pretrain``), seeded.

The network gets a temporary 2-layer classifier on top; after training only the backbone's
weights are saved (a final ``FeatureScale``, as fedsim's CNNs have, is first fitted to the source
data's features; a plugin's backbone without one is saved as trained). The shipped ``fmnist_cnn.pt`` was made with
``fedsim pretrain --backbone fmnist_cnn`` (defaults below).
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedsim.data.datasets import load
from fedsim.models.backbones import get_spec, to_input
from fedsim.models.nets import FeatureScale


def pretrain(
    backbone: str,
    dataset: str | None = None,
    data_dir: str | None = None,
    epochs: int = 3,
    lr: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
    out: Path | None = None,
    log=print,
) -> dict:
    """Train ``backbone`` on ``dataset`` and save its weights; returns a summary dict.

    Bad arguments and an output path it cannot write are one-line ``ValueError``s raised before
    any data is loaded or trained on (``epochs=0`` would otherwise overwrite the weights with an
    untrained network)."""
    spec = get_spec(backbone)
    if spec.build is None:
        raise ValueError("the identity backbone has nothing to pretrain")
    if not spec.weights_file:
        raise ValueError(f"backbone {backbone!r} sets weights_file=False (its builder sets its own weights), "
                         "so a run would never read pretrained weights; set weights_file=True to pretrain it")
    if not (dataset or spec.pretrain_dataset):
        raise ValueError(f"--dataset: backbone {backbone!r} names no source dataset; give one "
                         "(fedsim list datasets)")
    check_args(epochs, lr, batch_size)
    out = Path(out) if out else spec.weights_path()
    check_writable(out)
    ds = load(dataset or spec.pretrain_dataset, data_dir)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = spec.build()
    feat = net(torch.zeros(1, *spec.input_shape)).shape[1]
    clf = nn.Sequential(nn.Linear(feat, 128), nn.ReLU(), nn.Linear(128, ds.num_classes))  # discarded after
    model = nn.Sequential(net, clf)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x, y = to_input(ds.x_train, spec), torch.from_numpy(ds.y_train)
    t0 = time.time()
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), batch_size):
            idx = perm[i : i + batch_size]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        log(f"epoch {ep + 1}/{epochs}: train loss {total / len(x):.4f} ({time.time() - t0:.0f}s)")
    model.eval()
    with torch.no_grad():
        xt = to_input(ds.x_test, spec)
        pred = torch.cat([model(xt[i : i + 1024]).argmax(1) for i in range(0, len(xt), 1024)])
        acc = float((pred.numpy() == ds.y_test).mean())
        last = net[-1] if isinstance(net, nn.Sequential) and len(net) else None
        if isinstance(last, FeatureScale):  # fedsim's CNNs: standardise with the source data's statistics
            last.fit(torch.cat([net(x[i : i + 1024]) for i in range(0, len(x), 1024)]))
        # a plugin's backbone without a FeatureScale at its end is saved as trained
    torch.save(net.state_dict(), out)
    summary = {
        "backbone": backbone,
        "dataset": ds.name,
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "seed": seed,
        "source_test_accuracy": round(acc, 4),
        "seconds": round(time.time() - t0, 1),
        "torch": torch.__version__,
        "numpy": np.__version__,
    }
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    log(f"saved {out} (source-task test accuracy {acc:.4f})")
    return summary


def check_args(epochs: int, lr: float, batch_size: int) -> None:
    """Refuse training settings that cannot train, in one line naming the option."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"--epochs: must be an integer >= 1, got {epochs!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"--batch-size: must be an integer >= 1, got {batch_size!r}")
    if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"--lr: must be a finite number > 0, got {lr!r}")


def check_writable(out: Path) -> None:
    """Make ``out``'s folder and prove a file can be written there, before minutes of training."""
    if out.is_dir():
        raise ValueError(f"--out {out}: is a directory; name the weights file, e.g. {out / 'backbone.pt'}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out.parent, prefix=".fedsim-write-check-"):
            pass
    except OSError as e:
        raise ValueError(f"--out {out}: cannot write there ({e.strerror or e})") from None
