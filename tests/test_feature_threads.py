"""The frozen parts' outputs that fedsim caches on disk (the backbone's features,
:mod:`fedsim.features`; a frozen prefix's activations, :func:`fedsim.whole_plan.prefix_inputs`) have
the same bits on 1, 2 and 4 torch threads for every built-in backbone: a cache written by a process
with other threads holds what this one would compute (docs/whole-model.md, "Layout"). A control
shows that the thread switch takes effect and that the comparison sees float rounding: the
convolution weight gradient, which oneDNN splits over threads, differs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedsim.data.datasets import load
from fedsim.models.backbones import BACKBONES, extract_features, get_spec, load_backbone
from fedsim.models.trainable import ModelPlan, frozen_inputs, num_layers, split
from fedsim.threads import torch_threads

THREADS = (1, 2, 4)
ROWS = 1100  # one full batch of 1024 and a partial one
BUILT_IN = sorted(
    n for n, s in BACKBONES.items() if s.build is not None and s.build.__module__ == "fedsim.models.backbones"
)


def _images(name: str) -> np.ndarray:
    """The default dataset's digits for a 28×28 grey backbone, else seeded random images of its input shape."""
    spec = get_spec(name)
    if spec.input_shape == (1, 28, 28):
        return load("mnist10k").x_train[:ROWS]
    c, h, w = spec.input_shape
    return np.random.default_rng(0).integers(0, 256, (ROWS, h, w, c), dtype=np.uint8)


def _on_each(fn) -> list[np.ndarray]:
    out = []
    for t in THREADS:
        with torch_threads(t):
            assert torch.get_num_threads() == t
            out.append(fn())
    return out


def _init(name: str) -> str:
    return "pretrained" if get_spec(name).weights_path().exists() else "scratch"


def test_the_built_in_backbones_are_the_ones_fedsim_ships():
    assert {"fmnist_cnn", "fmnist_bn_cnn", "cifar_cnn"} <= set(BUILT_IN)


@pytest.mark.parametrize("name", BUILT_IN)
def test_backbone_features_have_the_same_bits_on_any_thread_count(name):
    spec, x = get_spec(name), _images(name)
    if _init(name) == "pretrained":
        net, _ = load_backbone(name)  # what fedsim.features caches
    else:
        torch.manual_seed(0)
        net = spec.build().eval()
    first, *others = _on_each(lambda: extract_features(net, x, spec))
    assert first.shape == (ROWS, 576)
    for t, other in zip(THREADS[1:], others, strict=True):
        assert first.tobytes() == other.tobytes(), f"{name}: features on {t} threads differ from 1 thread"


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_frozen_prefix_has_the_same_bits_on_any_thread_count(name):
    x = _images(name)
    checked = 0
    for k in range(1, num_layers(name, ()) + 1):  # trainable: last_k, every k
        plan = ModelPlan(backbone=name, trainable="last_k", k=k, hidden=(), init=_init(name), exchange="params",
                         bias=True, seed=0, dim=576, num_classes=10)  # fmt: skip
        prefix = split(plan)[0]
        if not any(True for _ in prefix.state_dict()):
            continue  # no weights: the raw inputs, never cached (fedsim.whole_plan.prefix_inputs)
        first, *others = _on_each(lambda prefix=prefix: frozen_inputs(prefix, x, name))
        for t, other in zip(THREADS[1:], others, strict=True):
            assert first.tobytes() == other.tobytes(), f"{name}: last_k {k}'s prefix on {t} threads differs from 1"
        checked += 1
    assert checked >= 2  # the cut after the first convolution and after the second, at least


def test_control_the_convolution_weight_gradient_differs_with_the_thread_count():
    """The comparison above would see a kernel that splits a reduction over threads (if this
    platform's oneDNN does not split this one, there is nothing to show here)."""

    def grad() -> np.ndarray:
        torch.manual_seed(0)
        conv = torch.nn.Conv2d(1, 8, 3)
        conv(torch.randn(32, 1, 28, 28, generator=torch.Generator().manual_seed(1))).square().sum().backward()
        return conv.weight.grad.numpy().copy()

    one, *others = _on_each(grad)
    if all(one.tobytes() == o.tobytes() for o in others):
        pytest.skip("this platform's convolution weight gradient does not depend on the thread count")
    assert all(np.allclose(one, o, rtol=1e-4) for o in others)  # float rounding, not another computation
