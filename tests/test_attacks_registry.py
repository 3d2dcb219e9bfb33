"""Registration, class flags and parameter validation of every attack."""

import pytest
import torch

from attacks import REGISTRY, AttackContext, DataPoisoner, UpdateForger, available, build

OMNISCIENT = {"ipm", "min_max", "min_sum", "fang_krum", "fang_trimmed_mean", "dissensus"}
FORGERS = OMNISCIENT | {"sign_flip", "gaussian", "alie", "crash", "stale", "nan", "wrong_shape"}
POISONERS = {"label_shift", "label_swap", "targeted_label_flip"}


def test_all_registered_with_flags() -> None:
    assert FORGERS | POISONERS <= set(REGISTRY)
    for name in FORGERS:
        cls = REGISTRY[name]
        assert issubclass(cls, UpdateForger) and cls.kind == "forger" and cls.name == name
        assert cls.omniscient is (name in OMNISCIENT), name
        assert cls.per_receiver is (name == "dissensus"), name
    for name in POISONERS:
        assert issubclass(REGISTRY[name], DataPoisoner) and REGISTRY[name].kind == "poisoner"
    assert all(available()[n] for n in FORGERS | POISONERS)


@pytest.mark.parametrize("name", sorted(FORGERS - {"crash", "dissensus"}))
def test_defaults_forge_k_rows(name: str) -> None:
    torch.manual_seed(0)
    honest, own = torch.randn(8, 6) + 0.5, torch.randn(2, 6)
    out = build(name).forge(honest, own, AttackContext(n=10, f=2, generator=torch.Generator().manual_seed(0)))
    assert out.shape[0] == 2 and out.dtype == own.dtype


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
