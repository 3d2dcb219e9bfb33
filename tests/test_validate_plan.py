"""``fedsim validate``'s plan (:class:`fedsim.runplan.RunPlan`): the partition built once, the plan
printed after ``ok`` with the run's own figures, the chunked local steps in the memory estimate,
and the warning on absurd training work."""

from __future__ import annotations

import yaml
from click.testing import CliRunner

from fedsim import heads, limits
from fedsim import partition as partition_mod
from fedsim.cli import main
from fedsim.scenario import parse, parse_with_plan, resource_warnings

SMALL = {"dataset": {"name": "sklearn_digits"}, "backbone": {"name": "identity"}, "partition": {"kind": "iid"},
         "engine": {"backend": "local", "num_actors": 1}, "peers": {"count": 20}}


def _write(tmp_path, data: dict):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_validate_builds_the_partition_once(tmp_path, monkeypatch):
    """One source of truth: the largest shard of the batch warning and of the plan is the
    partition the semantic check built, not a second one."""
    calls = []
    real = partition_mod.make_partition

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(partition_mod, "make_partition", counted)
    res = CliRunner().invoke(main, ["validate", str(_write(tmp_path, SMALL))])
    assert res.exit_code == 0, res.output
    assert len(calls) == 1


def test_validation_builds_the_rule_and_the_attack_once(tmp_path, monkeypatch):
    """The rule and the forger the name check built are the ones every later check reads (the
    ignored-field, memory and n/f checks; for a whole model also :func:`fedsim.whole_plan.check_model`
    and its memory estimate), not rebuilt by each."""
    import attacks
    import strategies
    from fedsim import whole_plan

    built = {"rule": 0, "attack": 0}
    real_rule, real_attack = strategies.build, attacks.build
    monkeypatch.setattr(strategies, "build", lambda *a, **k: built.__setitem__("rule", built["rule"] + 1)
                        or real_rule(*a, **k))
    monkeypatch.setattr(attacks, "build", lambda *a, **k: built.__setitem__("attack", built["attack"] + 1)
                        or real_attack(*a, **k))
    estimates = []
    real_estimate = whole_plan._estimate
    monkeypatch.setattr(whole_plan, "_estimate", lambda *a: estimates.append(a) or real_estimate(*a))
    attacked = SMALL | {"peers": {"count": 20, "byzantine": 3, "attack": {"name": "alie"}},
                        "strategy": {"name": "median", "f": 3}}
    whole = attacked | {"model": {"trainable": "all", "hidden": [16], "init": "scratch"},
                        "topology": {"kind": "complete"},
                        "backbone": {"name": "identity", "cache_dir": str(tmp_path / "cache")}}
    for data in (attacked, whole):
        built.update(rule=0, attack=0)
        parse(data)
        assert built == {"rule": 1, "attack": 1}, data
    (sc, info, attack), = estimates  # the whole model's estimate ran once, on the built forger
    assert isinstance(attack, attacks.REGISTRY["alie"]) and sc.model.trainable == "all"


def test_both_memory_estimates_count_a_forgers_messages_by_one_rule(tmp_path):
    """``runfacts.forges``: an update forger with a Byzantine peer to send its forgeries (not a data
    poisoner, not an idle forger); the linear head's and the whole model's estimates both count its
    forged copies by it."""
    import attacks
    from fedsim.runfacts import forges

    byz = {"count": 20, "byzantine": 3}
    forger = SMALL | {"peers": byz | {"attack": {"name": "alie"}}, "strategy": {"name": "median", "f": 3}}
    poisoner = SMALL | {"peers": byz | {"attack": {"name": "label_swap"}}, "strategy": {"name": "median", "f": 3}}
    idle = SMALL | {"peers": {"count": 20, "attack": {"name": "alie"}, "allow_idle_attack": True}}
    assert forges(parse(forger), attacks.build("alie", {}))
    assert not forges(parse(poisoner), attacks.build("label_swap", {}))
    assert not forges(parse(idle), attacks.build("alie", {})) and not forges(parse(SMALL), None)
    whole = {"model": {"trainable": "all", "hidden": [16], "init": "scratch"}, "topology": {"kind": "complete"},
             "backbone": {"name": "identity", "cache_dir": str(tmp_path / "cache")}}
    for extra in ({}, whole):
        forged = parse_with_plan(forger | extra)[1].memory
        poisoned = parse_with_plan(poisoner | extra)[1].memory
        assert forged.messages > poisoned.messages and forged.heads == poisoned.heads, extra


