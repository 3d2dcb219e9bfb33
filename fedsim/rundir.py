"""A run directory's safety: what fedsim may delete, who may write it, and files that run no code.

A run directory is made by :meth:`fedsim.runner.Run.create_dir`, which writes the marker
``.fedsim-run`` first. fedsim deletes or clears a directory only when

* it carries that marker (or, for runs made before the marker, both ``scenario.yaml`` and
  ``versions.json``, which every run directory has), and
* it is not the working directory or one of its parents, not ``output.dir`` or one of its parents,
  and not a symbolic link,

so no run name or ``--out`` can point ``--overwrite`` at sources, a home folder or every run.

One process at a time works in a run directory: it holds an exclusive ``flock`` on ``<run>/.lock``
from ``create_dir`` (or the start of a resume) to the end of ``execute``; a second run or resume of
the folder is refused with :class:`RunLockedError`. The lock is the kernel's, so a killed run
never leaves a stale one. Under the lock, temp files of a killed write (``.*.tmp``) are removed.

Checkpoints (:func:`write_checkpoint`) are one file, replaced atomically::

    FEDSIM-CHECKPOINT 1 <sha256 of everything after this line>\\n
    <metadata as one JSON line>\\n
    <tensors: torch.save of dicts/lists of tensors, ints and None>

read with ``torch.load(weights_only=True)`` from the open file once a pass in chunks has matched the
checksum (:func:`read_checkpoint` never holds the file whole), so a planted, truncated
or bit-flipped file is refused (:class:`~fedsim.errors.CorruptFileError` naming it) and never
unpickles arbitrary objects. The metadata records what the checkpoint belongs to: the round, the
number of ``metrics.jsonl`` lines written by then and their sha256, and the resolved scenario
(:func:`scenario_fingerprint`) that produced it.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from fedsim._runs import IGNORED_PREFIXES, MAX_JSON_BYTES, comparable, flatten, json_value
from fedsim.errors import CorruptFileError, FedsimError, RunDirExistsError

MARKER = ".fedsim-run"
LOCK = ".lock"
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
WRITE_PROBE = ".write-test"
CHECKPOINT_MAGIC = b"FEDSIM-CHECKPOINT"
CHECKPOINT_FORMAT = 1
# Keys of the resolved scenario that do not change what a run computes (where it runs and writes,
# how often it checkpoints, its name, the probes computed after the last round): a resume may
# differ in them. The same keys never tell runs apart in a sweep or a report.
FINGERPRINT_IGNORES = IGNORED_PREFIXES


class RunLockedError(FedsimError, RuntimeError):
    """Another fedsim process is running or resuming in this run directory."""


class RunCompleteError(FedsimError):
    """``--resume`` on a run that already finished (its ``summary.json`` exists)."""


class RunWriteError(FedsimError, OSError):
    """A run directory cannot be written (read-only, disk full, …); the message names the path."""


# --------------------------------------------------------------------------- what may be deleted
def is_run_dir(d: Path) -> bool:
    """Whether ``d`` is a directory fedsim made for a run (its marker, or a pre-marker run's files)."""
    if d.is_symlink() or not d.is_dir():
        return False
    return (d / MARKER).is_file() or ((d / "scenario.yaml").is_file() and (d / "versions.json").is_file())


def mark(d: Path) -> None:
    """Write the marker that makes ``d`` a directory fedsim made for a run (:func:`is_run_dir`):
    ``--overwrite`` may clear it, a rerun may write into it."""
    (d / MARKER).write_text("a fedsim run directory: fedsim may clear it on --overwrite\n")


def has_results(d: Path) -> bool:
    """Whether a run directory holds anything a run produced (a metrics line, a checkpoint, a
    summary). One without is a run that failed at start: the next run may reuse it freely."""
    m = d / METRICS
    return (m.is_file() and m.stat().st_size > 0) or (d / CHECKPOINT).exists() or (d / SUMMARY).exists()


def is_empty(d: Path) -> bool:
    """No entries besides a lock file and temp files fedsim left."""
    return not any(p.name != LOCK and not _is_temp(p) for p in d.iterdir())


def refuse_unsafe(d: Path, output_dir: Path) -> None:
    """Raise :class:`RunDirExistsError` where ``d`` must never be a run directory: a symbolic link,
    a file, the working directory or a parent of it, ``output_dir`` or a parent of it."""
    if d.is_symlink():
        raise RunDirExistsError(f"{d} is a symbolic link; fedsim writes runs only into real directories")
    if d.exists() and not d.is_dir():
        raise RunDirExistsError(f"{d} exists and is not a directory")
    rd, cwd, out = d.resolve(), Path.cwd().resolve(), output_dir.resolve()
    if cwd == rd or cwd.is_relative_to(rd):
        raise RunDirExistsError(f"{d} is the working directory or contains it; a run directory must be below it")
    if out == rd or out.is_relative_to(rd):
        raise RunDirExistsError(f"{d} is output.dir ({output_dir}) or contains it; runs go in folders below it")


def refuse_foreign(d: Path, advice: str = "choose another name or --out") -> None:
    """Raise :class:`RunDirExistsError` when ``d`` has content and was not made by fedsim
    (``advice``: what to do instead, in the words of the command that writes ``d``)."""
    if d.is_dir() and not is_empty(d) and not is_run_dir(d):
        raise RunDirExistsError(
            f"{d} exists and is not a fedsim run directory (no {MARKER}); fedsim will not write into or "
            f"delete it: {advice}"
        )


def clear(d: Path) -> None:
    """Remove everything in the run directory ``d`` except its lock (held by the caller).

    Only call after :func:`refuse_unsafe` and :func:`is_run_dir`; links are removed, never followed."""
    for p in d.iterdir():
        if p.name == LOCK:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def _is_temp(p: Path) -> bool:
    return (p.name.startswith(".") and p.name.endswith(".tmp")) or p.name == WRITE_PROBE


def clean_temp_files(d: Path) -> list[Path]:
    """Remove the temp files a killed write left (``.checkpoint.*.tmp``, ``.metrics.jsonl.*.tmp``, …)."""
    stale = [p for p in d.iterdir() if _is_temp(p) and p.is_file() and not p.is_symlink()]
    for p in stale:
        with writing(p):
            p.unlink()
    return stale


# --------------------------------------------------------------------------- one writer at a time
class DirLock:
    """An exclusive, non-blocking ``flock`` on ``<d>/.lock``, held until :meth:`release`."""

    def __init__(self, d: Path) -> None:
        self.path = d / LOCK
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None:
            return
        with writing(self.path):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunLockedError(
                    f"{self.path.parent} is in use by another fedsim run or resume"
                    + (f" (pid {holder})" if holder else "")
                    + "; wait for it to finish or stop it first"
                ) from None
            raise RunWriteError(f"cannot lock {self.path}: {e.strerror or e}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __del__(self) -> None:
        self.release()


# --------------------------------------------------------------------------- writing
@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn an ``OSError`` while writing ``path`` (read-only folder, disk full, …) into one line."""
    try:
        yield
    except FedsimError:
        raise
    except OSError as e:
        raise RunWriteError(f"cannot write {path}: {e.strerror or e}") from None


def _umask() -> int:
    """This process's umask, read without changing it where Linux says it (``/proc/self/status``)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


@contextmanager
def atomic_file(path: Path, mode: int | None = None) -> Iterator[BinaryIO]:
    """A binary file whose content replaces ``path`` when the block ends: written to a temp file
    ``.<name>.*.tmp`` beside it, synced, then renamed over it, so readers and a kill see the old
    content or the new, never a part, and a symbolic link at ``path`` is replaced, never written
    through; on an error the temp file is removed and ``path`` kept. ``mode``: the file's
    permissions less the umask, as ``open`` would make them (default: private, 0600). The one
    atomic writer of fedsim (run files, ``probes.json``, ``sweep.json``, feature caches), with
    :func:`atomic_path` for a writer that needs the file's name (figures)."""
    with writing(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        if mode is not None:
            os.fchmod(fd, mode & ~_umask())
        try:
            with os.fdopen(fd, "wb") as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A path named as ``path`` (``path.name``) in a private temp folder ``.<name>.*.tmp`` beside
    it, for a writer that records the name it writes to (matplotlib's PostScript and EPS
    ``%%Title:``; :func:`atomic_file`'s handle has no name, so the title was dropped): when the
    block ends the file is synced and renamed over ``path``, as :func:`atomic_file` does, and the
    folder removed (on an error too, ``path`` kept). The writer opens the file itself, so its mode
    is what a plain write to ``path`` makes (0666 less the umask)."""
    with writing(path):
        tmp_dir = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
        try:
            tmp = tmp_dir / path.name
            yield tmp
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        _fsync_dir(path.parent)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_file`)."""
    with atomic_file(path) as fh:
        fh.write(data)


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- metrics as strict JSON
def _nonfinite_to_null(value: Any, str_keys: bool = False) -> tuple[Any, bool]:
    """``(value made JSON-safe, whether it held a non-finite float)``: numpy scalars as Python ones,
    NaN/±inf as ``None``, tuples as lists, mapping keys as ``str`` with ``str_keys``."""
    np = sys.modules.get("numpy")  # no numpy imported: no numpy scalars to convert
    if np is not None and isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None, True
    if isinstance(value, dict):
        pairs = {(str(k) if str_keys else k): _nonfinite_to_null(v, str_keys) for k, v in value.items()}
        return {k: v for k, (v, _) in pairs.items()}, any(bad for _, bad in pairs.values())
    if isinstance(value, (list, tuple)):
        items = [_nonfinite_to_null(v, str_keys) for v in value]
        return [v for v, _ in items], any(bad for _, bad in items)
    return value, False


def json_safe(obj: Any) -> Any:
    """A copy of ``obj`` that strict JSON can hold: every NaN/±inf float as ``None`` (JSON has no
    such numbers), numpy scalars as Python numbers, tuples as lists, keys as ``str``. The one
    sanitiser of fedsim's JSON files (``summary.json``, ``probes.json``; ``metrics.jsonl`` lines
    through :func:`metrics_line`)."""
    return _nonfinite_to_null(obj, str_keys=True)[0]


def metrics_line(rec: dict[str, Any]) -> bytes:
    """One ``metrics.jsonl`` line: strict JSON, non-finite values as ``null`` and their keys listed
    under ``"nonfinite"`` (e.g. a diverged ``train_loss``)."""
    out, bad = {}, []
    for k, v in rec.items():
        out[k], nonfinite = _nonfinite_to_null(v)
        if nonfinite:
            bad.append(k)
    if bad:
        out["nonfinite"] = sorted(bad)
    return (json.dumps(out, sort_keys=True, allow_nan=False) + "\n").encode()


# --------------------------------------------------------------------------- scenario fingerprint
def scenario_fingerprint(resolved: dict[str, Any]) -> dict[str, Any]:
    """The flattened resolved scenario (``model_dump(mode="json")``) without the keys that do not
    change results (:data:`FINGERPRINT_IGNORES`): what a checkpoint must match to be resumed. Keys
    added to the schema later are left out while they hold the old behaviour
    (:data:`fedsim._runs.OMITTED_AT_DEFAULT`), so checkpoints written before they existed still resume."""
    return comparable(dict(sorted(flatten(resolved).items())))


def fingerprint_sha256(fp: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True, allow_nan=False).encode()).hexdigest()


def first_difference(was: dict[str, Any], now: dict[str, Any]) -> str:
    """``"seed was 3, now 9"`` for the first differing key (and how many more differ)."""
    diff = sorted(k for k in was.keys() | now.keys() if was.get(k) != now.get(k))
    if not diff:
        return ""
    k = diff[0]
    more = f" (and {len(diff) - 1} more key(s))" if len(diff) > 1 else ""
    return f"{k} was {was.get(k, '(absent)')!r}, now {now.get(k, '(absent)')!r}{more}"


# --------------------------------------------------------------------------- checkpoints
def _checkpoint_header(digest: str) -> bytes:
    """The checkpoint's first line (module docstring): magic, format, the body's sha256 (hex, so a
    fixed length: :func:`write_checkpoint` writes a placeholder first and this over it at the end)."""
    return CHECKPOINT_MAGIC + f" {CHECKPOINT_FORMAT} {digest}\n".encode()


def _checkpoint_meta_line(meta: dict[str, Any]) -> bytes:
    return json.dumps(meta, sort_keys=True, allow_nan=False).encode() + b"\n"


def checkpoint_bytes(meta: dict[str, Any], state: dict[str, Any]) -> bytes:
    """The checkpoint file's bytes (module docstring): header with checksum, metadata, tensors. In
    memory, so several copies of the tensors' bytes at once: :func:`write_checkpoint` streams the
    same bytes to the file instead."""
    import torch

    buf = io.BytesIO()
    torch.save(state, buf)
    body = _checkpoint_meta_line(meta) + buf.getvalue()
    return _checkpoint_header(hashlib.sha256(body).hexdigest()) + body


class _HashingWriter:
    """A binary file's ``write``/``flush`` that also feeds a sha256 of everything written through it."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh, self.sha256 = fh, hashlib.sha256()
        self.error: OSError | None = None  # the first write error (torch's zip writer swallows it)

    def write(self, data: Any) -> int:
        self.sha256.update(data)
        try:
            return self.fh.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        self.fh.flush()


def write_checkpoint(path: Path, meta: dict[str, Any], state: dict[str, Any]) -> None:
    """Replace the checkpoint at ``path`` atomically with :func:`checkpoint_bytes`'s bytes, written as
    ``torch.save`` produces them (a placeholder header first, the checksummed one over it at the end):
    no copy of the tensors' bytes in memory (the in-memory file and its concatenations: 0.88 of the
    1.48 GiB a 10,000-peer checkpoint needed on top, docs/performance.md)."""
    import torch

    with atomic_file(path) as fh:
        fh.write(_checkpoint_header("0" * 64))
        w = _HashingWriter(fh)
        w.write(_checkpoint_meta_line(meta))
        try:
            torch.save(state, w)  # type: ignore[arg-type]  (a file-like object: write and flush)
        except Exception:
            if w.error is not None:  # a full disk: torch reports its own position check, not the OSError
                raise w.error from None  # (writing() makes it the one-line RunWriteError)
            raise
        fh.flush()
        fh.seek(0)
        fh.write(_checkpoint_header(w.sha256.hexdigest()))


def _check_header(path: Path, header: bytes, empty: bool, digest: str) -> None:
    """CorruptFileError unless ``header`` (the first line, without its newline) is a checkpoint's of
    this format whose checksum is ``digest``, the body's sha256; ``empty``: the file has no bytes."""
    hint = "delete it to restart the run from round 0, or restore it"
    parts = header.split(b" ")
    if len(parts) != 3 or parts[0] != CHECKPOINT_MAGIC:
        what = "empty" if empty else "not a fedsim checkpoint (an older format, another file, or truncated)"
        raise CorruptFileError(f"{path}: {what}; {hint}")
    if parts[1] != str(CHECKPOINT_FORMAT).encode():
        raise CorruptFileError(f"{path}: checkpoint format {parts[1].decode(errors='replace')!r} is not "
                               f"{CHECKPOINT_FORMAT}; {hint}")
    if digest.encode() != parts[2]:
        raise CorruptFileError(f"{path}: checksum mismatch (truncated or corrupt); {hint}")


def _meta(path: Path, line: bytes) -> dict[str, Any]:
    """The metadata of the checkpoint ``path`` from its second ``line``; else CorruptFileError."""
    try:
        meta = json_value(line, str(path))
    except CorruptFileError:  # not JSON, or nested past the recursion limit
        meta = None
    need = {"format", "round", "metrics_lines", "metrics_sha256", "scenario", "scenario_sha256"}
    if not isinstance(meta, dict) or not need <= meta.keys():
        raise CorruptFileError(f"{path}: the checkpoint's metadata is unreadable")
    return meta


_CHUNK = 1 << 20


def _unreadable(path: Path, e: OSError) -> CorruptFileError:
    """The one-line error for a checkpoint that cannot be opened or read."""
    return CorruptFileError(f"{path}: cannot read the checkpoint: {e.strerror or e}")


def _verified(path: Path, fh: BinaryIO) -> tuple[dict[str, Any], int]:
    """Read the open checkpoint ``fh`` from its start in 1 MiB chunks, never whole: its metadata and
    the offset where its tensors start once the header, the checksum and the metadata are right;
    else :class:`~fedsim.errors.CorruptFileError` naming ``path`` (an ``OSError`` reading it too)."""
    try:
        header = fh.readline(len(CHECKPOINT_MAGIC) + 80)  # magic, format, sha256: never a long line
        line = fh.readline(MAX_JSON_BYTES)  # the metadata (and the body's first bytes); bounded as every JSON
        sha = hashlib.sha256(line)
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            sha.update(chunk)
    except OSError as e:
        raise _unreadable(path, e) from None
    _check_header(path, header.removesuffix(b"\n"), not header, sha.hexdigest())
    return _meta(path, line), len(header) + len(line)


def _opened(path: Path) -> BinaryIO:
    try:
        return path.open("rb")
    except OSError as e:
        raise _unreadable(path, e) from None


def read_checkpoint_meta(path: Path) -> dict[str, Any]:
    """The checkpoint's metadata (round, metrics lines and checksum, scenario), checksum verified;
    nothing is unpickled. The file is read in chunks, never held whole (:func:`_verified`): a Ctrl-C's
    resume hint reads the checkpoint it has just written (at 10,000 peers the whole file and its body
    were 0.22 GiB above the run's peak, docs/performance.md)."""
    with _opened(path) as fh:
        return _verified(path, fh)[0]


class _Tail(io.RawIOBase):
    """The open file ``fh`` from byte ``start`` on, as a read-only file of its own (its offset 0 is
    ``start``): ``torch.load`` reads the tensors through it, ``readinto`` straight into their storage."""

    def __init__(self, fh: BinaryIO, start: int) -> None:
        super().__init__()
        self._fh, self._start = fh, start
        fh.seek(start)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._fh.tell() - self._start

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: self._start, io.SEEK_CUR: self._fh.tell()}.get(whence)
        to = pos + (base if base is not None else self._fh.seek(0, io.SEEK_END))
        if to < self._start:
            raise ValueError(f"negative seek position {to - self._start}")
        return self._fh.seek(to) - self._start

    def readinto(self, b: Any) -> int:
        return self._fh.readinto(b)  # type: ignore[attr-defined]


def read_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(metadata, tensors)`` of a verified checkpoint, loaded with ``weights_only=True``, never
    holding the file whole: its checksum verified in chunks (:func:`_verified`), then its tensors
    loaded from the file itself (:class:`_Tail`; ``torch.load(mmap=True)`` cannot: it needs a zip
    from byte 0). One open handle serves both passes, so a checkpoint replaced meanwhile (atomically,
    :func:`atomic_file`) is not read: the handle keeps the file that was verified. (At 10,000 peers the
    whole file and its slices were 0.43 GiB above the loaded tensors, docs/performance.md.)"""
    import torch

    with _opened(path) as fh:
        meta, start = _verified(path, fh)
        try:
            state = torch.load(_Tail(fh, start), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001  (a crafted payload under a recomputed checksum reaches torch's
            # readers, which raise whatever they meet: KeyError, IndexError, AssertionError, ...)
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise CorruptFileError(f"{path}: the checkpoint's tensors cannot be loaded safely: {first}") from None
    if not isinstance(state, dict):
        raise CorruptFileError(f"{path}: the checkpoint's tensors are not a mapping")
    return meta, state
