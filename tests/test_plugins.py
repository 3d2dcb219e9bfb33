"""Plugins (fedsim.plugins): a rule, an attack and a backbone written in a module outside the
repository, named in a scenario's ``plugins:``, run in-process, on Ray actors, in a sweep and through
the Flower in-process bridge; registration errors are clear."""

import os
import re
import textwrap
from pathlib import Path

import pytest

from fedsim import plugins
from fedsim.prepare import prepare
from fedsim.runner import Run
from fedsim.scenario import ScenarioError, parse

REGISTERS_A_PROBE = ("from fedsim.probe_registry import Probe, register_probe\n\n\n"
                     "@register_probe('plugins_test_probe')\nclass Mine(Probe):\n    pass\n")

@pytest.fixture(autouse=True)
def _forget_the_probe_kind():
    """The probe kind the small plugins here register, unregistered after each test."""
    yield
    from fedsim.probe_registry import REGISTRY

    REGISTRY.pop('plugins_test_probe', None)


PLUGIN = '''
"""A user's own rule, attack and backbone (tests/test_plugins.py writes this file)."""
import os
import re
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

import attacks
import strategies
from fedsim.models.backbones import BackboneSpec, register_backbone


def _mark(kind, folder):
    """Leave a file named after this process: proof the plugin's code ran here."""
    open(os.path.join(folder, f"{kind}-{os.getpid()}"), "a").close()


@strategies.register("{tag}_mean")
@dataclass
class MyMean(strategies.Strategy):
    """The mean of own and received vectors, marking the process that ran it."""

    marks: str = ""
    exchanges: ClassVar[str] = "output_layer"

    def __call__(self, own, received, ctx):
        _mark("rule", self.marks)
        return torch.cat([own[None], received]).mean(0)


@attacks.register("{tag}_blast")
@dataclass
class Blast(attacks.UpdateForger):
    """Send huge random vectors, marking the process that forged it."""

    marks: str = ""
    scale: float = 1e4

    def forge(self, honest, own, ctx):
        _mark("attack", self.marks)
        return torch.randn(own.shape, generator=ctx.generator) * self.scale


class Projection(nn.Module):
    """A fixed random projection of the 8x8 digits to 24 features."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(64, 24, generator=torch.Generator().manual_seed(0)))

    def forward(self, x):
        return torch.tanh(x.flatten(1) @ self.w)


register_backbone(BackboneSpec("{tag}_proj", "random projection", Projection, (1, 8, 8), weights_file=False))
'''


def _write_plugin(folder: Path, tag: str) -> Path:
    p = folder / f"{tag}_plugin.py"
    p.write_text(textwrap.dedent(PLUGIN).replace("{tag}", tag))
    return p


@pytest.fixture()
def plugin_scenario(small_scenario, tmp_path):
    """A scenario naming a plugin file in tmp_path (outside the repository): its rule, its attack
    (1 Byzantine peer of 6) and its backbone; returns (make, marks folder)."""
    tag = f"p{abs(hash(str(tmp_path))) % 10**8}"  # registry names are per process: one per test
    ext = tmp_path / "outside"
    ext.mkdir()
    path = _write_plugin(ext, tag)
    marks = tmp_path / "marks"
    marks.mkdir()
    plugins.grant([str(path)])  # the user named it (--plugin / plugins=): a scenario alone never imports it

    def make(**over):
        return small_scenario(**{
            "plugins": [str(path)],
            "rounds": 2,
            "peers.count": 6,
            "peers.byzantine": 1,
            "peers.attack.name": f"{tag}_blast",
            "peers.attack.params": {"marks": str(marks)},
            "strategy.name": f"{tag}_mean",
            "strategy.params": {"marks": str(marks)},
            "backbone.name": f"{tag}_proj",
            "topology.kind": "complete",
        } | over)

    return make, marks, tag


def _pids(marks: Path, kind: str) -> set[int]:
    return {int(p.name.split("-")[1]) for p in marks.glob(f"{kind}-*")}


def _run(d):
    r = Run(parse(d))
    r.create_dir(overwrite=True)
    return r.execute()


