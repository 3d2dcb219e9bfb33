"""Every option of every `fedsim` command says what it does in `--help` (`fedsim pretrain`'s
--epochs, --lr, --batch-size and --seed printed only their defaults)."""

from __future__ import annotations

import importlib.util

import click

from fedsim.cli import main


def _commands() -> list[tuple[str, click.Command]]:
    ctx = click.Context(main)
    out = []
    for name in main.list_commands(ctx):
        if name == "flower" and importlib.util.find_spec("flwr") is None:
            continue
        cmd = main.get_command(ctx, name)
        out.append((name, cmd))
        if isinstance(cmd, click.Group):
            out += [(f"{name} {n}", cmd.get_command(ctx, n)) for n in cmd.list_commands(ctx)]
    return out


def test_every_option_has_help() -> None:
    commands = _commands()
    assert {"run", "list", "pretrain", "sweep", "plot", "report"} <= {n for n, _ in commands}
    missing = [f"fedsim {n} {'/'.join(p.opts)}" for n, c in commands for p in c.params
               if isinstance(p, click.Option) and not p.help and "--help" not in p.opts]
    assert missing == []
