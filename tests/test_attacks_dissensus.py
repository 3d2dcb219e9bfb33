"""The dissensus attack (He, Karimireddy, Jaggi 2022): per receiver, against gossip averaging."""

import pytest
import torch

from attacks import AttackContext, build

X_I = torch.tensor([1.0, 1.0])
NEIGH = torch.tensor([[2.0, 1.0], [0.0, 3.0]])  # Σ (x_j − x_i) = (0, 2)


def ctx(**kw: object) -> AttackContext:
    return AttackContext(n=5, f=2, receiver_own=X_I, **kw)  # type: ignore[arg-type]


def test_formula_by_hand() -> None:
    out = build("dissensus").forge(torch.zeros(0, 2), torch.zeros(2, 2), ctx(receiver_neighbors=NEIGH))
    # x_i − ε Σ(x_j − x_i)/k = (1, 1) − (0, 2)/2
    assert torch.allclose(out, torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    out = build("dissensus", {"eps": 3.0}).forge(NEIGH, torch.zeros(1, 2), ctx())  # honest as fallback
    assert torch.allclose(out, torch.tensor([[1.0, -5.0]]))


@pytest.mark.parametrize(("eps", "expected_y"), [(1.0, 1.0), (2.0, 0.6), (0.5, 1.2)])
def test_gossip_step_is_pulled_by_minus_eps(eps: float, expected_y: float) -> None:
    forged = build("dissensus", {"eps": eps}).forge(NEIGH, torch.zeros(2, 2), ctx(receiver_neighbors=NEIGH))
    avg = torch.cat([X_I[None], NEIGH, forged]).mean(0)  # uniform gossip weights 1/5
    # honest pull is +(0, 2)/5 = (0, 0.4); with the attack it becomes (1 − ε)·(0, 0.4)
    assert torch.allclose(avg, torch.tensor([1.0, expected_y]))


def test_needs_receiver() -> None:
    with pytest.raises(ValueError, match="receiver_own"):
        build("dissensus").forge(NEIGH, torch.zeros(1, 2), AttackContext(n=5, f=1))


@pytest.mark.parametrize("mode", ["decentralized", "federated"])
def test_dissensus_runs_in_the_engine(small_scenario, mode):
    """The engine forges dissensus per receiver (a gossip peer, or the federated server) — it used
    to call the forger once without a receiver and crash with "needs ctx.receiver_own"."""
    import json

    from fedsim.runner import Run
    from fedsim.scenario import parse

    over = {"rounds": 2, "mode": mode, "peers.byzantine": 2, "peers.attack.name": "dissensus"}
    run = Run(parse(small_scenario(**over)))
    run.create_dir()
    run.execute(log=lambda m: None)
    clean = Run(parse(small_scenario(**over, **{"peers.attack.params": {"eps": 1e-9}, "name": "eps0"})))
    clean.create_dir()
    clean.execute(log=lambda m: None)
    last = [json.loads((r.dir / "metrics.jsonl").read_text().splitlines()[-1]) for r in (run, clean)]
    assert last[0]["dropped"] == 0 and last[0]["accuracy_mean"] != last[1]["accuracy_mean"]  # the forgery arrived
