"""The properties every backbone must have, for your own backbone as for the built-ins.

:func:`check_backbone` (re-exported by :mod:`fedsim.checks`) runs them on one registered backbone
(a name, as a scenario's ``backbone.name`` names it, or a :class:`BackboneSpec`) with the engine's
own code: the spec's ``build``, :func:`fedsim.models.backbones.to_input` (uint8 images as a dataset
holds them), :func:`fedsim.models.trainable.split` and :class:`fedsim.stacked.StackedModel`.
``tests/test_checks_backbones.py`` runs it over every registered backbone but ``identity`` (no
network). The properties, each where the engine relies on it:

* :func:`check_builds` — ``build()`` returns a ``torch.nn.Module`` whose parameters and floating
  buffers are float32 on the CPU, and ``input_shape`` is a tuple of positive sizes. The engine
  builds every network on the CPU and moves it itself (``StackedModel.__init__``); it concatenates
  every parameter into one float32 ``θ [p, P]`` (``StackedModel.theta``, what peers exchange) and
  keeps buffers exactly as float64 (``StackedModel.buffer_state``, the checkpoint);
* :func:`check_deterministic_build` — two constructions give the same parameters and buffers, bit
  for bit: with ``weights_file=False`` two plain ``build()`` calls (``load_backbone`` builds the
  network in the driver and in every actor, and ``state_fingerprint`` of it keys the feature
  cache: a network drawn anew each time computes other features under another key every run);
  with ``weights_file=True`` two calls under the same torch seed (``model.init: scratch``:
  ``fedsim.models.trainable._backbone`` seeds torch's generator from the scenario's seed, then
  builds; every peer must start from the same draw, every run of the seed too);
* :func:`check_features` — in eval mode without gradients (``load_backbone``, ``extract_features``)
  a batch ``[B, *input_shape]`` gives finite float32 features ``[B, d]``, ``d > 0``; a batch of 1
  gives ``[1, d]`` equal to that row of the batch to float tolerance (``extract_features`` runs
  chunks of 1,024 rows and ``feature_dim`` a batch of 1: a row's features must not depend on the
  rows beside it); two forward passes give the same bits (no dropout or batch statistics in eval
  mode: the cached features are one function of the dataset); the input batch is left unchanged
  (``StackedModel.logits`` feeds one input chunk to every peer's forward in turn);
* :func:`check_stacked_training` — under a head, as whole-model training builds it
  (``model: {trainable: all}``: :func:`fedsim.models.trainable.split`), the network trains batched
  over peers: ``StackedModel.loss_and_grad`` with ``batching: vmap`` (``torch.func.vmap`` of
  ``grad`` over ``functional_call`` on stacked copies) runs and gives each peer's loss, gradient
  and BatchNorm running statistics equal, to float tolerance, to ``batching: loop`` (one
  ``functional_call`` per peer). The engine picks either (``model.batching``,
  ``fedsim.stacked.resolve_batching``) and relies on their agreement; a forward that reads a
  tensor's value in Python (``.item()``, ``if x.sum() > 0``) or writes a parameter in place
  cannot run under ``vmap``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor, nn

from fedsim.models.backbones import BACKBONES, BackboneSpec, get_spec, register_backbone, to_input

__all__ = ["check_backbone", "check_builds", "check_deterministic_build", "check_features", "check_stacked_training"]

BATCH, PEERS, CLASSES, HIDDEN = 5, 3, 3, (4,)  # the cases' batch, peers, head (3 classes, one hidden layer of 4)


def _fail(spec: BackboneSpec, prop: str, what: str) -> AssertionError:
    return AssertionError(f"backbone {spec.name}: {prop}: {what}")


def images(spec: BackboneSpec, n: int, seed: int) -> Tensor:
    """``n`` random uint8 images of ``spec.input_shape`` as the engine feeds them to a backbone
    (through :func:`fedsim.models.backbones.to_input`: scaled, normalised, float32)."""
    g = np.random.default_rng(seed)
    return to_input(g.integers(0, 256, size=(n, *spec.input_shape), dtype=np.uint8), spec)


def _state(net: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _same_bits(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.numpy().tobytes() == b.numpy().tobytes()


def check_builds(spec: BackboneSpec) -> nn.Module:
    """The first property (module docstring); returns the built network."""
    prop = "builds a float32 CPU module"
    shape = spec.input_shape
    if not (isinstance(shape, tuple) and shape and all(isinstance(s, int) and s > 0 for s in shape)):
        raise _fail(spec, prop, f"input_shape is {shape!r}, not a tuple of positive sizes (C, H, W)")
    try:
        net = spec.build()  # type: ignore[misc]
    except Exception as e:
        raise _fail(spec, prop, f"build() raised {e!r}") from e
    if not isinstance(net, nn.Module):
        raise _fail(spec, prop, f"build() returned {type(net).__name__}, not a torch.nn.Module")
    for kind, items in (("parameter", net.named_parameters()), ("buffer", net.named_buffers())):
        for k, t in items:
            if t.device.type != "cpu" or (t.is_floating_point() or kind == "parameter") and t.dtype != torch.float32:
                raise _fail(spec, prop, f"{kind} {k} is {t.dtype} on {t.device}, not float32 on the CPU")
    return net


def check_deterministic_build(spec: BackboneSpec, seed: int = 0) -> None:
    """The second property (module docstring)."""
    prop = "deterministic construction"

    def build() -> nn.Module:
        if not spec.weights_file:
            return spec.build()  # type: ignore[misc]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return spec.build()  # type: ignore[misc]

    first, second = _state(build()), _state(build())
    how = "two build() calls" if not spec.weights_file else f"two build() calls under torch.manual_seed({seed})"
    if list(first) != list(second):
        raise _fail(spec, prop, f"{how} give different parameter names")
    for k in first:
        if not _same_bits(first[k], second[k]):
            draw = ("set its weights from a fixed seed (load_backbone builds it in every process)"
                    if not spec.weights_file else "draw only from torch's global generator (init: scratch seeds it)")
            raise _fail(spec, prop, f"{how} give different {k}: {draw}")


def _forward(spec: BackboneSpec, net: nn.Module, x: Tensor, prop: str) -> Tensor:
    try:
        with torch.no_grad():
            return net(x)
    except Exception as e:
        raise _fail(spec, prop, f"forward on a batch {tuple(x.shape)} raised {e!r}") from e


def check_features(spec: BackboneSpec, net: nn.Module, seed: int = 0) -> int:
    """The third property (module docstring) on ``net`` (put in eval mode, as the engine does);
    returns the feature size ``d``."""
    net.eval()
    x = images(spec, BATCH, seed)
    kept = x.clone()
    out = _forward(spec, net, x, "features [B, d]")
    if not _same_bits(x, kept):
        raise _fail(spec, "leaves its input", "forward modified its input batch (clone before writing)")
    if not (isinstance(out, Tensor) and out.dim() == 2 and out.shape[0] == BATCH and out.shape[1] > 0):
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise _fail(spec, "features [B, d]", f"a batch of {BATCH} gave {got}, not [{BATCH}, d]")
    if out.dtype != torch.float32:
        raise _fail(spec, "features [B, d]", f"a batch of {BATCH} gave {out.dtype} features, not torch.float32 "
                    "(the feature cache and the heads are float32)")
    if not bool(torch.isfinite(out).all()):
        bad = int((~torch.isfinite(out)).sum())
        raise _fail(spec, "features [B, d]", f"a batch of {BATCH} gave {bad} NaN/Inf of {out.numel()} features")
    again = _forward(spec, net, x, "eval determinism")
    if not _same_bits(out, again):
        raise _fail(spec, "eval determinism", "two forward passes in eval mode differ (dropout or other "
                    "randomness: the cached features must be one function of the dataset)")
    d = int(out.shape[1])
    one = _forward(spec, net, x[:1].clone(), "batch of 1")
    if not (isinstance(one, Tensor) and tuple(one.shape) == (1, d)):
        got = tuple(one.shape) if isinstance(one, Tensor) else type(one).__name__
        raise _fail(spec, "batch of 1", f"a batch of 1 gave {got}, not (1, {d}) (feature_dim reads a batch of 1)")
    scale = float(out.abs().max()) + 1.0
    for i in range(BATCH):  # every row alone (a row must not depend on its neighbours in the batch)
        alone = one if i == 0 else _forward(spec, net, x[i:i + 1].clone(), "batch of 1")
        if not (isinstance(alone, Tensor) and tuple(alone.shape) == (1, d)) or not torch.allclose(
                alone[0], out[i], rtol=1e-4, atol=1e-5 * scale):
            diff = (f"max |difference| {float((alone[0] - out[i]).abs().max()):.3g}"
                    if isinstance(alone, Tensor) and tuple(alone.shape) == (1, d) else f"shape {tuple(alone.shape)}")
            raise _fail(spec, "batch of 1", f"row {i}'s features differ alone and within a batch (extract_features "
                        f"runs chunks of rows): {diff}")
    return d


def check_stacked_training(spec: BackboneSpec, dim: int, seed: int = 0) -> None:
    """The fourth property (module docstring), for a backbone with ``dim`` features."""
    from fedsim.models.trainable import ModelPlan, split
    from fedsim.stacked import StackedModel

    prop = "stacked training (vmap = loop)"
    init = "scratch" if spec.weights_file else "pretrained"  # neither reads a weights file
    plan = ModelPlan(backbone=spec.name, trainable="all", k=1, hidden=HIDDEN, init=init, exchange="params",
                     bias=True, seed=seed, dim=dim, num_classes=CLASSES)
    try:
        _, model = split(plan)
    except Exception as e:
        what = f"building the whole model (model: {{trainable: all, init: {init}}})"
        raise _fail(spec, prop, f"{what} raised {e!r}") from e
    x = images(spec, PEERS * BATCH, seed + 1).reshape(PEERS, BATCH, *spec.input_shape)
    y = torch.arange(PEERS * BATCH).reshape(PEERS, BATCH) % CLASSES
    results = []
    for batching in ("vmap", "loop"):
        stacked = StackedModel(copy.deepcopy(model), PEERS, batching=batching)
        g = torch.Generator().manual_seed(seed)
        theta = stacked.theta + 0.01 * torch.randn(stacked.theta.shape, generator=g)  # a different model per peer
        try:
            loss, grad = stacked.loss_and_grad(x, y, theta)
        except Exception as e:
            raise _fail(spec, prop, f"StackedModel.loss_and_grad with batching {batching} raised {e!r}") from e
        results.append((batching, loss, grad, stacked.stats()))
    (_, *a), (_, *b) = results
    for what, u, v in zip(("losses", "gradients", "BatchNorm running statistics"), a, b, strict=True):
        if u.shape != v.shape or not bool(torch.isfinite(u).all()):
            raise _fail(spec, prop, f"{what} {tuple(u.shape)} under vmap (finite: {bool(torch.isfinite(u).all())}) "
                        f"vs {tuple(v.shape)} in the loop")
        scale = float(v.abs().max()) if v.numel() else 0.0
        if not torch.allclose(u, v, rtol=1e-3, atol=1e-4 * scale + 1e-6):
            raise _fail(spec, prop, f"the peers' {what} under vmap differ from one peer at a time: max |difference| "
                        f"{float((u - v).abs().max()):.3g} (largest value {scale:.3g})")


@contextmanager
def _registered(spec: BackboneSpec) -> Iterator[None]:
    """``spec`` registered while the checks run (the engine's code looks backbones up by name);
    one registered beforehand stays, one registered here is removed again."""
    new = BACKBONES.get(spec.name) is None
    register_backbone(spec)
    try:
        yield
    finally:
        if new:
            BACKBONES.pop(spec.name, None)


def check_backbone(backbone: BackboneSpec | str, *, seed: int = 0, plugins: Sequence[str] = ()) -> int:
    """Check ``backbone`` (a registered backbone's name, or a :class:`BackboneSpec`, registered for
    the duration of the check when it is not) against the properties of the module docstring;
    ``AssertionError`` naming the backbone and the property at the first failure (``ValueError``
    for ``identity``, which has no network, or a spec whose name another backbone holds).
    ``plugins``: the files or modules that register it (as ``fedsim.run``'s). Torch's global
    random state is left as it was. Returns the number of properties checked (4)."""
    if plugins:
        from fedsim import plugins as plugin_mod

        plugin_mod.load(plugin_mod.grant(plugins))
    spec = get_spec(backbone) if isinstance(backbone, str) else backbone
    if spec.build is None:
        raise ValueError(f"check_backbone: backbone {spec.name!r} has no network to check (identity)")
    with _registered(spec), torch.random.fork_rng(devices=[]):
        net = check_builds(spec)
        check_deterministic_build(spec, seed)
        dim = check_features(spec, net, seed)
        check_stacked_training(spec, dim, seed)
    return 4
