"""The network peers train when more than the linear head is trainable (scenario ``model:``).

The model is ``backbone → head``: a registered backbone (:mod:`fedsim.models.backbones`) and a
head MLP ``Linear(d, h₁) → ReLU → … → Linear(h_last, C)`` (``model.hidden``; empty: one linear
layer, today's head). Its *layers* are the modules that hold parameters, counted in forward
order: each parameterised child of a ``nn.Sequential`` backbone (``fmnist_cnn``: its two convs),
a non-sequential backbone as one layer, then the head's linear layers. ``model.trainable``:

* ``head``: the head only (the backbone is frozen: its outputs are the cached features);
* ``last_k``: the last ``k`` layers and everything after the first of them; the frozen prefix
  before it runs once over the dataset and its activations are cached (like the features);
* ``all``: the whole network, from the backbone's pretrained weights (``init: pretrained``) or a
  random initialisation drawn from the scenario's seed (``init: scratch``, PyTorch's default
  per-layer initialisation under a seeded generator).

Every peer starts from the same initial parameters (as in FedAvg, McMahan et al. 2017, where the
server broadcasts one initial model). The frozen prefix runs in ``eval()`` mode (a BatchNorm there
uses its stored statistics, as a frozen pretrained layer should). In the trainable part BatchNorm
layers run in train mode during local steps, each peer keeping its own running statistics, and in
eval mode for evaluation (:mod:`fedsim.stacked`); dropout stays off. What happens to BatchNorm on
exchange is ``model.bn`` (:mod:`fedsim.whole`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedsim import rng as crng
from fedsim.models.backbones import get_spec, load_backbone, to_input


@dataclass(frozen=True)
class ModelPlan:
    """The scenario's ``model`` section as plain data (it travels to Ray actors)."""

    backbone: str
    trainable: str  # head | last_k | all
    k: int
    hidden: tuple[int, ...]
    init: str  # pretrained | scratch
    exchange: str  # params | gradients | dpsgd
    bias: bool  # linear layers of the head have a bias (training.bias)
    seed: int
    dim: int  # the backbone's output (feature) size: the head's input
    num_classes: int
    device: str = "cpu"  # engine.device: where the stacked trainable part runs (fedsim.device)
    batching: str = "auto"  # model.batching: vmap | loop | auto (fedsim.stacked.resolve_batching)
    bn: str = "exchanged"  # model.bn: exchanged (FedAvg: statistics sent and aggregated) | local (FedBN)


def _backbone(plan: ModelPlan) -> nn.Module | None:
    """The backbone network with the plan's initial weights (None: the identity backbone)."""
    spec = get_spec(plan.backbone)
    if spec.build is None:
        return None
    if plan.init == "pretrained":
        net, _ = load_backbone(plan.backbone)
        assert net is not None
        return net.requires_grad_(True)
    with torch.random.fork_rng(devices=[]):  # the global RNG is left as it was
        torch.manual_seed(crng.derive_seed(plan.seed, "model_init", 0))
        net = spec.build()
        if not spec.weights_file:  # the builder may have set (loaded) its own weights: draw them again
            reinitialise(net, plan.backbone)
        return net.requires_grad_(True)


def reinitialise(net: nn.Module, name: str) -> None:
    """Every parameter of ``net`` drawn again by its module's ``reset_parameters()`` (PyTorch's
    default initialisation, from the current RNG): ``init: scratch`` for a backbone whose builder
    sets its weights itself (``weights_file=False``, e.g. read from a file). A module holding
    parameters of its own without ``reset_parameters`` is refused (its weights could not be drawn)."""
    for mod in net.modules():
        if not any(True for _ in mod.parameters(recurse=False)):
            continue
        reset = getattr(mod, "reset_parameters", None)
        if not callable(reset):
            raise ValueError(
                f"model.init: scratch: backbone {name!r} sets its own weights and its module "
                f"{type(mod).__name__} has no reset_parameters() to draw them at random; use init: pretrained"
            )
        reset()


def _head(plan: ModelPlan, dim: int, num_classes: int) -> list[nn.Module]:
    """The head MLP's modules, seeded (stream ``model_init``, counter 1)."""
    widths = [dim, *plan.hidden, num_classes]
    out: list[nn.Module] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(crng.derive_seed(plan.seed, "model_init", 1))
        for i in range(len(widths) - 1):
            out.append(nn.Linear(widths[i], widths[i + 1], bias=plan.bias))
            if i < len(widths) - 2:
                out.append(nn.ReLU())
    return out


def _parts(plan: ModelPlan) -> tuple[list[nn.Module], int]:
    """The whole network as a flat list of modules in forward order, and how many of them are the
    backbone's (a non-sequential backbone is one module)."""
    net = _backbone(plan)
    if net is None:
        mods: list[nn.Module] = [nn.Flatten()]  # identity: flattened raw inputs
    elif isinstance(net, nn.Sequential):
        mods = list(net.children())
    else:
        mods = [net]
    return [*mods, *_head(plan, plan.dim, plan.num_classes)], len(mods)


def _has_params(m: nn.Module) -> bool:
    return any(True for _ in m.parameters())


def num_layers(backbone: str, hidden: tuple[int, ...] | list[int]) -> int:
    """How many layers (:mod:`module docstring <fedsim.models.trainable>`) the model has."""
    spec = get_spec(backbone)
    n = 0
    if spec.build is not None:
        net = spec.build()
        kids = list(net.children()) if isinstance(net, nn.Sequential) else [net]
        n = sum(_has_params(m) for m in kids)
    return n + len(hidden) + 1


def split(plan: ModelPlan) -> tuple[nn.Sequential, nn.Sequential]:
    """``(frozen prefix, trainable suffix)`` of the plan's network; the prefix may be empty."""
    mods, _ = _parts(plan)
    layer_at = [i for i, m in enumerate(mods) if _has_params(m)]
    if plan.trainable == "all":
        cut = 0
    elif plan.trainable == "head":
        cut = len(mods) - (2 * len(plan.hidden) + 1)
    else:
        if plan.k > len(layer_at):
            raise ValueError(f"model.k: {plan.k} is more than the model's {len(layer_at)} layers")
        cut = layer_at[-plan.k]
    prefix = nn.Sequential(*mods[:cut]).eval().requires_grad_(False)
    suffix = nn.Sequential(*mods[cut:]).eval()
    return prefix, suffix


@torch.no_grad()
def frozen_inputs(prefix: nn.Module, x: np.ndarray, backbone: str, batch: int = 1024) -> np.ndarray:
    """The frozen prefix's activations on raw inputs ``x`` (computed once per run): float32
    ``[N, ...]`` in the shape the trainable part takes."""
    inp = to_input(x, get_spec(backbone))
    out = [prefix(inp[i : i + batch]) for i in range(0, len(inp), batch)]
    return torch.cat(out).numpy().astype(np.float32) if out else inp.numpy().astype(np.float32)