def test_plugin_rule_attack_backbone_in_process(plugin_scenario):
    make, marks, tag = plugin_scenario
    d = make()
    prep = prepare(parse(d))
    assert prep.info["feature_dim"] == 24  # the plugin's backbone made the features
    assert prep.bytes_per_message == 4 * prep.num_params  # exchanges="output_layer": no backbone bytes
    summary = _run(d)
    assert _pids(marks, "rule") == {os.getpid()} and _pids(marks, "attack") == {os.getpid()}
    blasted = summary["final_accuracy_mean"]
    clean = _run(make(**{"name": "clean", "peers.byzantine": 0, "peers.attack.name": "none",
                         "peers.attack.params": {}}))["final_accuracy_mean"]
    assert blasted < clean - 0.2  # the plugin's attack really reached the plugin's mean


def test_plugin_runs_in_two_ray_actors(plugin_scenario, ray_session):
    """The actors' processes import the plugin themselves (before, they died with 'unknown attack')."""
    make, marks, _ = plugin_scenario
    summary = _run(make(**{"engine.backend": "ray", "engine.num_actors": 2}))
    assert 0 <= summary["final_accuracy_mean"] <= 1
    rule_pids = _pids(marks, "rule")
    assert len(rule_pids) == 2 and os.getpid() not in rule_pids  # each actor ran the user's rule
    assert _pids(marks, "attack") <= rule_pids and _pids(marks, "attack")


def test_plugin_in_a_sweep(plugin_scenario, tmp_path):
    import yaml

    from fedsim.sweep_execute import execute_sweep
    from fedsim.sweep_plan import plan_sweep

    make, marks, _ = plugin_scenario
    f = tmp_path / "sweep.yaml"
    f.write_text(yaml.safe_dump(make() | {"sweep": {"seed": [1, 2]}}))
    plan = plan_sweep(f, out=tmp_path / "sw")
    res = execute_sweep(plan, local=True)
    assert sorted(res.ran) == sorted(r.name for r in plan.runs) and not res.failed
    assert _pids(marks, "rule") and _pids(marks, "attack")


def test_plugin_through_the_flower_bridge(plugin_scenario, tmp_path):
    pytest.importorskip("flwr")
    from fedsim.flower import common
    from fedsim.flower.inprocess import run_in_process

    make, marks, tag = plugin_scenario
    sc = parse(make(**{"mode": "federated", "topology.kind": "star", "peers.count": 4}))
    nodes = [{"partition-id": i, "num-partitions": 4} for i in range(4)]
    summary = run_in_process(
        {"scenario": common.scenario_yaml(sc), "output-dir": str(tmp_path / "br"), "attack-side": "client"}, nodes
    )
    assert 0 <= summary["final_accuracy_mean"] <= 1
    assert _pids(marks, "rule") and _pids(marks, "attack")


def test_missing_plugin_file_is_one_line_naming_it(small_scenario, tmp_path):
    from fedsim.api import resolve

    with pytest.raises(ScenarioError, match=r"plugins: .*nope\.py: no such file"):
        resolve(small_scenario(), plugins=[str(tmp_path / "nope.py")])
    (tmp_path / "pkg.py").mkdir()  # it exists: "no such file" would mislead
    with pytest.raises(ScenarioError, match=r"plugins: .*pkg\.py: a directory; name the \.py file in it"):
        resolve(small_scenario(), plugins=[str(tmp_path / "pkg.py")])
    with pytest.raises(ScenarioError, match=r"cannot import module 'no_such_module_xyz'"):
        resolve(small_scenario(), plugins=["no_such_module_xyz"])
    with pytest.raises(ScenarioError, match=r"plugins: .*neither a \.py file nor a module name"):
        resolve(small_scenario(), plugins=["not a module"])


