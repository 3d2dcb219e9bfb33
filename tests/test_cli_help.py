"""Every option of every `fedsim` command says what it does in `--help` (`fedsim pretrain`'s
--epochs, --lr, --batch-size and --seed printed only their defaults)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

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


ROOT = Path(__file__).resolve().parents[1]
# the shipped scenarios a help text's `--set` example is tried on (one must accept it)
EXAMPLE_SCENARIOS = ("quickstart.yaml", "federated_unlearning.yaml")


def _set_examples(text: str) -> list[list[str]]:
    """Each run of consecutive `--set KEY=VALUE` in ``text`` (one example), as its KEY=VALUE items."""
    runs = re.finditer(r"(?:--set[ =]\S+\s*)+", text)
    return [[v.rstrip(").,`'\"") for v in re.findall(r"--set[ =](\S+)", m.group())] for m in runs]


def test_every_set_example_in_help_validates() -> None:
    """Every `--set` example a command's --help gives (its text and its options') validates on a
    shipped scenario, as `fedsim validate` checks it (`validate --set`'s own example was
    `strategy.params.f=2`, which is no rule's parameter; run's `--set strategy.name=krum --set
    peers.byzantine_fraction=0.3` left the Byzantine peers without an attack)."""
    from click.testing import CliRunner

    found, broken = 0, []
    for name, cmd in _commands():
        text = "\n".join([cmd.help or "", *(p.help or "" for p in cmd.params if isinstance(p, click.Option))])
        for items in _set_examples(text):
            found += 1
            sets = [a for kv in items for a in ("--set", kv)]
            outcomes = [CliRunner().invoke(main, ["validate", "-q", str(ROOT / "scenarios" / s), *sets])
                        for s in EXAMPLE_SCENARIOS]
            if all(r.exit_code != 0 for r in outcomes):
                broken.append(f"fedsim {name}: {' '.join(sets)}: {outcomes[0].output.strip()}")
    assert found >= 4
    assert broken == []
