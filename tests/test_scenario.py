"""Scenario schema: defaults, errors that name the YAML path, cross-field checks, CLI validate."""

import pytest
from click.testing import CliRunner

from fedsim.cli import main
from fedsim.scenario import ScenarioError, load, parse


def test_empty_scenario_has_defaults():
    sc = parse({})
    assert sc.peers.count == 20 and sc.dataset.name == "mnist10k" and sc.strategy.name == "fedavg"
    assert sc.rounds >= 1 and sc.training.lr > 0


@pytest.mark.parametrize(
    ("data", "path", "hint"),
    [
        ({"rounds": -1}, "rounds", "greater than or equal to 1"),
        ({"rounds": "many"}, "rounds", "integer"),
        ({"strategy": {"nam": "x"}}, "strategy.nam", "unknown key"),
        ({"topology": {"kind": "grid"}}, "topology.kind", "'k_regular'"),
        ({"peers": {"count": 0}}, "peers.count", "greater than or equal to 1"),
        ({"peers": {"count": 10, "byzantine": 10, "attack": {"name": "sign_flip"}}}, "peers.byzantine", "no honest"),
        ({"strategy": {"name": "nope"}}, "strategy.name", "available"),
        ({"dataset": {"name": "imagenet"}}, "dataset.name", "available"),
        ({"dataset": {"name": "cifar10"}}, "dataset.data_dir", "local files"),
        ({"peers": {"byzantine": 3}}, "peers.attack.name", "no attack"),
        ({"peers": {"byzantine": 2, "attack": {"name": "no_such"}}}, "peers.attack.name", "available"),
        ({"training": {"optimizer": "lbfgs"}}, "training.optimizer", "'sgd'"),
        ({"evaluation": {"peers": 0}}, "evaluation", "'all' or >= 1"),
        ({"topology": {"kind": "k_regular", "degree": 25}}, "topology.degree", "must be < peers.count"),
        ({"mode": "decentralized", "topology": {"kind": "star"}}, "topology.kind", "federated"),
        ({"partition": {"val_fraction": 1.5}}, "partition.val_fraction", "less than 1"),
        ({"probes": [{"kind": "x"}]}, "probes.0.kind", "unlearning"),
        # a pattern's message shows the value and says what the pattern stands for, not the regex alone
        ({"name": "../escape"}, "name", "got '../escape': the run folder under output.dir: a plain identifier"),
        ({"engine": {"device": "gpu"}}, "engine.device", "got 'gpu': where the batched training runs"),
        ({"plugins": "my.py"}, "plugins", "valid list, got 'my.py'; write a YAML list: [my.py]"),
    ],
)
def test_errors_name_the_field(data, path, hint):
    with pytest.raises(ScenarioError) as e:
        parse(data)
    msg = str(e.value)
    assert f" {path}" in msg or msg.startswith(path), msg
    assert hint in msg, msg
    assert "\n" not in msg


def test_rule_limits_checked_at_validation_time():
    # Krum needs n > 2f + 2 received vectors; a 4-regular graph with f = 2 cannot satisfy it.
    pytest.importorskip("strategies.krum")
    with pytest.raises(ScenarioError, match="strategy.f"):
        parse({"strategy": {"name": "krum", "f": 2}, "topology": {"kind": "k_regular", "degree": 4}})
    parse({"strategy": {"name": "krum", "f": 1}, "topology": {"kind": "k_regular", "degree": 6}})


def test_top_level_must_be_mapping(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ScenarioError, match="mapping"):
        load(p)
    p.write_text("rounds: [1,\n")
    with pytest.raises(ScenarioError, match="not valid YAML"):
        load(p)


