"""The Flower ServerApp: a scenario's run on real devices, from the run config to ``summary.json``.

:func:`run_server` is the ServerApp's main: the scenario and the bridge settings from the run
config, fedsim's own set-up (:func:`fedsim.prepare.prepare`), the node ↔ partition binding
(:func:`partition_assignment`), the rounds by :class:`~fedsim.flower.strategy.FedsimStrategy`
over a :class:`~fedsim.flower.grid.PollingGrid`, then ``final_global.pt``, ``summary.json`` and
``versions.json``. :func:`make_server_app` wraps it as a Flower ``ServerApp``.

The round loop is :mod:`fedsim.flower.strategy`, the replies' checks :mod:`fedsim.flower.replies`,
the output directory :mod:`fedsim.flower.serverfiles`; their public names are re-exported here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from fedsim import rundir
from fedsim.callbacks import Callback
from fedsim.errors import RunInterruptedError
from fedsim.flower import common
from fedsim.flower.common import LOG
from fedsim.flower.grid import PollingGrid
from fedsim.flower.identity import STORE_NAME, PartitionAssignment, load_partition_map
from fedsim.flower.replies import validation_sizes
from fedsim.flower.serverfiles import FINAL_GLOBAL, ServerFiles, refuse_existing_metrics, verified_checkpoint
from fedsim.flower.strategy import FedsimStrategy, Stopped
from fedsim.runfiles import write_summary
from fedsim.scenario import Scenario

__all__ = [
    "FINAL_GLOBAL",
    "FedsimStrategy",
    "make_server_app",
    "output_dir",
    "partition_assignment",
    "refuse_existing_metrics",
    "run_server",
    "validation_sizes",
    "verified_checkpoint",
]


def partition_assignment(sc: Scenario, run_config: dict[str, Any], out: Path, run_id: int = 0) -> PartitionAssignment:
    """The run's node ↔ partition binding: the ``partition-map`` file, or first come, persisted
    in ``out/partitions.json`` (``out`` exists: :class:`~fedsim.flower.serverfiles.ServerFiles` made it)."""
    path = str(common.run_config_value(run_config, "partition-map") or "")
    if path:
        return PartitionAssignment(sc.peers.count, fixed=load_partition_map(path, sc.peers.count))
    return PartitionAssignment(sc.peers.count, store=out / STORE_NAME, run_id=run_id)


def output_dir(sc: Scenario, run_config: dict[str, Any]) -> Path:
    d = str(common.run_config_value(run_config, "output-dir") or "")
    return Path(d).expanduser() if d else Path(sc.output.dir) / f"{sc.name}-flower"


def run_server(grid: Grid, context: Context, callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """The ServerApp's main: the scenario from the run config, its output directory (made or
    verified and locked before any work, :class:`~fedsim.flower.serverfiles.ServerFiles` over
    :class:`fedsim.rundirectory.RunDirectory`; released at the end), fedsim's set-up, the rounds.

    ``callbacks``: :mod:`fedsim.callbacks` objects, as ``fedsim run`` takes them (in-process runs:
    :func:`fedsim.flower.inprocess.run_in_process`); a :class:`~fedsim.callbacks.Stop` returns
    ``{"stopped_after": round}``, or raises :class:`~fedsim.errors.RunInterruptedError` (Ctrl-C)."""
    rc = dict(context.run_config)
    sc = common.scenario_from_run_config(rc)
    out = output_dir(sc, rc)
    resume = common.run_config_bool(rc, "resume")
    overwrite = common.run_config_bool(rc, "overwrite")
    files = ServerFiles(out, sc)
    files.open(resume, overwrite, _versions())  # before any work: made or verified, and locked
    try:
        return _run(grid, context, sc, rc, files, resume, overwrite, callbacks)
    finally:
        files.close()


def _run(grid: Grid, context: Context, sc: Scenario, rc: dict[str, Any], files: ServerFiles, resume: bool,
         overwrite: bool, callbacks: Sequence[Callback]) -> dict[str, Any]:
    """:func:`run_server` in the directory ``files`` holds."""
    from fedsim.prepare import prepare

    out = files.path
    grid = PollingGrid(grid, float(common.run_config_value(rc, "poll-interval")))
    prep = prepare(sc, log=lambda m: LOG.info("%s", m))
    strategy = FedsimStrategy(
        sc,
        prep,
        attack_side=str(common.run_config_value(rc, "attack-side")),
        client_eval=common.run_config_bool(rc, "client-eval"),
        eval_piggyback=common.run_config_bool(rc, "eval-piggyback"),
        node_wait=float(common.run_config_value(rc, "node-wait")),
        out_dir=out,
        files=files,
        assignment=partition_assignment(sc, rc, out, int(context.run_id)),
        overwrite=overwrite,
        round_timeout=float(common.run_config_value(rc, "round-timeout")),
        min_replies=int(common.run_config_value(rc, "min-replies")),
        resume=resume,
        callbacks=callbacks,
        allow_version_mismatch=common.run_config_bool(rc, "allow-version-mismatch"),
    )
    started: list[Callback] = []
    summary: dict[str, Any] | None = None
    try:
        for cb in callbacks:
            if hasattr(cb, "on_start"):
                cb.on_start(sc, strategy.offset)
            started.append(cb)
        try:
            strategy.start(
                grid=grid,
                initial_arrays=strategy.initial_arrays(),
                num_rounds=sc.rounds - strategy.offset,
                timeout=float(common.run_config_value(rc, "round-timeout")),
                train_config=ConfigRecord(),
                evaluate_config=ConfigRecord(),
                evaluate_fn=strategy.evaluate_global,
            )
        except Stopped as e:
            return _stopped(e, out)
        strategy.write_checkpoint(out / FINAL_GLOBAL, sc.rounds - 1)  # the final global head, same safe format
        summary = strategy.summary_record()
        write_summary(out / rundir.SUMMARY, summary)
        (out / "versions.json").write_text(json.dumps(_versions(), indent=2) + "\n")  # a resume's versions
        LOG.info("fedsim run %r finished: final accuracy %s; metrics in %s", sc.name, summary["final_accuracy_mean"],
                 out)
        return summary
    finally:
        for cb in reversed(started):
            if hasattr(cb, "on_end"):
                cb.on_end(summary)


def _stopped(e: Stopped, out: Path) -> dict[str, Any]:
    """``{"stopped_after": round}``, or Ctrl-C's one line naming the resume."""
    interrupt = next((s for s in e.stops if s.interrupt), None)
    if interrupt is None:
        return {"stopped_after": e.round}
    done = "; checkpoint saved." if e.saved else "."
    raise RunInterruptedError(f"{interrupt.reason} after round {e.round}{done} Continue with run config "
                              f"resume=true (fedsim flower run --resume) and output-dir {out}")


def _versions() -> dict[str, str]:
    import platform

    import flwr

    from fedsim.version import __version__

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "flwr": flwr.__version__,
        "fedsim": __version__,
    }


def make_server_app() -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_server(grid, context)

    return app
