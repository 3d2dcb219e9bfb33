"""Frozen backbones. A backbone maps raw inputs to feature vectors; it is pretrained on a
*different* dataset than the federated task (Bristle's transfer setting: EMNIST-letters → MNIST,
CIFAR-100 → CIFAR-10) and never trained again. Only the output layer on top is federated.

Shipped: ``fmnist_cnn``, a small CNN pretrained on the embedded Fashion-MNIST (weights in
``fedsim/models/weights/``, reproducible with ``fedsim pretrain``), used for MNIST-like 28×28
tasks. ``cifar_cnn`` is the same recipe for 32×32 RGB (pretrain it on CIFAR-100 with
``fedsim pretrain --backbone cifar_cnn --dataset cifar100 --data-dir DIR``). ``identity`` uses
the raw pixels (or the given feature vectors) as features. ``fmnist_bn_cnn`` is ``fmnist_cnn`` with a
BatchNorm after each convolution, shipped without weights (for ``model: {trainable: all, init:
scratch}``, BatchNorm in whole-model training; ``fedsim pretrain --backbone fmnist_bn_cnn`` makes them).

Your own: :func:`register_backbone` with a :class:`BackboneSpec` whose ``build`` returns any
``torch.nn.Module`` mapping ``[N, *input_shape]`` to ``[N, d]`` features, from a module named in
the scenario's ``plugins:`` (see docs/extending.md). Its features are cached like the built-ins'.
"""

from __future__ import annotations

import difflib
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedsim.errors import CorruptFileError

if TYPE_CHECKING:  # torch is imported where a network is built or run (`fedsim list` needs none)
    import torch
    from torch import nn

WEIGHTS_DIR = Path(__file__).parent / "weights"


def _cnn(in_ch: int, side: int, pool: int = 3, bn: bool = False) -> nn.Sequential:
    """The shipped CNN trunk (:func:`fedsim.models.nets.cnn`), imported when a backbone is built."""
    from fedsim.models.nets import cnn

    return cnn(in_ch, side, pool, bn)


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    description: str
    build: Callable[[], nn.Module] | None  # None: identity (no network)
    input_shape: tuple[int, ...]  # (C, H, W) the network expects; () for identity
    mean: float = 0.0
    std: float = 1.0
    pretrain_dataset: str = ""
    # True: weights are read from weights_path() (shipped, or written by `fedsim pretrain`); False: the
    # network is used as ``build()`` returns it (the builder sets its weights: seeded, or loaded itself)
    weights_file: bool = True

    def weights_path(self) -> Path:
        """Shipped weights, or a user's own under $FEDSIM_WEIGHTS_DIR (``fedsim pretrain`` writes there
        for backbones fedsim does not ship)."""
        shipped = WEIGHTS_DIR / f"{self.name}.pt"
        if shipped.exists():
            return shipped
        return (
            Path(os.environ.get("FEDSIM_WEIGHTS_DIR", Path.home() / ".cache" / "fedsim" / "weights"))
            / f"{self.name}.pt"
        )


BACKBONES: dict[str, BackboneSpec] = {
    "fmnist_cnn": BackboneSpec(
        "fmnist_cnn",
        "2-conv CNN → 576 pooled conv features, pretrained on Fashion-MNIST (for 28×28 grey digits: MNIST, EMNIST)",
        lambda: _cnn(1, 28),
        (1, 28, 28),
        mean=0.2860,
        std=0.3530,
        pretrain_dataset="fashion_mnist_embedded",
    ),
    "fmnist_bn_cnn": BackboneSpec(
        "fmnist_bn_cnn",
        "fmnist_cnn with a BatchNorm after each conv, for whole-model training with BatchNorm (model.bn); "
        "no shipped weights: init: scratch, or `fedsim pretrain --backbone fmnist_bn_cnn`",
        lambda: _cnn(1, 28, bn=True),
        (1, 28, 28),
        mean=0.2860,
        std=0.3530,
        pretrain_dataset="fashion_mnist_embedded",
    ),
    "cifar_cnn": BackboneSpec(
        "cifar_cnn",
        "2-conv CNN → 576 pooled conv features for 32×32 RGB, pretrain on CIFAR-100 for a CIFAR-10 task",
        lambda: _cnn(3, 32),
        (3, 32, 32),
        mean=0.4782,
        std=0.2682,
        pretrain_dataset="cifar100",
    ),
    "identity": BackboneSpec("identity", "raw inputs flattened and scaled to [0, 1] (no network)", None, ()),
}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Make ``spec`` available as ``backbone.name: <spec.name>``; a name taken by another spec is a
    ``ValueError`` (registering the same spec again, as a re-imported plugin does, is allowed)."""
    old = BACKBONES.get(spec.name)
    if old is not None and old != spec:
        raise ValueError(f"backbone name {spec.name!r} is registered twice; choose another name")
    if spec.build is None and spec.name != "identity":
        raise ValueError(f"backbone {spec.name!r}: build must return a torch.nn.Module")
    BACKBONES[spec.name] = spec
    return spec


def unknown_backbone(name: str) -> str:
    """The message for a backbone name nobody registered, with the closest name if one is close."""
    close = difflib.get_close_matches(name, list(BACKBONES), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown backbone {name!r}{hint}; available: {', '.join(BACKBONES)}"


def get_spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise ValueError(unknown_backbone(name))
    return BACKBONES[name]


def to_input(x: np.ndarray, spec: BackboneSpec) -> torch.Tensor:
    """uint8 images ``[N,H,W]``/``[N,H,W,3]`` → normalised float ``[N,C,H,W]``; float features pass
    through as ``[N, d]`` for the identity backbone."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(x))
    t = t.float() / 255.0 if t.dtype == torch.uint8 else t.float()
    if spec.build is None:
        return t.reshape(len(t), -1)
    if t.dim() == 3:
        t = t[:, None]
    elif t.dim() == 4 and t.shape[-1] in (1, 3):
        t = t.permute(0, 3, 1, 2)
    if tuple(t.shape[1:]) != spec.input_shape:
        raise ValueError(f"backbone {spec.name!r} expects inputs of shape {spec.input_shape}, got {tuple(t.shape[1:])}")
    return (t - spec.mean) / spec.std


