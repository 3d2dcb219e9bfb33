"""What the built-in probes do, in one place to import from: the unlearning and cloning probes
(over the pure-torch :mod:`attacks.probes`) against a trained federation, and the
:class:`ProbeContext` every probe's ``run`` gets. Their keys, value checks and ``summary.json``
form are :mod:`fedsim.probe_builtins` (registered kinds, :mod:`fedsim.probe_registry`);
:func:`fedsim.probe_runs.run_probes` runs a scenario's probes after the last round and writes
``<run>/probes.json``, handed the retraining as a callable (no probe module imports the runner);
:func:`fedsim.report_probes.format_probes` renders ``probes.json`` as Markdown.

This module is the facade: every name of the modules it is made of, so ``from fedsim.probes
import ...`` (and ``fedsim.probes._context`` and the other helpers) keeps working:
:mod:`fedsim.probe_context` (the :class:`ProbeContext`, the hop helpers, the leaving peer's
defaults and retraining, the ``probes.json`` writer), :mod:`fedsim.probe_unlearning`
(:func:`run_unlearning`, ``kind: unlearning``, docs/probes.md; its membership tests
:mod:`fedsim.probe_unlearning_membership`, its methods :mod:`fedsim.probe_unlearning_methods`) and
:mod:`fedsim.probe_cloning` (:func:`run_cloning`, ``kind: cloning``, docs/probes-cloning.md).
"""

from __future__ import annotations

from fedsim.probe_cloning import (
    AGREEMENT_GOAL,
    _defence_costs,
    _defence_label,
    _oracle,
    _query_pool,
    _stage1,
    _Target,
    _target_model,
    run_cloning,
)
from fedsim.probe_context import (
    ProbeContext,
    Retrain,
    _check_honest,
    _context,
    _Ctx,
    _default_leaver,
    _default_unlearn_target,
    _err,
    _plain,
    _retrain_without,
    _write_json,
    heldout_split,
    hop_distances,
    in_neighbors,
    retrain_dir,
)
from fedsim.probe_unlearning import _influence, _per_peer_mia, run_unlearning, to_plain_path
from fedsim.probe_unlearning_membership import _canary_shadows, _membership
from fedsim.probe_unlearning_methods import (
    SELECTION_RULE,
    _methods,
    _selection_numbers,
    _stop_reference,
    _StopRef,
    choose_method,
)

__all__ = [
    "AGREEMENT_GOAL",
    "SELECTION_RULE",
    "ProbeContext",
    "Retrain",
    "_Ctx",
    "_StopRef",
    "_Target",
    "_canary_shadows",
    "_check_honest",
    "_context",
    "_default_leaver",
    "_default_unlearn_target",
    "_defence_costs",
    "_defence_label",
    "_err",
    "_influence",
    "_membership",
    "_methods",
    "_oracle",
    "_per_peer_mia",
    "_plain",
    "_query_pool",
    "_retrain_without",
    "_selection_numbers",
    "_stage1",
    "_stop_reference",
    "_target_model",
    "_write_json",
    "choose_method",
    "heldout_split",
    "hop_distances",
    "in_neighbors",
    "retrain_dir",
    "run_cloning",
    "run_unlearning",
    "to_plain_path",
]
