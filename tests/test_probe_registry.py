"""Probes as a typed, registered extension point (issue 15, item 5): the schema holds each
``probes:`` entry as its registered kind's model, dispatched on ``kind``; the registry, not an
if/else, decides which kinds exist, how they are checked, run and summarised."""

from __future__ import annotations

import pytest
import yaml

from fedlib.params import Integer, param
from fedsim.probe_registry import REGISTRY, Probe, kinds, register_probe, summarize, validate_probe
from fedsim.scenario import ProbeConfig, ScenarioError, parse, probe_config


def _scenario(tmp_path, probes):
    return {"name": "t", "dataset": {"name": "sklearn_digits"},
            "backbone": {"name": "identity", "cache_dir": str(tmp_path / "cache")},
            "peers": {"count": 8}, "topology": {"kind": "k_regular", "degree": 4},
            "engine": {"backend": "local"}, "output": {"dir": str(tmp_path / "runs")}, "probes": probes}


@pytest.fixture()
def toy_kind():
    """A probe kind registered for one test."""

    @register_probe("toy")
    class Toy(Probe):
        """A toy probe."""

        params = {"size": param(3, Integer(minimum=1), doc="how big"), "label": param(None)}

        def run(self, i, cfg, ctx):
            return {"kind": "toy", "size": cfg["size"], "records": [1]}

    yield Toy
    REGISTRY.pop("toy", None)


def test_the_schema_types_each_entry_by_its_kind(tmp_path):
    probes = [{"kind": "cloning", "queries": [8, 32], "topk": [None]}, {"kind": "unlearning", "retrain": False}]
    sc = parse(_scenario(tmp_path, probes))
    assert [type(p) for p in sc.probes] == [probe_config(kinds()["cloning"]), probe_config(kinds()["unlearning"])]
    assert all(isinstance(p, ProbeConfig) for p in sc.probes)
    assert sc.probes[0].queries == [8, 32] and sc.probes[0].method == "ridge"  # a default: typed field
    # the resolved scenario.yaml holds the keys as written (defaults not spelt out, order kept)
    assert sc.model_dump()["probes"] == probes
    assert yaml.safe_load(yaml.safe_dump(sc.model_dump(mode="json")))["probes"] == probes
    assert parse(sc.model_dump()).probes == sc.probes  # round trip


@pytest.mark.parametrize(
    ("probe", "message"),
    [
        ({"kind": "clonning"}, r"probes\.0\.kind: got 'clonning' \(did you mean 'cloning'\?\); allowed: unlearning, "
                               r"cloning"),
        ({"queries": [8]}, r"probes\.0: each probe is a mapping with a 'kind'"),
        ({"kind": "cloning", "querys": [8]}, r"probes\.0\.querys: unknown key for kind cloning; allowed: kind, target"),
        ({"kind": "unlearning", "lr": -1.0}, r"probes\.0\.lr: "),
    ],
)
def test_bad_entries_are_one_line_errors_naming_the_key(tmp_path, probe, message):
    with pytest.raises(ScenarioError, match=message) as e:
        parse(_scenario(tmp_path, [probe]), "s.yaml")
    assert "\n" not in str(e.value)


def test_a_registered_kind_joins_the_union(tmp_path, toy_kind):
    sc = parse(_scenario(tmp_path, [{"kind": "toy", "size": 5}]))
    assert isinstance(sc.probes[0], probe_config(toy_kind)) and sc.probes[0].size == 5
    assert sc.probes[0].label is None
    assert validate_probe(0, sc.probes[0]) == {"kind": "toy", "size": 5, "label": None}
    assert summarize({"kind": "toy", "size": 5}) == {"kind": "toy"}  # the base class's summary
    with pytest.raises(ScenarioError, match=r"probes\.0\.size: must be an integer >= 1, got 0"):
        parse(_scenario(tmp_path, [{"kind": "toy", "size": 0}]))
    from fedsim.catalog import describe

    assert [(p.name, p.constraint, p.help) for p in describe("probe", "toy")[1]] == [
        ("size", "an integer >= 1", "how big"), ("label", "not declared", "")]
    with pytest.raises(ScenarioError, match=r"probes\.0\.kind: got 'toys' \(did you mean 'toy'\?\)"):
        parse(_scenario(tmp_path, [{"kind": "toys"}]))
    REGISTRY.pop("toy")
    with pytest.raises(ScenarioError, match=r"probes\.0\.kind: got 'toy'; allowed: unlearning, cloning"):
        parse(_scenario(tmp_path, [{"kind": "toy"}]))