def test_overrides_are_dotted(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("rounds: 3\n")
    sc = load(p, {"strategy.name": "local", "peers.count": 7})
    assert sc.strategy.name == "local" and sc.peers.count == 7 and sc.rounds == 3


def test_cli_validate_ok_and_broken(tmp_path):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("rounds: 2\n")
    bad.write_text("rounds: 2\ntraining: {lr: -1}\n")
    r = CliRunner().invoke(main, ["validate", str(good)])
    assert r.exit_code == 0 and "ok" in r.output
    r = CliRunner().invoke(main, ["validate", str(bad)])
    assert r.exit_code == 1
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert len(lines) == 1 and "training.lr" in lines[0]


def test_cli_run_broken_file_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("topology: {kind: hypercube}\n")
    r = CliRunner().invoke(main, ["run", str(bad)])
    assert r.exit_code != 0
    assert "topology.kind" in r.output and "Traceback" not in r.output


def test_shipped_scenarios_validate():
    from pathlib import Path

    for f in sorted(Path(__file__).parent.parent.joinpath("scenarios").rglob("*.yaml")):
        load(f)


def test_every_shipped_scenario_says_what_it_shows_and_how_long_it_takes():
    """A user picks a scenario by its header: the comment before its first key says what it shows
    (two lines at least) and how long it takes (a '# Time:' line with what was measured); 22 of
    23 said nothing of the time."""
    from pathlib import Path

    for f in sorted(Path(__file__).parent.parent.joinpath("scenarios").rglob("*.yaml")):
        head = []
        for line in f.read_text().splitlines():
            if not line.startswith("#"):
                break
            head.append(line)
        assert len(head) >= 2, f"{f}: no header comment saying what it shows"
        times = [x for x in head if x.startswith("# Time:")]
        assert times and any(ch.isdigit() for ch in times[0]), f"{f}: no '# Time:' line in its header"


# --------------------------------------------------------------------------- idle attacks (issue 16, item 4)
@pytest.mark.parametrize(
    ("peers", "hint"),
    [
        ({"byzantine": 0, "attack": {"name": "sign_flip"}}, "0 Byzantine peers"),
        ({"byzantine_fraction": 0.0, "attack": {"name": "alie"}}, "0 Byzantine peers"),
        ({"byzantine": 2, "attack": {"name": "none"}}, "2 Byzantine peers but no attack"),
    ],
)
def test_an_idle_attack_is_an_error_unless_allowed(peers, hint):
    with pytest.raises(ScenarioError) as e:
        parse({"peers": peers})
    msg = str(e.value)
    assert msg.startswith("scenario: peers.attack.name:") and hint in msg and "\n" not in msg, msg
    assert "allow_idle_attack" in msg, msg  # the error names the knob that says it is meant
    sc = parse({"peers": {**peers, "allow_idle_attack": True}})
    assert sc.peers.allow_idle_attack is True


def test_a_real_attack_needs_no_knob():
    sc = parse({"peers": {"byzantine": 2, "attack": {"name": "sign_flip"}}})
    assert sc.peers.num_byzantine == 2 and sc.peers.allow_idle_attack is False


def test_cli_attack_on_quickstart_without_byzantine_peers_is_one_line(tmp_path):
    """quickstart.yaml has 0 Byzantine peers: naming an attack there is refused before any work."""
    from pathlib import Path

    qs = Path(__file__).resolve().parents[1] / "scenarios" / "quickstart.yaml"
    res = CliRunner().invoke(main, ["run", str(qs), "--set", "peers.attack.name=sign_flip",
                                    "--out", str(tmp_path / "r"), "-q"])
    assert res.exit_code == 1, res.output
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 1 and "0 Byzantine peers" in lines[0] and "Traceback" not in res.output, res.output
    assert not (tmp_path / "r").exists()  # nothing was created



# --------------------------------------------------------------------------- validate (issue 16, item 2)
def test_cli_validate_prints_one_line_per_error_and_checks_the_sweep_grid(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("rounds: 2\ntraining: {lr: -1, optimiser: sgd}\ntopology: {kind: rng}\n"
                 "sweep:\n  strategy.name: [krum, bulyn]\n  peers: {attack: {name: [alie, sign_flp]}}\n")
    r = CliRunner().invoke(main, ["validate", str(f)])
    assert r.exit_code == 1
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert len(lines) == 5 and all(x.startswith(f"{f}: ") and x.count(f"{f}: ") == 1 for x in lines), lines
    assert "topology.kind: got 'rng' (did you mean 'ring'?)" in lines[0]
    assert "training.lr:" in lines[1]
    assert "training.optimiser: unknown key (did you mean 'optimizer'?)" in lines[2]
    assert "sweep strategy.name=bulyn: unknown strategy 'bulyn' (did you mean 'bulyan'?)" in lines[3]
    assert "sweep peers.attack.name=sign_flp: unknown attack 'sign_flp' (did you mean 'sign_flip'?)" in lines[4]


def test_cli_validate_a_sweep_with_valid_names_warns_about_combinations_that_cannot_run(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("rounds: 2\ndataset: {name: sklearn_digits}\nbackbone: {name: identity}\n"
                 "peers: {count: 8, byzantine: 2, attack: {name: sign_flip}}\ntopology: {kind: k_regular, degree: 3}\n"
                 "sweep:\n  strategy.name: [median, krum]\n")
    r = CliRunner().invoke(main, ["validate", "--quiet", str(f)])  # (without the plan: "ok" last)
    assert r.exit_code == 0, r.output
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert lines[-1] == f"{f}: ok"
    warn = [x for x in lines if "warning: sweep combination strategy.name=krum" in x]
    assert len(warn) == 1 and "1 of 2 left out by --skip-invalid" in warn[0] and "2f + 2" in warn[0], lines


def test_allow_idle_attack_changes_no_fingerprint():
    """The knob only widens validation: a checkpoint or sweep folder made before it still matches."""
    from fedsim.rundir import scenario_fingerprint

    a = scenario_fingerprint(parse({"peers": {"byzantine": 0}}).model_dump(mode="json"))
    b = scenario_fingerprint(parse({"peers": {"byzantine": 0, "allow_idle_attack": True}}).model_dump(mode="json"))
    assert a == b and not any(k.startswith("peers.allow_idle_attack") for k in a)


_SET_TABLE = [
    ("tau=1e-3", "tau", 1e-3),
    ("rounds=5", "rounds", 5),
    ("x=true", "x", True),
    ("x=null", "x", None),
    ("x=[1,2]", "x", [1, 2]),
    ("x='quoted'", "x", "quoted"),
    ("a.b.c=x=y", "a.b.c", "x=y"),
]


@pytest.mark.parametrize(("item", "key", "value"), _SET_TABLE)
def test_one_set_parser_for_the_cli_and_flower(item, key, value):
    """`fedsim run --set`, `fedsim flower ... --set` and the Flower run config's `set` key read an
    override alike (the Flower ones read `1e-3` as the string '1e-3' before)."""
    from fedsim.flower import common
    from fedsim.flower.cli import _kv
    from fedsim.scenario import parse_sets

    cli, flower_cli, run_config = parse_sets((item,)), _kv((item,), "--set"), common.parse_sets(item)
    for got in (cli, flower_cli, run_config):
        assert got == {key: value} and type(got[key]) is type(value), (item, got)


@pytest.mark.parametrize("item", ["=3", " =3", ".rounds=3", "rounds.=3", "strategy..name=krum"])
def test_set_with_an_empty_key_part_is_one_line(item):
    """`--set =3` used to reach the schema as the key '' and print 'unknown key' naming no field."""
    from fedsim.scenario import ScenarioError, parse_set

    with pytest.raises(ScenarioError, match="key before '=' is empty or has an empty part"):
        parse_set(item)


def test_flower_run_config_set_types_like_the_cli():
    from fedsim.flower import common

    sc = common.scenario_from_run_config({"scenario": "rounds: 3\n", "set": "training.lr=1e-3 rounds=5"})
    assert sc.training.lr == 1e-3 and sc.rounds == 5
    with pytest.raises(common.BridgeError, match="run config 'set': 'rounds': expected KEY=VALUE"):
        common.parse_sets("rounds")


def test_set_indexes_into_lists_and_refuses_a_bad_index():
    """``--set probes.0.method=...`` changes the first probe's parameter (lists are indexed by number);
    an index past the end or a name where a list is is one line, and nothing is changed."""
    from fedsim.overrides import set_dotted

    sc = load("scenarios/federated_unlearning.yaml", overrides={"probes.0.method": "finetune_retain"})
    assert sc.probes[0].method == "finetune_retain"
    d = {"probes": [{"kind": "unlearning", "method": "newton"}], "strategy": {"name": "fedavg"}}
    set_dotted(d, "probes.0.params.steps", 3)
    set_dotted(d, "strategy.params.f", 2)
    assert d == {"probes": [{"kind": "unlearning", "method": "newton", "params": {"steps": 3}}],
                 "strategy": {"name": "fedavg", "params": {"f": 2}}}
    for key in ("probes.1.method", "probes.x.method", "probes.-1.method"):
        with pytest.raises(ScenarioError, match=r"probes is a list of 1; use an index 0\.\.0") as e:
            set_dotted(d, key, "x")
        assert "\n" not in str(e.value)
    assert d["probes"] == [{"kind": "unlearning", "method": "newton", "params": {"steps": 3}}]
    # below a list's element that is a number or text there is nothing to set: one line (was a TypeError)
    e2 = {"strategy": {"params": [1, 2]}}
    for key in ("strategy.params.0.x", "strategy.params.1.x.y"):
        bad = r"^--set strategy\.params\.\d.*: strategy\.params\.\d is \d, not a mapping"
        with pytest.raises(ScenarioError, match=bad):
            set_dotted(e2, key, 1)
    assert e2 == {"strategy": {"params": [1, 2]}}
