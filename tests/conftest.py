import os

import pytest

from fedsim.overrides import set_dotted
from fedsim.schema_sections import KIND_FIELDS

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole test session (starting Ray costs seconds)."""
    ray = pytest.importorskip("ray")
    from fedsim.backend import init_ray, shutdown_ray

    started = init_ray(num_cpus=4)  # the way fedsim starts it: loopback, private folder, token auth
    yield ray
    if started:
        shutdown_ray(ray)


@pytest.fixture()
def small_scenario(tmp_path):
    """A fast scenario dict: sklearn digits, identity backbone, 8 peers, 4 rounds."""

    def make(**over):
        d = {
            "name": "t",
            "seed": 3,
            "rounds": 4,
            "dataset": {"name": "sklearn_digits"},
            "backbone": {"name": "identity", "cache_dir": str(tmp_path / "cache")},
            "partition": {"kind": "dirichlet", "alpha": 1.0},
            "peers": {"count": 8},
            "topology": {"kind": "k_regular", "degree": 4},
            "training": {"lr": 0.05, "momentum": 0.5, "batch_size": 16, "local_steps": 3},
            "engine": {"backend": "local", "num_actors": 2},
            "output": {"dir": str(tmp_path / "runs")},
        }
        for k, v in over.items():
            set_dotted(d, k, v)
        return _without_unread(d, over)

    return make


def _without_unread(d: dict, over: dict) -> dict:
    """``d`` less the kind-specific fields of the fixture's base that an overridden kind does not
    read (``partition.alpha`` once ``partition.kind`` is iid, ``topology.degree`` once the topology
    is a ring or federated's star), which validation refuses (fedsim.schema_sections.KIND_FIELDS),
    and in federated mode the base's graph kind (fedsim.schema.Scenario refuses one); a field the
    caller set itself stays."""
    for section in ("partition", "topology"):
        cfg = d.get(section)
        if not isinstance(cfg, dict):
            continue
        kind = "star" if d.get("mode") == "federated" and section == "topology" else cfg.get("kind")
        given = over.get(section) if isinstance(over.get(section), dict) else {}
        for field, kinds in KIND_FIELDS[section].reads.items():
            if kind not in kinds and f"{section}.{field}" not in over and field not in given:
                cfg.pop(field, None)
        if kind == "star" and "topology.kind" not in over and "kind" not in given:
            cfg.pop("kind", None)  # federated mode is a star: a graph kind given there is refused
    return d


@pytest.fixture()
def seed1_fails(monkeypatch):
    """``Run.execute`` raises ``RuntimeError("boom")`` for a scenario with seed 1 and runs the others:
    a sweep with one failing run."""
    import fedsim.runner

    real = fedsim.runner.Run.execute

    def flaky(self, *a, **kw):
        if self.sc.seed == 1:
            raise RuntimeError("boom")
        return real(self, *a, **kw)

    monkeypatch.setattr(fedsim.runner.Run, "execute", flaky)
