"""oneMKL's VML kernels are chosen once, in one thread, before the groups run (fedsim.mkl_vml): two
threads' first calls of a VML function raced and gave one group's numbers another last bit in about
one process in eight (pytorch/pytorch issue 188792; docs/performance.md)."""

from __future__ import annotations

from collections import Counter

import torch

from fedsim import mkl_vml

# the functions torch 2.13's libtorch_cpu calls in oneMKL's VML (its vms*/vmd* symbols, float and double)
TORCH_VML = {"acos", "asin", "atan", "cos", "erf", "erfc", "erfinv", "exp", "log", "log10", "log2", "sin", "sqrt",
             "tan", "tanh", "trunc"}


def test_the_list_is_torchs_vml_functions():
    assert set(mkl_vml.VML_OPS) == TORCH_VML and len(mkl_vml.VML_OPS) == len(TORCH_VML)


def test_warm_calls_every_vml_function_once_in_both_precisions_and_only_once(monkeypatch):
    calls: Counter = Counter()

    def counted(name, real):
        def call(x):
            assert x.numel() >= 1 and x.is_contiguous()  # (an empty tensor reaches no VML kernel)
            calls.update([(name, x.dtype)])
            return real(x)

        return call

    for name in mkl_vml.VML_OPS:
        monkeypatch.setattr(torch, name, counted(name, getattr(torch, name)))
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


def test_a_second_thread_waits_until_the_first_has_chosen_every_kernel(monkeypatch):
    """The once-flag is set after the calls: a thread that asks while another warms returns only
    once every kernel is chosen."""
    import threading

    started, release = threading.Event(), threading.Event()
    real = torch.trunc

    def slow(x):
        started.set()
        assert release.wait(10)
        return real(x)

    monkeypatch.setattr(torch, "trunc", slow)
    monkeypatch.setattr(mkl_vml, "_warmed", False)
    first = threading.Thread(target=mkl_vml.warm)
    first.start()
    assert started.wait(10)
    second = threading.Thread(target=mkl_vml.warm)
    second.start()
    second.join(0.3)
    assert second.is_alive()  # still waiting for the first
    release.set()
    first.join(10)
    second.join(10)
    assert not second.is_alive() and mkl_vml._warmed
