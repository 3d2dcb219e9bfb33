"""``engine.device`` (issues 18, 19): where a model section's stacked trainable part, or the linear
heads' peer groups, run. No GPU here: the CPU path is checked to the byte, the refusals as one-line
ScenarioErrors, the plumbing (scenario -> plan or GroupSetup -> the groups' tensors) with the device
resolver recorded, and the linear-head group's placement on the ``meta`` device (tensors without
data: a tensor created without ``device=`` stays on the CPU and is caught)."""

import numpy as np
import pytest
import torch

from fedsim import heads, peers, whole
from fedsim.prepare import prepare
from fedsim.rundir import read_checkpoint
from fedsim.runner import Run
from fedsim.scenario import ScenarioError, parse


def _scenario(tmp_path, name="d", **over):
    d = {
        "name": name,
        "seed": 3,
        "rounds": 2,
        "dataset": {"name": "sklearn_digits"},
        "backbone": {"name": "identity", "cache_dir": str(tmp_path / "cache")},
        "partition": {"kind": "iid"},
        "peers": {"count": 4},
        "topology": {"kind": "complete"},
        "training": {"lr": 0.05, "momentum": 0.9, "batch_size": 8, "local_steps": 2},
        "model": {"trainable": "all", "hidden": [16], "init": "scratch"},
        "engine": {"backend": "local", "num_actors": 2},
        "output": {"dir": str(tmp_path / "runs")},
    }
    for k, v in over.items():
        section, _, key = k.rpartition(".")
        (d.setdefault(section, {}) if section else d)[key] = v
    return d


def _metrics(tmp_path, d):
    r = Run(parse(d))
    r.create_dir(overwrite=True)
    r.execute()
    return (r.dir / "metrics.jsonl").read_bytes()


@pytest.mark.parametrize("mode", ["decentralized", "federated"])
def test_explicit_cpu_is_byte_identical_to_the_default(tmp_path, mode):
    base = _scenario(tmp_path, mode=mode, **({"topology.kind": "star"} if mode == "federated" else {}))
    default = _metrics(tmp_path, base)
    explicit = _metrics(tmp_path, base | {"name": "cpu", "engine": base["engine"] | {"device": "cpu"}})
    assert default == explicit and default.count(b"\n") == 2


def _one_line_error(d, match):
    with pytest.raises(ScenarioError, match=match) as e:
        parse(d)
    assert "\n" not in str(e.value)


def test_unavailable_cuda_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for dev in ("cuda", "cuda:1"):
        _one_line_error(
            _scenario(tmp_path, **{"engine.device": dev}),
            rf"engine\.device: '{dev}' requested but torch\.cuda\.is_available\(\) is False on this machine .*"
            r"use engine\.device: cpu",
        )


