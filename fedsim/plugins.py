"""User plugins: your own rules, attacks and backbones, without editing fedsim.

A scenario's ``plugins:`` list names Python modules (``my_pkg.rules``, importable on every
machine of the run) and/or ``.py`` files (``my_rules.py``, resolved to an absolute path when the
scenario is validated). Each is imported once per process, by :func:`load`: in the driver before
the scenario's names are checked, and again in every process that builds a rule, an attack or a
backbone — each Ray actor (:class:`fedsim.peers.PeerGroup`, :class:`fedsim.server.Server`), each
in-process group and each sweep task — so ``@register`` in the user's module takes effect wherever
the run happens. The Flower bridge imports only packed plugins: ``fedsim flower export --plugin``
records each file's sha256 in the app, a device gets its copy from ``fedsim flower bundle --plugin``
or ``fedsim flower client --plugin``, and the apps import a copy whose hash matches (:func:`load_copy`,
:mod:`fedsim.flower.plugpack`); anything else is refused (:func:`fedsim.flower.common.bridge_scenario`),
unless the bridge runs in a process that granted it (``fedsim.flower.inprocess.run_in_process``).

A plugin is code, and no file fedsim reads may run code by itself: a plugin is imported only
once the user has named it where code is chosen, on the command line (``--plugin my_rules.py``) or
in Python (``fedsim.run(..., plugins=[...])``): :func:`grant`. A scenario's ``plugins:`` list only
records what the run needs (so actors, sweep tasks and a resume import the same files); a scenario
naming a plugin nobody granted is refused in one line before anything is imported
(:func:`check_granted`). Processes the driver starts (Ray actors, sweep tasks) import what the
driver granted: :func:`load` with ``granted=True``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from fedsim.errors import FedsimError

_MODULE_NAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_LOADED: dict[str, ModuleType] = {}  # plugin entry (absolute path or module name) → its module, per process
_COPY_SHA: dict[str, str] = {}  # entry → the sha256 of the copy load_copy imported it from
_GRANTED: set[str] = set()  # entries (normalised) the user named on the command line or in Python, per process


class PluginError(FedsimError, ValueError):
    """A plugin that cannot be imported: a missing file, an unknown module, or an error raised
    while it ran (e.g. a rule name registered twice). ``str()`` names the plugin."""


def is_path(entry: str) -> bool:
    """Whether a ``plugins:`` entry names a ``.py`` file (else it is a module name)."""
    return entry.endswith(".py") or "/" in entry or "\\" in entry


def normalize(entry: str, base: Path | None = None) -> str:
    """The form of a ``plugins:`` entry every process can load: a ``.py`` path made absolute
    (relative to ``base``, default the current directory — actors may run elsewhere); a module
    name checked and kept. Raises ``ValueError`` for an entry that is neither."""
    entry = entry.strip()
    if is_path(entry):
        p = Path(entry).expanduser()
        return str((p if p.is_absolute() else (base or Path.cwd()) / p).resolve())
    if not _MODULE_NAME.match(entry):
        raise ValueError(f"{entry!r} is neither a .py file nor a module name (like my_pkg.rules)")
    return entry


class PluginNotGrantedError(PluginError):
    """A scenario names a plugin the user did not name on the command line or in Python."""


def grant(entries: Iterable[str] | None, base: Path | None = None) -> list[str]:
    """Allow this process to import ``entries`` (the user named them: ``--plugin``, ``plugins=``);
    returns them normalised (:func:`normalize`). Raises ``ValueError`` for an entry that is
    neither a ``.py`` file nor a module name; imports nothing."""
    if isinstance(entries, (str, Path)):  # iterated, a path would be its characters ('.' is no plugin)
        raise ValueError(f"expected a list of .py files or modules, got the single {type(entries).__name__} "
                         f"{str(entries)!r}: write [{str(entries)!r}]")
    done = [normalize(e, base) for e in entries or ()]
    _GRANTED.update(done)
    return done


def check_granted(entries: Iterable[str] | None) -> None:
    """:class:`PluginNotGrantedError` (one line) for the first of ``entries`` not granted in this
    process; entries that are not plugin names at all are left to the schema's message."""
    for e in entries or ():
        try:
            entry = normalize(e)
        except ValueError:
            continue
        if entry not in _GRANTED:
            shown = e.strip()
            if is_path(entry) and not Path(entry).exists():  # "add --plugin <it>" would say no such file
                raise PluginNotGrantedError(
                    f"plugins: {entry}: no such file (listed as {shown!r}; a relative entry is read from the "
                    f"current directory, {Path.cwd()}): correct the scenario's plugins:, or run from the folder "
                    "it is relative to"
                )
            raise PluginNotGrantedError(
                f"plugins: {entry}: not imported: a plugin is code, and fedsim runs one only when you name "
                f"it yourself, never because a scenario lists it; add --plugin {shown} "
                f"(Python: plugins=[{shown!r}])"
            )


PLUGGABLE = ("backbones", "strategies", "attacks", "probes")  # the `fedsim list` kinds a plugin may add names to


