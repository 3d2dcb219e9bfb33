"""`fedsim list` (issue 16, item 1): one component in detail (docstring, each parameter with type,
default and what it accepts), did-you-mean for unknown kinds, names and commands, and a listing
that imports no torch, Ray, matplotlib or networkx."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from fedsim import catalog
from fedsim.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _lines(text: str) -> list[str]:
    return [x for x in text.splitlines() if x.strip()]


def _row(output: str, param: str) -> list[str]:
    """The columns of ``param``'s row in a parameter table (split on runs of 2+ spaces)."""
    rows = [re.split(r"\s{2,}", x.strip()) for x in output.splitlines() if x.strip().startswith(param + " ")]
    assert len(rows) == 1, output
    return rows[0]


def test_list_strategy_prints_its_docstring_and_parameters() -> None:
    r = CliRunner().invoke(main, ["list", "strategies", "trimmed_mean"])
    assert r.exit_code == 0, r.output
    assert r.output.startswith("trimmed_mean (strategy)\nCoordinate-wise trimmed mean (Yin et al., ICML 2018")
    assert _row(r.output, "beta") == ["beta", "float | None", "null", "a finite number with 0.0 <= beta < 0.5 or null"]
    assert _row(r.output, "include_own") == ["include_own", "bool", "true", "true or false"]


def test_list_attack_prints_choices_and_bounds() -> None:
    r = CliRunner().invoke(main, ["list", "attacks", "gaussian"])
    assert r.exit_code == 0, r.output
    assert "i.i.d. Gaussian" in r.output and "Blanchard et al., NeurIPS 2017" in r.output  # the full docstring
    assert _row(r.output, "mode") == ["mode", "str", "'gaussian'", "one of 'gaussian', 'random'"]
    assert _row(r.output, "std") == ["std", "float", "1.0", "a finite number >= 0"]


def test_every_parameter_constraint_is_what_validation_says() -> None:
    """The listed constraint is the message the rule itself gives for a bad value, and every
    built-in parameter declares one (fedlib.params: one declaration for both)."""
    import attacks
    import strategies

    for registry in (strategies.REGISTRY, attacks.REGISTRY):
        for cls in registry.values():
            for p in catalog.class_params(cls):
                if cls.__module__.split(".")[0] in ("strategies", "attacks"):
                    assert p.constraint != "not declared", (cls, p.name)
                elif p.constraint == "not declared":
                    continue
                with pytest.raises(ValueError, match="^" + re.escape(f"{p.name}: must be {p.constraint}, got <object")):
                    cls(**{p.name: object()})
    # a rule that checks nothing would be listed as such: FedAvg now checks include_own
    with pytest.raises(ValueError, match="include_own: must be true or false"):
        strategies.build("fedavg", {"include_own": "false"})


def test_list_partition_and_topology_show_their_scenario_fields() -> None:
    r = CliRunner().invoke(main, ["list", "partitions", "dirichlet"])
    assert r.exit_code == 0, r.output
    assert _row(r.output, "partition.alpha")[1:] == ["float", "0.5", "> 0"]
    assert "partition.window" not in r.output and "partition.beta" not in r.output  # other kinds' fields
    assert "partition.val_fraction" in r.output  # applies to every kind
    r = CliRunner().invoke(main, ["list", "topology", "erdos_renyi"])  # the singular is accepted
    assert _row(r.output, "topology.p")[1:3] == ["float", "0.2"] and "topology.fanout" not in r.output


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["list", "strategies", "krun"], "Error: unknown strategy 'krun' (did you mean 'krum'?); available: "),
        (["list", "attacks", "sign_flp"], "Error: unknown attack 'sign_flp' (did you mean 'sign_flip'?)"),
        (
            ["list", "strategie"],
            "Error: 'strategie' is neither a kind nor a component (did you mean 'strategies'?); kinds: ",
        ),
        (["list", "backbones", "fmnist"], "Error: unknown backbone 'fmnist' (did you mean 'fmnist_cnn'?)"),
        # a component of another kind says which (before: only "did you mean 'fang_krum'?")
        (["list", "attacks", "krum"], "Error: unknown attack 'krum' (did you mean 'fang_krum'?); 'krum' is a "
                                      "strategy: fedsim list strategies krum; available: "),
    ],
)
def test_unknown_kind_or_name_is_one_line_with_did_you_mean(argv: list[str], expected: str) -> None:
    r = CliRunner().invoke(main, argv)
    assert r.exit_code == 1
    assert len(_lines(r.output)) == 1 and _lines(r.output)[0].startswith(expected), r.output


