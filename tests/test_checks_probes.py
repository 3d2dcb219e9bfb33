"""fedsim.checks.check_probe: the properties every probe must have, runnable on your own probe; it
passes every registered probe kind and names the property a broken one breaks."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedlib.params import Integer, param
from fedsim.checks import check_probe
from fedsim.errors import ScenarioError
from fedsim.probe_builtins import Unlearning
from fedsim.probe_context import _plain
from fedsim.probe_registry import REGISTRY, Probe, register_probe

BUILT_IN = sorted(k for k, c in REGISTRY.items() if c.__module__ == "fedsim.probe_builtins")
# the built-ins' settings for a quick check (every key still validated; defaults elsewhere)
QUICK = {
    "unlearning": {"permutations": 99, "max_steps": 5, "rollback_rounds": 2, "finetune_steps": 2, "path_every": 0},
    "cloning": {"queries": [8, 32], "topk": [None, 2], "defences": [{"kind": "rounding", "decimals": 1}]},
    "federated_unlearning": {"rounds_after": [0, 1], "arms": [0, "all"], "permutations": 99, "finetune_steps": 2},
    "gossip_cloning": {"rounds_observed": [2], "placements": 2},
}


@pytest.mark.parametrize("kind", BUILT_IN)
def test_every_registered_probe_passes(kind):
    states = torch.random.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    assert check_probe(kind, QUICK.get(kind, {})) == 4
    assert torch.equal(torch.random.get_rng_state(), states[0])  # global generators left as they were
    assert np.array_equal(np.random.get_state()[1], states[1]) and random.getstate() == states[2]


def test_a_probe_is_checked_in_the_scenario_it_is_given():
    federated = {"mode": "federated", "topology": {"kind": "star"}, "engine.num_actors": 1}
    assert check_probe("cloning", QUICK["cloning"], scenario=federated) == 4
    with pytest.raises(ScenarioError, match="topology.kind: federated mode uses a star"):
        check_probe("cloning", QUICK["cloning"], scenario={"mode": "federated", "topology.kind": "ring"})


def test_bad_settings_are_refused_before_anything_runs(tmp_path):
    with pytest.raises(ScenarioError, match=r"probes\.0\.topk"):
        check_probe("cloning", {"topk": [0]})
    with pytest.raises(ScenarioError, match=r"probes\.0\.scale: unknown key for kind cloning"):
        check_probe("cloning", {"scale": 2})
    with pytest.raises(ValueError, match="'no_such_probe' is not a registered probe kind"):
        check_probe("no_such_probe")
    with pytest.raises(ValueError, match="is not a registered probe kind"):
        check_probe(MeanNorm)  # a class nobody registered


@pytest.fixture
def register(monkeypatch):
    """Register a probe class under a kind for one test (the kind's previous class, if any, back after)."""

    def reg(kind, cls):
        monkeypatch.setitem(REGISTRY, kind, cls)
        return register_probe(kind)(cls)

    return reg


class MeanNorm(Probe):
    """The norm of the honest peers' mean final head."""

    def entry(self, ctx):
        heads = ctx.final_params[torch.from_numpy(ctx.honest)]
        return {"kind": self.kind, "norm": float(heads.mean(0).norm()), "records": [{"peers": len(heads)}]}

    def run(self, i, cfg, ctx):
        return self.entry(ctx)

    def markdown(self, entry):
        return f"### {entry['kind']}: norm {entry['norm']:.3f}"


def test_a_correct_plugin_probe_passes(register):
    assert check_probe(register("chk_mean_norm", MeanNorm)) == 4


class Undocumented(MeanNorm):
    pass


class BadDefault(MeanNorm):
    """Declares a default its own constraint refuses."""

    params = {"k": param(-1, Integer(minimum=0))}


class WrongKind(MeanNorm):
    """Writes another kind."""

    def run(self, i, cfg, ctx):
        return self.entry(ctx) | {"kind": "other"}


class NotAMapping(MeanNorm):
    """Returns its records alone."""

    def run(self, i, cfg, ctx):
        return self.entry(ctx)["records"]


class NoKind(MeanNorm):
    """Leaves out its kind."""

    def run(self, i, cfg, ctx):
        return {k: v for k, v in self.entry(ctx).items() if k != "kind"}


class HoldsATensor(MeanNorm):
    """Returns a tensor where a number belongs."""

    def run(self, i, cfg, ctx):
        return self.entry(ctx) | {"norm": torch.tensor([1.0, 2.0])}


class NoNorm(MeanNorm):
    """Leaves out the field its own markdown reads."""

    def run(self, i, cfg, ctx):
        return {k: v for k, v in self.entry(ctx).items() if k != "norm"}


class Raises(MeanNorm):
    """Fails on every run."""

    def run(self, i, cfg, ctx):
        raise RuntimeError("boom")


class SummaryWithoutKind(MeanNorm):
    """Its summary.json form forgets its kind."""

    def summarize(self, entry):
        return {"norm": entry["norm"]}


class TorchNoise(MeanNorm):
    """Adds noise from torch's global generator."""

    def run(self, i, cfg, ctx):
        return self.entry(ctx) | {"noise": float(torch.rand(()))}


class NumpyNoise(MeanNorm):
    """Adds noise from numpy's global generator."""

    def run(self, i, cfg, ctx):
        return self.entry(ctx) | {"noise": float(np.random.rand())}


class ScalesHeads(MeanNorm):
    """Scales the final heads in place."""

    def run(self, i, cfg, ctx):
        ctx.final_params.mul_(2)
        return self.entry(ctx)


class ReversesTrainIdx(MeanNorm):
    """Reverses a peer's training indices in place (numpy)."""

    def run(self, i, cfg, ctx):
        ctx.train_idx[0][:] = ctx.train_idx[0][::-1].copy()
        return self.entry(ctx)


class ReseedsContext(MeanNorm):
    """Changes the context's seed for the probes after it."""

    def run(self, i, cfg, ctx):
        ctx.seed += 1
        return self.entry(ctx)


class WritesSummary(MeanNorm):
    """Writes into the run's summary.json."""

    def run(self, i, cfg, ctx):
        (ctx.out_dir / "summary.json").write_text("{}\n")
        return self.entry(ctx)


MUTANTS = [
    (Undocumented, "declaration: Undocumented has no docstring"),
    (BadDefault, r"declaration: its declared defaults do not validate: probes\.0\.k: must be"),
    (WrongKind, "probes.json schema: the entry is a mapping with 'kind': 'other', not 'chk_mutant'"),
    (NotAMapping, "probes.json schema: the entry is a list, not a mapping with 'kind': 'chk_mutant'"),
    (NoKind, r"probes.json schema: the entry is a mapping without 'kind' \(its keys: norm, records\), "
             "not one with 'kind': 'chk_mutant'"),
    (HoldsATensor, r"probes.json schema: the entry is a mapping holding a value JSON cannot hold "
                   r"\(Object of type Tensor is not JSON serializable\)"),
    (NoNorm, r"probes.json schema: fedsim report cannot read the entry .*missing field 'norm'"),
    (Raises, r"probes.json schema: the tiny run with the probe raised RuntimeError\('boom'\)"),
    (SummaryWithoutKind, r"declaration: summarize\(entry\) gave \{'norm'"),
    (TorchNoise, "reproducible: .*fields noise"),
    (NumpyNoise, "reproducible: .*fields noise"),
    (ScalesHeads, r"leaves the run: run\(\) modified the probe context's ctx.final_params"),
    (ReversesTrainIdx, r"leaves the run: run\(\) modified the probe context's ctx.train_idx\[0\]"),
    (ReseedsContext, r"leaves the run: run\(\) modified the probe context's ctx.seed"),
    (WritesSummary, r"leaves the run: run\(\) modified the run directory's file summary.json"),
]


@pytest.mark.parametrize(("cls", "message"), MUTANTS, ids=[c.__name__ for c, _ in MUTANTS])
def test_a_broken_probe_fails_naming_the_property(register, cls, message):
    with pytest.raises(AssertionError, match=f"probe chk_mutant: {message}"):
        check_probe(register("chk_mutant", cls))


_REAL: dict = {}  # the built-in unlearning entry, computed once for the mutants below


class UnlearningMutant(Unlearning):
    """The built-in unlearning probe with one documented field removed (:meth:`damage`)."""

    def run(self, i, cfg, ctx):
        if "entry" not in _REAL:
            _REAL["entry"] = _plain(super().run(i, cfg, ctx))
        e = copy.deepcopy(_REAL["entry"])
        self.damage(e)
        return e


class NoPValue(UnlearningMutant):
    """Leaves p_value out of one membership result."""

    def damage(self, e):
        del e["membership"]["after"]["natural_loss"]["p_value"]


class NoKLToRetrained(UnlearningMutant):
    """Leaves kl_to_retrained out of one method."""

    def damage(self, e):
        del e["methods"]["newton"]["kl_to_retrained"]


@pytest.mark.parametrize(("cls", "field"), [(NoPValue, "p_value"), (NoKLToRetrained, "kl_to_retrained")])
def test_an_unlearning_entry_missing_a_documented_field_fails(register, cls, field):
    register("unlearning", cls)
    with pytest.raises(AssertionError, match=f"probe unlearning: probes.json schema: .*missing field '{field}'"):
        check_probe("unlearning", QUICK["unlearning"])


def test_the_report_requires_the_distances_only_where_a_retrained_model_exists():
    """``retrain: false`` gives methods without ``kl_to_retrained``: the report shows them as "–";
    with a retrained model the fields are documented and their absence is a shape error."""
    from fedsim.report_probes import _format_methods

    accuracies_only = {"none": {"test_accuracy": 0.5}}
    assert "| none | – | – | – | – | – | – | 50.0% |" in _format_methods(accuracies_only, retrained=False)
    with pytest.raises(KeyError, match="kl_to_retrained"):
        _format_methods(accuracies_only, retrained=True)


def _run_with_probe(register, tmp_path, kind: str, cls: type) -> tuple[Any, Path]:
    """`fedsim run -q` on the tiny scenario with probe ``cls`` registered as ``kind``: the CLI
    result and the run directory."""
    import yaml
    from click.testing import CliRunner

    from fedsim.checks_probes import TINY
    from fedsim.cli import main

    register(kind, cls)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(copy.deepcopy(TINY) | {
        "rounds": 2, "probes": [{"kind": kind}], "output": {"dir": str(tmp_path / "runs")},
        "backbone": {"name": "identity", "cache_dir": str(tmp_path / "cache")}}))
    return CliRunner().invoke(main, ["run", str(path), "-q"]), tmp_path / "runs" / "check_probe"


