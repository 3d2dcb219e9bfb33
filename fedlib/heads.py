"""The one layout of a flattened linear head, shared by the rules, the attacks, the probes and
the engine.

A head with weight ``W [C, d]`` and optional bias ``b [C]`` travels as the vector
``[vec(W), b]``: ``W`` row-major (``C·d`` entries), then ``b`` (``C`` entries) when there is a
bias. Leading dimensions batch heads: ``[..., P]`` ↔ ``W [..., C, d]``, ``b [..., C]``.
Importing this module does not import torch (the scenario checks use :func:`num_params`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where a tensor is handled: num_params serves torch-free callers
    from torch import Tensor


def num_params(layer_shape: tuple[int, int], bias: bool) -> int:
    """``P = C·d + C`` with a bias, ``C·d`` without."""
    c, d = layer_shape
    return c * d + (c if bias else 0)


def unflatten(params: Tensor, layer_shape: tuple[int, int], bias: bool) -> tuple[Tensor, Tensor | None]:
    """Split ``[..., P]`` vectors into weights ``[..., C, d]`` and biases ``[..., C]`` (or None);
    ``ValueError`` when the last dimension is not ``P`` (:func:`num_params`)."""
    c, d = layer_shape
    if params.shape[-1] != num_params(layer_shape, bias):
        raise ValueError(f"params has {params.shape[-1]} entries, layer {layer_shape} bias={bias} "
                         f"needs {num_params(layer_shape, bias)}")
    w = params[..., : c * d].reshape(*params.shape[:-1], c, d)
    b = params[..., c * d : c * d + c] if bias else None
    return w, b


def flatten(w: Tensor, b: Tensor | None) -> Tensor:
    """Inverse of :func:`unflatten`: ``W [..., C, d]`` (and ``b [..., C]``) → ``[..., P]``."""
    import torch

    flat = w.reshape(*w.shape[:-2], -1)
    return flat if b is None else torch.cat([flat, b], dim=-1)
