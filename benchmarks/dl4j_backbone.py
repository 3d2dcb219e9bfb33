"""fedsim plugin: the Bristle authors' own frozen backbone, read from their DL4J model file.

Registers the backbone ``authors_emnist_cnn``: the feature extractor of the network in
jverbraeken/trustchain-superapp ``fedml/src/main/assets/transfer-mnist`` (a DL4J 1.0.0-beta7
``ModelSerializer`` zip, added in commit c84e5354 and the one their runs at f1fb8fb5 loaded:
``Node.loadFromTransferNetwork`` copies every layer but the output layer). Its architecture is
``ai/Runner.kt:38-105`` (``generateDefaultMNISTConfiguration``): conv 5×5 → 10 channels, LeakyReLU
(α = 0.01), max-pool 2×2, conv 5×5 → 50, LeakyReLU, max-pool 2×2, flattened channel-major
(NCHW, ``CnnToFeedForwardPreProcessor``) to 800 features; the input is the pixel / 255
(``CustomMnistDataFetcher.fetch``), no standardisation. It was pretrained on EMNIST letters
(26 classes; ``configuration.json``: 22,880 iterations).

The file is not shipped with fedsim and nothing is downloaded: extract it yourself from the
public repository and point ``FEDSIM_DL4J_BACKBONE`` at it, e.g.::

    git -C trustchain-superapp show f1fb8fb5:fedml/src/main/assets/transfer-mnist > /tmp/transfer-mnist.zip
    export FEDSIM_DL4J_BACKBONE=/tmp/transfer-mnist.zip
    fedsim run scenarios/bristle-repro/windows2.yaml --set backbone.name=authors_emnist_cnn \
        --plugin benchmarks/dl4j_backbone.py

``coefficients.bin`` is ND4J's binary array format: a UTF string, a long length and a type name
for the shape-info buffer (rank 2: ``[1, P]``), its longs, then the same header for the data
buffer and ``P`` big-endian float32s. DL4J flattens a convolution layer's parameters bias first,
then the weights in ``c`` order ``[out, in, kH, kW]`` (``ConvolutionParamInitializer``).
"""

from __future__ import annotations

import json
import os
import struct
import zipfile

import numpy as np
import torch
from torch import nn

from fedsim.models.backbones import BackboneSpec, register_backbone

ENV = "FEDSIM_DL4J_BACKBONE"


def _utf(b: bytes, o: int) -> tuple[str, int]:
    n = struct.unpack(">H", b[o : o + 2])[0]
    return b[o + 2 : o + 2 + n].decode(), o + 2 + n


def read_nd4j_row(b: bytes) -> np.ndarray:
    """The flattened parameters ``[P]`` of an ND4J row vector written by ``Nd4j.write``."""
    _, o = _utf(b, 0)  # allocation mode
    n_shape = struct.unpack(">q", b[o : o + 8])[0]
    kind, o = _utf(b, o + 8)
    if kind != "LONG" or n_shape < 3:
        raise ValueError(f"coefficients.bin: unexpected shape buffer ({kind}, {n_shape})")
    shape = struct.unpack(f">{n_shape}q", b[o : o + 8 * n_shape])
    o += 8 * n_shape
    rank = shape[0]
    length = int(np.prod(shape[1 : 1 + rank]))
    _, o = _utf(b, o)
    n_data = struct.unpack(">q", b[o : o + 8])[0]
    kind, o = _utf(b, o + 8)
    if kind != "FLOAT" or n_data != length:
        raise ValueError(f"coefficients.bin: unexpected data buffer ({kind}, {n_data} values for {length})")
    return np.frombuffer(b[o : o + 4 * length], dtype=">f4").astype(np.float32)


class AuthorsCNN(nn.Module):
    """The frozen feature extractor of ``generateDefaultMNISTConfiguration`` with the file's weights."""

    def __init__(self, path: str | None = None) -> None:
        super().__init__()
        path = path or os.environ.get(ENV)
        if not path:
            raise ValueError(f"backbone authors_emnist_cnn: set {ENV} to the DL4J model file (transfer-mnist)")
        try:
            with zipfile.ZipFile(path) as z:
                conf = json.loads(z.read("configuration.json"))
                flat = read_nd4j_row(z.read("coefficients.bin"))
        except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError, struct.error) as e:
            raise ValueError(f"backbone authors_emnist_cnn: {path} is not a DL4J model file ({e})") from None
        layers = [c["layer"] for c in conf["confs"]]
        convs = [ly for ly in layers if ly["@class"].endswith("ConvolutionLayer")]
        if [(ly["nin"], ly["nout"], ly["kernelSize"]) for ly in convs] != [(1, 10, [5, 5]), (10, 50, [5, 5])]:
            raise ValueError("backbone authors_emnist_cnn: the file is not the authors' MNIST network")
        self.c1, self.c2 = nn.Conv2d(1, 10, 5), nn.Conv2d(10, 50, 5)
        o = 0
        for conv in (self.c1, self.c2):
            nb, nw = conv.bias.numel(), conv.weight.numel()
            conv.bias.data = torch.from_numpy(flat[o : o + nb].copy())
            conv.weight.data = torch.from_numpy(flat[o + nb : o + nb + nw].copy()).reshape(conv.weight.shape)
            o += nb + nw
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.max_pool2d(nn.functional.leaky_relu(self.c1(x), 0.01), 2)
        h = nn.functional.max_pool2d(nn.functional.leaky_relu(self.c2(h), 0.01), 2)
        return h.flatten(1)  # [N, 50·4·4 = 800], channel-major


register_backbone(
    BackboneSpec(
        "authors_emnist_cnn",
        "the Bristle authors' EMNIST-letters CNN (800 features), from their DL4J file ($FEDSIM_DL4J_BACKBONE)",
        AuthorsCNN,
        (1, 28, 28),
        weights_file=False,
    )
)
