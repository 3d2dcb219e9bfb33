"""A run's metrics do not depend on how peers are spread over groups and threads, for a user's own
convolutional backbone trained whole (the reviewer's case: a one-layer conv plugin gave train_loss
1.627028 with two in-process groups and 1.627029 with one; oneDNN's convolution weight gradient
splits its reduction over the threads it gets, and the group threads depended on the layout)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from fedsim.models import backbones
from fedsim.models.backbones import BackboneSpec, register_backbone
from fedsim.overrides import set_dotted
from fedsim.runner import Run
from fedsim.scenario import parse
from fedsim.simulation import train_loss_sum
from fedsim.threads import alone_threads, fixed_threads, group_threads, torch_threads

NAME = "test_layout_tiny_conv"


class TinyConv(nn.Module):
    """What a user registers: one conv layer and pooling, 28x28 digits to 8*7*7 = 392 features."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.pool = nn.AvgPool2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(self.conv(x))).flatten(1)


@pytest.fixture
def tiny_conv():
    spec = register_backbone(BackboneSpec(NAME, "one conv layer", TinyConv, (1, 28, 28), weights_file=False))
    yield spec
    backbones.BACKBONES.pop(NAME, None)


def _scenario(tmp_path, name, **over):
    d = {
        "name": name,
        "seed": 3,
        "rounds": 2,
        "dataset": {"name": "mnist10k"},
        "backbone": {"name": NAME, "cache_dir": str(tmp_path / "cache")},
        "partition": {"kind": "iid"},
        "peers": {"count": 6},
        "topology": {"kind": "complete"},
        "training": {"lr": 0.1, "momentum": 0.9, "batch_size": 16, "local_steps": 2},
        "model": {"trainable": "all", "init": "scratch"},
        "evaluation": {"every": 1},
        "engine": {"backend": "local", "num_actors": 1},
        "output": {"dir": str(tmp_path / "runs")},
    }
    for k, v in over.items():
        set_dotted(d, k, v)
    return parse(d)


def _run(sc, threads=None):
    r = Run(sc, threads=threads)
    r.create_dir()
    r.execute(log=lambda m: None)
    return (r.dir / "metrics.jsonl").read_bytes(), r


def test_a_users_conv_backbone_trained_whole_gives_the_same_bits_in_every_layout(tmp_path, tiny_conv):
    """1, 2 and 3 in-process groups, one after another or side by side (``auto``), 2 CPUs per group,
    a sweep's budget of 2 threads: the same metrics.jsonl byte for byte and the same final parameters
    bit for bit."""
    layouts = {
        "one": ({}, None),
        "two": ({"engine.num_actors": 2}, None),
        "three": ({"engine.num_actors": 3}, None),
        # side by side in a pool (fedsim.threads.local_workers), the server's calls alone
        "two_auto": ({"engine.num_actors": 2, "engine.local_parallel": "auto"}, None),
        "three_auto": ({"engine.num_actors": 3, "engine.local_parallel": "auto"}, None),
        "cpus2": ({"engine.cpus_per_actor": 2}, None),
        "budget2": ({}, 2),  # fedsim sweep's thread budget (fedsim.threads.task_threads)
    }
    got = {}
    for name, (over, threads) in layouts.items():
        metrics, run = _run(_scenario(tmp_path, name, **over), threads)
        got[name] = (metrics, torch.from_numpy(run.final_params))
    lines = [json.loads(x) for x in got["one"][0].decode().splitlines()]
    assert len(lines) == 2 and all(np.isfinite(x["train_loss"]) for x in lines)
    for name, (metrics, params) in got.items():
        assert metrics == got["one"][0], name
        assert torch.equal(params, got["one"][1]), name


def test_whole_models_on_the_cpu_train_on_one_thread_whatever_the_layout(tmp_path, tiny_conv):
    whole = _scenario(tmp_path, "w", **{"engine.num_actors": 2, "engine.cpus_per_actor": 4})
    assert fixed_threads(whole) and group_threads(whole) == 1 and group_threads(whole, 8) == 1
    assert alone_threads(whole) == 1 and alone_threads(whole, 8) == 1  # the server's calls too
    with pytest.raises(ValueError, match="threads: expected an integer >= 1"):
        group_threads(whole, 0)  # a bad budget is still refused
    with pytest.raises(ValueError, match="threads: expected an integer >= 1"):
        alone_threads(whole, 0)
    head = _scenario(
        tmp_path,
        "h",
        **{"engine.num_actors": 2, "engine.cpus_per_actor": 1, "engine.local_parallel": "off", "model": {},
           "backbone.name": "fmnist_cnn"},
    )
    assert not fixed_threads(head) and group_threads(head, 3) == 3 and alone_threads(head, 3) == 3


def test_the_train_loss_sum_does_not_depend_on_the_grouping_or_the_threads():
    """Any split of the honest peers' float32 losses into consecutive groups sums to the bits of one
    group's float32 sum, also above torch's parallel grain (32,768 values) on 2 threads."""
    gen = torch.Generator().manual_seed(0)
    for n in (7, 1000, 100_000):  # 100,000: torch sums it over 2 threads otherwise, to other bits
        v = (torch.rand(n, generator=gen) * 3).numpy()
        with torch_threads(1):
            one = float(torch.from_numpy(v).sum())
        for parts in (1, 2, 3, 5):
            for threads in (1, 2):
                with torch_threads(threads):
                    assert train_loss_sum(np.array_split(v, parts)) == one, (n, parts, threads)
    assert train_loss_sum([]) == 0.0 and train_loss_sum([np.zeros(0, np.float32)]) == 0.0
