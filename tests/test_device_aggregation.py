"""The decentralized aggregation on ``engine.device`` (issue 19; :mod:`fedsim.gossip`). No GPU here:
the batched path is run on torch's ``meta`` device (tensors with shapes and no data: reading one back
to the host raises, and a tensor made without ``device=`` stays on the CPU), under a torch function
mode that refuses every operation mixing devices (meta, unlike CUDA, lets some pass: a CPU ``src`` in
``scatter_``, a CPU operand of ``bmm``, a CPU index in ``index_select``); the rules' batched forms are
run on meta inputs one by one; on the CPU a device object gives the bytes of a run without one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

import strategies
from fedsim import gossip, peers
from fedsim.prepare import prepare
from fedsim.runner import Run
from fedsim.scenario import parse
from strategies import AggregationContext, build

META = torch.device("meta")
MOVES = {torch.Tensor.to, torch.Tensor.copy_, torch.Tensor.cpu, torch.Tensor.cuda}  # crossing devices on purpose


class SameDevice(TorchFunctionMode):
    """Refuses any torch operation whose tensor inputs (0-dim ones aside, as CUDA takes CPU scalars)
    sit on different devices; with ``only``, also any tensor input or output off that device."""

    def __init__(self, only: torch.device | None = None) -> None:
        super().__init__()
        self.only, self.ops = only, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in MOVES:
            return out
        ins = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        devices = {t.device for t in ins if t.dim() > 0}
        assert len(devices) <= 1, f"{getattr(func, '__name__', func)} mixes devices {devices}"
        if self.only is not None:
            outs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
            off = {t.device for t in ins + outs} - {self.only}
            assert not off, f"{getattr(func, '__name__', func)}: a tensor on {off}, not {self.only}"
        self.ops += 1
        return out


RULES = [  # the rules with a batched form: the ones that run on engine.device
    ("bristle", {}),  # CWR, overlap counts, nearest_random (all senders candidates), sequential penalty
    ("bristle", {"cwr": False, "classes": "top", "top": 2, "mean_removal": "feature", "metric": "f1"}),
    ("fedavg", {}),
    ("median", {}),
    ("trimmed_mean", {"beta": 0.2}),
    ("krum", {}),
    ("multikrum", {}),
    ("centered_clipping", {"iterations": 2}),
]
FALLBACK = ["bulyan", "geomed", "mozi"]  # no batched form: the per-peer path, on the CPU


def _scenario(tmp_path, rule: str, params: dict, name: str = "a", **over) -> dict:
    d = {
        "name": name, "seed": 3, "rounds": 2, "mode": "decentralized",
        "dataset": {"name": "sklearn_digits"},
        "backbone": {"name": "identity", "cache_dir": str(tmp_path / "cache")},
        "partition": {"kind": "iid"},
        "peers": {"count": 6},
        "topology": {"kind": "complete"},  # 5 senders each: every rule's batched form applies
        "strategy": {"name": rule, "params": params},
        "training": {"lr": 0.05, "momentum": 0.9, "batch_size": 8, "local_steps": 2, "bias": True},
        "engine": {"backend": "local", "num_actors": 2},
        "output": {"dir": str(tmp_path / "runs")},
    }
    for k, v in over.items():
        section, _, key = k.rpartition(".")
        d.setdefault(section, {})[key] = v
    return d


def _meta_group(tmp_path, monkeypatch, rule: str, params: dict) -> peers.PeerGroup:
    """A group whose ``engine.device`` is ``cuda`` (accepted: CUDA faked available) resolved to meta."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(peers, "resolve", lambda name: META)
    prep = prepare(parse(_scenario(tmp_path, rule, params, **{"engine.device": "cuda"})))
    f = prep.features
    return peers.PeerGroup(prep.setups[0], {"x_train": f.x_train, "y_train": f.y_train},
                           {"x_test": f.x_test, "y_test": f.y_test})


