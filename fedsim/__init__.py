"""fedsim: fast federated and decentralized learning simulation under Byzantine attack.

Python API (:mod:`fedsim.api`): ``fedsim.run(scenario, overrides=..., out=...)`` runs one scenario
and returns a :class:`~fedsim.api.RunResult`; ``fedsim.load_run(dir)`` reads a finished run;
``fedsim.resume(dir)`` continues a stopped one. ``fedsim.Callback``/``fedsim.Stop``
(:mod:`fedsim.callbacks`) watch a run's rounds and may end it early.
"""

import os
from typing import TYPE_CHECKING, Any

# Threads that wait for work sleep instead of spinning (OpenMP reads this when torch loads, so it
# must be set before torch is imported; Ray workers and sweep processes inherit it). Measured with
# one of 2 cores kept busy by another process, in-process N = 100: 18-24 rounds/s spinning (the
# default), 47 sleeping; quiet 53-57 vs 48-60 (docs/performance.md). A user's own value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from fedsim.mkl_branch import fix_branch
from fedsim.version import DISTRIBUTION, __version__  # noqa: F401  (the package's version and pip name)

# oneMKL's code path fixed to the one this CPU's flags name, before MKL's first call: otherwise MKL
# picks one per process and, rarely, another one (other bits: fedsim.mkl_branch). A user's value wins.
fix_branch()

__all__ = ["Callback", "RunResult", "Stop", "load_run", "resume", "run"]
_CALLBACKS = ("Callback", "Stop")

if TYPE_CHECKING:
    from fedsim.api import RunResult, load_run, resume, run
    from fedsim.callbacks import Callback, Stop


def __getattr__(name: str) -> Any:
    # imported on first use: `import fedsim` (and `fedsim --help`) stays light
    if name in _CALLBACKS:
        from fedsim import callbacks

        return getattr(callbacks, name)
    if name in __all__:
        from fedsim import api

        return getattr(api, name)
    raise AttributeError(f"module 'fedsim' has no attribute {name!r}")