def test_validate_prints_the_runs_plan(tmp_path):
    """After ``ok``: the plan's figures are the run's (``prepare``: f, message size, largest shard,
    mean in-degree); ``--quiet`` prints ``ok`` alone; ``--help`` says so."""
    from fedsim.prepare import prepare

    data = {**SMALL, "peers": {"count": 20, "byzantine": 2, "attack": {"name": "sign_flip"}},
            "topology": {"kind": "k_regular", "degree": 6}, "strategy": {"name": "trimmed_mean"}}
    path = _write(tmp_path, data)
    res = CliRunner().invoke(main, ["validate", str(path)])
    assert res.exit_code == 0, res.output
    sc, plan = parse_with_plan(data)
    prep = prepare(sc)
    out = res.output
    assert f"{path}: ok\n" in out
    assert "peers: 20 (18 honest, 2 Byzantine, attack sign_flip), decentralized" in out
    assert f"in-degree mean 6.00 (min 6, max 6) in round 0; f = {prep.f}" in out
    assert plan.f == prep.f and plan.in_degree == prep.info["mean_in_degree"]
    assert plan.bytes_per_message == prep.bytes_per_message
    assert plan.largest_shard == max(len(t) for s in prep.setups for t in s.train_idx)
    assert f"largest shard {plan.largest_shard} samples" in out
    assert "rule: trimmed_mean(" in out and "memory: about" in out and "training work:" in out
    per_round = prep.bytes_per_message * 6 * 20
    assert plan.bytes_per_message * plan.sends_per_round * 20 == per_round
    quiet = CliRunner().invoke(main, ["validate", "--quiet", str(path)])
    assert quiet.exit_code == 0 and quiet.output == f"{path}: ok\n"
    helped = CliRunner().invoke(main, ["validate", "--help"]).output
    assert "--quiet" in helped and "plan" in helped


def test_memory_estimate_counts_the_chunked_steps(monkeypatch):
    """The step temporaries and the weight gradient span the chunk of peers the training uses
    (``heads.step_peers``), not every peer of the group; Adam (not chunked) counts them all."""
    import torch

    from fedsim.peers import PeerGroup
    from fedsim.prepare import prepare

    monkeypatch.setattr(heads, "TRAIN_CHUNK_BYTES", 7 * 10 * 64 * 4)  # 7 peers' digit heads per chunk
    seen: list[limits.MemoryEstimate] = []
    real = limits.memory_error
    monkeypatch.setattr(limits, "memory_error", lambda est, available=None: seen.append(est) or real(est, available))
    data = {**SMALL, "training": {"batch_size": 4}}  # shards of ~70 digits > 4: gathered
    sc = parse(data)
    chunked = seen[-1]
    p, b, d, c = 20, 4, 64, 10
    step = 4 * 7 * b * (3 * c + 2)  # logits, log-softmax, gradient, loss, weights over 7 peers
    assert chunked.batches == 2 * 8 * p * b + p * b * (4 * d + 16) + step
    params = c * d + c
    assert chunked.heads == 4 * params * (p * 3 + 7)  # w+b, momentum, sent copy; one chunk's gradient
    sizes = []
    for name in ("_chunked_sgd_steps", "_chunk_major_steps"):  # step-major or chunk-major: the same chunk
        real_steps = getattr(heads, name)
        monkeypatch.setattr(heads, name, lambda *a, _f=real_steps: sizes.append(a[-1]) or _f(*a))
    prep = prepare(sc)
    feats = prep.features
    torch.manual_seed(0)
    PeerGroup(prep.setups[0], {"x_train": feats.x_train, "y_train": feats.y_train, "x_test": feats.x_test,
                               "y_test": feats.y_test}).train(0)
    assert sizes == [7]  # the run's chunk is the one the estimate counted
    parse({**data, "training": {"batch_size": 4, "optimizer": "adam"}})
    adam = seen[-1]
    assert adam.batches == 2 * 8 * p * b + p * b * (4 * d + 16) + 4 * p * b * (3 * c + 2)
    assert adam.heads == 4 * params * p * 5  # + Adam's v, every peer's gradient