def test_register_probe_refuses_what_it_cannot_hold(toy_kind):
    with pytest.raises(TypeError, match="not a subclass"):
        register_probe("x")(dict)  # type: ignore[arg-type]

    class Other(Probe):
        params = {"kind": param(1)}

    with pytest.raises(ValueError, match="other than 'kind'"):
        register_probe("other")(Other)

    class Legacy(Probe):  # the old spelling: one way to declare keys, so it is refused with the new one
        defaults = {"size": 3}

    with pytest.raises(TypeError, match=r"declare the keys as params = \{key: param\(default"):
        register_probe("legacy")(Legacy)
    assert "legacy" not in REGISTRY
    with pytest.raises(ValueError, match="already registered"):
        register_probe("toy")(type("Toy2", (Probe,), {}))
    with pytest.raises(ValueError, match="must be a name"):
        register_probe("a b")(type("Toy3", (Probe,), {}))


def test_a_probe_entry_without_records_is_shown_by_run_and_report(tmp_path):
    """A probe's entry is any mapping (docs/extending.md): one without ``records`` was left out of
    what `fedsim run` prints, and `fedsim report` printed no probe at all."""
    import json

    from click.testing import CliRunner

    import fedsim
    from fedsim.cli import main
    from fedsim.report_probes import format_probes

    @register_probe("bare_probe_for_test")
    class Bare(Probe):
        """Final mean head norm (a test's probe, no per-peer records)."""

        def run(self, i, cfg, ctx):
            return {"kind": "bare_probe_for_test", "mean_norm": float(abs(ctx.final_params).sum())}

    try:
        r = fedsim.run(_scenario(tmp_path, [{"kind": "bare_probe_for_test"}]) | {"rounds": 2}, out=tmp_path / "run")
        value = json.loads((r.dir / "probes.json").read_text())[0]["mean_norm"]
        table = "### Probe: bare_probe_for_test\n\n| field | value |\n|---|---|\n| kind | bare_probe_for_test |\n"
        assert format_probes([{"kind": "bare_probe_for_test", "mean_norm": value}]).startswith(table)
        assert f"| mean_norm | {value} |" in format_probes([{"kind": "bare_probe_for_test", "mean_norm": value}])
        out = CliRunner().invoke(main, ["report", str(r.dir)]).output
        assert f"## Probes: run run\n\n{table}| mean_norm | {value} |" in out
        out = CliRunner().invoke(main, ["report", str(r.dir), "--format", "csv"]).output
        assert "Probe" not in out  # CSV stays one table
    finally:
        REGISTRY.pop("bare_probe_for_test", None)
    # the built-ins' tables read their records: an entry of theirs without any shows nothing
    assert format_probes([{"kind": "cloning", "records": []}]) == ""


def test_one_class_is_one_kind(tmp_path, toy_kind):
    """Registering a registered class under a second kind is one error (its entries say one
    ``cls.kind``); one unregistered and registered again gets the new kind's schema model (before,
    the model was cached per class and kept the first kind's ``Literal``)."""
    assert isinstance(parse(_scenario(tmp_path, [{"kind": "toy"}])).probes[0], probe_config(toy_kind))
    with pytest.raises(ValueError, match=r"^register_probe\('toy2'\): .*Toy is already registered as kind 'toy'; "
                                         "one class is one kind: register a subclass for the second$"):
        register_probe("toy2")(toy_kind)
    assert "toy2" not in REGISTRY and toy_kind.kind == "toy"
    REGISTRY.pop("toy")
    try:
        register_probe("toy_again")(toy_kind)
        sc = parse(_scenario(tmp_path, [{"kind": "toy_again", "size": 2}]))
        assert sc.probes[0].kind == "toy_again" and sc.probes[0].size == 2
    finally:
        REGISTRY.pop("toy_again", None)
        toy_kind.kind = "toy"


