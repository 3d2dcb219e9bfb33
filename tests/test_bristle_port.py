"""benchmarks/bristle_port.py (the port of the authors' Bristle loop) and benchmarks/dl4j_backbone.py
(their DL4J backbone file): the port's integrator agrees with fedsim's independent one, its DL4J
updater with torch's Adam, its iterator skips training when exhausted; the ND4J reader's layout."""

from __future__ import annotations

import io
import json
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from benchutil import load_benchmark

from strategies.bristle import Bristle

port = load_benchmark("bristle_port")


@pytest.fixture(scope="module")
def dl4j():
    """The plugin, imported once; its backbone unregistered afterwards (no other test sees it)."""
    from fedsim.models.backbones import BACKBONES

    mod = load_benchmark("dl4j_backbone")
    yield mod
    BACKBONES.pop("authors_emnist_cnn", None)


def _instance(seed: int, c: int = 5, d: int = 7, k: int = 4, per_class: int = 6):
    """A receiver holding classes 1 and 3, ``k`` candidates with random heads, a validation set
    large enough that recalls differ between heads."""
    rng = np.random.default_rng(seed)
    labels = [1, 3]
    own = rng.normal(size=(c, d))
    cand = rng.normal(size=(k, c, d))
    cand[0] = own + 0.05 * rng.normal(size=(c, d))  # one close, better-or-equal candidate
    centers = rng.normal(size=(c, d)) * 2
    vy = np.repeat(labels, per_class)
    vx = centers[vy] + rng.normal(size=(len(vy), d))
    counts = np.array([1, 2, 1, 2])[:k]
    return own, cand, vx, vy, labels, counts


@pytest.mark.parametrize("seed", range(6))
def test_port_integrator_equals_fedsims(seed: int) -> None:
    """Two independent implementations of Bristle.kt (the port on DL4J's ``W [d, C]``, fedsim's on
    ``W [C, d]``) give the same head after integration and the per-class mean removal."""
    own, cand, vx, vy, labels, counts = _instance(seed)
    c, d = own.shape
    others = {j: cand[j].T.copy() for j in range(len(cand))}
    got = port.bristle_integrate(own.T.copy(), others, vx, vy, labels, dict(enumerate(counts.tolist())),
                                 np.random.default_rng(0))
    got = got - got.mean(axis=0, keepdims=True)  # Node.kt:266-268
    fam = torch.zeros(1, c, dtype=torch.bool)
    fam[0, labels] = True
    ref = Bristle().integrate(
        torch.from_numpy(own.reshape(1, -1)), torch.from_numpy(cand.reshape(1, len(cand), -1)),
        torch.from_numpy(vx)[None], torch.from_numpy(vy)[None], fam, (c, d), False,
        counts=torch.from_numpy(counts)[None],
    )[0].numpy().reshape(c, d)
    np.testing.assert_allclose(got.T, ref, rtol=0, atol=1e-12)
    assert not np.allclose(ref, own - own.mean(axis=1, keepdims=True))  # the candidates did count


def test_port_weights_by_hand() -> None:
    """One candidate sharing one of two classes, better on it (recall 1 vs 0): weight of the
    selected class ``max(0, 10σ(10³/100) − 4)·1`` = 5.99955 …, the other familiar class 0."""
    d = 2
    vx = np.array([[1.0, 0.0], [0.0, 1.0]])  # e0 → class 0, e1 → class 1
    vy = np.array([0, 1])
    own = np.zeros((d, 3))
    own[1, 1] = 1.0  # class-1 sample → class 1: recall 1
    own[0, 2] = 1.0  # class-0 sample → class 2: recall 0
    peer = np.zeros((d, 3))
    peer[0, 0] = 1.0  # class-0 sample → class 0
    peer[1, 2] = 1.0  # class-1 sample → class 2
    out = port.bristle_integrate(own, {7: peer}, vx, vy, [0, 1], {7: 1}, np.random.default_rng(0))
    w = 10 / (1 + np.exp(-(10.0**3) / 100)) - 4  # score d^(3 + 0), d = 10·|0 − 1|; certainty 1 − 0
    np.testing.assert_allclose(out[:, 0], (own[:, 0] + w * peer[:, 0]) / (1 + w), atol=1e-12)
    np.testing.assert_allclose(out[:, 1], own[:, 1], atol=1e-12)  # not selected for the candidate
    np.testing.assert_allclose(out[:, 2], (own[:, 2] + w * peer[:, 2]) / (1 + w), atol=1e-12)  # foreign


