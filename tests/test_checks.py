"""fedsim.checks.check_rule: the properties tests/test_strategies_properties.py asks of every
built-in rule, runnable on your own rule; it passes a sound rule and names what a broken one breaks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

import strategies
from fedlib.params import Real, param
from fedsim.checks import check_declared_reads_f, check_rule, rule_reads_f


@dataclass
class NormBoundedMean(strategies.Strategy):
    """Mean of own and the received vectors, each one's difference to own clipped to ``radius``."""

    radius: float = param(1.0, Real(lo=0, lo_open=True))
    exchanges: ClassVar[str] = "output_layer"

    def __call__(self, own, received, ctx):
        diff = (received - own).double()
        scale = (self.radius / diff.norm(dim=1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)
        return (own.double() + (diff * scale).sum(0) / (received.shape[0] + 1)).to(own.dtype)


@dataclass
class Float32Mean(NormBoundedMean):
    """A mean summed in float32: ±1e30 rows overflow to inf."""

    def __call__(self, own, received, ctx):
        return (own + received.sum(0) * 1e10) / (received.shape[0] + 1)


@dataclass
class KeepsOwn(NormBoundedMean):
    """Ignores what it receives."""

    def __call__(self, own, received, ctx):
        return own.clone()


@dataclass
class Float64Out(NormBoundedMean):
    """Returns float64 for float32 input."""

    def __call__(self, own, received, ctx):
        return super().__call__(own, received, ctx).double()


@dataclass
class Undocumented(NormBoundedMean):
    pass


@dataclass
class RefusesNoByzantine(NormBoundedMean):
    """Refuses f = 0 (50 honest senders)."""

    def check(self, n, f):
        if f < 1:
            raise ValueError(f"needs f >= 1, got {f}")


def test_a_sound_rule_and_built_ins_pass():
    assert check_rule(NormBoundedMean(radius=0.5), cases=60) > 60
    assert check_rule("median", cases=60) > 60
    assert check_rule("bristle", cases=30, agreement=False) > 0  # accepts only vectors that classify well


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (Float32Mean(), "^Float32Mean: n=.*the rule itself produced NaN/Inf"),
        (KeepsOwn(), r"^KeepsOwn: honest agreement: fed n=1 identical vectors v from honest senders \(f=0\), the "
                     r"rule returned a vector no closer to v than own \(\|\|out − v\|\| = .*, \|\|own − v\|\| = .*\); "
                     r".*agreement=False"),
        (Float64Out(), "^Float64Out: n=.*the rule returned .* torch.float64, not .* torch.float32"),
        (Undocumented(), "Undocumented: no docstring"),
        (RefusesNoByzantine(),
         r"^RefusesNoByzantine: check\(n=50, f=0\) refuses a plain setting: needs f >= 1, got 0$"),
    ],
)
def test_a_broken_rule_fails_naming_the_property(rule, message):
    with pytest.raises(AssertionError, match=message):
        check_rule(rule, cases=60)


def test_check_rule_takes_a_plugins_name(tmp_path, monkeypatch):
    from fedsim import plugins

    monkeypatch.setattr(plugins, "_GRANTED", set())
    path = tmp_path / "checked_rule.py"
    path.write_text(
        "from dataclasses import dataclass\nimport strategies\n\n\n"
        '@strategies.register("checks_test_mean")\n@dataclass\nclass M(strategies.Strategy):\n'
        '    """Plain mean."""\n\n    exchanges = "output_layer"\n\n'
        "    def __call__(self, own, received, ctx):\n"
        "        return ((own.double() + received.double().sum(0)) / (received.shape[0] + 1)).float()\n"
    )
    try:
        assert check_rule("checks_test_mean", cases=20, plugins=[str(path)]) > 20
    finally:
        strategies.REGISTRY.pop("checks_test_mean", None)


@dataclass
class TrimsF(NormBoundedMean):
    """Mean of own and the received vectors left after dropping the ``ctx.f`` farthest from own;
    says f changes nothing."""

    reads_f: ClassVar[bool] = False

    def __call__(self, own, received, ctx):
        keep = (received - own).norm(dim=1).argsort()[: max(received.shape[0] - ctx.f, 0)]
        return torch.cat([own[None], received[keep]]).mean(0)


@dataclass
class LimitsF(NormBoundedMean):
    """NormBoundedMean whose check refuses n < 2f + 1; says f changes nothing."""

    reads_f: ClassVar[bool] = False

    def check(self, n: int, f: int) -> None:
        if n < 2 * f + 1:
            raise ValueError(f"needs n >= 2f + 1, got n={n}, f={f}")


@pytest.mark.parametrize("rule", [TrimsF(), LimitsF()])
def test_a_rule_that_reads_f_but_says_it_does_not_fails(rule):
    name = type(rule).__name__
    with pytest.raises(
        AssertionError, match=f"^{name}: f \\(ctx.f or check's f\\) changes what it does but it says reads_f = False"
    ):
        check_rule(rule, cases=20)


def test_declaring_reads_f_passes_whether_or_not_the_rule_reads_it():
    @dataclass
    class SaysTrimsF(TrimsF):
        """TrimsF saying it reads f."""

        reads_f: ClassVar[bool] = True

    @dataclass
    class SaysNoF(NormBoundedMean):
        """NormBoundedMean (reads no f) saying it does not."""

        reads_f: ClassVar[bool] = False

    assert rule_reads_f(SaysTrimsF()) and rule_reads_f(LimitsF()) and not rule_reads_f(SaysNoF())
    for rule in (SaysTrimsF(), SaysNoF(), NormBoundedMean()):  # NormBoundedMean: reads_f True by default, unread
        assert check_rule(rule, cases=20) > 20


BUILT_INS = sorted(n for n, cls in strategies.REGISTRY.items() if cls.__module__.startswith("strategies."))


@pytest.mark.parametrize("name", BUILT_INS)
def test_every_built_in_declares_the_f_it_reads(name):
    rule = strategies.build(name)
    check_declared_reads_f(rule)
    assert check_rule(rule, cases=3, agreement=False) >= 1


@dataclass
class KeepsMomentum(NormBoundedMean):
    """A rule with state between calls (a running average of its results); reads no f."""

    reads_f: ClassVar[bool] = False

    def __post_init__(self) -> None:
        self.state = None

    def __call__(self, own, received, ctx):
        out = torch.cat([own[None], received]).mean(0)
        self.state = out if self.state is None else 0.5 * (self.state + out)
        return self.state


def test_a_rule_with_state_between_calls_does_not_look_like_it_reads_f():
    """Each f is tried on a fresh copy of the rule: state left by the previous call is no f."""
    from fedsim.checks import check_declared_reads_f, rule_reads_f

    assert not rule_reads_f(KeepsMomentum())
    check_declared_reads_f(KeepsMomentum())
