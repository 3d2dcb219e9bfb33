"""Pretrain a backbone on its source dataset (``fedsim pretrain``), seeded.

The network gets a temporary 2-layer classifier on top; after training only the backbone's
weights are saved. The shipped ``fmnist_cnn.pt`` was made with
``fedsim pretrain --backbone fmnist_cnn`` (defaults below).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedsim.data.datasets import load
from fedsim.models.backbones import get_spec, to_input


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
    """Train ``backbone`` on ``dataset`` and save its weights; returns a summary dict."""
    spec = get_spec(backbone)
    if spec.build is None:
        raise ValueError("the identity backbone has nothing to pretrain")
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
        feats = torch.cat([net(x[i : i + 1024]) for i in range(0, len(x), 1024)])
        net[-1].fit(feats)  # FeatureScale: standardise with the source dataset's statistics
    out = Path(out) if out else spec.weights_path()
    out.parent.mkdir(parents=True, exist_ok=True)
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