def hint(plugins: Iterable[str] | None) -> str:
    """The end of the message for an unknown backbone, strategy, attack or probe kind name when no
    plugin is named (``plugins``: the scenario's ``plugins:``, or for ``fedsim list`` its
    ``--plugin``; never what else this process imported): the name may be the user's own,
    registered by a file they did not name (fedsim imports a plugin only when named:
    docs/extending.md); else the closest built-in name misleads."""
    return "" if plugins else "; one of your own? name the file that registers it: --plugin FILE (docs/extending.md)"


def merge(listed: Iterable[str] | None, granted: Iterable[str]) -> list[str]:
    """A scenario's ``plugins:`` (``listed``) with the ``granted`` entries it does not list yet
    appended, so the run records every plugin it imports, each once: entries are compared
    normalised (``my.py`` and ``./my.py`` are one file) and the first spelling is kept, in order; an
    entry that is no plugin name is kept as written, for the schema's message."""
    out, have = [], set()
    for e in [*(listed or ()), *granted]:
        try:
            key = normalize(e)
        except ValueError:
            key = e
        if key not in have:
            have.add(key)
            out.append(e)
    return out


def load(entries: Iterable[str] | None, *, granted: bool = False) -> list[ModuleType]:
    """Import each plugin once in this process (a second call is free) and return the modules.

    Called first thing wherever rules, attacks or backbones are built; raises
    :class:`PluginError` naming the plugin that failed, :class:`PluginNotGrantedError` for one
    the user did not :func:`grant`. ``granted=True``: the caller is a process the driver started
    (a Ray actor, a sweep task) with the driver's checked list; it grants them here first."""
    done = [normalize(e) for e in entries or ()]
    if granted:
        _GRANTED.update(done)
    check_granted(done)
    return [_load_one(e) for e in done]


def load_copy(entry: str, copy: str | Path, sha256: str) -> ModuleType:
    """Import the ``.py`` plugin ``entry`` from ``copy`` (the Flower bridge's packed or owner-named
    copies, :mod:`fedsim.flower.plugpack`) only if the bytes read have the granted ``sha256``: the
    file is read once, hashed, and those very bytes are compiled and run (no second read, no
    bytecode cache, so nothing can change between the check and the import). The module gets
    ``entry``'s name and a later :func:`load` of ``entry`` returns it; ``entry`` counts as granted
    only once its import succeeded. An ``entry`` this process already imported from a copy with the
    same hash is returned as it is; with another hash (a warm process whose copy changed) it is
    refused: one process runs one version of a plugin."""
    entry = normalize(entry)
    if entry in _LOADED:
        if _COPY_SHA.get(entry) == sha256:
            return _LOADED[entry]
        raise PluginError(
            f"plugins: {entry}: this process already imported another version of it; restart the process "
            "to use the one recorded now"
        )
    try:
        data = Path(copy).read_bytes()
    except OSError as e:
        raise PluginError(f"plugins: {copy}: cannot read: {e.strerror or e}") from None
    if hashlib.sha256(data).hexdigest() != sha256:
        raise PluginError(f"plugins: {copy}: its sha256 is not the granted one ({sha256[:12]}…)")
    import attacks  # noqa: F401 - as in _load_one
    import strategies  # noqa: F401

    before = _registered()
    module = _import_file(str(copy), name_of=entry, source=data)
    try:
        _check_registers(entry, module, before)
    except PluginError:
        sys.modules.pop(module.__name__, None)
        raise
    _LOADED[entry] = module
    _COPY_SHA[entry] = sha256
    _GRANTED.add(entry)
    return _LOADED[entry]


def granted_by_user(entry: str) -> bool:
    """Whether ``entry`` (normalised) was granted by the user in this process (:func:`grant`, or a
    driver's list handed on), not only imported from a hash-checked copy by :func:`load_copy`."""
    return entry in _GRANTED and entry not in _COPY_SHA


# every table a plugin registers a component in (module, attribute): rules and attacks (update
# forgers, data poisoners), backbones, probes, datasets, domain shifts; each imported before a
# plugin is (_registered), so what the plugin's import adds is its own.
REGISTRIES = (("strategies.registry", "REGISTRY"), ("attacks.registry", "REGISTRY"),
              ("fedsim.models.backbones", "BACKBONES"), ("fedsim.probe_base", "REGISTRY"),
              ("fedsim.data.datasets", "DATASETS"), ("fedsim.data.domains", "DOMAINS"))


def _registered() -> dict[tuple[str, str], object]:
    """Every registered component now, ``(table, name) → the object``, over :data:`REGISTRIES`,
    each table imported first (all are cheap and torch-free but the rules' and attacks', which a
    plugin load imports anyway): taken before a plugin's import, a new name in it counts whatever
    defines its value (a backbone variant of a built-in builder, a dataset row reusing fedsim's
    reader), and a plugin that only imports a table adds nothing."""
    out: dict[tuple[str, str], object] = {}
    for module, attr in REGISTRIES:
        table = getattr(importlib.import_module(module), attr)
        out |= {(module, name): value for name, value in table.items()}
    return out


