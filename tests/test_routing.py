"""Routing of decentralized messages (fedsim.routing): groups gather only heard rows from every
group's message arrays, aggregate receivers in chunks, and optionally send half-precision heads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fedsim.errors import ScenarioError
from fedsim.peers import PeerGroup
from fedsim.prepare import prepare
from fedsim.routing import Rows, decode, encode_head
from fedsim.runner import Run
from fedsim.scenario import parse


def _gossip(small_scenario, **over):
    # 60 peers, push gossip fanout 5, Bristle (batched per in-degree bucket, CWR)
    return small_scenario(
        **{"peers.count": 60, "partition.kind": "iid", "topology.kind": "push_gossip", "topology.fanout": 5,
           "strategy.name": "bristle", "training.lr": 0.5, "evaluation.every": 1, **over}
    )


def _metrics(d) -> bytes:
    r = Run(parse(d))
    r.create_dir()
    r.execute()
    return (r.dir / "metrics.jsonl").read_bytes()


def test_rows_gathers_what_the_concatenation_holds():
    parts = [torch.randn(3, 4), torch.randn(5, 4), torch.randn(2, 4)]
    cat = torch.cat(parts)
    rows = Rows(parts)
    assert rows.shape == (10, 4) and len(rows) == 10
    idx = torch.tensor([[9, 0, 3], [7, 7, 2]])
    assert torch.equal(rows[idx], cat[idx])
    assert torch.equal(rows[np.array([4, 8])], cat[[4, 8]])
    assert torch.equal(rows[3:9], cat[3:9]) and torch.equal(rows[8], cat[8]) and torch.equal(rows[0], cat[0])
    assert torch.equal(rows.full(), cat)
    parts[1][2, 1] = float("nan")
    assert Rows(parts).finite().tolist() == [True] * 5 + [False] + [True] * 4
    half = [p.half() for p in parts]  # half-precision messages from several groups: gathered, then float32
    got = Rows(half)[idx]
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, torch.cat(half)[idx].float(), rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_messages_round_trip_to_the_rounded_heads(dtype):
    w, b = torch.randn(4, 2, 2), torch.randn(4, 2)
    heads = torch.cat([w.reshape(4, -1), b], dim=1)  # the flattened heads [vec(W), b], [4, 6]
    msg = encode_head(w, b, dtype)
    assert msg.itemsize == 2 and msg.shape == (4, 6)
    back = Rows([decode(msg)])[torch.arange(4)]
    assert back.dtype == torch.float32
    assert torch.equal(back, heads.to(getattr(torch, dtype)).float())
    assert not torch.equal(back, heads)
    assert encode_head(w, b, "float32").dtype == np.float32


def test_encode_refuses_an_unknown_dtype_in_one_line():
    with pytest.raises(ValueError, match=r"^engine.message_dtype: got 'fp8'; allowed: float32, float16, bfloat16$"):
        encode_head(torch.zeros(1, 1, 2), None, "fp8")


@pytest.mark.parametrize("strategy", ["bristle", "fedavg"])  # in this small run Bristle keeps its own heads
def test_chunk_that_splits_receivers_gives_byte_identical_metrics(small_scenario, strategy):
    """engine.aggregate_chunk 3 splits every in-degree bucket of 30 hosted peers into many calls;
    2 groups read each other's rows through Rows; the metrics equal one group's, chunk 64."""
    base = _metrics(_gossip(small_scenario, name="base", **{"engine.num_actors": 1, "strategy.name": strategy}))
    split = _metrics(_gossip(small_scenario, name="split", **{"engine.aggregate_chunk": 3, "strategy.name": strategy}))
    assert base == split
    assert json.loads(base.splitlines()[-1])["accuracy_mean"] > 0.2


def test_half_messages_halve_bytes_and_change_the_run_only_slightly(small_scenario):
    full = [json.loads(x) for x in _metrics(_gossip(small_scenario, name="f32")).splitlines()]
    half = [json.loads(x) for x in _metrics(_gossip(small_scenario, name="f16",
                                                    **{"engine.message_dtype": "float16"})).splitlines()]
    assert [h["bytes_sent_total"] * 2 for h in half] == [f["bytes_sent_total"] for f in full]
    assert abs(half[-1]["accuracy_mean"] - full[-1]["accuracy_mean"]) < 0.05


def _groups(small_scenario, dtype: str) -> list[PeerGroup]:
    prep = prepare(parse(_gossip(small_scenario, **{"engine.message_dtype": dtype})))
    f = prep.features
    feats = {"x_train": f.x_train, "y_train": f.y_train, "x_test": f.x_test, "y_test": f.y_test}
    return [PeerGroup(s, feats) for s in prep.setups]


def test_half_messages_are_what_a_group_sends(small_scenario):
    g = _groups(small_scenario, "bfloat16")[0]
    msg, _ = g.train(0)
    assert msg.dtype == np.uint16 and msg.shape == g.params().shape
    assert torch.equal(decode(msg).float(), torch.from_numpy(g.params()).to(torch.bfloat16).float())


def test_receivers_aggregate_the_rounded_messages(small_scenario):
    """Two rounds: float16 messages move the aggregated heads, by about float16's rounding only."""
    out = {}
    for dtype in ("float32", "float16"):
        groups = _groups(small_scenario, dtype)
        for r in range(2):
            sent = [g.train(r)[0] for g in groups]
            for g in groups:
                g.aggregate(r, *sent)
        out[dtype] = np.concatenate([g.params() for g in groups])
    diff = np.abs(out["float16"] - out["float32"]).max()
    assert 0 < diff < 2e-3 * np.abs(out["float32"]).max()


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"engine.message_dtype": "fp16"}, "engine.message_dtype: got 'fp16'"),
        ({"engine.aggregate_chunk": 0}, "engine.aggregate_chunk: Input should be greater than or equal to 1"),
        ({"engine.message_dtype": "float16", "mode": "federated", "topology.kind": "star"},
         "engine.message_dtype: float16 messages are for mode: decentralized"),
    ],
)
def test_bad_engine_values_get_one_line_errors(small_scenario, over, message):
    with pytest.raises(ScenarioError) as e:
        parse(small_scenario(**over))
    assert message in str(e.value)
    assert len(e.value.errors if hasattr(e.value, "errors") else [str(e.value)]) == 1


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("bias", [True, False])
def test_head_views_are_the_encoded_message_without_a_copy(dtype, bias):
    """Heads stored in the message's dtype are sent as views of w (and b): the same rows, read
    through Rows (gathered, joined, finite, one row), as encode_head's copy; a conversion: None."""
    from fedsim.routing import MESSAGE_DTYPES, head_views

    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 3, 4, generator=g).to(MESSAGE_DTYPES[dtype])
    b = torch.randn(6, 3, generator=g).to(w.dtype) if bias else None
    w[2, 1, 0] = float("inf")
    if b is not None:
        b[4, 2] = float("nan")
    views = head_views(w, b, dtype)
    sent = encode_head(w, b, dtype)
    assert isinstance(views, tuple) == bias
    for part, head in zip(views if bias else (views,), (w, b), strict=False):
        assert np.shares_memory(part, head.numpy() if dtype != "bfloat16" else head.view(torch.uint16).numpy())
    got, want = Rows([decode(sent[:2]), decode(views)]), Rows([decode(sent[:2]), decode(sent)])
    idx = torch.tensor([[7, 0, 3], [5, 7, 2]])
    assert torch.equal(got.take(idx), want.take(idx)) and torch.equal(got.full().isnan(), want.full().isnan())
    assert torch.equal(got.full().nan_to_num(), want.full().nan_to_num())
    assert torch.equal(got.finite(), want.finite()) and got.finite().tolist().count(False) == 1 + bias
    assert torch.equal(got[6].nan_to_num(), want[6].nan_to_num()) and got.dtype == want.dtype
    one = torch.tensor([[5, 1], [3, 0]])  # one part: its own path
    assert torch.equal(Rows([decode(views)]).take(one).nan_to_num(), want.take(one + 2).nan_to_num())
    assert head_views(w.float() if dtype != "float32" else w.half(), None, dtype) is None  # converted: a copy


