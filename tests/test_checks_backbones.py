"""fedsim.checks.check_backbone: the properties the engine relies on, runnable on your own backbone;
it passes every registered backbone with a network and names the property a broken one breaks."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from fedsim.checks import check_backbone
from fedsim.models.backbones import BACKBONES, BackboneSpec

BUILT_IN = sorted(n for n, s in BACKBONES.items() if s.build is not None)  # the shipped ones (collection time)


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_registered_backbone_passes(name):
    state = torch.random.get_rng_state()
    assert check_backbone(name) == 4
    assert torch.equal(torch.random.get_rng_state(), state)  # the global generator is left as it was


def test_identity_has_no_network_to_check():
    with pytest.raises(ValueError, match="'identity' has no network to check"):
        check_backbone("identity")


class Net(nn.Module):
    """8x8 grey images to 6 features: a linear map, a ReLU and a dropout (off in eval mode)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(64, 6)
        self.drop = nn.Dropout(0.5)

    def features(self, x):
        return self.drop(torch.relu(self.lin(x.flatten(1))))

    def forward(self, x):
        return self.features(x)


def spec(name, build, shape=(1, 8, 8), weights_file=True):
    return BackboneSpec(f"chk_{name}", name, build, shape, weights_file=weights_file)


class SeededNet(Net):
    """Net with its weights drawn from its own fixed seed (a backbone without a weights file)."""

    def __init__(self):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(7)
            super().__init__()


def test_a_correct_backbone_passes_and_leaves_no_registration():
    for s in (spec("ok", Net), spec("ok", SeededNet, weights_file=False)):
        assert check_backbone(s) == 4 and "chk_ok" not in BACKBONES


class Squeezed(Net):
    def forward(self, x):
        return self.features(x).squeeze(0)  # [d] for a batch of 1


class CentredOnTheBatch(Net):
    def forward(self, x):
        h = self.features(x)
        return h - h.mean(0)  # a row's features depend on the rows beside it


class ScaledByTheFirstRow(Net):
    def forward(self, x):
        h = self.features(x)
        return h / (1.0 + h[:1].abs())  # row 0 alone is as in the batch; the other rows depend on row 0


class Noisy(Net):
    def forward(self, x):
        return nn.functional.dropout(self.features(x), 0.5, training=True)  # on in eval mode too


class ScalesInPlace(Net):
    def forward(self, x):
        return self.features(x.mul_(2))


class ThreeDims(Net):
    def forward(self, x):
        return self.features(x)[..., None]


class Float64Out(Net):
    def forward(self, x):
        return self.features(x).double()


class NaNOut(Net):
    def forward(self, x):
        return self.features(x) * float("nan")


class ReadsAValue(Net):
    def forward(self, x):  # float() of a parameter: fine alone, impossible under vmap
        return self.features(x) / float(self.lin.weight.detach().abs().max())


class CountsCalls(Net):
    """Scales by how often it ran with gradients: one batched call under vmap, one per peer in the loop."""

    calls = 0

    def forward(self, x):
        if torch.is_grad_enabled():
            self.calls += 1
        return self.features(x) * self.calls


class OwnSeedEachTime(Net):
    seeds = itertools.count()

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(next(self.seeds))  # ignores torch's global (seeded) generator
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(self.lin.weight.shape, generator=g))


MUTANTS = [
    (spec("not_a_module", lambda: (lambda x: x.flatten(1))),
     r"builds a float32 CPU module: build\(\) returned function"),
    (spec("float64", lambda: Net().double()), "builds a float32 CPU module: parameter lin.weight is torch.float64"),
    (spec("no_shape", Net, shape=()), r"builds a float32 CPU module: input_shape is \(\)"),
    (spec("fresh_draw", OwnSeedEachTime), r"deterministic construction: .*torch.manual_seed\(0\) give different "
     "lin.weight: draw only from torch's global generator"),
    (spec("unseeded", Net, weights_file=False), "deterministic construction: two build.. calls give different "
     "lin.weight: set its weights from a fixed seed"),
    (spec("squeezed", Squeezed), r"batch of 1: a batch of 1 gave \(6,\), not \(1, 6\)"),
    (spec("centred", CentredOnTheBatch), "batch of 1: row 0's features differ alone and within a batch"),
    (spec("first_row", ScaledByTheFirstRow), "batch of 1: row [1-9]'s features differ alone and within a batch"),
    (spec("noisy", Noisy), "eval determinism: two forward passes in eval mode differ"),
    (spec("in_place", ScalesInPlace), "leaves its input: forward modified its input batch"),
    (spec("three_dims", ThreeDims), r"features \[B, d\]: a batch of 5 gave \(5, 6, 1\)"),
    (spec("float64_out", Float64Out), r"features \[B, d\]: a batch of 5 gave torch.float64 features, not torch.float32 "
                                      r"\(the feature cache and the heads are float32\)$"),
    (spec("nan_out", NaNOut), r"features \[B, d\]: a batch of 5 gave \d+ NaN/Inf of \d+ features$"),
    (spec("reads_a_value", ReadsAValue), r"stacked training \(vmap = loop\): StackedModel.loss_and_grad with "
     "batching vmap raised"),
    (spec("counts_calls", CountsCalls), r"stacked training \(vmap = loop\): the peers' losses under vmap differ from "
     "one peer at a time"),
]


@pytest.mark.parametrize(("broken", "message"), MUTANTS, ids=[s.name for s, _ in MUTANTS])
def test_a_broken_backbone_fails_naming_the_property(broken, message):
    with pytest.raises(AssertionError, match=f"backbone {broken.name}: {message}"):
        check_backbone(broken)
    assert broken.name not in BACKBONES


def test_a_taken_name_is_refused_before_anything_runs():
    with pytest.raises(ValueError, match="backbone name 'fmnist_cnn' is registered twice"):
        check_backbone(BackboneSpec("fmnist_cnn", "another", Net, (1, 8, 8)))
    assert BACKBONES["fmnist_cnn"].description.startswith("2-conv CNN")
