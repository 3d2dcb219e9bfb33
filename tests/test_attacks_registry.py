"""Registration, class flags and parameter validation of every attack."""

import pytest
import torch

from attacks import REGISTRY, DataPoisoner, UpdateForger, available, build
from attacks.base import AttackContext
from fedsim.checks_attacks import cases, check_messages

OMNISCIENT = {"ipm", "min_max", "min_sum", "fang_krum", "fang_trimmed_mean", "dissensus"}
FORGERS = OMNISCIENT | {"sign_flip", "gaussian", "alie", "crash", "stale", "nan", "wrong_shape"}
MALFORMED = {"crash", "nan", "wrong_shape"}  # their messages are dropped on purpose
POISONERS = {"label_shift", "label_swap", "targeted_label_flip"}


def test_all_registered_with_flags() -> None:
    # equality: a new built-in attack must join a list here (and so the registry-wide properties)
    assert {n for n, cls in REGISTRY.items() if cls.__module__.startswith("attacks.")} == FORGERS | POISONERS
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


BUILT_IN_POISONERS = sorted(
    n for n, cls in REGISTRY.items() if cls.kind == "poisoner" and cls.__module__.startswith("attacks.")
)


@pytest.mark.parametrize("name", BUILT_IN_POISONERS)
def test_every_poisoner_keeps_shapes_and_labels_in_range_and_leaves_its_inputs(name: str) -> None:
    # the data poisoners' counterpart of check_forger's properties (which refuses poisoners)
    poisoner = build(name)
    assert (type(poisoner).__doc__ or "").strip()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 5, generator=g), torch.randint(0, 4, (40,), generator=g)
    y[:4] = torch.arange(4)  # every class present
    x0, y0 = x.clone(), y.clone()
    ctx = AttackContext(n=10, f=2, num_classes=4, generator=torch.Generator().manual_seed(1))
    px, py = poisoner.poison(x, y, ctx)
    assert torch.equal(x, x0) and torch.equal(y, y0), "poison modified its inputs"
    assert px.shape == x.shape and px.dtype == x.dtype
    assert py.shape == y.shape and py.dtype == y.dtype
    assert int(py.min()) >= 0 and int(py.max()) < 4, "labels out of [0, C)"
    assert bool((py != y).any()), "the default setting changes no label"
    again = AttackContext(n=10, f=2, num_classes=4, generator=torch.Generator().manual_seed(1))
    qx, qy = build(name).poison(x, y, again)
    assert torch.equal(qx, px) and torch.equal(qy, py), "not deterministic given the seed"


def test_the_bristle_label_attacks_cite_bristles_authors() -> None:
    # they cited "Chen et al." for Bristle, whose authors are Verbraeken, de Vos, Pouwelse
    # (arXiv 2110.11006, as the bristle rule says)
    for name in ("label_shift", "label_swap"):
        doc = REGISTRY[name].__doc__
        assert "Verbraeken, de Vos, Pouwelse" in doc and "2110.11006" in doc and "Chen" not in doc, name


def test_gaussian_states_the_papers_std_next_to_its_default() -> None:
    # the default std = 1 is ByzFL's; Blanchard et al.'s Gaussian Byzantine vectors have std 200
    doc = " ".join(REGISTRY["gaussian"].__doc__.split())
    assert "standard deviation 200" in doc and "std = 1" in doc and build("gaussian").std == 1.0