def _origin(value: object) -> str:
    """The module that defined a registered component (a class; a backbone's builder; a dataset's
    or domain shift's function)."""
    if isinstance(value, tuple) and value:
        value = value[0]
    if not isinstance(value, type) and getattr(value, "build", None) is not None:
        value = value.build  # type: ignore[attr-defined]
    return getattr(value, "__module__", "") or ""


BUILTIN_PACKAGES = ("fedsim", "strategies", "attacks", "fedlib")  # where the built-in components are defined


def _builtin(origin: str) -> bool:
    return any(origin == p or origin.startswith(p + ".") for p in BUILTIN_PACKAGES)


def _check_registers(entry: str, module: ModuleType, before: dict[tuple[str, str], object]) -> None:
    """:class:`PluginError` for a plugin whose import added no component to any registry (``--plugin
    os``, a folder imported as a namespace package): it would be accepted, recorded and do nothing.
    Any new or replaced entry counts (``before``: :func:`_registered` before the import). A module
    imported before (by another plugin, an earlier run in this process) counts by the components
    defined outside fedsim's own packages in it, in a module it holds, or that it holds itself
    (``from mylab import rules``)."""
    after = _registered()
    if any(before.get(k) is not v for k, v in after.items()):
        return
    after = {k: v for k, v in after.items() if not _builtin(_origin(v))}
    held = list(vars(module).values())
    names = {module.__name__} | {m.__name__ for m in held if isinstance(m, ModuleType)}
    ids = {id(x) for x in held}

    def defined_here(v: object) -> bool:
        o = _origin(v)
        first = v[0] if isinstance(v, tuple) and v else v
        return id(v) in ids or id(first) in ids or any(o == n or o.startswith(n + ".") for n in names)

    if any(defined_here(v) for v in after.values()):
        return
    raise PluginError(
        f"plugins: {entry}: registers nothing; a plugin registers a rule, attack, backbone or probe when "
        "imported (@strategies.register, @attacks.register, register_backbone, @register_probe: docs/extending.md)"
    )


def _load_one(entry: str) -> ModuleType:
    if entry in _LOADED:
        return _LOADED[entry]
    import attacks  # noqa: F401 - the registries hold the built-ins before a plugin registers next to them
    import strategies  # noqa: F401

    before = _registered()
    module = _import_file(entry) if is_path(entry) else _import_module(entry)
    try:
        _check_registers(entry, module, before)
    except PluginError:
        if is_path(entry):
            sys.modules.pop(module.__name__, None)
        raise
    _LOADED[entry] = module
    return module


def _import_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and name.startswith(e.name):
            raise PluginError(
                f"plugins: cannot import module {name!r}; install it, put its folder on PYTHONPATH, "
                "or name its .py file instead"
            ) from None
        raise PluginError(f"plugins: {name}: {type(e).__name__}: {e}") from None
    except FedsimError:
        raise
    except SystemExit as e:
        raise _exited(name, e) from None
    except Exception as e:  # noqa: BLE001 - any error in the user's module is reported as that plugin's
        raise PluginError(f"plugins: {name}: {type(e).__name__}: {e}") from None


def _exited(entry: str, e: SystemExit) -> PluginError:
    """The one line for a plugin that called ``sys.exit`` (a script's ``argparse`` or ``main()``
    run at import): before, the command ended silently with the plugin's exit status."""
    return PluginError(
        f"plugins: {entry}: it called sys.exit({e.code!r}) while imported; a plugin only defines and registers "
        "(put a script's own code under `if __name__ == '__main__':`)"
    )


def _import_file(path: str, name_of: str | None = None, source: bytes | None = None) -> ModuleType:
    """Import the file ``path`` under the module name of the plugin entry ``name_of`` (default
    ``path``); with ``source``, run exactly those bytes (already read and checked by the caller) as
    the module's code instead of letting the import system read the file again."""
    p = Path(path)
    if p.is_dir():
        raise PluginError(f"plugins: {path}: a directory; name the .py file in it, or the package as a module")
    if not p.is_file():
        raise PluginError(f"plugins: {path}: no such file")
    # one module name per file, the same in every process (classes pickle by reference to it)
    key = name_of or path
    stem = re.sub(r"\W", "_", Path(key).stem)
    name = f"fedsim_plugin_{stem}_{hashlib.sha256(key.encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(name, p)
    if spec is None or spec.loader is None:
        raise PluginError(f"plugins: {path}: not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        if source is None:
            spec.loader.exec_module(module)
        else:
            exec(compile(source, str(p), "exec"), module.__dict__)  # noqa: S102 - the granted, hash-checked bytes
    except FedsimError:
        sys.modules.pop(name, None)
        raise
    except SystemExit as e:
        sys.modules.pop(name, None)
        raise _exited(path, e) from None
    except Exception as e:  # noqa: BLE001 - any error in the user's file is reported as that plugin's
        sys.modules.pop(name, None)
        raise PluginError(f"plugins: {path}: {type(e).__name__}: {e}") from None
    return module
