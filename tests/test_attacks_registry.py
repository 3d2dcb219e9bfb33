"""Registration, class flags and parameter validation of every attack."""

import pytest

from attacks import REGISTRY, DataPoisoner, UpdateForger, available, build
from fedsim.checks_attacks import cases, check_messages

OMNISCIENT = {"ipm", "min_max", "min_sum", "fang_krum", "fang_trimmed_mean", "dissensus"}
FORGERS = OMNISCIENT | {"sign_flip", "gaussian", "alie", "crash", "stale", "nan", "wrong_shape"}
MALFORMED = {"crash", "nan", "wrong_shape"}  # their messages are dropped on purpose
POISONERS = {"label_shift", "label_swap", "targeted_label_flip"}


def test_all_registered_with_flags() -> None:
    assert FORGERS | POISONERS <= set(REGISTRY)
    for name in FORGERS:
        cls = REGISTRY[name]
        assert issubclass(cls, UpdateForger) and cls.kind == "forger" and cls.name == name
        assert cls.omniscient is (name in OMNISCIENT), name
        assert cls.per_receiver is (name == "dissensus"), name
        assert cls.malformed is (name in MALFORMED), name
    for name in POISONERS:
        assert issubclass(REGISTRY[name], DataPoisoner) and REGISTRY[name].kind == "poisoner"
    assert all(available()[n] for n in FORGERS | POISONERS)


@pytest.mark.parametrize("name", sorted(FORGERS - MALFORMED))
def test_defaults_forge_k_finite_rows(name: str) -> None:
    # the property fedsim.checks.check_forger runs on a plugin's forger, on the same cases
    forger = build(name)
    assert all(check_messages(forger, case) for case in cases(forger, range(3)))


BAD = [
    ("label_shift", {"shift": 0}, "shift"),
    ("label_swap", {"a": -1}, "a"),
    ("label_swap", {"a": 2, "b": 2}, "b"),
    ("targeted_label_flip", {"source": 1.5}, "source"),
    ("targeted_label_flip", {"source": 3, "target": 3}, "target"),
    ("sign_flip", {"scale": 0}, "scale"),
    ("gaussian", {"mode": "uniform"}, "mode"),
    ("gaussian", {"std": -1.0}, "std"),
    ("gaussian", {"mean": float("nan")}, "mean"),
    ("gaussian", {"scale": -2}, "scale"),
    ("alie", {"z": float("inf")}, "z"),
    ("ipm", {"eps": -0.1}, "eps"),
    ("min_max", {"perturbation": "random"}, "perturbation"),
    ("min_max", {"gamma_init": 0}, "gamma_init"),
    ("min_sum", {"tau": 0.0}, "tau"),
    ("min_sum", {"score": "mean"}, "score"),
    ("fang_krum", {"reference": "previous"}, "reference"),
    ("fang_krum", {"threshold": -1}, "threshold"),
    ("fang_trimmed_mean", {"b": 1.0}, "b"),
    ("dissensus", {"eps": 0}, "eps"),
    ("stale", {"delay": 0}, "delay"),
    ("nan", {"value": "zero"}, "value"),
    ("wrong_shape", {"delta": 2}, "delta"),
]


@pytest.mark.parametrize(("name", "params", "param"), BAD)
def test_bad_parameter_is_named(name: str, params: dict, param: str) -> None:
    with pytest.raises(ValueError, match=rf"^{param}: "):
        build(name, params)


def test_unknown_parameter_and_name() -> None:
    with pytest.raises(ValueError, match="bogus"):
        build("ipm", {"bogus": 1})
    with pytest.raises(ValueError, match="unknown attack"):
        build("no_such_attack")