def test_training_work_hand_computed_and_warned(tmp_path):
    """Work per round: peers × steps × batch samples, 4·C·d FLOP a column; a warning (exit 0) above
    ``limits.WORK_WARN_FLOP`` for the whole run, none below it."""
    w = limits.training_work(peers=3, local_steps=5, batch=8, columns=2, flop_per_column=limits.head_flop(10, 64))
    assert w.samples_per_round == 3 * 5 * 8 and w.flop_per_round == 3 * 5 * 2 * 4 * 10 * 64
    assert limits.work_warning(w, rounds=1, threshold=w.flop_per_round) is None
    assert limits.work_warning(w, rounds=2, threshold=w.flop_per_round) is not None
    sc, plan = parse_with_plan(SMALL)
    assert plan.work is not None and plan.largest_shard is not None and plan.largest_shard > 32
    assert plan.work.flop_per_round == 20 * sc.training.local_steps * 32 * 4 * 10 * 64
    assert resource_warnings(sc, plan.largest_shard, plan.work) == []
    per_round = 20 * 100_000 * 32 * 4 * 10 * 64  # the schema's most local steps: 1.6e11 FLOP a round
    assert 61 * per_round < limits.WORK_WARN_FLOP < 62 * per_round
    for rounds, warned in ((61, 0), (62, 1)):
        huge = {**SMALL, "rounds": rounds, "training": {"local_steps": 100_000}}
        res = CliRunner().invoke(main, ["validate", str(_write(tmp_path, huge))])
        assert res.exit_code == 0, res.output
        warning = [line for line in res.output.splitlines() if "warning: training.local_steps" in line]
        assert len(warning) == warned and all("FLOP" in w for w in warning)


def test_a_whole_models_training_work_hand_computed(tmp_path):
    """A whole model's plan has the training-work line too, from the same two functions as a
    linear head's (:func:`fedsim.runfacts.training_work`, :func:`fedsim.limits.training_work`), the
    FLOP of a sample counted as the CNN's forward and backward pass run (the work warning stays a
    linear head's: its rate is theirs). By hand, fmnist_cnn on 28×28 digits: a layer of ``MAC``
    multiply-adds a sample costs ``2·MAC`` forward, ``2·MAC`` for its weight gradient and ``2·MAC``
    for its input gradient, but the first trainable layer needs no input gradient."""
    conv1 = 32 * 1 * 5 * 5 * 28 * 28  # Conv2d(1, 32, 5, padding=2) on 28×28
    conv2 = 64 * 32 * 5 * 5 * 14 * 14  # Conv2d(32, 64, 5, padding=2) after a 2×2 max-pool
    head = 64 * 3 * 3 * 10  # Linear(576, 10) on the 3×3 average-pooled features
    peers, steps, batch, rounds = 6, 3, 8, 2
    base = {"dataset": {"name": "mnist10k"}, "peers": {"count": peers}, "topology": {"kind": "complete"},
            "backbone": {"name": "fmnist_cnn", "cache_dir": str(tmp_path / "cache")}, "rounds": rounds,
            "engine": {"backend": "local", "num_actors": 1}, "output": {"dir": str(tmp_path / "runs")},
            "training": {"batch_size": batch, "local_steps": steps}}
    for model, per_sample in [({"trainable": "all", "init": "scratch"}, 2 * 2 * conv1 + 3 * 2 * (conv2 + head)),
                              ({"trainable": "last_k", "k": 2, "init": "scratch"}, 2 * 2 * conv2 + 3 * 2 * head)]:
        data = {**base, "model": model}
        sc, plan = parse_with_plan(data)
        assert plan.work == limits.Work(peers * steps * batch, peers * steps * batch * per_sample)
        res = CliRunner().invoke(main, ["validate", str(_write(tmp_path, data))])
        assert res.exit_code == 0, res.output
        total = peers * steps * batch * per_sample * rounds
        assert f"training work: {peers * steps * batch:.3g} samples" in res.output
        assert f"{total:.3g} FLOP in all" in res.output
    huge = limits.Work(1, limits.WORK_WARN_FLOP)
    # not warned on (the warning's rate is the linear heads'), where the same work of a head is
    assert not resource_warnings(sc, None, plan.work) and not resource_warnings(sc, None, huge)
    assert resource_warnings(parse(SMALL), None, huge)


