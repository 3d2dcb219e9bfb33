"""The Flower release the bridge's patches of Flower internals were written against, and a guard
that refuses any other.

Four pieces of :mod:`fedsim.flower` reach into Flower 1.41's internals, where no setting exists:

* ``bounded_object_pulls`` (:func:`fedsim.flower.grid.bounded_object_pulls`) wraps the module-level
  ``pull_objects`` of ``flwr.superlink.grid.http_grid`` that ``HttpGrid.pull_messages`` calls;
* ``pull_task_input`` (:func:`fedsim.flower.worker.pull_task_input`) is a copy of Flower's
  ``flwr.supernode.runtime.run_clientapp.pull_task_input`` with a different wait for the input;
* ``superlink_middleware`` (:func:`fedsim.flower.launch.install_gate`) replaces
  ``flwr.superlink.extensions.get_middleware``, which ``flwr.superlink.main`` reads;
* ``supernode_sleeps`` (:func:`fedsim.flower.launch.cap_supernode_sleeps`) replaces the ``time``
  module of ``flwr.supernode.start_client_internal``.

An upgrade of flwr could break any of them silently (a wrapper no longer called, a copy that no
longer does what Flower does). :func:`require` fails instead, with a one-line
:class:`FlowerInternalsError`, when the installed flwr is not :data:`FLWR_VERSION` or when what a
patch relies on is not there any more (a parameter, a name the patched function looks up, the
source of the function that was copied). It runs where each patch is applied.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from collections.abc import Callable

FLWR_VERSION = "1.41.0"  # the flwr the patches were written against; the bridge's pin (project.FLWR_REQUIREMENT)
# sha256 of the source of Flower's own pull_task_input (run_clientapp) in FLWR_VERSION, the
# function fedsim.flower.worker.pull_task_input copies
PULL_TASK_INPUT_SHA256 = "5607a23e1673ee876930c1b35685b8dfdfd8b3776a436560b0467042e15fc695"
PULL_TIMEOUT_REASON = "timeout or retry limit reached"  # Flower's ObjectPullError reason the worker looks for
_PULL_PARAMS = ("max_time", "max_tries_per_object", "initial_backoff", "backoff_cap")


class FlowerInternalsError(RuntimeError):
    """The installed flwr is not the one a patch of its internals was written for; one line."""


def installed_version() -> str:
    import flwr

    return str(getattr(flwr, "__version__", "unknown"))


def _attr(path: str) -> object:
    """``"pkg.module:Name.attr"`` → the object (ImportError/AttributeError when gone)."""
    module, _, names = path.partition(":")
    obj: object = importlib.import_module(module)
    for name in names.split("."):
        obj = getattr(obj, name)
    return obj


def _missing_params(path: str, names: tuple[str, ...]) -> list[str]:
    params = inspect.signature(_attr(path)).parameters  # type: ignore[arg-type]
    return [f"{path} has no parameter {n}" for n in names if n not in params]


def _looks_up(path: str, name: str) -> list[str]:
    """The function at ``path`` must look ``name`` up at call time (a global or an attribute), or
    replacing ``name`` would not change what it calls."""
    code = getattr(_attr(path), "__code__", None)
    return [] if code is not None and name in code.co_names else [f"{path} no longer calls {name}"]


def _bounded_object_pulls() -> list[str]:
    return [*_missing_params("flwr.superlink.grid.http_grid:pull_objects", _PULL_PARAMS),
            *_looks_up("flwr.superlink.grid.http_grid:HttpGrid.pull_messages", "pull_objects")]


def _pull_task_input() -> list[str]:
    out = []
    source = inspect.getsource(_attr("flwr.supernode.runtime.run_clientapp:pull_task_input"))  # type: ignore[arg-type]
    if hashlib.sha256(source.encode()).hexdigest() != PULL_TASK_INPUT_SHA256:
        out.append("flwr.supernode.runtime.run_clientapp:pull_task_input, which fedsim copies, has changed")
    out += _missing_params("flwr.supercore.inflatable.inflatable_utils:pull_and_inflate_object_from_tree",
                           ("return_type", *_PULL_PARAMS))
    if PULL_TIMEOUT_REASON not in inspect.getsource(_attr("flwr.supercore.inflatable.inflatable_utils:pull_objects")):  # type: ignore[arg-type]
        out.append(f"Flower's object pulls no longer fail with {PULL_TIMEOUT_REASON!r}")
    out += _missing_params("flwr.supernode.runtime.run_clientapp:push_message", ("client", "message", "context"))
    out += _missing_params("flwr.supernode.runtime.run_clientapp:push_task_output",
                           ("client", "context", "sub_status", "details"))
    return out


def _superlink_middleware() -> list[str]:
    _attr("flwr.superlink.extensions:get_middleware")
    return _looks_up("flwr.superlink.main:_get_middleware", "get_middleware")


def _supernode_sleeps() -> list[str]:
    import time

    mod = _attr("flwr.supernode.start_client_internal:time")
    return [] if mod is time else ["flwr.supernode.start_client_internal no longer sleeps with the time module"]


# patch name → (what fedsim does, the check of what it relies on)
PATCHES: dict[str, tuple[str, Callable[[], list[str]]]] = {
    "bounded_object_pulls": ("fedsim.flower.grid.bounded_object_pulls wraps Flower's pull_objects",
                             _bounded_object_pulls),
    "pull_task_input": ("fedsim.flower.worker.pull_task_input copies Flower's pull_task_input", _pull_task_input),
    "superlink_middleware": ("fedsim.flower.launch.install_gate replaces Flower's get_middleware",
                             _superlink_middleware),
    "supernode_sleeps": ("fedsim.flower.launch.cap_supernode_sleeps replaces the SuperNode loop's time module",
                         _supernode_sleeps),
}
_VERIFIED: set[tuple[str, str]] = set()


def check(patch: str) -> None:
    """Raise :class:`FlowerInternalsError` (one line) unless ``patch`` fits the installed flwr."""
    if patch not in PATCHES:
        raise ValueError(f"unknown patch {patch!r}; known: {', '.join(PATCHES)}")
    what, probe = PATCHES[patch]
    version = installed_version()
    if version != FLWR_VERSION:
        problems = [f"flwr {version} is installed"]
    else:
        try:
            problems = probe()
        except (ImportError, AttributeError, TypeError, ValueError, OSError) as e:
            problems = [f"{type(e).__name__}: {e}".replace("\n", " ")]
    if problems:
        raise FlowerInternalsError(
            f"{what}, written for flwr {FLWR_VERSION}, but {'; '.join(problems)}: install flwr=={FLWR_VERSION} "
            f"(the bridge's pin) or port the patch (docs/flower.md, 'Flower internals')")


def require(patch: str) -> None:
    """:func:`check`, once per patch and installed flwr version (the places that apply a patch call it)."""
    key = (patch, installed_version())
    if key not in _VERIFIED:
        check(patch)
        _VERIFIED.add(key)
