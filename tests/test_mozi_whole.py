"""MOZI on whole models (issue 18, claim 2's from-scratch baselines): its performance stage scores
each candidate model by its cross-entropy on the peer's validation inputs (``ctx.val_logits``)."""

import json

import pytest
import torch

import strategies
from fedsim.prepare import prepare
from fedsim.runner import Run
from fedsim.scenario import ScenarioError, parse
from fedsim.whole import WholePeerGroup


def _scenario(tmp_path, **strategy):
    return parse({
        "name": "mw", "seed": 3, "rounds": 3,
        "dataset": {"name": "sklearn_digits"},
        "backbone": {"name": "identity", "cache_dir": str(tmp_path / "cache")},
        "partition": {"kind": "iid"}, "peers": {"count": 4}, "topology": {"kind": "complete"},
        "strategy": {"name": "mozi", **strategy},
        "training": {"lr": 0.1, "momentum": 0.9, "batch_size": 8, "local_steps": 2},
        "model": {"trainable": "all", "hidden": [16], "init": "scratch"},
        "engine": {"backend": "local", "num_actors": 1},
        "output": {"dir": str(tmp_path / "runs")},
    })


def test_mozi_keeps_the_candidates_whose_validation_loss_is_no_worse() -> None:
    """Whole-model vectors: the loss comes from ``ctx.val_logits`` (here logits = the first 3
    entries, label 0: a larger first entry is a lower loss), never from ``val_x`` as a linear head."""
    own = torch.zeros(6)
    better, worse, also = torch.tensor([2.0, 0, 0, 0, 0, 0]), torch.tensor([-2.0, 0, 0, 0, 0, 0]), torch.full((6,), 0.5)
    received = torch.stack([better, worse, also])
    ctx = strategies.AggregationContext(
        layer_shape=(1, 6), bias=False, f=0, val_y=torch.zeros(4, dtype=torch.long),
        val_logits=lambda th: th[:, None, :3].expand(-1, 4, -1),
    )
    out = strategies.build("mozi", {})(own, received, ctx)
    torch.testing.assert_close(out, 0.5 * own + 0.5 * (better + also) / 2)


def test_whole_groups_score_candidates_with_the_peers_model(tmp_path) -> None:
    sc = _scenario(tmp_path)
    prep = prepare(sc)
    f = prep.features
    g = WholePeerGroup(prep.setups[0], {"x_train": f.x_train, "y_train": f.y_train,
                                        "x_test": f.x_test, "y_test": f.y_test})
    g.model.theta[2] += 0.01 * torch.randn(g.model.num_params, generator=torch.Generator().manual_seed(0))
    ctx = g._ctx(2, 0, 0, None, 0)
    assert ctx.val_x is None and ctx.val_y is not None
    vx = g.val[2][0]
    want = g.model.logits(vx, rows=torch.tensor([2, 0]))
    torch.testing.assert_close(ctx.val_logits(g.model.theta[[2, 0]].double()), want)


def test_mozi_trains_whole_models_end_to_end(tmp_path) -> None:
    r = Run(_scenario(tmp_path))
    r.create_dir(overwrite=True)
    r.execute()
    m = [json.loads(x) for x in (r.dir / "metrics.jsonl").read_text().splitlines()]
    assert len(m) == 3 and m[-1]["accuracy_mean"] > m[0]["accuracy_mean"] + 0.05  # it learns (0.10 → 0.19)


def test_mozi_without_its_pre_training_copy_is_refused_on_whole_models(tmp_path) -> None:
    with pytest.raises(ScenarioError, match=r"strategy\.name: 'mozi' reads linear output layers \(previous\)"):
        _scenario(tmp_path, params={"reference": "previous"})