def test_a_plugin_that_exits_while_imported_is_one_line(tmp_path, small_scenario, monkeypatch):
    """A script named as a plugin that calls sys.exit when imported (its argparse, its main()):
    one line naming the plugin and the fix, exit 1 (before: the command ended silently with the
    script's exit status, here 3, and `fedsim validate` printed nothing)."""
    import yaml
    from click.testing import CliRunner

    from fedsim.cli import main

    script = tmp_path / "train.py"
    script.write_text("import sys\nsys.exit(3)\n")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(small_scenario()))
    monkeypatch.chdir(tmp_path)
    for args, code in ((["validate", "s.yaml"], 1), (["list", "strategies"], 2)):  # list: a bad --plugin value
        res = CliRunner().invoke(main, [*args, "--plugin", "train.py"])
        assert res.exit_code == code, res.output
        line = [x for x in res.stderr.splitlines() if x.strip()]
        assert len(line) == 1 + 2 * (code == 2) and line[-1].endswith(
            f"plugins: {script}: it called sys.exit(3) while imported; a plugin only defines and registers "
            "(put a script's own code under `if __name__ == '__main__':`)"), res.stderr
    (tmp_path / "exiting_module_xyz.py").write_text("raise SystemExit('usage: train.py DATA')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ScenarioError, match=r"plugins: exiting_module_xyz: it called sys.exit\('usage: train.py "
                                            r"DATA'\) while imported"):
        parse(small_scenario(plugins=plugins.grant(["exiting_module_xyz"])))


def test_a_name_registered_twice_names_both_classes(tmp_path, small_scenario):
    p = tmp_path / "dup.py"
    p.write_text(textwrap.dedent('''
        from dataclasses import dataclass
        import strategies

        @strategies.register("krum")
        @dataclass
        class Mine(strategies.Strategy):
            """Not krum."""
            exchanges = "full_model"
    '''))
    with pytest.raises(ScenarioError, match=r"dup\.py: ValueError: strategy name 'krum' is registered twice "
                                            r"\(strategies\.krum\.Krum and .*Mine\)"):
        parse(small_scenario(plugins=plugins.grant([str(p)])))


def test_a_rule_must_declare_what_it_exchanges():
    from dataclasses import dataclass

    import strategies

    with pytest.raises(ValueError, match="must declare what it exchanges"):
        @strategies.register("undeclared_rule_for_test")
        @dataclass
        class Undeclared(strategies.Strategy):
            """No exchanges."""

    assert "undeclared_rule_for_test" not in strategies.REGISTRY


def test_load_is_once_per_process(tmp_path):
    p = tmp_path / "count.py"
    p.write_text(REGISTERS_A_PROBE + "import builtins\n"
                 "builtins._fedsim_plugin_loads = getattr(builtins, '_fedsim_plugin_loads', 0) + 1\n")
    import builtins

    before = getattr(builtins, "_fedsim_plugin_loads", 0)
    plugins.grant([str(p)])
    a = plugins.load([str(p)])
    b = plugins.load([str(p)])
    assert a[0] is b[0] and builtins._fedsim_plugin_loads == before + 1


def test_classvar_annotations_are_not_parameters(small_scenario):
    """docs/extending.md's rule annotates ``exchanges: ClassVar[str]``: such class attributes are
    not parameters (before, they were listed as such, accepted as keys and then failed in
    ``__init__``, and shown in the plan as if set)."""
    from dataclasses import dataclass
    from typing import ClassVar

    import strategies
    from fedlib.params import Real, param
    from fedsim.scenario import parse_with_plan

    @strategies.register("classvar_mean_for_test")
    @dataclass
    class ClassVarMean(strategies.Strategy):
        """Plain mean with a declared radius (a test's rule)."""

        radius: float = param(1.0, Real(lo=0, lo_open=True))
        exchanges: ClassVar[str] = "output_layer"
        reads_f: ClassVar[bool] = False

        def __call__(self, own, received, ctx):
            return (own + received.sum(0)) / (received.shape[0] + 1)

    try:
        assert strategies.REGISTRY.parameters("classvar_mean_for_test") == ["radius"]
        msg = strategies.REGISTRY.unknown_params("classvar_mean_for_test", {"exchanges": "full_model"})
        assert msg == "unknown parameter 'exchanges' of strategy 'classvar_mean_for_test'; its parameters: radius"
        with pytest.raises(ScenarioError, match=r"strategy\.params: unknown parameter 'reads_f'"):
            parse(small_scenario(**{"strategy.name": "classvar_mean_for_test", "strategy.params": {"reads_f": True}}))
        _, plan = parse_with_plan(small_scenario(**{"strategy.name": "classvar_mean_for_test"}))
        assert plan.rule_params == {"radius": 1.0}
    finally:
        strategies.REGISTRY.pop("classvar_mean_for_test", None)


def test_an_unknown_name_without_plugins_says_how_to_name_yours(tmp_path, small_scenario):
    """A scenario naming its author's own rule, attack or backbone, read without --plugin: each
    unknown name says that one's own needs --plugin (before, only "did you mean 'trimmed_mean'?",
    a built-in the user never meant); with a plugin named, a typo's message is as it was; a sweep's
    grid says the same (fedsim.validation.unknown_names)."""
    from fedsim.scenario import grid_errors

    hint = "; one of your own? name the file that registers it: --plugin FILE (docs/extending.md)"
    mine = small_scenario(strategy={"name": "norm_filtered_mean"}, backbone={"name": "random_projection"},
                          peers={"count": 8, "byzantine": 2, "attack": {"name": "flipped_mean"}})
    with pytest.raises(ScenarioError) as e:
        parse(mine)
    for field, what in (("backbone.name", "backbone 'random_projection'"),
                        ("strategy.name", "strategy 'norm_filtered_mean'"),
                        ("peers.attack.name", "attack 'flipped_mean'")):
        assert any(f"{field}: unknown {what}" in x and x.endswith(hint) for x in e.value.errors), e.value.errors
    assert grid_errors(small_scenario(), {"strategy.name": ["norm_filtered_mean"]})[0].endswith(hint)

    empty = tmp_path / "empty_plugin.py"
    empty.write_text(REGISTERS_A_PROBE)  # a plugin that registers no rule
    with pytest.raises(ScenarioError) as e:
        parse(small_scenario(strategy={"name": "krun"}, plugins=plugins.grant([str(empty)])))
    assert "unknown strategy 'krun'" in str(e.value) and "--plugin" not in str(e.value)


def test_a_plugin_that_registers_nothing_is_one_error_before_the_run_folder(tmp_path, small_scenario, monkeypatch):
    """--plugin os (a module already imported), a folder imported as a namespace package and a file
    with no registration each end in one line naming the plugin and what a plugin does, exit 1,
    before a run folder is made (before: accepted, recorded and never used); the Flower bridge's
    load_copy says the same of a packed copy."""
    import hashlib

    import yaml
    from click.testing import CliRunner

    from fedsim.cli import main

    (tmp_path / "nspkg_fix2").mkdir()
    empty = tmp_path / "empty_plugin.py"
    empty.write_text('"""Registers nothing."""\n')
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(small_scenario()))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    tail = ("registers nothing; a plugin registers a rule, attack, backbone or probe when imported "
            "(@strategies.register, @attacks.register, register_backbone, @register_probe: docs/extending.md)")
    for plugin, shown in (("os", "os"), ("nspkg_fix2", "nspkg_fix2"), ("empty_plugin.py", str(empty))):
        res = CliRunner().invoke(main, ["run", str(path), "--plugin", plugin, "-q"])
        assert res.exit_code == 1, res.output
        assert res.stderr.strip() == f"Error: {path}: plugins: {shown}: {tail}"
        assert not (tmp_path / "runs").exists()
        assert shown not in plugins._LOADED
    sha = hashlib.sha256(empty.read_bytes()).hexdigest()
    with pytest.raises(plugins.PluginError, match=f"^plugins: /srv/empty.py: {re.escape(tail)}$"):
        plugins.load_copy("/srv/empty.py", empty, sha)
    assert "/srv/empty.py" not in plugins._LOADED and "/srv/empty.py" not in plugins._GRANTED