def test_a_component_name_alone_or_the_docs_word_for_a_kind_is_listed() -> None:
    """`fedsim list krum` and `fedsim list rules` (the docs' words) were 'unknown kind' errors."""
    alone = CliRunner().invoke(main, ["list", "krum"])
    assert alone.exit_code == 0 and alone.output == CliRunner().invoke(main, ["list", "strategies", "krum"]).output
    assert alone.output.startswith("krum (strategy)\n") and "include_own" in alone.output
    topo = CliRunner().invoke(main, ["list", "complete"])
    assert topo.exit_code == 0 and topo.output == CliRunner().invoke(main, ["list", "topologies", "complete"]).output
    rules = CliRunner().invoke(main, ["list", "rules"])
    assert rules.exit_code == 0 and rules.output == CliRunner().invoke(main, ["list", "strategies"]).output
    assert CliRunner().invoke(main, ["list", "rule", "krum"]).output == alone.output
    bad = CliRunner().invoke(main, ["list", "krumm"])
    assert bad.exit_code == 1 and _lines(bad.output) == [
        "Error: 'krumm' is neither a kind nor a component (did you mean 'krum'?); kinds: datasets, backbones, "
        "partitions, topologies, strategies, attacks, probes"
    ]


def test_no_attack_is_listed_and_a_component_before_a_name_is_not_an_unknown_kind() -> None:
    """`fedsim list none` said 'none' is neither a kind nor a component though a scenario names it
    (peers.attack.name: none); `fedsim list krum extra` said "unknown kind 'krum'"."""
    from fedsim.scenario import parse
    from fedsim.schema_sections import AttackCfg

    assert AttackCfg.model_fields["name"].default == catalog.NO_ATTACK  # the scenario's own name for it
    peers = {"count": 10, "byzantine": 1, "allow_idle_attack": True, "attack": {"name": catalog.NO_ATTACK}}
    assert parse({"peers": peers}).peers.attack.kind == "none"
    alone = CliRunner().invoke(main, ["list", "none"])
    assert alone.exit_code == 0 and alone.output == CliRunner().invoke(main, ["list", "attacks", "none"]).output
    assert alone.output == f"none (attack)\n{catalog.NO_ATTACK_DOC}\n"
    listing = CliRunner().invoke(main, ["list", "attacks"]).output
    assert _lines(listing)[1].split()[0] == "none" and "sign_flip" in listing
    r = CliRunner().invoke(main, ["list", "krum", "extra"])
    assert r.exit_code == 1 and _lines(r.output) == [
        "Error: 'krum' is a strategy, not a kind: `fedsim list krum` describes it, `fedsim list KIND NAME` "
        "takes a kind first; kinds: datasets, backbones, partitions, topologies, strategies, attacks, probes"
    ], r.output
    r = CliRunner().invoke(main, ["list", "sign_flip", "extra"])  # "an attack", not "a attack"
    assert r.exit_code == 1 and _lines(r.output)[0].startswith("Error: 'sign_flip' is an attack, not a kind"), r.output
    r = CliRunner().invoke(main, ["list", "strategie", "krum"])  # control: a misspelt kind is still one
    assert r.exit_code == 1 and _lines(r.output)[0].startswith(
        "Error: unknown kind 'strategie' (did you mean 'strategies'?)"
    ), r.output


def test_unknown_command_names_the_closest() -> None:
    r = CliRunner().invoke(main, ["lsit"])
    assert r.exit_code == 2 and "no such command 'lsit' (did you mean 'list'?)" in r.output


def test_static_listing_equals_the_live_registries() -> None:
    """`fedsim list` reads the rules' and attacks' names and docs from source (no torch); it must
    say exactly what the imported registries say."""
    import attacks
    import strategies

    for package, module in (("strategies", strategies), ("attacks", attacks)):
        shipped = {n: d for n, d in module.available().items()  # not plugins other tests registered
                   if module.REGISTRY[n].__module__.startswith(package + ".")}
        assert catalog.static_available(package) == shipped and len(shipped) >= 14


