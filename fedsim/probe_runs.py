"""Run a scenario's probes after training: each entry's registered kind (:mod:`fedsim.probe_registry`)
against the trained federation (:class:`fedsim.probes.ProbeContext`); ``<run>/probes.json`` holds
the full entries, ``summary.json`` the compact ones. The runner hands in the retraining the
unlearning probe compares with, so no probe module imports the runner.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedsim.errors import ProbeResultError
from fedsim.probe_context import Retrain, _context, _plain, _write_json
from fedsim.probe_registry import entry_problem, get_probe, json_problem, summarize, validate_probe


def run_probes(run: Any, prep: Any, final_params: np.ndarray,
               retrain: Retrain | None = None) -> list[dict[str, Any]]:
    """Run ``run.sc.probes`` against the trained heads ``final_params [N, P]``.

    ``run``: what the probes read of the trained run (``sc``, ``dir``, ``recorded_gradients``),
    ``prep`` its ``fedsim.prepare.Prepared`` (features, set-ups, Byzantine placement, topology);
    ``retrain``: the retraining the unlearning probe compares with (the runner passes
    ``Run.retrain_without``). Every probe is validated first (``ValueError("probes.<i>.<key>:
    ...")``), then each runs in order (its registered kind's :meth:`~Probe.run`); the full results
    go to ``<run>/probes.json`` (``[{"kind", "records", ...}]``) and the compact list returned
    here goes into ``summary.json``.
    """
    cfgs = [validate_probe(i, p, run.sc.peers.count, run.sc.plugins) for i, p in enumerate(run.sc.probes)]
    ctx = _context(run, prep, final_params, retrain)
    entries = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: extra threads only contend (badly so on busy shared cores)
    try:
        for i, cfg in enumerate(cfgs):
            entries.append(_plain(get_probe(i, cfg["kind"], run.sc.plugins).run(i, cfg, ctx)))
    finally:
        torch.set_num_threads(threads)
    path = Path(run.dir) / "probes.json"
    problems = [entry_problem(cfg["kind"], entry) for cfg, entry in zip(cfgs, entries, strict=True)]
    plain = [p is None or json_problem(e) is None for e, p in zip(entries, problems, strict=True)]
    # as returned, even when one is malformed: the others are kept (what JSON cannot hold: its repr)
    _write_json(path, [e if ok else repr(e) for e, ok in zip(entries, plain, strict=True)])
    for i, (cfg, problem) in enumerate(zip(cfgs, problems, strict=True)):
        if problem is not None:
            raise ProbeResultError(
                f"probes.{i}: the {cfg['kind']} probe's run() returned {problem} "
                f"(written {'as it is' if plain[i] else 'as its repr'} to {path}); a probe returns its probes.json "
                "entry, a mapping with its kind (fedsim.checks.check_probe checks a probe)", problem
            )
    return [summarize(e) for e in entries]