def test_ray_groups_send_views_in_process_copies(small_scenario, ray_session):
    """A decentralized group on Ray sends its heads as views (the pair, copied into the object store
    as train returns; no [p, P] copy in the actor's heap first); in-process, and to a federated
    server, the message is an array of its own (the aggregation writes into w while it is read)."""
    from fedsim.backend import LocalBackend, RayBackend
    from fedsim.simulation import Simulation

    for mode, backend, pair in [("decentralized", RayBackend(), True), ("federated", RayBackend(), False),
                                ("decentralized", LocalBackend(), False)]:
        d = small_scenario(mode=mode, **({"topology.kind": "star"} if mode == "federated" else {}))
        sc = parse(d)
        sim = Simulation(sc, prepare(sc), backend)
        try:
            msg = backend.get(sim.groups[0].train.options(num_returns=2).remote(0)[0])
            msg = sim.inbox.resolve([msg])[0]  # (on Ray through the group's outbox, fedsim.ray_outbox)
            assert isinstance(msg, tuple) == pair, (mode, backend.name)
            if backend.name == "local":  # (the in-process handle's group)
                assert not np.shares_memory(msg, sim.groups[0]._obj.w.numpy())
        finally:
            sim.close()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_views_sent_on_ray_give_the_in_process_run(small_scenario, ray_session, dtype):
    """Half-precision heads sent as views from 1 and 3 Ray actors (in one actor's own part, and
    across parts, with a bias and CWR's trained copies): the in-process run's metrics, byte for byte."""
    over = {"engine.message_dtype": dtype, "engine.head_dtype": dtype, "rounds": 3}
    local = _metrics(_gossip(small_scenario, name="local", **over))
    for n in (1, 3):
        d = _gossip(small_scenario, name=f"ray{n}", **over, **{"engine.backend": "ray", "engine.num_actors": n})
        assert _metrics(d) == local, n
