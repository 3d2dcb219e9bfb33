"""What the ServerApp and the ClientApp share: the run-config keys, the scenario they both
derive from it, and how a head travels in a Flower message.

Light on purpose: yaml, numpy and :mod:`fedsim.scenario` only, so the device side stays small.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from fedsim.flower.errors import BridgeError  # noqa: F401 - re-exported: the bridge modules raise it
from fedsim.scenario import Scenario, ScenarioError, parse, parse_set, set_dotted
from fedsim.yamlsafe import MAX_YAML_BYTES, dump_yaml, plain_tree, safe_yaml

LOG = logging.getLogger("flwr.fedsim")  # a child of Flower's logger: shows in `flwr log` and the node's output

# Keys of the message contents (the ones Flower's own strategies use).
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
HEAD = "head"
# The server's fedsim in every message's config (fedsim.codehash): a device whose code differs refuses.
SERVER_CODE = "fedsim-code"
SERVER_VERSION = "fedsim-version"

# Run-config keys ([tool.flwr.app.config] of the exported app; `flwr run --run-config` overrides).
RUN_CONFIG_DEFAULTS: dict[str, Any] = {
    "scenario": "",  # the resolved scenario as YAML text
    "set": "",  # extra dotted overrides "strategy.name=krum rounds=5", as `fedsim run --set`
    "attack-side": "client",  # client: Byzantine devices forge; server: the server simulates them
    "client-eval": True,  # devices also score the global head on their local validation split
    "eval-piggyback": True,  # ... in the next round's train message (one message per device per round)
    "poll-interval": 0.25,  # seconds between the ServerApp's pulls for replies (Flower's own: 3 s)
    "round-timeout": 600.0,  # seconds the server waits for the replies of one round (also the messages' TTL)
    "min-replies": 1,  # quorum: a round with fewer valid updates leaves the global head unchanged
    "node-wait": 300.0,  # seconds the server waits for all peers.count devices before a round
    "output-dir": "",  # where the server writes metrics.jsonl & co.; "" = <output.dir>/<name>-flower
    "overwrite": False,  # replace the metrics of an earlier run in output-dir (refused otherwise)
    "partition-map": "",  # JSON {"NODE_ID": PARTITION}; "" = first come (bound and kept in partitions.json)
    "resume": False,  # continue the run in output-dir from its checkpoint.pt (checkpoint.every of the scenario)
    "plugins": "",  # JSON {path: sha256} of the plugins granted at export (fedsim.flower.plugpack)
    "allow-version-mismatch": False,  # devices train even where their fedsim code differs from the server's
}
ATTACK_SIDES = ("client", "server")


def run_config_value(run_config: Mapping[str, Any], key: str) -> Any:
    return run_config.get(key, RUN_CONFIG_DEFAULTS[key])


def other_code(cfg: Any, ours: str, device: bool) -> str | None:
    """Why the fedsim code a message's config names (``fedsim-code``, ``fedsim-version``; none: a
    fedsim older than the check) is not ``ours``, in one line from this side (``device``: a device
    reading the server's message; else the server reading a device's reply), or None where it is.
    The ClientApp's check and the server's (:mod:`fedsim.flower.replies`) both ask this one."""
    from fedsim.codehash import describe

    theirs = cfg.get(SERVER_CODE) if hasattr(cfg, "get") else None
    if theirs == ours:
        return None
    other = (describe(str(theirs), str(cfg.get(SERVER_VERSION, "?"))) if theirs
             else "no code fingerprint (a fedsim older than this check)")
    if device:
        return (f"this device runs {describe(ours)}, the server {other}: they would compute differently; "
                "install the server's fedsim here (fedsim flower bundle), or set run config "
                "allow-version-mismatch=true")
    return (f"the device runs {other}, this server {describe(ours)}: they would compute differently; "
            "install the server's fedsim there (fedsim flower bundle), or set run config allow-version-mismatch=true")


def allow_other_code(why: str, cfg: Any, warned: set[str]) -> None:
    """Run config ``allow-version-mismatch=true``: one warning line per other fingerprint (``warned``
    holds those already named) instead of refusing :func:`other_code`'s ``why``."""
    theirs = str(cfg.get(SERVER_CODE) if hasattr(cfg, "get") else None)
    if theirs not in warned:
        warned.add(theirs)
        LOG.warning("allow-version-mismatch: %s", why.split("; install")[0])


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off", "")


def run_config_bool(run_config: Mapping[str, Any], key: str) -> bool:
    """A yes/no run-config value: a bool, 0/1, or the text true/false (yes/no, on/off, 1/0, any case).
    Flower's ``--run-config 'k="false"'`` gives the *text* "false", which ``bool()`` read as true;
    anything else is one :class:`BridgeError` line naming the key."""
    v = run_config_value(run_config, key)
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in _TRUE + _FALSE:
        return v.strip().lower() in _TRUE
    raise BridgeError(f"run config {key}: expected true or false, got {v!r}")


def parse_sets(text: str) -> dict[str, Any]:
    """``"strategy.name=krum rounds=5"`` → ``{"strategy.name": "krum", "rounds": 5}``: whitespace-separated
    overrides, each read as ``fedsim run --set`` reads it (:func:`fedsim.scenario.parse_set`)."""
    out: dict[str, Any] = {}
    for item in str(text or "").split():
        try:
            k, v = parse_set(item)
        except ScenarioError as e:
            raise BridgeError(f"run config 'set': {e}") from None
        out[k] = v
    return out


