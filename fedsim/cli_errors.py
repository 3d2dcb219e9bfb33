"""How the ``fedsim`` command line ends when something goes wrong: always with one line on stderr.

* an expected failure (:class:`fedsim.errors.FedsimError`): ``Error: <message>``, exit 1; a run
  interrupted by Ctrl-C (:class:`~fedsim.errors.RunInterruptedError`): its message, which names
  the resume command, exit 130;
* Ctrl-C anywhere else: ``Error: interrupted``, exit 130;
* the machine refusing a write (disk full, read-only or forbidden folder, or another ``OSError``):
  one line naming the path, exit 1;
* anything else is a bug: ``fedsim: internal error: <type>: <message>; traceback written to
  <path>``, exit 1, with the full traceback in the run directory's ``error.txt`` (as a sweep's
  failed runs have) when the command has one, else under the user's cache folder.

:class:`FedsimGroup` applies this once, around every command of the group (those defined in other
modules too), so no command needs its own catch-all.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, NoReturn

import click

from fedsim.errors import FedsimError, RunInterruptedError

RUN_DIR_KEY = "fedsim.run_dir"  # ctx.meta key: the run directory a command writes into, once known
RESUME_KEY = "fedsim.resume_command"  # ctx.meta key: the command that continues that run
INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
RUN_ERROR_FILE = "error.txt"  # a run directory's traceback file (fedsim sweep writes the same)
_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_NOT_WRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}
_TORCH_WRITE_FAILED = ("PytorchStreamWriter failed", "file write failed", "inline_container")


def one_line(text: object, limit: int = 400) -> str:
    """``text`` on one line (whitespace runs collapsed), at most ``limit`` characters."""
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


def root_error(e: BaseException) -> BaseException:
    """The exception raised in a Ray actor or task, which Ray's error wraps as ``cause`` (its own
    message is the remote traceback, which makes a useless one-line summary); else ``e``."""
    cause = getattr(e, "cause", None)
    return cause if isinstance(cause, BaseException) and cause is not e else e


def remember_run_dir(path: Path, resume: str | None = None) -> None:
    """Tell the error handler which run directory the current command writes (for ``error.txt``
    and for the lines about a full disk or an interrupted run), and ``resume``, the command that
    continues it (:func:`fedsim.rundirectory.resume_command`: with the run's ``--plugin``)."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.meta[RUN_DIR_KEY] = Path(path)
        ctx.meta[RESUME_KEY] = resume or f"fedsim run --resume {path}"


def exit_code(e: BaseException) -> int:
    """130 for an interrupted run (unless the exception says otherwise, e.g. a dead actor), else 1."""
    default = INTERRUPTED if isinstance(e, RunInterruptedError) else 1
    return int(getattr(e, "exit_code", default))


def _free_mib(path: Path) -> str:
    try:
        return f"{shutil.disk_usage(path).free / 2**20:.0f} MiB free"
    except OSError:
        return "free space unknown"


def os_error_line(e: OSError, run_dir: Path | None, resume: str | None = None) -> str:
    """One line for an ``OSError`` that reached the command line, naming the path involved (the
    file the error names, else the run directory, else the current folder)."""
    path = e.filename or run_dir or Path.cwd()
    if e.errno in _DISK_FULL:
        hint = f"; free some space, then continue with: {resume or f'fedsim run --resume {run_dir}'}" if run_dir else ""
        return f"Error: disk full: no space left for {path} ({_free_mib(Path(path).parent)}){hint}"
    if e.errno in _NOT_WRITABLE:
        return f"Error: cannot write {path}: {e.strerror}"
    if e.errno is None:  # raised by fedsim or a library with a message of its own
        return f"Error: {one_line(e)}"
    return f"Error: {e.strerror or one_line(e)}: {path}"


def is_write_failure(e: BaseException) -> bool:
    """A failed write reported by torch's C++ writer (``torch.save`` on a full disk)."""
    return isinstance(e, RuntimeError) and any(m in str(e) for m in _TORCH_WRITE_FAILED)


def write_failure_line(e: BaseException, run_dir: Path | None) -> str:
    where = run_dir or Path.cwd()
    first = one_line((str(e).strip().splitlines() or [""])[-1], 200)
    return f"Error: could not write a file in {where} ({_free_mib(where)}; disk full?): {first}"


def log_dir() -> Path:
    """Where tracebacks of unexpected errors go when the command has no run directory:
    ``$XDG_CACHE_HOME/fedsim/logs`` (default ``~/.cache/fedsim/logs``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fedsim" / "logs"


def write_traceback(run_dir: Path | None) -> Path | None:
    """Write the current exception's traceback (and the command line) to ``run_dir/error.txt``,
    else to a new file under :func:`log_dir`, else under the temp folder; returns the file, or
    None when no place could be written."""
    text = f"fedsim {' '.join(sys.argv[1:])}\n{time.strftime('%Y-%m-%d %H:%M:%S')}\n\n{traceback.format_exc()}"
    stamp = f"error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    candidates = [run_dir / RUN_ERROR_FILE] if run_dir is not None and run_dir.is_dir() else []
    candidates += [log_dir() / stamp, Path(tempfile.gettempdir()) / f"fedsim-{stamp}"]
    for path in candidates:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            return path
        except OSError:
            continue
    return None


def fail(line: str, code: int) -> NoReturn:
    click.echo(line, err=True)
    sys.exit(code)


class FedsimGroup(click.Group):
    """A click group whose commands end in one line on stderr whatever goes wrong (see the module
    docstring); click's own errors (usage, ``click.ClickException``) and exits pass through.

    ``lazy_commands`` maps a command name to ``"module:attribute"``, imported only when that
    command is named (or help lists it), so a light command never pays for a heavy module's
    imports. An unknown command is one line naming the closest command."""

    def __init__(self, *args: Any, lazy_commands: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy_commands and cmd_name not in self.commands:
            import importlib

            module, attr = self.lazy_commands[cmd_name].split(":")
            self.add_command(getattr(importlib.import_module(module), attr), cmd_name)
        return super().get_command(ctx, cmd_name)

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            import difflib

            close = difflib.get_close_matches(name, self.list_commands(ctx), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            ctx.fail(f"no such command {name!r}{hint}; commands: {', '.join(self.list_commands(ctx))}")
        return super().resolve_command(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            fail("Error: interrupted", INTERRUPTED)
        except BrokenPipeError:  # `fedsim list ... | head`: the reader left; nothing to report
            import os
            import sys

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            raise SystemExit(0) from None
        except FedsimError as e:
            fail(f"Error: {one_line(root_error(e), 2000)}", exit_code(e))
        except OSError as e:
            fail(os_error_line(e, ctx.meta.get(RUN_DIR_KEY), ctx.meta.get(RESUME_KEY)), 1)
        except Exception as e:  # noqa: BLE001 - the one place an unexpected error is reported
            run_dir = ctx.meta.get(RUN_DIR_KEY)
            if is_write_failure(e):
                fail(write_failure_line(e, run_dir), 1)
            where = write_traceback(run_dir)
            said = f"traceback written to {where}" if where else "no place to write the traceback"
            cause = root_error(e)
            if isinstance(cause, FedsimError):  # raised in a Ray actor: as if raised here
                fail(f"Error: {one_line(cause, 2000)}", exit_code(cause))
            remote = " (in a Ray actor)" if cause is not e else ""
            fail(f"fedsim: internal error: {type(cause).__name__}{remote}: {one_line(cause, 300)}; {said}", 1)
