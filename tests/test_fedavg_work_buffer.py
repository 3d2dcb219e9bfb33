"""FedAvg without the own vector (the federated server's rule) keeps its float64 working copy in
a buffer between calls: every call's mean is still exactly the mean of a fresh float64 copy."""

from __future__ import annotations

import torch

import strategies
from strategies._math import to_like


def _fresh(own: torch.Tensor, received: torch.Tensor) -> torch.Tensor:
    return to_like(received.double().mean(dim=-2), own)


def test_server_mean_equals_a_fresh_float64_mean_call_after_call():
    rule = strategies.build("fedavg", {"include_own": False})
    g = torch.Generator().manual_seed(0)
    own = torch.zeros(7)
    for shape in [(5, 7), (5, 7), (5, 7), (3, 5, 7), (9, 7), (5, 7)]:
        received = torch.randn(*shape, generator=g) * 1e3
        got = rule._mean(own if len(shape) == 2 else own.expand(shape[0], 7), received)
        assert torch.equal(got, _fresh(own, received)), shape
    t = torch.randn(7, 5, generator=g).T  # not contiguous: strides differ from a fresh buffer's
    assert torch.equal(rule._mean(own, t), _fresh(own, t))
    big = torch.full((4, 7), 3e38)  # float64 work: the float32 sum would overflow
    assert torch.equal(rule._mean(own, big), torch.full((7,), 3e38))


def test_the_buffer_is_reused_while_the_shape_lasts():
    rule = strategies.build("fedavg", {"include_own": False})
    rule._mean(torch.zeros(3), torch.ones(4, 3))
    buf = rule.__dict__["_work"]
    rule._mean(torch.zeros(3), torch.full((4, 3), 2.0))
    assert rule.__dict__["_work"] is buf
    assert rule == strategies.build("fedavg", {"include_own": False})  # not a field: equality unchanged


def test_a_result_held_across_calls_is_never_overwritten():
    """The buffer is the rule's own: what a call returns (the server keeps it as the global model for
    the next round) shares no memory with it and is unchanged by later calls of the same shape."""
    rule = strategies.build("fedavg", {"include_own": False})
    g = torch.Generator().manual_seed(1)
    own = torch.zeros(6)
    held = []
    for _ in range(3):
        received = torch.randn(4, 6, generator=g)
        out = rule._mean(own, received)
        held.append((out, out.clone(), _fresh(own, received)))
        buf = rule.__dict__["_work"]
        assert out.untyped_storage().data_ptr() != buf.untyped_storage().data_ptr()
    for out, copy, want in held:
        assert torch.equal(out, copy) and torch.equal(out, want)


def test_a_gossip_groups_batches_keep_no_buffer():
    """Only the per-call path (the server's) keeps the buffer: a group's batched aggregation, whose
    chunk shapes change from call to call, computes the same mean from a fresh copy and keeps none."""
    rule = strategies.build("fedavg", {"include_own": False})
    g = torch.Generator().manual_seed(2)
    own, received = torch.zeros(3, 6), torch.randn(3, 4, 6, generator=g)
    out = rule.aggregate_batch(own, received, None)  # type: ignore[arg-type]  (fedavg reads no context)
    assert torch.equal(out, _fresh(own, received)) and "_work" not in rule.__dict__
    rule(own[0], received[0], None)  # type: ignore[arg-type]
    assert rule.__dict__["_work"].shape == (4, 6)  # control: the per-call path keeps it

