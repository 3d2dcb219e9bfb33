"""fedsim.checks.check_forger: the properties every built-in forger is tested with, runnable on
your own forger; it passes every registered forger and names what a broken one breaks."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import attacks
from fedsim.checks import check_forger
from fedsim.checks_attacks import cases

BUILT_IN = [
    (n, {}) for n in sorted(attacks.REGISTRY)
    if attacks.REGISTRY[n].kind == "forger" and attacks.REGISTRY[n].__module__.startswith("attacks.")
] + [("alie", {"z": 1.0}), ("wrong_shape", {"delta": -1}), ("gaussian", {"mode": "random"})]  # fmt: skip


@pytest.mark.parametrize(("name", "params"), BUILT_IN)
def test_every_registered_forger_passes(name, params):
    forger = attacks.build(name, params)
    # every case checked: determinism and inputs always, messages unless malformed; then the reads
    assert check_forger(forger, seeds=2) == len(cases(forger, range(2))) * (3 - forger.malformed) + 1


@dataclass
class Flip(attacks.UpdateForger):
    """Every Byzantine peer sends minus its own vector."""

    reads_honest = False

    def forge(self, honest, own, ctx):
        return -own


@dataclass
class WidthPlusOne(Flip):
    """Appends a zero to every row, without saying its messages are malformed."""

    def forge(self, honest, own, ctx):
        return torch.cat([-own, own.new_zeros(own.shape[0], 1)], dim=1)


@dataclass
class OneRowPerPeer(Flip):
    """Forges ``ctx.f`` rows (every Byzantine peer), not one per sender it is called for."""

    def forge(self, honest, own, ctx):
        return (-own[:1]).expand(ctx.f, -1).clone()


@dataclass
class Overflows(Flip):
    """Scales by 1e38 in float32: rows of inf."""

    def forge(self, honest, own, ctx):
        return own * 1e38 * 1e38


@dataclass
class Float64Rows(Flip):
    """Returns float64 for float32 vectors."""

    def forge(self, honest, own, ctx):
        return -own.double()


@dataclass
class GlobalNoise(Flip):
    """Draws from torch's global generator instead of ctx.generator."""

    def forge(self, honest, own, ctx):
        return torch.randn(own.shape)


@dataclass
class NegatesInPlace(Flip):
    """Flips own in place."""

    def forge(self, honest, own, ctx):
        return own.neg_()


@dataclass
class CentresHonest(attacks.UpdateForger):
    """Sends the honest mean, subtracting it from the honest vectors in place on the way."""

    def forge(self, honest, own, ctx):
        mu = honest.mean(0)
        honest -= mu
        return mu.expand_as(own).clone()


@dataclass
class SecretlyOmniscient(Flip):
    """Sends minus the honest mean while saying it never reads the honest vectors."""

    def forge(self, honest, own, ctx):
        return (-honest.mean(0)).expand_as(own).clone()


@dataclass
class ScalesByF(Flip):
    """Scales by ctx.f_received without saying it reads f."""

    def forge(self, honest, own, ctx):
        return -own * (1 + ctx.f_received)


@dataclass
class Undocumented(Flip):
    pass


@dataclass
class NeedsMany(Flip):
    """Refuses any n below 100."""

    def check(self, n, f_received):
        if n < 100:
            raise ValueError(f"needs n >= 100, got {n}")


@pytest.mark.parametrize(
    ("forger", "message"),
    [
        (WidthPlusOne(), r"WidthPlusOne: k=1, .*returned \(1, 16\) .*not 1 finite rows \(1, 15\).*malformed = True"),
        (OneRowPerPeer(), r"OneRowPerPeer: k=1, .*forge returned \(3, 15\)"),
        (Overflows(), r"Overflows: .*forge returned \(1, 15\) torch.float32 with NaN/Inf"),
        (Float64Rows(), r"Float64Rows: .*torch.float64 finite, not 1 finite rows \(1, 15\) torch.float32"),
        (GlobalNoise(), "GlobalNoise: .*two calls with the same seed differ.*ctx.generator"),
        (NegatesInPlace(), "NegatesInPlace: .*forge modified own"),
        (CentresHonest(), "CentresHonest: .*forge modified honest"),
        (SecretlyOmniscient(), "SecretlyOmniscient: .* change with the honest vectors .* reads_honest = False"),
        (ScalesByF(), "ScalesByF: ctx.f_received .* does not say reads_f = True"),
        (Undocumented(), "^Undocumented: no docstring"),
        (NeedsMany(), r"NeedsMany: check\(n=10, f=2\) refuses a plain setting: needs n >= 100"),
    ],
)  # fmt: skip
def test_a_broken_forger_fails_naming_the_property(forger, message):
    with pytest.raises(AssertionError, match=message):
        check_forger(forger, seeds=2)


def test_declaring_the_reads_and_malformed_makes_them_pass():
    @dataclass
    class Omniscient(SecretlyOmniscient):
        """Minus the honest mean, saying it reads the honest vectors."""

        reads_honest = True

    @dataclass
    class Wide(WidthPlusOne):
        """One entry too many on purpose."""

        malformed = True

    @dataclass
    class ReadsF(ScalesByF):
        """Scales by ctx.f_received, saying so."""

        reads_f = True

    for forger in (Flip(), Omniscient(), Wide(), ReadsF()):
        assert check_forger(forger, seeds=1) > 0


def test_the_global_random_state_is_left_as_it_was():
    state = torch.random.get_rng_state()
    check_forger(Flip(), seeds=1)
    with pytest.raises(AssertionError):
        check_forger(GlobalNoise(), seeds=1)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_a_poisoner_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"^check_forger: label_shift is not an update forger \(a data poisoner\?\)$"):
        check_forger("label_shift")


def test_check_forger_takes_a_plugins_name(tmp_path, monkeypatch):
    from fedsim import plugins

    monkeypatch.setattr(plugins, "_GRANTED", set())
    path = tmp_path / "checked_forger.py"
    path.write_text(
        "from dataclasses import dataclass\nimport attacks\n\n\n"
        '@attacks.register("checks_test_flip")\n@dataclass\nclass Flip(attacks.UpdateForger):\n'
        '    """Minus own."""\n\n    reads_honest = False\n\n'
        "    def forge(self, honest, own, ctx):\n        return -own\n"
    )
    try:
        assert check_forger("checks_test_flip", seeds=1, plugins=[str(path)]) > 0
    finally:
        attacks.REGISTRY.pop("checks_test_flip", None)