def _persistent(g: peers.PeerGroup) -> dict[str, torch.Tensor]:
    cpu_side = {"local_classes", "claimed", "val_x", "val_y"}  # read on the CPU, moved per chunk
    return {k: v for k, v in vars(g).items() if isinstance(v, torch.Tensor) and k not in cpu_side}


def _ctx_tensors(ctx: AggregationContext) -> list[torch.Tensor]:
    return [v for v in vars(ctx).values() if isinstance(v, torch.Tensor)]


@pytest.mark.parametrize(("rule", "params"), RULES)
def test_gossip_round_aggregates_on_the_device(tmp_path, monkeypatch, rule, params):
    """One decentralized aggregation of a group on (faked) ``cuda`` = meta: every honest peer goes
    through the batched path; the rule gets ``own``, the received rows, the fallback rows and every
    context tensor on the device, computes only there (no tensor made off it), and its result
    reaches ``put`` on the device; no operation of the round mixes devices; the heads stay there."""
    g = _meta_group(tmp_path, monkeypatch, rule, params)
    assert g.aggregation_device == META and gossip.has_batched_form(g.rule, META)
    if g.cwr:
        g.tw, g.tb = g.w.clone(), g.b.clone()  # train()'s CWR copies
    per_peer, calls, puts = strategies.aggregate, [], []
    monkeypatch.setattr(strategies, "aggregate", lambda *a, **k: pytest.fail("a per-peer (CPU) aggregation"))
    batched = strategies.aggregate_batch

    def on_device(rule_, own, received, ctx, fallback=None):
        assert {t.device for t in (own, received, fallback, *_ctx_tensors(ctx))} == {META}
        with SameDevice(only=META) as mode:
            out = batched(rule_, own, received, ctx, fallback)
        assert mode.ops > 0 and out.device == META and out.shape == own.shape
        calls.append(received.shape)
        return out

    monkeypatch.setattr(strategies, "aggregate_batch", on_device)
    writer = g._result_writer

    def spy_writer(params_, msgs):
        put, finish = writer(params_, msgs)
        return (lambda js, rows: puts.append(rows.device) or put(js, rows)), finish

    monkeypatch.setattr(g, "_result_writer", spy_writer)
    n, size = g.s.num_peers, g._num_params()
    with SameDevice():
        stats = g.aggregate(0, np.zeros((3, size), np.float32), np.zeros((n - 3, size), np.float32))
    assert stats == {"dropped": 0, "skipped": 0}
    assert sum(s[0] for s in calls) == g.p and {s[1] for s in calls} == {n - 1} and set(puts) == {META}
    assert {k for k, t in _persistent(g).items() if t.device != META} == set()
    monkeypatch.setattr(strategies, "aggregate", per_peer)


@pytest.mark.parametrize("rule", FALLBACK)
def test_a_rule_without_a_batched_form_falls_back_to_the_cpu(tmp_path, monkeypatch, rule):
    """The named fallback: no batched form, so every peer aggregates per peer on the CPU (CPU inputs,
    a CPU result) and the result is written into the device heads."""
    g = _meta_group(tmp_path, monkeypatch, rule, {})
    assert not gossip.has_batched_form(g.rule, META)
    per_peer, seen = strategies.aggregate, []

    def on_cpu(rule_, own, received, ctx, fallback=None, **kw):
        out = per_peer(rule_, own, received, ctx, fallback, **kw)
        seen.append({own.device, received.device, fallback.device, out[0].device})
        return out

    monkeypatch.setattr(strategies, "aggregate", on_cpu)
    size = g._num_params()
    gen = torch.Generator().manual_seed(0)
    g.aggregate(0, torch.randn(g.s.num_peers, size, generator=gen).numpy())
    assert len(seen) == g.p and set().union(*seen) == {torch.device("cpu")}
    assert {k for k, t in _persistent(g).items() if t.device != META} == set()