def test_a_run_whose_probe_returns_no_entry_of_its_kind_ends_in_one_line(register, tmp_path):
    """`fedsim run` with a probe whose run() returns a mapping without its kind: one line naming the
    probe and what it returned, exit 1, the entries kept in probes.json (before: "internal error:
    KeyError: 'kind'" and a traceback file)."""

    class NoKindInARun(NoKind):  # its own class: the schema's model of a kind is cached per class
        """Leaves out its kind, in a run."""

    res, run = _run_with_probe(register, tmp_path, "chk_nokind", NoKindInARun)
    assert res.exit_code == 1, res.output
    assert [x for x in res.stderr.splitlines() if x.strip()] == [
        f"Error: probes.0: the chk_nokind probe's run() returned a mapping without 'kind' (its keys: norm, records), "
        f"not one with 'kind': 'chk_nokind' (written as it is to {run / 'probes.json'}); a probe returns its "
        "probes.json entry, a mapping with its kind (fedsim.checks.check_probe checks a probe)"]
    assert list(json.loads((run / "probes.json").read_text())[0]) == ["norm", "records"]
    assert not (run / "error.txt").exists() and not (run / "summary.json").exists()


def test_a_run_whose_probe_returns_a_tensor_ends_in_one_line(register, tmp_path):
    """A probe entry holding a tensor: one line naming the probe and the value JSON cannot hold,
    exit 1, probes.json written with the entry's repr (before: "internal error: TypeError: Object
    of type Tensor is not JSON serializable", no probes.json)."""

    class TensorInARun(HoldsATensor):  # its own class: the schema's model of a kind is cached per class
        """Returns a tensor, in a run."""

    res, run = _run_with_probe(register, tmp_path, "chk_tensor", TensorInARun)
    assert res.exit_code == 1, res.output
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith(
        "Error: probes.0: the chk_tensor probe's run() returned a mapping holding a value JSON cannot hold "
        "(Object of type Tensor is not JSON serializable)"), lines
    assert f"(written as its repr to {run / 'probes.json'})" in lines[0]
    assert "tensor([1., 2.])" in json.loads((run / "probes.json").read_text())[0]
    assert not (run / "error.txt").exists() and not (run / "summary.json").exists()