def test_dl4j_updater_equals_torch_adam_with_l2() -> None:
    """DL4J's order (loss gradient ÷ minibatch, + l2·W unscaled, then Adam) is torch's Adam with
    ``weight_decay``, up to where ε enters (set to 0 here); batches of different sizes."""
    rng = np.random.default_rng(1)
    d, c, lr, l2 = 4, 3, 0.01, 0.3
    layer = port.OutputLayer(rng.normal(size=(d, c)), lr, l2, eps=0.0)
    w = torch.tensor(layer.w.T.copy(), requires_grad=True)
    opt = torch.optim.Adam([w], lr=lr, weight_decay=l2, eps=0.0)
    for n in (1, 3, 5, 2):
        x, y = rng.normal(size=(n, d)), rng.integers(c, size=n)
        layer.fit(x, y)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(torch.from_numpy(x) @ w.T, torch.from_numpy(y)).backward()
        opt.step()
        np.testing.assert_allclose(layer.w, w.detach().numpy().T, rtol=1e-9, atol=1e-12)


def test_exhausted_iterator_skips_training() -> None:
    """CustomMnistDataFetcher's check: 4 samples, batch 5 → trained at every other iteration; 8
    samples → batches of 5 and 3, then a skipped iteration."""
    for n, pattern in ((4, [4, 0, 4, 0, 4, 0]), (8, [5, 3, 0, 5, 3, 0])):
        it = port.TrainIterator(n, 5, np.random.default_rng(0))
        got = []
        for _ in pattern:
            try:
                got.append(len(it.next()))
            except StopIteration:
                it.reset()
                got.append(0)
        assert got == pattern


def _nd4j_row(values: np.ndarray) -> bytes:
    def utf(s: str) -> bytes:
        return struct.pack(">H", len(s)) + s.encode()

    n = len(values)
    shape = [2, 1, n, n, 1, 0, 1, ord("c")]
    return (
        utf("MIXED_DATA_TYPES") + struct.pack(">q", len(shape)) + utf("LONG") + struct.pack(">8q", *shape)
        + utf("MIXED_DATA_TYPES") + struct.pack(">q", n) + utf("FLOAT") + values.astype(">f4").tobytes()
    )


def test_dl4j_backbone_reads_bias_first_c_order(dl4j, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conv = "org.deeplearning4j.nn.conf.layers.ConvolutionLayer"
    conf = {"confs": [
        {"layer": {"@class": conv, "nin": 1, "nout": 10, "kernelSize": [5, 5]}},
        {"layer": {"@class": "org.deeplearning4j.nn.conf.layers.SubsamplingLayer"}},
        {"layer": {"@class": conv, "nin": 10, "nout": 50, "kernelSize": [5, 5]}},
        {"layer": {"@class": "org.deeplearning4j.nn.conf.layers.SubsamplingLayer"}},
        {"layer": {"@class": "org.deeplearning4j.nn.conf.layers.OutputLayer", "nin": 800, "nout": 26}},
    ]}
    total = 10 + 250 + 50 + 12500 + 800 * 26
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("configuration.json", json.dumps(conf))
        z.writestr("coefficients.bin", _nd4j_row(np.arange(total, dtype=np.float32)))
    path = tmp_path / "transfer-mnist"
    path.write_bytes(buf.getvalue())
    monkeypatch.setenv(dl4j.ENV, str(path))
    net = dl4j.AuthorsCNN()
    assert net.c1.bias.tolist() == list(range(10))
    assert net.c1.weight[0, 0, 0].tolist() == [10, 11, 12, 13, 14]  # c order [out, in, kH, kW]
    assert net.c1.weight[1, 0, 0, 0].item() == 35
    assert net.c2.bias[0].item() == 260 and net.c2.weight[0, 1, 0, 0].item() == 310 + 25
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 800)


def test_dl4j_backbone_needs_the_file(dl4j, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(dl4j.ENV, raising=False)
    with pytest.raises(ValueError, match="FEDSIM_DL4J_BACKBONE"):
        dl4j.AuthorsCNN()


def test_dl4j_backbone_refuses_another_file(dl4j, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "not-a-model"
    bad.write_bytes(b"hello")
    monkeypatch.setenv(dl4j.ENV, str(bad))
    with pytest.raises(ValueError, match="not a DL4J model file"):
        dl4j.AuthorsCNN()