def test_on_the_cpu_only_fedavg_and_bristle_batch():
    """``Strategy.batch_on_cpu``: the other batched forms were slower than the per-peer loop on a CPU,
    so a CPU engine loops over them (as before they had one); a device takes them all."""
    cpu = {rule for rule, params in RULES if gossip.has_batched_form(build(rule, params), torch.device("cpu"))}
    assert cpu == {"fedavg", "bristle"}
    assert all(gossip.has_batched_form(build(rule, params), META) for rule, params in RULES)


def test_call_is_batched_makes_call_the_batched_form():
    """``Strategy.call_is_batched``: a rule whose ``__call__`` takes leading batch dims declares it
    instead of restating ``__call__`` as ``aggregate_batch``; the flag alone is what
    :func:`fedsim.gossip.has_batched_form` and the default ``aggregate_batch`` read."""
    from dataclasses import dataclass

    @dataclass
    class Mean(strategies.Strategy):
        def __call__(self, own, received, ctx):
            return torch.cat([own[..., None, :], received], dim=-2).mean(dim=-2)

    @dataclass
    class Batched(Mean):
        call_is_batched = True

    own, received = torch.randn(3, 5), torch.randn(3, 4, 5)
    ctx = AggregationContext(layer_shape=(1, 5), bias=False)
    assert Mean().aggregate_batch(own, received, ctx) is None
    assert not gossip.has_batched_form(Mean(), META) and not gossip.has_batched_form(Mean())
    assert torch.equal(Batched().aggregate_batch(own, received, ctx), Batched()(own, received, ctx))
    assert gossip.has_batched_form(Batched(), META) and gossip.has_batched_form(Batched())
    flagged = {name for name in {r for r, _ in RULES} | set(FALLBACK) if strategies.REGISTRY[name].call_is_batched}
    assert flagged == {"fedavg", "median", "trimmed_mean", "krum", "multikrum", "centered_clipping"}
    assert all(type(build(name)).aggregate_batch is strategies.Strategy.aggregate_batch for name in flagged)


def _inputs(g: int, n: int, c: int = 4, d: int = 6, bias: bool = True):
    gen = torch.Generator().manual_seed(1)
    p = c * d + (c if bias else 0)
    own = torch.randn(g, p, generator=gen)
    received = own[:, None] + torch.randn(g, n, p, generator=gen)
    m = 5
    ctx = AggregationContext(
        layer_shape=(c, d), bias=bias, f=1, val_x=torch.randn(g, m, d, generator=gen),
        val_y=torch.randint(c, (g, m), generator=gen), val_mask=torch.ones(g, m, dtype=torch.bool),
        local_classes=torch.rand(g, c, generator=gen) > 0.3, overlap=torch.randint(0, c + 1, (g, n), generator=gen),
    )
    return own, received, ctx


@pytest.mark.parametrize(("rule", "params"), RULES)
@pytest.mark.parametrize("bias", [True, False])
def test_each_batched_rule_computes_on_its_inputs_device(rule, params, bias):
    """Each covered rule's ``aggregate_batch`` on meta inputs: a meta ``[g, P]`` result, and no tensor
    of its computation anywhere else (a ``torch.zeros(...)`` without ``device=`` is caught)."""
    own, received, ctx = _inputs(3, 5, bias=bias)
    ctx = ctx.to(META)
    assert {t.device for t in _ctx_tensors(ctx)} == {META}
    r = build(rule, params)
    with SameDevice(only=META):
        out = r.aggregate_batch(own.to(META), received.to(META), ctx)
        kept = strategies.aggregate_batch(r, own.to(META), received.to(META), ctx, own.to(META))
    assert out.device == kept.device == META and out.shape == kept.shape == own.shape
    if rule == "bristle":  # the integrator alone, with its default counts (every class scored)
        with SameDevice(only=META):
            out = r.integrate(own.to(META), received.to(META), ctx.val_x, ctx.val_y, ctx.local_classes,
                              ctx.layer_shape, bias, ctx.val_mask)
        assert out.device == META and out.shape == own.shape