def load_backbone(name: str) -> tuple[nn.Module | None, str]:
    """The frozen network (None for identity) and a fingerprint of its weights."""
    spec = get_spec(name)
    if spec.build is None:
        return None, "identity"
    if not spec.weights_file:
        net = spec.build().eval().requires_grad_(False)
        return net, state_fingerprint(net)
    path = spec.weights_path()
    if not path.exists():
        raise FileNotFoundError(
            f"no weights for backbone {name!r} at {path}; create them with `fedsim pretrain --backbone {name}`"
        )
    raw = path.read_bytes()
    net = spec.build()
    net.load_state_dict(read_weights(path, name))
    net.eval().requires_grad_(False)
    return net, hashlib.sha256(raw).hexdigest()[:16]


def state_fingerprint(net: nn.Module) -> str:
    """A hash of ``net``'s parameters and buffers (names, shapes, values): the feature cache's key for
    a backbone without a weights file, so changed weights never reuse stale features."""
    h = hashlib.sha256()
    for k, t in sorted(net.state_dict().items()):
        h.update(f"{k}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def read_weights(path: Path, name: str) -> dict[str, torch.Tensor]:
    """The state dict in ``path``, loaded with ``weights_only=True`` (tensors and plain containers
    only: a crafted file cannot run code) and checked to fit backbone ``name``; an empty,
    truncated, corrupt or foreign file is a one-line :class:`CorruptFileError` naming it."""
    import torch

    fix = f"recreate it with `fedsim pretrain --backbone {name}`"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, PermissionError):
        raise
    except Exception as e:  # noqa: BLE001 - any failure to read an untrusted file means "unusable file"
        reason = " ".join(str(e).split())[:160] or type(e).__name__
        raise CorruptFileError(f"{path}: not a readable weights file for backbone {name!r} ({reason}); {fix}") from None
    expected = get_spec(name).build().state_dict()
    if not isinstance(state, dict) or set(state) != set(expected):
        raise CorruptFileError(f"{path}: not the weights of backbone {name!r} (its parameter names differ); {fix}")
    for k, t in state.items():
        if not isinstance(t, torch.Tensor) or t.shape != expected[k].shape or not torch.isfinite(t).all():
            raise CorruptFileError(f"{path}: {k} does not fit backbone {name!r} (shape or non-finite values); {fix}")
    return state


def extract_features(net: nn.Module | None, x: np.ndarray, spec: BackboneSpec, batch: int = 1024) -> np.ndarray:
    """Run the frozen backbone once over ``x`` (no gradients); float32 ``[N, d]``."""
    import torch

    with torch.no_grad():
        inp = to_input(x, spec)
        if net is None:
            return inp.numpy().astype(np.float32)
        return torch.cat([net(inp[i : i + batch]) for i in range(0, len(inp), batch)]).numpy().astype(np.float32)


def feature_dim(name: str, sample: np.ndarray) -> int:
    spec = get_spec(name)
    net = spec.build() if spec.build else None
    return extract_features(net, sample[:1], spec).shape[1]
