"""Feature cache: computed once, reused, and invalidated when dataset or backbone changes."""

import numpy as np

from fedsim import features as feat
from fedsim.data.arrays import Dataset


def _ds(seed=0, name="toy"):
    r = np.random.default_rng(seed)
    x = r.integers(0, 255, size=(40, 28, 28), dtype=np.uint8)
    y = np.arange(40) % 4
    return Dataset(name, x[:30], y[:30], x[30:], y[30:], 4)


def test_cache_hit_and_invalidation(tmp_path, monkeypatch):
    calls = []
    real = feat.extract_features

    def counting(net, x, spec, batch=1024):
        calls.append(len(x))
        return real(net, x, spec, batch)

    monkeypatch.setattr(feat, "extract_features", counting)
    d = str(tmp_path)
    a = feat.features_for(_ds(0), "fmnist_cnn", d)
    assert len(calls) == 2  # train + test
    b = feat.features_for(_ds(0), "fmnist_cnn", d)
    assert len(calls) == 2 and a.key == b.key and np.array_equal(a.x_train, b.x_train)
    # changed dataset content → new key, recomputed
    c = feat.features_for(_ds(1), "fmnist_cnn", d)
    assert c.key != a.key and len(calls) == 4
    # changed backbone weights → new key
    real_load = feat.load_backbone

    def other_weights(name):
        net, fp = real_load(name)
        return net, fp + "-changed"

    monkeypatch.setattr(feat, "load_backbone", other_weights)
    e = feat.features_for(_ds(0), "fmnist_cnn", d)
    assert e.key != a.key and len(calls) == 6
    # another backbone → another key
    g = feat.features_for(_ds(0), "identity", d)
    assert g.key != a.key and g.dim == 28 * 28


def test_features_are_the_frozen_backbones(tmp_path):
    from fedsim.models.backbones import get_spec, load_backbone, to_input

    ds = _ds(0)
    f = feat.features_for(ds, "fmnist_cnn", str(tmp_path))
    net, _ = load_backbone("fmnist_cnn")
    import torch

    with torch.no_grad():
        ref = net(to_input(ds.x_test, get_spec("fmnist_cnn"))).numpy()
    np.testing.assert_allclose(f.x_test, ref, rtol=1e-5, atol=1e-6)