def test_context_to_the_cpu_is_itself_and_keeps_the_generator():
    _, _, ctx = _inputs(2, 3)
    assert ctx.to(torch.device("cpu")) is ctx
    gen = torch.Generator()
    moved = AggregationContext(layer_shape=(2, 3), generator=gen, val_y=torch.zeros(4)).to(META)
    assert moved.generator is gen and moved.val_y.device == META and moved.val_x is None


@pytest.mark.parametrize("rule", ["median", "krum", "centered_clipping", "trimmed_mean", "bristle"])
def test_cpu_device_object_is_byte_identical(tmp_path, monkeypatch, rule):
    """``engine.device: cuda`` resolved to the CPU's ``torch.device`` takes the device branch of the
    aggregation (``aggregation_device`` is that object), here with every rule batched (``batch_on_cpu``
    forced: as on a device), and gives the bytes of ``engine.device: cpu`` (per peer for all but bristle)."""
    def metrics(d):
        r = Run(parse(d))
        r.create_dir(overwrite=True)
        r.execute()
        return (r.dir / "metrics.jsonl").read_bytes()

    over = {"peers.byzantine_fraction": 0.2, "peers.attack": {"name": "alie"}, "topology.kind": "k_regular",
            "topology.degree": 4, "peers.count": 10}
    cpu = metrics(_scenario(tmp_path, rule, {}, "cpu", **over, **{"engine.device": "cpu"}))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    asked = []
    monkeypatch.setattr(peers, "resolve", lambda name: asked.append(name) or torch.device("cpu"))
    monkeypatch.setattr(type(build(rule)), "batch_on_cpu", True)
    calls, batched = [], strategies.aggregate_batch
    monkeypatch.setattr(strategies, "aggregate_batch", lambda *a: calls.append(1) or batched(*a))
    dev = metrics(_scenario(tmp_path, rule, {}, "dev", **over, **{"engine.device": "cuda"}))
    assert calls
    assert dev == cpu and cpu.count(b"\n") == 2 and asked == ["cuda"] * 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (benchmarks/gpu_check.sh runs it)")
@pytest.mark.parametrize(("rule", "params"), RULES)
def test_cuda_batched_rule_matches_cpu_up_to_rounding(rule, params):
    """On a GPU: each batched rule's result on CUDA inputs is its CPU result up to float rounding
    (Bristle's argmax-based scores can flip on a near tie: then only most rows agree)."""
    own, received, ctx = _inputs(8, 5)
    r = build(rule, params)
    cpu = strategies.aggregate_batch(r, own, received, ctx, own)
    dev = torch.device("cuda")
    cuda = strategies.aggregate_batch(r, own.to(dev), received.to(dev), ctx.to(dev), own.to(dev))
    assert cuda.device.type == "cuda"
    close = torch.isclose(cuda.cpu(), cpu, rtol=1e-5, atol=1e-5).all(dim=1)
    assert int(close.sum()) >= (7 if rule == "bristle" else 8), close


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (benchmarks/gpu_check.sh runs it)")
@pytest.mark.parametrize("rule", ["bristle", "krum", "median"])
def test_cuda_gossip_run_matches_cpu_up_to_rounding(tmp_path, rule):
    """On a GPU: a decentralized run with its aggregation on CUDA gives the CPU run's metrics up to
    float rounding (as tests/test_device.py's CUDA test for the training)."""
    import json

    def metrics(d):
        r = Run(parse(d))
        r.create_dir(overwrite=True)
        r.execute()
        return [json.loads(x) for x in (r.dir / "metrics.jsonl").read_bytes().splitlines()]

    cpu = metrics(_scenario(tmp_path, rule, {}, "cpu"))
    cuda = metrics(_scenario(tmp_path, rule, {}, "cuda", **{"engine.device": "cuda"}))
    for a, b in zip(cpu, cuda, strict=True):
        assert a.keys() == b.keys()
        for k, v in a.items():
            if isinstance(v, float):
                assert abs(v - b[k]) <= 0.02 + 0.01 * abs(v), (k, v, b[k])
            else:
                assert v == b[k], k