def scenario_data(sc_or_yaml: Scenario | str | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(sc_or_yaml, Scenario):
        return sc_or_yaml.model_dump(mode="json")
    if isinstance(sc_or_yaml, str):
        # the bounded reader of every scenario file (fedsim.yamlsafe): size, depth, aliases, a key given
        # twice refused (PyYAML keeps the last silently), every failure one BridgeError line
        source = "run config 'scenario'"
        try:
            if len(sc_or_yaml) > MAX_YAML_BYTES:
                raise ScenarioError(f"{source}: more than {MAX_YAML_BYTES // 2**20} MiB; scenario files are small")
            data = safe_yaml(sc_or_yaml, source) if sc_or_yaml.strip() else {}
            if data is None:
                data = {}
            if not isinstance(data, dict):
                raise BridgeError(f"{source}: the YAML must be a mapping of sections")
            return plain_tree(data, source)
        except ScenarioError as e:
            raise BridgeError(str(e)) from None
    return dict(sc_or_yaml)


def bridge_scenario(data: Mapping[str, Any] | str | Scenario, sets: Mapping[str, Any] | None = None) -> Scenario:
    """The scenario as the bridge runs it: overrides applied and ``mode: federated`` (Flower is a
    star: one ServerApp, many ClientApps). A decentralized scenario keeps everything else.
    Nothing on the Flower apps' command lines grants a plugin (:mod:`fedsim.plugins`), so a scenario
    that lists one not granted in this process is refused, in words that fit the bridge."""
    d = scenario_data(data)
    for k, v in (sets or {}).items():
        set_dotted(d, k, v)
    _refuse_ungranted_plugins(d)
    if d.get("mode", "decentralized") != "federated":
        d["mode"] = "federated"
        d["topology"] = {"kind": "star"}  # a star reads no topology field (fedsim.schema_sections.KIND_FIELDS)
    try:
        return parse(d, "flower scenario")
    except ScenarioError as e:
        raise BridgeError(str(e)) from None


def refuse_plugins_in_file(path: Any, sets: Mapping[str, Any] | None = None) -> None:
    """:class:`BridgeError` (the bridge's words, :func:`bridge_scenario`) when the scenario file
    ``path`` (with ``sets``) lists a plugin not granted here: ``fedsim flower export`` and ``demo``
    check it before :func:`fedsim.scenario.load`, whose message would point to a ``--plugin`` they
    do not have. An unreadable file is left to ``load``'s message."""
    from fedsim.scenario import read_yaml

    try:
        data = read_yaml(path)
    except ScenarioError:
        return
    if isinstance(data, dict):
        data = dict(data)
        for k, v in (sets or {}).items():
            set_dotted(data, k, v)
        _refuse_ungranted_plugins(data)


def _refuse_ungranted_plugins(d: Mapping[str, Any]) -> None:
    from fedsim import plugins

    listed = d.get("plugins")
    if not isinstance(listed, list):
        return
    try:
        plugins.check_granted([e for e in listed if isinstance(e, str)])
    except plugins.PluginNotGrantedError:
        raise BridgeError(
            f"flower scenario: plugins: {', '.join(map(str, listed))}: not granted: the Flower apps import a plugin "
            "only when it was packed (a plugin is code); pass --plugin FILE to fedsim flower export or demo, and "
            "give each device its copy (fedsim flower bundle --plugin, or fedsim flower client --plugin)"
        ) from None


def scenario_from_run_config(run_config: Mapping[str, Any], node_config: Mapping[str, Any] | None = None) -> Scenario:
    """The run's scenario, its packed plugins imported first (:func:`fedsim.flower.plugpack.admit`):
    on the server (``node_config`` None) the files the run config's record names, on a device the
    copies it was granted (``node_config``: :func:`fedsim.flower.plugpack.device_copies`)."""
    from fedsim.flower import plugpack

    text = run_config_value(run_config, "scenario")
    if not isinstance(text, str) or not text.strip():
        raise BridgeError(
            "run config 'scenario' is empty: create the app with `fedsim flower export SCENARIO OUT_DIR`"
        )
    d = scenario_data(text)
    for k, v in parse_sets(run_config_value(run_config, "set")).items():
        set_dotted(d, k, v)
    listed = d.get("plugins")
    if isinstance(listed, list) and listed:
        copies = None if node_config is None else plugpack.device_copies(node_config)
        where = "server" if node_config is None else f"node (partition-id {node_config.get('partition-id')})"
        plugpack.admit(listed, plugpack.read_record(run_config), copies, where)
    return bridge_scenario(d)


def scenario_yaml(sc: Scenario) -> str:
    """The resolved scenario (every default explicit) as YAML text for the run config."""
    return dump_yaml(sc.model_dump(mode="json"))


def as_head(arr: np.ndarray) -> np.ndarray:
    """A flattened head as it travels: float32, 1-D (weight [C, d] row-major, then bias [C])."""
    return np.ascontiguousarray(np.asarray(arr, dtype=np.float32).reshape(-1))