def test_device_refusals(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    _one_line_error(_scenario(tmp_path, **{"engine.device": "cuda:1"}),
                    r"engine\.device: 'cuda:1': this machine has 1 CUDA device\(s\) \(cuda:0 \.\. cuda:0\)")
    _one_line_error(_scenario(tmp_path, **{"engine.device": "cuda", "engine.backend": "ray"}),
                    r"engine\.device: 'cuda' needs engine\.backend: local")
    head = _scenario(tmp_path, **{"engine.device": "cuda"})
    head["model"] = {}
    assert parse(head).engine.device == "cuda"  # the linear-head path runs on a device too (issue 19)
    _one_line_error(head | {"engine": head["engine"] | {"backend": "ray"}},
                    r"engine\.device: 'cuda' needs engine\.backend: local \(Ray actors are started without GPUs\)")
    _one_line_error(_scenario(tmp_path, **{"engine.device": "gpu"}), r"engine\.device: .*should match pattern")
    assert parse(_scenario(tmp_path, **{"engine.device": "cuda:0"})).engine.device == "cuda:0"


def _fake_cuda(monkeypatch, module, count: int) -> list[str]:
    """Pretend ``count`` CUDA devices exist and record every device ``module`` resolves (each resolves
    to the CPU, so the run completes); returns the list the names are appended to."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    asked: list[str] = []

    def record(name):
        asked.append(name)
        return torch.device("cpu")

    monkeypatch.setattr(module, "resolve", record)
    return asked


def test_the_device_reaches_every_stacked_model(tmp_path, monkeypatch):
    """The scenario's device travels in the plan to the groups and the server, which resolve it once
    each (recorded here; the recorder hands back the CPU so the run completes)."""
    asked = _fake_cuda(monkeypatch, whole, count=2)
    d = _scenario(tmp_path, mode="federated", **{"topology.kind": "star", "engine.device": "cuda:1"})
    _metrics(tmp_path, d)
    assert asked == ["cuda:1"] * 3  # two peer groups and the server


# ----------------------------------------------------------------------------- the linear-head path
def _head(tmp_path, name="h", **over):
    """A linear-head scenario (no model section): Bristle (CWR copies, the float64 integrator) by default."""
    d = _scenario(tmp_path, name, **{"strategy.name": "bristle", "peers.count": 6, **over})
    del d["model"]
    return d


@pytest.mark.parametrize("over", [
    {},
    {"training.optimizer": "adam", "training.batch_size": 64, "strategy.name": "fedavg",
     "engine.message_dtype": "bfloat16"},
    # federated with client sampling: PeerGroup._train_rows
    {"mode": "federated", "topology.kind": "star", "strategy.name": "fedavg", "sampling.count": 3},
])
def test_head_path_explicit_cpu_and_a_device_object_are_byte_identical(tmp_path, monkeypatch, over):
    """``engine.device: cpu`` is the run without the field; ``cuda`` resolved to a ``torch.device`` object
    (here the CPU's: no GPU) reaches every group through its GroupSetup and gives the same bytes."""
    base = _head(tmp_path, **over)
    default = _metrics(tmp_path, base)
    assert default.count(b"\n") == 2
    assert _metrics(tmp_path, base | {"name": "cpu", "engine": base["engine"] | {"device": "cpu"}}) == default
    asked = _fake_cuda(monkeypatch, peers, count=1)
    assert _metrics(tmp_path, base | {"name": "dev", "engine": base["engine"] | {"device": "cuda"}}) == default
    assert asked == ["cuda"] * 2  # two peer groups


CPU_SIDE = {"local_classes", "claimed", "val_x", "val_y"}  # what the CPU-side aggregation reads


def _meta_group(tmp_path, monkeypatch, **over) -> peers.PeerGroup:
    monkeypatch.setattr(peers, "resolve", lambda name: torch.device("meta"))
    sc = parse(_head(tmp_path, **over))
    prep = prepare(sc)
    f = prep.features
    return peers.PeerGroup(prep.setups[0], {"x_train": f.x_train, "y_train": f.y_train},
                           {"x_test": f.x_test, "y_test": f.y_test})


def _off_device(g: peers.PeerGroup) -> list[str]:
    """The group's persistent tensors (its attributes and its optimizer state's) that are not on ``meta``."""
    found = {k: v for k, v in vars(g).items() if isinstance(v, torch.Tensor) and k not in CPU_SIDE}
    found |= {f"padded[{i}]": t for i, t in enumerate(g.padded or ())}
    found |= {f"opt.{k}": v for k, v in vars(g.opt).items() if isinstance(v, torch.Tensor)}
    assert {"w", "b", "x_test", "y_test", "opt.m_w"} <= set(found)
    return sorted(k for k, t in found.items() if t.device.type != "meta")


@pytest.mark.parametrize(("over", "padded"), [
    ({"training.batch_size": 512}, True),  # small shards: zero-padded, draw-count weights; SGD, momentum; CWR
    ({"training.optimizer": "adam", "training.weight_decay": 0.01}, False),  # gathered minibatches
])
def test_head_group_lives_on_its_device(tmp_path, monkeypatch, over, padded):
    """Every persistent tensor of a linear-head group is created on (or moved to) ``engine.device``, and
    its local steps, CWR consolidation and evaluation arithmetic stay there, and the CPU-side
    aggregation reads and writes them with indices on their device (index_select, index_copy_,
    scatter_add_ refuse a CPU index on CUDA; meta does not, so the spies check): on ``meta`` a tensor
    made without ``device=`` stays on the CPU (the attribute check) or mixes devices (torch raises)."""
    g = _meta_group(tmp_path, monkeypatch, **over)
    assert (g.padded is not None) == padded and _off_device(g) == []
    gather = torch.Tensor.index_select  # (meta, like CUDA for some ops, would take a CPU index silently)

    def same_device(self, dim, index):
        assert index.device == self.device, f"a gather's index on {index.device}, its tensor on {self.device}"
        return gather(self, dim, index)

    monkeypatch.setattr(torch.Tensor, "index_select", same_device)
    scatter = torch.Tensor.scatter_add_  # (the padded path's draw counts: CUDA refuses a CPU index)

    def same_device_scatter(self, dim, index, src):
        assert index.device == self.device, f"a scatter's index on {index.device}, its tensor on {self.device}"
        return scatter(self, dim, index, src)

    monkeypatch.setattr(torch.Tensor, "scatter_add_", same_device_scatter)
    tw, tb = g.w.clone(), g.b.clone()  # train()'s CWR copy
    loss = g._local_steps(tw, tb, g.opt, g._minibatches(0, 2))
    assert loss.device.type == "meta" and loss.shape == (g.p,)
    heads.consolidate(g.w, g.b, tw, tb, g.held_on_device)
    rows = np.arange(0, g.p, 2)  # federated client sampling's subset of the hosted peers
    sw, sb = tw[: len(rows)].clone(), tb[: len(rows)].clone()
    sub = heads.OptimizerState.zeros(sw, sb, g.opt.v_w is not None)
    assert g._local_steps(sw, sb, sub, g._minibatches(1, 1, rows)).device.type == "meta"
    assert g._local_steps(tw, tb, g.opt, []).device.type == "meta"  # no step: the loss it returns
    acc, lo = heads.accuracy_and_loss(g.w, g.b, g.x_test, g.y_test)
    assert acc.device.type == lo.device.type == "meta" and _off_device(g) == []
    # the aggregation's results (CPU rows) written back into the device heads, chunk by chunk
    put, finish = g._result_writer(torch.zeros(g.s.num_peers, g._num_params()), None)
    put(torch.tensor([0]), torch.ones(1, g._num_params()))
    finish()
    assert _off_device(g) == []
    # the whole decentralized aggregation: CWR's device copies read as the rule's CPU ``own`` rows
    # (a meta tensor has no data to copy: .cpu() gives zeros of its shape)
    to_cpu = torch.Tensor.cpu
    monkeypatch.setattr(torch.Tensor, "cpu", lambda t: torch.zeros(t.shape, dtype=t.dtype)
                        if t.device.type == "meta" else to_cpu(t))
    g.tw, g.tb = tw, tb
    g.aggregate(0, np.zeros((g.s.num_peers, g._num_params()), dtype=np.float32))
    assert g.tw_stale and _off_device(g) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (benchmarks/gpu_check.sh runs it)")
def test_cuda_head_run_matches_cpu_up_to_rounding(tmp_path):
    """On a GPU: the same draws, so the same run up to float rounding (losses and accuracies close,
    not byte-identical); the checkpointed state comes back as CPU tensors."""
    import json

    base = _head(tmp_path, **{"checkpoint.every": 1})
    cpu = [json.loads(x) for x in _metrics(tmp_path, base).splitlines()]
    dev = base | {"name": "cuda", "engine": base["engine"] | {"device": "cuda"}}
    cuda = [json.loads(x) for x in _metrics(tmp_path, dev).splitlines()]
    for a, b in zip(cpu, cuda, strict=True):
        assert a.keys() == b.keys()
        for k, v in a.items():  # (a rounding difference may flip a test sample's argmax: 1/360 of accuracy)
            if isinstance(v, float):
                assert abs(v - b[k]) <= 0.02 + 0.01 * abs(v), (k, v, b[k])
            else:
                assert v == b[k], k
    _, state = read_checkpoint(tmp_path / "runs" / "cuda" / "checkpoint.pt")
    assert {t.device.type for t in _tensors(state)} == {"cpu"}


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            yield from _tensors(v)