class _Made(TorchFunctionMode):
    """Records every tensor an operation returns on ``device``: (shape, dtype, bytes)."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device, self.made = device, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device == self.device:
                self.made.append((tuple(t.shape), t.dtype, t.nelement() * t.element_size()))
        return out


def test_the_memory_estimate_counts_one_device_chunk_of_the_aggregation(tmp_path, monkeypatch):
    """:func:`fedsim.limits.device_aggregation_bytes` by hand; validation reports it for a run on a
    (faked) ``cuda`` with the run's ``engine.aggregate_chunk`` and round 0's largest in-degree, apart
    from the host's total (0 on the CPU and for a rule without a batched form); on the meta
    stand-in the batched path's received rows are that chunk, its float64 population is the unit
    the term counts, and no tensor it makes on the device exceeds the term."""
    from fedsim import limits
    from fedsim.scenario import parse_with_plan

    f64 = limits.AGGREGATION_F64_COPIES
    assert limits.device_aggregation_bytes(chunk=3, heard=5, num_params=7, message_bytes=2) == \
        3 * 5 * 7 * (2 + 4) + 3 * 7 * (2 + 4) + 2 * 3 * 7 * 4 + f64 * 3 * 6 * 7 * 8
    assert limits.device_aggregation_bytes(chunk=3, heard=5, num_params=7, message_bytes=4) == \
        3 * 5 * 7 * 4 + 3 * 7 * 4 + 2 * 3 * 7 * 4 + f64 * 3 * 6 * 7 * 8
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    size = 10 * 64 + 10  # sklearn digits through identity: 10 classes × 64 features, bias
    # 6 peers in 2 groups of 3: chunks of 2 and 1; one group at a time on the CPU, as on a device (the
    # totals then differ by the device term only)
    chunk, over = 2, {"engine.aggregate_chunk": 2, "engine.local_parallel": "off"}
    term = limits.device_aggregation_bytes(chunk=chunk, heard=5, num_params=size, message_bytes=4)
    _, cpu = parse_with_plan(_scenario(tmp_path, "median", {}, **over))
    _, dev = parse_with_plan(_scenario(tmp_path, "median", {}, **over, **{"engine.device": "cuda"}))
    _, half = parse_with_plan(_scenario(tmp_path, "median", {}, **over, **{"engine.device": "cuda",
                                                                          "engine.message_dtype": "bfloat16"}))
    _, none = parse_with_plan(_scenario(tmp_path, "bulyan", {}, **over, **{"engine.device": "cuda"}))
    assert cpu.memory.device_aggregation == 0 and none.memory.device_aggregation == 0
    assert dev.memory.device_aggregation == term and dev.memory.total == cpu.memory.total
    assert half.memory.device_aggregation == limits.device_aggregation_bytes(chunk=chunk, heard=5, num_params=size,
                                                                             message_bytes=2)
    from fedsim.runplan import plan_lines

    sc = parse(_scenario(tmp_path, "median", {}, **over, **{"engine.device": "cuda"}))
    assert any(line.startswith("  device aggregation: about") and "on cuda" in line for line in plan_lines(sc, dev))
    monkeypatch.setattr(peers, "resolve", lambda name: META)
    prep = prepare(sc)
    f = prep.features
    g = peers.PeerGroup(prep.setups[0], {"x_train": f.x_train, "y_train": f.y_train},
                        {"x_test": f.x_test, "y_test": f.y_test})
    seen, batched = [], strategies.aggregate_batch
    monkeypatch.setattr(strategies, "aggregate_batch", lambda rule, own, received, *a: seen.append(received.shape)
                        or batched(rule, own, received, *a))
    n = g.s.num_peers
    with _Made(META) as mode:
        g.aggregate(0, np.zeros((3, size), np.float32), np.zeros((n - 3, size), np.float32))
    assert sorted(s[0] for s in seen) == [1, chunk] and {s[1:] for s in seen} == {(5, size)}
    assert ((chunk, 6, size), torch.float64, chunk * 6 * size * 8) in mode.made  # the population, float64
    assert max(b for _, _, b in mode.made) <= term
