"""``engine.device`` (issue 18): where a model section's stacked trainable part runs. No GPU here:
the CPU path is checked to the byte, the refusals as one-line ScenarioErrors, and the plumbing
(scenario -> plan -> the groups' and the server's tensors) with the device resolver recorded."""

import pytest
import torch

from fedsim import whole
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
    _one_line_error(head, r"engine\.device: 'cuda' applies to the model section's trainable part")
    _one_line_error(_scenario(tmp_path, **{"engine.device": "gpu"}), r"engine\.device: .*should match pattern")
    assert parse(_scenario(tmp_path, **{"engine.device": "cuda:0"})).engine.device == "cuda:0"


def test_the_device_reaches_every_stacked_model(tmp_path, monkeypatch):
    """The scenario's device travels in the plan to the groups and the server, which resolve it once
    each (recorded here; the recorder hands back the CPU so the run completes)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    asked = []

    def record(name):
        asked.append(name)
        return torch.device("cpu")

    monkeypatch.setattr(whole, "resolve", record)
    d = _scenario(tmp_path, mode="federated", **{"topology.kind": "star", "engine.device": "cuda:1"})
    _metrics(tmp_path, d)
    assert asked == ["cuda:1"] * 3  # two peer groups and the server