def test_validate_prints_a_whole_models_messages_and_memory(tmp_path, monkeypatch):
    """A whole-model run (``model.trainable: all`` / ``last_k``): the plan carries the message size
    the run sends (``prepare``'s, :func:`fedsim.whole_plan.message_size`) and the memory estimate
    validation compared (:func:`fedsim.whole_plan.memory_estimate`), each computed once, and prints them."""
    from fedsim import whole_plan
    from fedsim.data.datasets import dataset_info
    from fedsim.prepare import prepare
    from fedsim.units import human_bytes

    calls = []
    real = whole_plan._estimate
    monkeypatch.setattr(whole_plan, "_estimate", lambda *a: calls.append(1) or real(*a))
    base = {**SMALL, "backbone": {"name": "identity", "cache_dir": str(tmp_path / "cache")},
            "output": {"dir": str(tmp_path / "runs")}, "topology": {"kind": "complete"}}
    for model, values in [({"trainable": "all", "hidden": [16], "init": "scratch"}, 64 * 16 + 16 + 16 * 10 + 10),
                          ({"trainable": "last_k", "k": 1, "hidden": [16], "init": "scratch"}, 16 * 10 + 10)]:
        data = {**base, "model": model}
        calls.clear()
        sc, plan = parse_with_plan(data)
        assert len(calls) == 1  # the estimate and the message size from one build
        assert plan.bytes_per_message == 4 * values == prepare(sc).bytes_per_message
        info = dataset_info("sklearn_digits")
        assert plan.memory is not None and plan.memory == whole_plan.memory_estimate(sc, info, None)[0]
        res = CliRunner().invoke(main, ["validate", str(_write(tmp_path, data))])
        assert res.exit_code == 0, res.output
        assert f"messages: {human_bytes(4 * values)} each" in res.output
        assert "memory: about" in res.output


def test_validate_takes_set_as_run_does(tmp_path):
    """`fedsim validate FILE --set KEY=VALUE` checks what `fedsim run FILE --set ...` would run
    (validate had no --set: a bad override could be found only by starting the run)."""
    path = _write(tmp_path, {**SMALL, "topology": {"kind": "complete"}})
    ok = CliRunner().invoke(main, ["validate", str(path), "--set", "rounds=3", "--set", "strategy.name=krum"])
    assert ok.exit_code == 0, ok.output
    assert "decentralized, 3 rounds" in ok.output and "rule: krum(" in ok.output
    bad = CliRunner().invoke(
        main, ["validate", str(path), "-q", "--set", "strategy.params.include_own=maybe", "--set", "strategy.name=krum"]
    )
    assert bad.exit_code == 1 and bad.output.strip().splitlines() == [
        f"{path}: strategy.params: include_own: must be true or false, got 'maybe'"
    ]
    # a sweep file's combinations are checked with the overrides too: Krum (n > 2f + 2) cannot run with 4 peers
    sweep = _write(tmp_path, {**SMALL, "topology": {"kind": "complete"}, "sweep": {"peers.count": [4, 20]}})
    plain = CliRunner().invoke(main, ["validate", str(sweep), "-q"])
    assert plain.exit_code == 0 and "warning" not in plain.output, plain.output
    sets = ["--set", "strategy.name=krum", "--set", "peers.byzantine=1", "--set", "peers.attack.name=sign_flip"]
    krum = CliRunner().invoke(main, ["validate", str(sweep), "-q", *sets])
    assert krum.exit_code == 0 and "warning: sweep combination peers.count=4 cannot run" in krum.output, krum.output


def test_the_plans_round_0_bytes_are_the_bytes_the_run_records(tmp_path):
    """``fedsim validate`` prints round 0's bytes as the engine counts them (runfacts.sent_messages):
    a crash attack's silent peers and unsampled clients send nothing. Before, the plan said
    ``sends_per_round × N`` (31.8 MiB where the run recorded 23.8 MiB for 6 crash peers of 24)."""
    import json

    import fedsim
    from fedsim.units import human_bytes

    cases = {
        "crash": {**SMALL, "rounds": 1, "peers": {"count": 24, "byzantine": 6, "attack": {"name": "crash"}},
                  "topology": {"kind": "k_regular", "degree": 6}, "strategy": {"name": "median"}},
        "sampled": {**SMALL, "rounds": 1, "mode": "federated", "sampling": {"count": 5},
                    "strategy": {"name": "fedavg"}},
        "plain": {**SMALL, "rounds": 1, "topology": {"kind": "k_regular", "degree": 4}, "strategy": {"name": "median"}},
    }
    for name, data in cases.items():
        res = CliRunner().invoke(main, ["validate", str(_write(tmp_path, data))])
        assert res.exit_code == 0, res.output
        out = fedsim.run(data, out=tmp_path / name)
        total = json.loads((out.dir / "metrics.jsonl").read_text().splitlines()[0])["bytes_sent_total"]
        line = next(ln for ln in res.output.splitlines() if ln.strip().startswith("messages:"))
        assert line.endswith(f": {human_bytes(total)} in round 0"), (name, line, total)
        assert ("sent in round 0" in line) == (name != "plain"), (name, line)