def test_importing_a_registry_module_is_not_registering(tmp_path, monkeypatch):
    """A plugin whose import only brings in a registry module not imported yet (here
    fedsim.data.domains, with its built-in entries) registers nothing of its own: refused (a review
    found it accepted); one that adds its own domain shift is accepted."""
    import sys

    monkeypatch.delitem(sys.modules, "fedsim.data.domains", raising=False)
    only_import = tmp_path / "only_import_plugin.py"
    only_import.write_text("from fedsim.data.domains import DOMAINS  # a half-written plugin\n")
    with pytest.raises(plugins.PluginError, match="only_import_plugin.py: registers nothing"):
        plugins.load(plugins.grant([str(only_import)]))
    monkeypatch.delitem(sys.modules, "fedsim.data.domains", raising=False)
    own = tmp_path / "own_domain_plugin.py"
    own.write_text("from fedsim.data.domains import DOMAINS\n\n\ndef mine(x, seed, split):\n    return x\n\n\n"
                   "DOMAINS['plugins_test_domain'] = mine\n")
    try:
        plugins.load(plugins.grant([str(own)]))
        assert str(own) in plugins._LOADED
    finally:
        plugins._LOADED.pop(str(own), None)
        plugins._GRANTED.discard(str(own))


def test_a_plugin_holding_components_a_sibling_module_registered_is_accepted(tmp_path, monkeypatch):
    """mylab.everything doing ``from mylab_fix import rules`` after mylab_fix.rules was loaded in
    this process (a second fedsim.run in a notebook, two --plugin entries): accepted (a review found
    it refused as registering nothing)."""
    pkg = tmp_path / "mylab_fix"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "rules.py").write_text(
        "from dataclasses import dataclass\nfrom typing import ClassVar\n\nimport strategies\n"
        "from strategies.base import Strategy\n\n\n@strategies.register('plugins_test_sibling')\n@dataclass\n"
        "class Sibling(Strategy):\n    \"\"\"The mean.\"\"\"\n\n    exchanges: ClassVar[str] = 'output_layer'\n\n"
        "    def aggregate(self, own, received, ctx):\n        return received.mean(0)\n")
    (pkg / "everything.py").write_text("from mylab_fix import rules  # noqa: F401\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import strategies

    try:
        plugins.load(plugins.grant(["mylab_fix.rules"]))
        plugins.load(plugins.grant(["mylab_fix.everything"]))
        assert "mylab_fix.everything" in plugins._LOADED
    finally:
        strategies.REGISTRY.pop("plugins_test_sibling", None)
        for e in ("mylab_fix.rules", "mylab_fix.everything"):
            plugins._LOADED.pop(e, None)
            plugins._GRANTED.discard(e)


def test_a_new_name_for_a_built_in_component_counts_as_registering(tmp_path):
    """A plugin adding a name whose value fedsim defines (a backbone variant by dataclasses.replace,
    a domain shift reusing a built-in function, a dataset row reusing a built-in reader) registers
    something: accepted (a review found them refused once only non-built-in components counted)."""
    from fedsim.data import datasets, domains
    from fedsim.models.backbones import BACKBONES

    src = {
        "variant_backbone_plugin.py": "import dataclasses\nfrom fedsim.models.backbones import BACKBONES, "
        "register_backbone\nregister_backbone(dataclasses.replace(BACKBONES['fmnist_cnn'], "
        "name='plugins_test_variant'))\n",
        "reused_domain_plugin.py": "from fedsim.data.domains import DOMAINS\nDOMAINS['plugins_test_inv'] = "
        "DOMAINS['invert']\n",
        "reused_dataset_plugin.py": "from fedsim.data.datasets import DATASETS\nDATASETS['plugins_test_ds'] = "
        "DATASETS['sklearn_digits']\n",
    }
    try:
        for name, text in src.items():
            (tmp_path / name).write_text(text)
            plugins.load(plugins.grant([str(tmp_path / name)]))
            assert str(tmp_path / name) in plugins._LOADED
    finally:
        BACKBONES.pop("plugins_test_variant", None)
        domains.DOMAINS.pop("plugins_test_inv", None)
        datasets.DATASETS.pop("plugins_test_ds", None)
        for name in src:
            plugins._LOADED.pop(str(tmp_path / name), None)
            plugins._GRANTED.discard(str(tmp_path / name))
