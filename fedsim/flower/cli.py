"""``fedsim flower ...``: take a scenario from simulation to a Flower deployment.

Importing this module imports click only (Flower is imported by the commands), so ``fedsim``
works without Flower installed.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import click


def _kv(values: tuple[str, ...], what: str) -> dict[str, Any]:
    """``--set`` / ``--run-config`` pairs, read as ``fedsim run --set`` reads them."""
    from fedsim.scenario import ScenarioError, parse_set

    out: dict[str, Any] = {}
    for v in values:
        try:
            k, val = parse_set(v)
        except ScenarioError as e:
            raise click.BadParameter(str(e), param_hint=what) from None
        out[k] = val
    return out


def _check_run_config(rc: dict[str, Any]) -> None:
    """Refuse, before anything starts, a run config that ``flwr run --run-config`` cannot take."""
    from fedsim.flower.commands import node_config_string

    try:
        node_config_string(rc, "run config")
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--run-config") from None


PLUGIN_HELP = ("Grant this plugin .py file (repeatable): packed with its sha256, imported by the apps only where "
               "the scenario lists it (docs/flower.md, 'Plugins').")


def _plugin_option(f: Any) -> Any:
    return click.option("--plugin", "plugin_files", multiple=True, metavar="FILE",
                        type=click.Path(dir_okay=False, exists=True), help=PLUGIN_HELP)(f)


def _need_flower() -> None:
    try:
        import flwr  # noqa: F401
    except ImportError:
        raise click.ClickException(
            'Flower is not installed: pip install -e ".[flower]" in the fedsim checkout (server), or the '
            'wheel of `fedsim flower bundle` with [client] (device; see its INSTALL.txt)'
        ) from None


def _tls_choice(root_certificates: str | None, insecure: bool) -> None:
    if insecure and root_certificates:
        raise click.UsageError("give --root-certificates or --insecure, not both")
    if not insecure and not root_certificates:
        raise click.UsageError(
            "TLS is on by default: give --root-certificates CA.crt (the SuperLink's CA), or --insecure for a "
            "local test without encryption"
        )


def _exec(cmd: list[str], dry_run: bool) -> None:
    click.echo(" ".join(_quote(c) for c in cmd), err=dry_run is False)
    if dry_run:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(cmd[0], cmd)  # the Flower process replaces this one: signals and exit codes go straight to it


def _abs(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


def _quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


@click.group(name="flower", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def flower() -> None:
    """Run a scenario on real devices with Flower (SuperLink + SuperNodes, `flwr run`).

    \b
    Server machine (in the fedsim checkout: pip install -e ".[flower]"):
      fedsim flower certs certs/ --host SERVER_IP         # self-signed TLS for a lab
      fedsim flower superlink --certs-dir certs/ [--auth]
      fedsim flower export scenarios/quickstart.yaml app/
      fedsim flower run app/ --superlink 127.0.0.1:8000 --root-certificates certs/ca.crt --wait
    Each device (the bundle's INSTALL.txt: pip install "./fedsim_lab-*.whl[client]" -c constraints.txt):
      fedsim flower client --superlink SERVER_IP:8000 --partition-id 0 --num-partitions 24 \\
          --root-certificates ca.crt [--auth-key node0]
    Install a device without the package index knowing fedsim:
      fedsim flower bundle device-bundle/                 # wheel, constraints.txt, INSTALL.txt
    Everything on this machine (loopback), compared with fedsim's federated mode:
      fedsim flower demo scenarios/flower_quickstart.yaml --compare
    Your own rules / attacks: --plugin my_rules.py on export, bundle, client and demo (sha256-checked).

    docs/flower.md walks through Raspberry Pi and Jetson set-ups.
    """


@flower.command()
@click.argument("scenario", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a scenario field (as `fedsim run`).")
@click.option("--run-config", "run_config", multiple=True, metavar="KEY=VALUE",
              help="Bridge setting: attack-side=client|server, client-eval, eval-piggyback, round-timeout, node-wait, "
              "output-dir, partition-map, min-replies, poll-interval, resume.")
@click.option("--overwrite", is_flag=True, help="Replace an existing app in OUT_DIR.")
@_plugin_option
def export(scenario: Path, out_dir: Path, sets: tuple[str, ...], run_config: tuple[str, ...], overwrite: bool,
           plugin_files: tuple[str, ...]) -> None:
    """Write a Flower app project for SCENARIO into OUT_DIR (pyproject.toml with the scenario in
    its run config; components fedsim.flower.server_app:app / client_app:app).

    Flower runs a server and clients, so the scenario runs in federated mode (a decentralized
    scenario keeps its data, partition, strategy and attack)."""
    from fedsim import scenario as sc_mod
    from fedsim.flower.common import BridgeError
    from fedsim.flower.project import export_app

    _need_flower()
    try:
        sc = _load_granted(scenario, sets, plugin_files)
        if sc.mode != "federated":
            click.echo(f"note: {scenario} is {sc.mode}; the Flower app runs it in federated mode", err=True)
        out = export_app(sc, out_dir, _kv(run_config, "--run-config") | _record(sc), overwrite=overwrite)
    except (sc_mod.ScenarioError, BridgeError, FileExistsError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"wrote the Flower app to {out} ({sc.peers.count} clients, partition-id 0..{sc.peers.count - 1})")


def _load_granted(scenario: Path, sets: tuple[str, ...], plugin_files: tuple[str, ...]) -> Any:
    """The scenario, its ``--plugin`` files granted first (the scenario's other plugins refused in
    the bridge's words before any import)."""
    from fedsim import plugins
    from fedsim import scenario as sc_mod
    from fedsim.flower import common, plugpack

    overrides = _kv(sets, "--set")
    for f in plugin_files:
        plugpack.record([f])  # a .py file (no module names on the bridge), in the bridge's words
    plugins.grant(plugin_files)
    common.refuse_plugins_in_file(scenario, overrides)
    return sc_mod.load(scenario, overrides, plugins=plugin_files)


def _record(sc: Any) -> dict[str, Any]:
    """Run config ``plugins``: the sha256 of each plugin the scenario lists (all granted here)."""
    from fedsim.flower import plugpack

    return {plugpack.KEY: plugpack.record(sc.plugins)} if sc.plugins else {}


@flower.command()
@click.argument("app_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--superlink", help="SuperLink HOST:PORT (default: the default connection of your Flower config).")
@click.option("--root-certificates", type=click.Path(dir_okay=False, exists=True), help="CA of the SuperLink's TLS.")
@click.option("--insecure", is_flag=True, help="No TLS (local tests only).")
@click.option("--connection", help="A SuperLink connection of your Flower config (~/.flwr/config.toml).")
@click.option("--run-config", "run_config", multiple=True, metavar="KEY=VALUE", help="Override run config keys.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until the run finishes.")
@click.option("--timeout", default=3600.0, show_default=True, help="Seconds to wait with --wait.")
@click.option("--resume", is_flag=True,
              help="Continue the run in the app's output-dir from its checkpoint.pt (after a SuperLink or "
              "ServerApp restart; checkpoints every checkpoint.every rounds of the scenario).")
def run(app_dir: Path, superlink: str | None, root_certificates: str | None, insecure: bool, connection: str | None,
        run_config: tuple[str, ...], wait: bool, timeout: float, resume: bool) -> None:
    """Start the Flower app in APP_DIR on a SuperLink (`flwr run`) and wait for it.

    With --superlink the connection is made for this call; otherwise `flwr`'s own configuration is
    used (`--connection NAME` or its default)."""
    from fedsim.flower import control
    from fedsim.flower.processes import FederationError

    _need_flower()
    rc = _kv(run_config, "--run-config")
    if resume:
        rc["resume"] = True
    _check_run_config(rc)
    with tempfile.TemporaryDirectory(prefix="fedsim-flwr-") as tmp:
        if superlink:
            from fedsim.flower.project import write_flwr_config

            _tls_choice(root_certificates, insecure)
            home: str = tmp
            write_flwr_config(home, superlink, root_certificates=root_certificates, insecure=insecure)
            conn = control.CONNECTION
        else:
            from flwr.supercore.utils import get_flwr_home

            home, conn = str(get_flwr_home()), connection or ""
        try:
            run_id = control.start_run(app_dir, home, rc, connection=conn)  # "": the config's default connection
            click.echo(f"started Flower run {run_id}")
            if wait:
                status = control.wait_run(run_id, home, timeout, connection=conn)
                click.echo(f"run {run_id}: {status}")
                if status != "finished:completed":
                    sys.exit(1)
        except FederationError as e:
            raise click.ClickException(str(e)) from None


@flower.command()
@click.option("--superlink", required=True, help="SuperLink Fleet API HOST:PORT (Flower's default port is 8000).")
@click.option("--partition-id", type=int, required=True, help="This device's peer id (0 .. num-partitions-1).")
@click.option("--num-partitions", type=int, required=True, help="Number of devices = the scenario's peers.count.")
@click.option("--root-certificates", type=click.Path(dir_okay=False, exists=True),
              help="CA certificate of the SuperLink's TLS.")
@click.option("--insecure", is_flag=True, help="No TLS (local tests only).")
@click.option("--auth-key", type=click.Path(dir_okay=False, exists=True),
              help="Private key (OpenSSH, EC) for SuperNode auth.")
@click.option("--data-dir", help="Where this device keeps the scenario dataset's files (non-embedded datasets).")
@click.option("--local-data", type=click.Path(),
              help="An .npz of this device's own samples (or a folder holding one), used instead of a partition.")
@click.option("--cache-dir", help="Feature cache on this device.")
@click.option("--state-dir", help="Where this device keeps its optimizer state for a resumed run.")
@click.option("--attack", help="Run this attack here ('none': stay honest), overriding the scenario's placement.")
@click.option("--port", type=int, default=9094, show_default=True,
              help="Local port of the node's ClientApp API (127.0.0.1; one per SuperNode on a machine).")
@click.option("--max-retries", type=int, help="Give up after this many reconnection attempts.")
@click.option("--max-wait-time", type=float, help="Give up reconnecting after this many seconds.")
@click.option("--warm/--no-warm", default=True, show_default=True,
              help="One long-lived ClientApp process (imports and set-up once), or Flower's one process per message.")
@click.option("--poll-interval", type=click.FloatRange(min=0.01, max=60.0), default=1.0, show_default=True,
              help="Seconds between the SuperNode's polls of the SuperLink when idle (Flower's own: 3).")
@_plugin_option
@click.option("--dry-run", is_flag=True, help="Print the flower-supernode command instead of running it.")
def client(superlink: str, partition_id: int, num_partitions: int, root_certificates: str | None, insecure: bool,
           auth_key: str | None, data_dir: str | None, local_data: str | None, cache_dir: str | None,
           state_dir: str | None, attack: str | None, port: int, max_retries: int | None,
           max_wait_time: float | None, warm: bool, poll_interval: float, plugin_files: tuple[str, ...],
           dry_run: bool) -> None:
    """Start this device as a fedsim peer: a Flower SuperNode that runs fedsim's ClientApp."""
    from fedsim.flower import commands, plugpack

    _need_flower()
    _tls_choice(root_certificates, insecure)
    if not 0 <= partition_id < num_partitions:
        raise click.BadParameter(f"must be in 0..{num_partitions - 1}", param_hint="--partition-id")
    if auth_key and insecure:
        raise click.UsageError("SuperNode authentication (--auth-key) needs TLS; drop --insecure")
    if local_data is not None:  # checked now (~ expanded), not first in every round the device is sent
        from fedsim.flower.client import local_data_file
        from fedsim.flower.common import BridgeError

        try:
            local_data_file(local_data)
        except BridgeError as e:
            raise click.BadParameter(str(e), param_hint="--local-data") from None
    nc: dict[str, Any] = {"partition-id": partition_id, "num-partitions": num_partitions}
    for k, v in (("data-dir", data_dir), ("local-data", local_data), ("cache-dir", cache_dir),
                 ("state-dir", state_dir), ("attack", attack)):
        if v is not None:
            nc[k] = str(Path(v).expanduser().resolve()) if k != "attack" else v
    if plugin_files:
        nc[plugpack.KEY] = plugpack.SEPARATOR.join(_abs(f) for f in plugin_files)
    try:
        cmd = commands.supernode_command(superlink, nc, root_certificates=_abs(root_certificates),
                                         insecure=insecure, private_key=_abs(auth_key), port=port,
                                         max_retries=max_retries, max_wait_time=max_wait_time, warm=warm,
                                         poll_interval=poll_interval)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    _exec(cmd, dry_run)


@flower.command()
@click.option("--host", default=None,
              help="Address the Fleet API listens on (Control/Runtime APIs answer only this machine) "
                   "[0.0.0.0 with TLS; 127.0.0.1 with --insecure, which is for one machine].")
@click.option("--port", type=int, default=8000, show_default=True, help="Port of the Fleet/Control/Runtime API.")
@click.option("--certs-dir", type=click.Path(file_okay=False, exists=True),
              help="Directory with ca.crt, server.pem, server.key (as `fedsim flower certs` writes).")
@click.option("--insecure", is_flag=True, help="No TLS (local tests only).")
@click.option("--auth", is_flag=True, help="Only accept SuperNodes registered with `fedsim flower register`.")
@click.option("--database", help="SQLite file for the SuperLink's state (default: in memory).")
@click.option("--max-reply-bytes", type=click.IntRange(min=1), default=None,
              help="Refuse a device reply larger than this, before Flower reads it (default 8 MiB).")
@click.option("--dry-run", is_flag=True, help="Print the flower-superlink command instead of running it.")
def superlink(host: str | None, port: int, certs_dir: str | None, insecure: bool, auth: bool, database: str | None,
              max_reply_bytes: int | None, dry_run: bool) -> None:
    """Start a Flower SuperLink for fedsim apps (TLS by default; runtime dependency install off;
    Control and Runtime APIs served to this machine only: run `fedsim flower run|register` here).
    With --insecure the Fleet API listens on 127.0.0.1 unless --host says otherwise."""
    from fedsim.flower import commands
    from fedsim.flower.processes import LOOPBACK

    _need_flower()
    if insecure == bool(certs_dir):
        raise click.UsageError("give --certs-dir (TLS) or --insecure (local tests only)")
    if host is None:  # plaintext stays on this machine unless --host names an address for it
        host = LOOPBACK if insecure else "0.0.0.0"
    certs = None
    if certs_dir:
        d = Path(certs_dir).expanduser().resolve()
        certs = {"ca": d / "ca.crt", "cert": d / "server.pem", "key": d / "server.key"}
        missing = [str(p) for p in certs.values() if not p.exists()]
        if missing:
            raise click.ClickException(f"missing {', '.join(missing)}; create them with `fedsim flower certs`")
    try:
        cmd = commands.superlink_command(host=host, port=port, certs=certs, insecure=insecure, auth=auth,
                                      database=database, max_reply_bytes=max_reply_bytes)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    _exec(cmd, dry_run)


@flower.command()
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--host", "hosts", multiple=True, help="Name or IP devices use to reach the SuperLink (repeatable).")
def certs(out_dir: Path, hosts: tuple[str, ...]) -> None:
    """Write a self-signed CA and SuperLink certificate (ca.crt, server.pem, server.key) for a lab,
    valid for the --host names/IPs and for 127.0.0.1/localhost (for `fedsim flower run|register`
    on the server). Copy ca.crt (never the keys) to the devices."""
    from fedsim.flower.certs import make_certificates

    _need_flower()
    names = list(dict.fromkeys([*hosts, "127.0.0.1", "localhost"]))
    paths = make_certificates(out_dir, tuple(names))
    click.echo(f"wrote {', '.join(str(p) for p in paths.values())}")


@flower.command()
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", default="supernode", show_default=True, help="File name of the key pair.")
def keys(out_dir: Path, name: str) -> None:
    """Write a SuperNode authentication key pair (NAME private, NAME.pub public; EC P-384)."""
    from fedsim.flower.certs import make_node_keys

    _need_flower()
    priv, pub = make_node_keys(out_dir, name)
    click.echo(f"wrote {priv} (keep on the device) and {pub} (register it on the SuperLink)")


@flower.command()
@click.argument("public_key", type=click.Path(dir_okay=False, exists=True))
@click.option("--superlink", required=True, help="SuperLink HOST:PORT.")
@click.option("--root-certificates", required=True, type=click.Path(dir_okay=False, exists=True),
              help="CA of the SuperLink's TLS (authentication needs TLS).")
def register(public_key: str, superlink: str, root_certificates: str) -> None:
    """Register a SuperNode's PUBLIC_KEY with a SuperLink started with --auth (`flwr supernode register`)."""
    from fedsim.flower import control
    from fedsim.flower.processes import FederationError
    from fedsim.flower.project import write_flwr_config

    _need_flower()
    with tempfile.TemporaryDirectory(prefix="fedsim-flwr-") as home:
        write_flwr_config(home, superlink, root_certificates=root_certificates)
        try:
            node_id = control.register_node(public_key, home)
        except FederationError as e:
            raise click.ClickException(str(e)) from None
    click.echo(f"registered {public_key} as SuperNode {node_id}")


@flower.command()
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--source", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="The fedsim source tree to build (default: the one this fedsim is imported from).")
@click.option("--overwrite", is_flag=True, help="Replace the bundle files in a non-empty OUT_DIR.")
@_plugin_option
def bundle(out_dir: Path, source: Path | None, overwrite: bool, plugin_files: tuple[str, ...]) -> None:
    """Write what a device installs into OUT_DIR: this fedsim as a wheel, constraints.txt (flwr,
    torch, numpy, ... at this machine's versions) and INSTALL.txt with the device's commands.

    The device installs the wheel by path (pip install "./fedsim_lab-*.whl[client]" -c constraints.txt),
    so the package index never has to know fedsim."""
    from fedsim.flower.bundle import BundleError, build_bundle

    try:
        files = build_bundle(out_dir, source, overwrite=overwrite, plugins=plugin_files)
    except BundleError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"wrote {', '.join(p.name for p in files.values())} to {out_dir}; see {files['install']}")


@flower.command()
@click.argument("scenario", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a scenario field.")
@click.option("--run-config", "run_config", multiple=True, metavar="KEY=VALUE", help="Bridge settings (see export).")
@click.option("--tls/--insecure", default=True, show_default=True, help="Self-signed TLS on loopback, or none.")
@click.option("--auth", is_flag=True, help="Also SuperNode authentication (one registered key pair per node).")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              help="Keep certificates, logs, app and metrics here (default: a temporary directory).")
@click.option("--compare", is_flag=True, help="Also run the scenario in fedsim's federated mode and compare.")
@click.option("--in-process", is_flag=True, help="No processes: run the ServerApp and ClientApps in this process.")
@click.option("--timeout", default=900.0, show_default=True, help="Seconds the run may take.")
@click.option("--overwrite", is_flag=True, help="Replace the metrics of an earlier demo in --workdir.")
@click.option("--warm/--no-warm", default=True, show_default=True,
              help="SuperNodes with one long-lived ClientApp process each, or Flower's one process per message.")
@_plugin_option
def demo(scenario: Path, sets: tuple[str, ...], run_config: tuple[str, ...], tls: bool, auth: bool,
         workdir: Path | None, compare: bool, in_process: bool, timeout: float, overwrite: bool, warm: bool,
         plugin_files: tuple[str, ...]) -> None:
    """Run SCENARIO through Flower on this machine: a SuperLink and one SuperNode per peer as real
    processes on 127.0.0.1 (stopped at the end), then print the accuracy per round."""

    from fedsim import rundir
    from fedsim import scenario as sc_mod
    from fedsim.errors import FedsimError
    from fedsim.flower import common, local, plugpack
    from fedsim.flower.processes import FederationError
    from fedsim.flower.project import export_app
    from fedsim.flower.serverfiles import ServerFiles
    from fedsim.runfiles import read_history

    _need_flower()
    try:
        sc = common.bridge_scenario(_load_granted(scenario, sets, plugin_files))
    except (sc_mod.ScenarioError, common.BridgeError) as e:
        raise click.ClickException(str(e)) from None
    with tempfile.TemporaryDirectory(prefix="fedsim-flower-demo-") as tmp:
        wd = Path(workdir) if workdir else Path(tmp)
        rc = _kv(run_config, "--run-config")
        rec = _record(sc)  # in the app's pyproject.toml: flwr run --run-config takes no value with quotes
        if overwrite:
            rc["overwrite"] = True
        copies = {plugpack.KEY: plugpack.SEPARATOR.join(sc.plugins)} if sc.plugins else {}  # this machine's nodes
        nodes = [{"partition-id": i, "num-partitions": sc.peers.count} | copies for i in range(sc.peers.count)]
        out_dir = {"output-dir": str((wd / "out").resolve())}
        from fedsim.flower.commands import node_config_string

        if not in_process:  # what Flower's --run-config / --node-config cannot take: refused before any process
            for cfg, hint, what in ((rc, "--run-config", "run config"), (out_dir, "--workdir", "run config"),
                                    (nodes[0], "--plugin", "node config")):
                try:
                    node_config_string(cfg, what)
                except ValueError as e:
                    raise click.BadParameter(str(e), param_hint=hint) from None
        rc |= out_dir
        try:
            files = ServerFiles(wd / "out", sc)  # its refusals here, before any process starts
            if common.run_config_value(rc, "resume"):
                files.open(resume=True)  # a resume's: a run directory of sc with a checkpoint (not a new run's)
                files.close()
            else:
                files.refuse_new(overwrite)
            if in_process:
                from fedsim.flower.inprocess import run_in_process

                run_in_process({"scenario": common.scenario_yaml(sc), **rec, **rc}, nodes)
            else:
                app = export_app(sc, wd / "app", rec, overwrite=True)
                mode = ("TLS" if tls else "insecure") + (" + SuperNode auth" if auth else "")
                click.echo(f"SuperLink + {len(nodes)} SuperNodes on 127.0.0.1 ({mode}); logs in {wd / 'logs'}")
                with local.LocalFederation(wd, nodes, tls=tls, auth=auth, warm=warm) as fed:
                    status = fed.run(app, rc, timeout=timeout)
                click.echo(f"Flower run {status}")
        except (FederationError, FedsimError) as e:
            raise click.ClickException(str(e)) from None
        recs = read_history(wd / "out" / rundir.METRICS)
        sim: dict[int, float] = {}
        if compare:
            from fedsim.runner import Run

            ref = sc.model_copy(update={"engine": sc.engine.model_copy(update={"backend": "local"})})
            r = Run(ref, wd / "fedsim-federated", fetch_final_params=False)
            r.create_dir(overwrite=True)
            r.execute()
            sim = {x["round"]: x["accuracy_mean"] for x in read_history(r.dir / rundir.METRICS) if "accuracy_mean" in x}
        click.echo("round  flower-accuracy" + ("  fedsim-federated  |diff|" if compare else "") + "  rejected")
        for x in recs:
            if "accuracy_mean" not in x:
                continue
            line = f"{x['round']:>5}  {x['accuracy_mean']:>15.6f}"
            if compare:
                s = sim.get(x["round"])
                line += f"  {s:>16.6f}  {abs(s - x['accuracy_mean']):.2e}" if s is not None else "  -"
            click.echo(line + f"  {len(x.get('rejected', []))}")
