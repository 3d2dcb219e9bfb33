"""fedlib (issue 15, item 6): the leaf that strategies and attacks share: one declarative
parameter validation, one head layout, one Krum kernel."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from fedlib.distances import krum_scores, sq_dists
from fedlib.heads import flatten, num_params, unflatten
from fedlib.params import (
    AnyOf,
    Boolean,
    Index,
    Integer,
    ListOf,
    Mapping,
    Options,
    Real,
    Tagged,
    Text,
    check_params,
    constraint,
    defaults,
    param,
    require,
    validate,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("check", "good", "bad", "text"),
    [
        (Integer(minimum=1), [1, 7], [0, True, 1.0, "1", None], "an integer >= 1"),
        (Real(), [0, -1.5, 1e300], [math.nan, math.inf, False, "1", None], "a finite number"),
        (Real(lo=0, lo_open=True), [1e-300, 3], [0, -1, math.inf], "a finite number > 0"),
        (Real(lo=0.0), [0.0, 2], [-1e-300], "a finite number >= 0.0"),
        (Real(hi=0.0), [0.0, -5], [1e-300], "a finite number <= 0.0"),
        (Real(lo=0.0, hi=0.5, hi_open=True), [0.0, 0.49], [0.5, -0.1], "a finite number with 0.0 <= x < 0.5"),
        (Real(lo=0.0, hi=1.0, null=True), [None, 1.0], [1.5, "x"], "a finite number with 0.0 <= x <= 1.0 or null"),
        (Options(choices=("a", "b")), ["a", "b"], ["c", None, ["a"]], "one of 'a', 'b'"),
        (Options(choices=(1, -1)), [1, -1], [0, "1"], "one of 1, -1"),
        (Boolean(), [True, False], ["false", 0, 1, None], "true or false"),
        (Mapping(what="a mapping of p"), [{}, {"a": 1}], [[], "x"], "a mapping of p"),
        (Text(), ["x", ""], [1, None], "a string"),
        (Integer(minimum=1, null=True, what="an integer >= 1 or null (N - f)"), [None, 2], [0],
         "an integer >= 1 or null (N - f)"),
        (Integer(minimum=1, maximum=3), [1, 3], [0, 4, True], "an integer in [1, 3]"),
        (Index(of="n", noun="a peer id"), [0, 10**6], [-1, "0", True, None], "a peer id in [0, n - 1]"),
        (Index(of="n", noun="a peer id", extra=("global",), null=True), ["global", None, 3], ["all", -1],
         "a peer id in [0, n - 1] or 'global' or null"),
        (AnyOf(options=(Integer(minimum=0, maximum=0), Integer(minimum=2))), [0, 2], [1, False, 0.0],
         "an integer in [0, 0] or an integer >= 2"),
        (ListOf(item=Integer(minimum=1), min_len=1), [[1], [3, 3]], [[], [0], (1,), [True]],
         "a non-empty list, each an integer >= 1"),
        (ListOf(item=Options(choices=("a", 1)), distinct=True), [[], ["a", 1]], [["a", "a"], ["b"]],
         "a list of distinct values, each one of 'a', 1"),
    ],
)
def test_constraints_accept_reject_and_say_what_they_need(check, good, bad, text) -> None:
    for v in good:
        require("x", v, check)
    for v in bad:
        with pytest.raises(ValueError, match="^" + __import__("re").escape(f"x: must be {text}, got {v!r}") + "$"):
            require("x", v, check)


def test_index_is_bounded_by_the_run_fact_in_the_context() -> None:
    peer = Index(of="peers.count", noun="a peer id")
    assert peer.check("p", 7, {"peers.count": 8}) == 7 and peer.accepts(8) and peer.accepts(8, {"peers.count": None})
    with pytest.raises(ValueError, match=r"^p: must be a peer id in \[0, 7\], got 8$"):
        peer.check("p", 8, {"peers.count": 8})
    assert peer.describe("p") == "a peer id in [0, peers.count - 1]"  # fedsim list: no run yet


def test_check_params_fills_normalises_and_names_the_full_path() -> None:
    import numpy as np

    table = {
        "n": param(2, Integer(minimum=1)),
        "lr": param(0.5, Real(lo=0.0, lo_open=True)),
        "qs": param(factory=lambda: [4, 1], check=ListOf(item=Integer(minimum=1), dedupe=True, sort=True)),
        "sub": param(None, Mapping(keys={"k": param(1, Integer(minimum=0))}, null=True)),
        "ds": param(factory=list, check=ListOf(item=Tagged(kinds={"a": {"x": param(0.0, Real())}, "b": {}},
                                                                 noun="thing"))),
        "free": param("anything"),
    }
    out = check_params("p.0", table, {"kind": "z", "lr": 1, "qs": [8, np.int64(2), 8], "n": np.int64(3),
                                      "sub": {}, "ds": [{"kind": "a"}, {"kind": "b"}]}, keep=("kind",))
    assert out == {"n": 3, "lr": 1.0, "qs": [2, 8], "sub": {"k": 1}, "ds": [{"x": 0.0, "kind": "a"}, {"kind": "b"}],
                   "free": "anything", "kind": "z"}
    assert type(out["n"]) is int and type(out["lr"]) is float and type(out["qs"][0]) is int
    assert list(out) == [*table, "kind"]  # declaration order, the kept keys after
    assert defaults(table)["qs"] is not defaults(table)["qs"]  # fresh defaults
    for values, message in [
        ({"m": 1}, r"p\.0\.m: unknown key; allowed: n, lr, qs, sub, ds, free"),
        ({"lr": 0}, r"p\.0\.lr: must be a finite number > 0\.0, got 0"),
        ({"sub": {"k": -1}}, r"p\.0\.sub\.k: must be an integer >= 0, got -1"),
        ({"sub": {"j": 1}}, r"p\.0\.sub\.j: unknown key; allowed: k"),
        ({"sub": 3}, r"p\.0\.sub: must be a mapping with keys k or null, got 3"),
        ({"ds": [{"kind": "b"}, {"kind": "a", "x": "1"}]}, r"p\.0\.ds\.1\.x: must be a finite number, got '1'"),
        ({"ds": [{"kind": "c"}]}, r"p\.0\.ds\.0: must be a mapping with kind: a \| b, got"),
        ({"ds": [{"kind": "b", "x": 1}]}, r"p\.0\.ds\.0\.x: unknown key for thing kind b; allowed: kind"),
        ({"qs": [0]}, r"p\.0\.qs: must be a list, each an integer >= 1, got \[0\]"),  # a scalar item: the list
    ]:
        with pytest.raises(ValueError, match="^" + message):
            check_params("p.0", table, values)
    after = Mapping(keys={"a": param(1, Integer()), "b": param(2, Integer())},
                    after=lambda path, m, ctx: m if m["a"] <= m["b"] else (_ for _ in ()).throw(ValueError(path)))
    assert after.check("m", {"a": 2}) == {"a": 2, "b": 2}
    with pytest.raises(ValueError, match="^m$"):
        after.check("m", {"a": 3})


@dataclass
class _Rule:
    alpha: float = param(0.5, Real(lo=0.0, hi=1.0))
    free: int = 3  # no declaration: not checked
    table: dict = param(factory=dict, check=Mapping())

    def __post_init__(self) -> None:
        validate(self)


def test_validate_checks_declared_fields_in_order_and_skips_the_others() -> None:
    assert _Rule().table == {} and _Rule().table is not _Rule().table  # a factory, not a shared default
    _Rule(free="anything")
    with pytest.raises(ValueError, match="^alpha: "):
        _Rule(alpha=2.0, table=[])  # the first declared field that fails
    with pytest.raises(ValueError, match="^table: must be a mapping, got"):
        _Rule(table=[])
    assert constraint(_Rule, "alpha") == Real(lo=0.0, hi=1.0) and constraint(_Rule, "free") is None
    assert constraint(_Rule, "nope") is None


def test_rules_and_attacks_validate_through_their_base_class() -> None:
    """A built-in whose __post_init__ also sets things up still validates first (super())."""
    import attacks
    import strategies

    with pytest.raises(ValueError, match="^include_own: must be true or false, got 'no'"):
        strategies.build("arc", {"include_own": "no"})
    with pytest.raises(ValueError, match="^inner_params: must be a mapping of the inner rule's parameters"):
        strategies.build("nnm", {"inner_params": [1]})
    with pytest.raises(ValueError, match="^b: must be a finite number > 1, got 1.0"):
        attacks.build("fang_trimmed_mean", {"b": 1.0})  # fedsim list used to say "> 0"
    with pytest.raises(ValueError, match="^a: must be an integer >= 0"):
        attacks.build("label_swap", {"a": -1})
    with pytest.raises(ValueError, match="^b: must differ from a"):  # a cross-field check, still code
        attacks.build("label_swap", {"a": 1, "b": 1})


def test_head_layout_round_trips_and_refuses_a_wrong_length() -> None:
    w, b = torch.randn(4, 3, 5), torch.randn(4, 3)
    flat = flatten(w, b)
    assert flat.shape == (4, num_params((3, 5), True)) == (4, 18)
    w2, b2 = unflatten(flat, (3, 5), True)
    assert torch.equal(w2, w) and torch.equal(b2, b)
    assert torch.equal(flat[:, :15].reshape(4, 3, 5), w)  # W row-major first, then b
    w3, b3 = unflatten(flatten(w, None), (3, 5), False)
    assert torch.equal(w3, w) and b3 is None
    with pytest.raises(ValueError, match="params has 17 entries, layer \\(3, 5\\) bias=True needs 18"):
        unflatten(flat[:, :17], (3, 5), True)


def test_the_three_layouts_are_one() -> None:
    import strategies
    from attacks.probes import _head

    assert strategies.flatten is flatten and strategies.unflatten is unflatten
    assert _head.flatten is flatten and _head.unflatten is unflatten and _head.num_params is num_params


def _krum_bruteforce(x: torch.Tensor, f: int) -> torch.Tensor:
    n = x.shape[0]
    out = []
    for i in range(n):
        d = sorted(float(((x[i] - x[j]) ** 2).sum()) for j in range(n) if j != i)
        out.append(sum(d[: n - f - 2]))
    return torch.tensor(out, dtype=torch.float64)


def test_krum_kernel_is_the_papers_score() -> None:
    g = torch.Generator().manual_seed(0)
    for n, f in ((5, 0), (7, 2), (9, 3), (12, 4)):
        x = torch.randn(n, 6, generator=g, dtype=torch.float64)
        assert torch.allclose(krum_scores(sq_dists(x, x), f), _krum_bruteforce(x, f), rtol=1e-12)
    x = torch.randn(4, 3, generator=g, dtype=torch.float64)
    with pytest.raises(ValueError, match="Krum needs n - f - 2 >= 1"):
        krum_scores(sq_dists(x, x), 2)
    # degrade: k clamped to [1, N - 1]; one vector scores 0
    assert torch.equal(krum_scores(sq_dists(x, x), 2, degrade=True), krum_scores(sq_dists(x, x), 1))
    assert torch.equal(krum_scores(sq_dists(x, x), -5, degrade=True), krum_scores(sq_dists(x, x), -1))
    assert krum_scores(torch.zeros(1, 1), 0, degrade=True).tolist() == [0.0]


def test_fedlib_is_a_leaf_and_its_declarations_need_no_torch() -> None:
    code = ("import sys, fedlib.params, fedlib.heads, fedlib.registry\n"
            "print(sorted(m for m in ('torch', 'fedsim', 'strategies', 'attacks') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, check=True).stdout
    assert out.strip() == "[]", out


def test_one_registry_for_rules_and_attacks() -> None:
    import attacks
    import strategies
    from fedlib.registry import Registry, did_you_mean

    assert isinstance(strategies.REGISTRY, Registry) and isinstance(attacks.REGISTRY, Registry)
    reg = Registry("widget")

    @dataclass
    class W:
        """A widget.

        More text."""

        size: int = 1

    reg.add("w", W)
    reg.add("w", W)  # the same class again: fine (a plugin imported twice)
    assert W.name == "w" and reg.available() == {"w": "A widget."} and reg.parameters("w") == ["size"]
    with pytest.raises(ValueError, match="^widget name 'w' is registered twice .*; choose another name$"):
        reg.add("w", type("Other", (), {}))
    with pytest.raises(ValueError, match=r"^unknown widget 'x'; available: w$"):
        reg.build("x")
    with pytest.raises(ValueError, match=r"^unknown parameter 'sise' of widget 'w' \(did you mean 'size'\?\); its par"):
        reg.build("w", {"sise": 2})
    assert reg.build("w", {"size": 2}) == W(2)
    assert did_you_mean("krun", ["krum", "median"]) == " (did you mean 'krum'?)" and did_you_mean("zz", ["a"]) == ""
