"""oneMKL's VML kernels are chosen once, in one thread, before the groups run (fedsim.mkl_vml): two
threads' first calls of a VML function raced and gave one group's numbers another last bit in about
one process in nine (pytorch/pytorch issue 188792; docs/performance.md)."""

from __future__ import annotations

from collections import Counter

import torch

from fedsim import mkl_vml


def test_warm_calls_every_vml_function_once_in_both_precisions_and_only_once(monkeypatch):
    calls: Counter = Counter()
    for name in mkl_vml.VML_OPS:
        real = getattr(torch, name)
        monkeypatch.setattr(torch, name, lambda x, _n=name, _f=real: calls.update([(_n, x.dtype)]) or _f(x))
    monkeypatch.setattr(mkl_vml, "_warmed", False)
    mkl_vml.warm()
    mkl_vml.warm()
    assert calls == Counter({(n, dt): 1 for n in mkl_vml.VML_OPS for dt in (torch.float32, torch.float64)})


def test_every_name_is_a_torch_unary_op():
    for name in mkl_vml.VML_OPS:
        for dt in (torch.float32, torch.float64):
            out = getattr(torch, name)(torch.full((4,), 0.5, dtype=dt))
            assert out.shape == (4,) and out.dtype == dt


def test_groups_and_the_server_warm_as_they_are_built(small_scenario, monkeypatch):
    from fedsim.backend import LocalBackend
    from fedsim.prepare import prepare
    from fedsim.scenario import parse
    from fedsim.simulation import Simulation

    seen: list[str] = []
    monkeypatch.setattr(mkl_vml, "warm", lambda: seen.append("warm"))
    sc = parse(small_scenario(mode="federated", **{"engine.num_actors": 2}))
    sim = Simulation(sc, prepare(sc), LocalBackend(2))
    try:
        assert len(seen) == 3  # 2 groups + the server, each as it is built (in the driver, before any call)
    finally:
        sim.close()