def test_a_plugins_probe_kind_without_plugin_says_to_name_it(tmp_path, monkeypatch):
    """An unknown probe kind with no plugin imported ends in the --plugin hint an unknown backbone,
    strategy or attack name has (fedsim.plugins.hint), in fedsim validate and fedsim list probes
    NAME alike; with a plugin named, the hint is left out (the name is not that plugin's)."""
    from click.testing import CliRunner

    from fedsim import plugins
    from fedsim.cli import main

    hint = "; one of your own? name the file that registers it: --plugin FILE (docs/extending.md)"
    monkeypatch.setattr(plugins, "_LOADED", {})
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(_scenario(tmp_path, [{"kind": "consensus_distance"}])))
    res = CliRunner().invoke(main, ["validate", str(path)])
    assert res.exit_code == 1 and res.output.strip().endswith(
        f"probes.0.kind: got 'consensus_distance'; allowed: {', '.join(kinds())}{hint}"), res.output
    res = CliRunner().invoke(main, ["list", "probes", "consensus_distance"])
    assert res.exit_code != 0 and res.output.strip().endswith(f"{', '.join(sorted(kinds()))}{hint}"), res.output

    plugin = tmp_path / "other_probe.py"
    plugin.write_text("from fedsim.probe_registry import Probe, register_probe\n\n\n"
                      "@register_probe('other_hint_probe')\nclass Other(Probe):\n    '''Another.'''\n")
    try:
        res = CliRunner().invoke(main, ["list", "probes", "consensus_distance", "--plugin", str(plugin)])
        assert res.exit_code != 0 and "other_hint_probe" in res.output and "--plugin FILE" not in res.output
    finally:
        REGISTRY.pop("other_hint_probe", None)


def test_the_probe_kind_hint_reads_the_scenarios_plugins_not_this_processs(tmp_path, monkeypatch):
    """The hint read "a plugin imported in this process" (plugins.loaded()): once any plugin was
    imported (another scenario's, earlier in a session or a sweep's planning), a scenario naming
    none lost it, and `fedsim list` lost it after any import. It reads the scenario's own
    ``plugins:`` (the probes' run-time checks too) and `fedsim list`'s own --plugin, as an unknown
    rule, attack or backbone does (fedsim.validation)."""
    from click.testing import CliRunner

    from fedsim import catalog, plugins
    from fedsim.cli import main

    hint = "; one of your own? name the file that registers it: --plugin FILE (docs/extending.md)"
    monkeypatch.setattr(plugins, "_LOADED", {str(tmp_path / "elsewhere.py"): None})  # imported before, elsewhere
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(_scenario(tmp_path, [{"kind": "consensus_distance"}])))
    res = CliRunner().invoke(main, ["validate", str(path)])
    assert res.exit_code == 1 and res.output.strip().endswith(f"{', '.join(kinds())}{hint}"), res.output
    with pytest.raises(catalog.CatalogError) as e:
        catalog.describe("probes", "consensus_distance")
    assert str(e.value).endswith(hint)
    with pytest.raises(catalog.CatalogError) as e:
        catalog.describe("probes", "consensus_distance", ["my_probes.py"])  # named: the hint would not help
    assert "--plugin" not in str(e.value)
    for listed, ends in (((), hint), (["my_probes.py"], f"{', '.join(kinds())}")):  # the run-time checks
        with pytest.raises(ValueError) as e:
            validate_probe(0, {"kind": "consensus_distance"}, 8, listed)
        assert str(e.value).endswith(ends), str(e.value)

    plugin = tmp_path / "registers_a_probe.py"  # the scenario names a plugin: the name is not its
    plugin.write_text("from fedsim.probe_registry import Probe, register_probe\n\n\n"
                      "@register_probe('listed_hint_probe')\nclass Listed(Probe):\n    '''Another.'''\n")
    path.write_text(yaml.safe_dump(_scenario(tmp_path, [{"kind": "consensus_distance"}]) | {"plugins": [str(plugin)]}))
    try:
        res = CliRunner().invoke(main, ["validate", str(path), "--plugin", str(plugin)])
        assert res.exit_code == 1 and "listed_hint_probe" in res.output and "--plugin FILE" not in res.output, (
            res.output)
    finally:
        REGISTRY.pop("listed_hint_probe", None)