def test_fedsim_list_imports_no_heavy_module() -> None:
    """`fedsim list` stays well under 2 s because it imports neither torch nor Ray, matplotlib,
    networkx or pydantic (measured: 0.5 s vs 2.0 s before, README)."""
    code = (
        "import sys\nfrom fedsim.cli import main\n"
        "try:\n    main(['list'])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print(sorted(m for m in ('torch', 'ray', 'matplotlib', 'networkx', 'pydantic') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, check=True).stdout
    assert "krum" in out and "sign_flip" in out and "k_regular" in out
    assert out.strip().splitlines()[-1] == "[]", out[-500:]


PLUGIN = '''
"""A user's rule (tests/test_catalog.py writes this file)."""
from dataclasses import dataclass
from typing import ClassVar

import strategies
from fedlib.params import Integer, param


@strategies.register("catalog_topk")
@dataclass
class TopK(strategies.Strategy):
    """Mean of the k received vectors nearest to own (a test rule)."""

    k: int = param(3, Integer(minimum=1))
    exchanges: ClassVar[str] = "output_layer"
'''


def test_list_names_a_plugins_rule_with_its_parameters(tmp_path: Path) -> None:
    import strategies

    plugin = tmp_path / "my_rules.py"
    plugin.write_text(PLUGIN)
    try:
        r = CliRunner().invoke(main, ["list", "strategies", "catalog_topk", "--plugin", str(plugin)])
    finally:  # later tests iterate over every registered rule
        strategies.REGISTRY.pop("catalog_topk", None)
    assert r.exit_code == 0, r.output
    assert "Mean of the k received vectors" in r.output
    assert _row(r.output, "k") == ["k", "int", "3", "an integer >= 1"]
    r = CliRunner().invoke(main, ["list", "strategies", "--plugin", str(tmp_path / "missing.py")])
    assert r.exit_code == 2 and "--plugin" in r.output and "no such file" in r.output


def test_a_closed_pipe_is_not_an_error():
    """`fedsim list strategies geomed | head -1`: the reader leaves early; no error line, exit 0."""
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-m", "fedsim.cli", "list", "strategies", "geomed"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # the reader is gone before anything is written
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 0 and err == "", err


@pytest.mark.parametrize("kind", ["unlearning", "cloning"])
def test_probe_listing_is_the_harness_defaults(kind):
    """`fedsim list probes KIND` shows exactly the keys and defaults the probe harness uses."""
    from fedlib.params import CHECK
    from fedsim import catalog
    from fedsim import probe_builtins as probes
    from fedsim.probe_registry import defaults as probe_defaults
    from fedsim.probe_registry import kinds

    table = {"unlearning": probes.UNLEARNING_PARAMS, "cloning": probes.CLONING_PARAMS}[kind]
    defaults = probe_defaults(kinds()[kind])
    listed = catalog.probe_params(kind)
    top = [p for p in listed if "." not in p.name]
    assert [p.name for p in top] == list(table) == list(defaults)
    assert [p.default for p in top] == [catalog._show(v) for v in defaults.values()]
    # the listing's constraint is the text of the error a bad value gets (one declaration)
    assert [p.constraint for p in top] == [f.metadata[CHECK].describe(k) for k, f in table.items()]
    assert catalog.describe("probe", kind)[1] == listed
    rows = {p.name: p for p in listed}
    if kind == "unlearning":  # a nested mapping's keys, from its own table
        assert rows["canaries.count"].constraint == "an integer >= 2" and rows["canaries.count"].default == "50"
    else:  # each kind of a tagged mapping, and of a list of them
        assert rows["target_head.hidden"].help == "(kind bottleneck)" and rows["target_head.hidden"].default == "6"
        assert rows["defences.*.sigma"].constraint == "a finite number >= 0.0"


def test_help_names_every_kind_list_accepts():
    """`fedsim --help` and `fedsim list --help` named six kinds while `fedsim list` has seven
    (probes was missing): the help is checked against catalog.KINDS, the one source."""
    top = " ".join(CliRunner().invoke(main, ["--help"]).output.split())
    lst = " ".join(CliRunner().invoke(main, ["list", "--help"]).output.split())
    for kind in catalog.KINDS:
        assert kind in top.split("fedsim list", 1)[1].split("Options:")[0], kind
        assert kind in lst.split("one KIND", 1)[1].split("or one component")[0], kind


def test_schema_params_say_what_a_literal_or_nullable_field_accepts():
    """`fedsim list partitions windows` printed `Literal['partition', 'all']` ... `any` for
    partition.byzantine_classes (it accepts two words) and `>= 1` for per_class (null too)."""
    r = CliRunner().invoke(main, ["list", "partitions", "windows"])
    assert r.exit_code == 0, r.output
    assert _row(r.output, "partition.byzantine_classes")[1:] == ["str", "'partition'", "one of 'partition', 'all'"]
    assert _row(r.output, "partition.per_class")[1:] == ["int | None", "null", ">= 1 or null"]


NODOC_PLUGIN = '''
from dataclasses import dataclass
from typing import ClassVar

import attacks
import strategies
from fedsim.probe_registry import Probe, register_probe


@strategies.register("catalog_nodoc_rule")
@dataclass
class NoDocRule(strategies.Strategy):
    exchanges: ClassVar[str] = "output_layer"

    def __call__(self, own, received, ctx):
        return own


@attacks.register("catalog_nodoc_attack")
@dataclass
class NoDocAttack(attacks.UpdateForger):
    scale: float = 1.0

    def forge(self, honest, own, ctx):
        return own.expand(ctx.f, -1).clone()


@register_probe("catalog_nodoc_probe")
class NoDocProbe(Probe):
    params = {}

    def run(self, i, cfg, ctx):
        return {"kind": "catalog_nodoc_probe"}
'''


def test_a_plugin_without_a_docstring_is_listed_as_such(tmp_path: Path) -> None:
    """A docstring-less dataclass used to be listed by its generated signature
    (``NoDocAttack(scale: float = 1.0)``) and a docstring-less probe with an empty description."""
    import attacks
    import strategies
    from fedlib.registry import NO_DOC
    from fedsim.probe_base import REGISTRY as PROBES

    plugin = tmp_path / "nodoc.py"
    plugin.write_text(NODOC_PLUGIN)
    out = {}
    try:
        for kind, name in (("strategies", "catalog_nodoc_rule"), ("attacks", "catalog_nodoc_attack"),
                           ("probes", "catalog_nodoc_probe")):
            listing = CliRunner().invoke(main, ["list", kind, "--plugin", str(plugin)])
            one = CliRunner().invoke(main, ["list", kind, name, "--plugin", str(plugin)])
            out[name] = (listing, one)
    finally:  # later tests iterate over every registered component
        strategies.REGISTRY.pop("catalog_nodoc_rule", None)
        attacks.REGISTRY.pop("catalog_nodoc_attack", None)
        PROBES.pop("catalog_nodoc_probe", None)
    for name, (listing, one) in out.items():
        assert listing.exit_code == 0 and one.exit_code == 0, (listing.output, one.output)
        row = next(line for line in listing.output.splitlines() if line.strip().startswith(name))
        assert row.split(None, 1)[1] == NO_DOC, row
        assert one.output.splitlines()[1] == NO_DOC, one.output


def test_a_key_whose_default_is_null_shows_its_constraints_type() -> None:
    """`peer` (a peer id or null) was listed with type `any`."""
    res = CliRunner().invoke(main, ["list", "probes", "unlearning"])
    assert res.exit_code == 0, res.output
    rows = {line.split()[0]: line for line in res.output.splitlines() if line.startswith("  ") and line.split()}
    assert re.match(r"\s+peer\s+int \| None\s+null\s", rows["peer"]), rows["peer"]
    assert re.match(r"\s+target\s+int \| str \| None\s+null\s", rows["target"]), rows["target"]
    assert re.match(r"\s+canaries\s+mapping \| None\s+null\s", rows["canaries"]), rows["canaries"]
    assert not [r for r in rows.values() if re.match(r"\s+\S+\s+any\s", r)]
