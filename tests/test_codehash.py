"""fedsim.codehash: the fingerprint of the fedsim code a process runs (what the Flower bridge
compares between server and device; the check itself is in test_flower_version.py)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from fedsim import codehash
from fedsim.codehash import PACKAGES, code_fingerprint, package_roots, tree_fingerprint


def _copy_tree(dest: Path) -> dict[str, Path]:
    """A copy of the installed packages' .py files (what an older checkout on a device would be)."""
    roots = {}
    for name, src in package_roots().items():
        shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        roots[name] = dest / name
    return roots


def _fingerprint_in_subprocess(pythonpath: Path) -> str:
    env = dict(os.environ, PYTHONPATH=str(pythonpath))
    out = subprocess.run([sys.executable, "-c", "from fedsim.codehash import code_fingerprint as f; print(f())"],
                         env=env, cwd=pythonpath, capture_output=True, text=True, timeout=120, check=True)
    return out.stdout.strip()


def test_the_same_tree_gives_the_same_fingerprint_in_every_process(tmp_path):
    """Computed once per process (cached); another process on the same tree (a device with the
    server's fedsim) gets the same; it covers the four packages fedsim installs."""
    fp = code_fingerprint()
    assert len(fp) == 64 and code_fingerprint() is fp
    assert set(package_roots()) == set(PACKAGES) == {"fedsim", "strategies", "attacks", "fedlib"}
    assert all(p.is_dir() for p in package_roots().values())
    assert tree_fingerprint(package_roots()) == fp
    roots = _copy_tree(tmp_path / "copy")
    assert tree_fingerprint(roots) == fp
    assert _fingerprint_in_subprocess(tmp_path / "copy") == fp


def test_any_changed_added_or_missing_source_changes_the_fingerprint(tmp_path):
    """One byte of a rule, a new module, a module gone, a package gone: each another fingerprint;
    a device running that copy (PYTHONPATH first, as `import` finds it) computes it too. The
    plugins a bundle packs (fedsim/flower/packed/, hashed on their own) and caches do not count."""
    roots = _copy_tree(tmp_path / "copy")
    fp = tree_fingerprint(roots)
    packed = roots["fedsim"] / "flower" / "packed"
    packed.mkdir(exist_ok=True)
    (packed / "my_rules.py").write_text("X = 1\n")
    (roots["fedsim"] / "__pycache__").mkdir(exist_ok=True)
    (roots["fedsim"] / "__pycache__" / "x.py").write_text("X = 2\n")
    assert tree_fingerprint(roots) == fp
    seen = {fp}
    for name in PACKAGES:  # one byte changed in a file of each package (the same length)
        f = sorted(roots[name].rglob("*.py"))[-1]
        before = f.read_bytes()
        f.write_bytes(before[:-1] + (b"#" if before[-1:] != b"#" else b"$"))
        seen.add(tree_fingerprint(roots))
        f.write_bytes(before)
    assert len(seen) == 1 + len(PACKAGES)
    assert tree_fingerprint(roots) == fp
    (roots["strategies"] / "extra.py").write_text("")
    added = tree_fingerprint(roots)
    (roots["strategies"] / "extra.py").unlink()
    moved = roots["attacks"] / "__init__.py"
    moved.rename(roots["attacks"] / "init_.py")
    renamed = tree_fingerprint(roots)
    moved.parent.joinpath("init_.py").rename(moved)
    assert tree_fingerprint(roots) == fp
    gone = tree_fingerprint({**roots, "fedlib": tmp_path / "nowhere"})
    assert len({fp, added, renamed, gone}) == 4
    f = sorted(roots["strategies"].rglob("*.py"))[-1]
    f.write_bytes(f.read_bytes() + b"\n# an older checkout\n")
    assert _fingerprint_in_subprocess(tmp_path / "copy") == tree_fingerprint(roots) != fp


def test_describe_names_the_version_and_the_fingerprints_start():
    assert codehash.describe("ab" * 32, "9.9") == "fedsim 9.9, code abababababab"


def test_files_a_wheel_does_not_ship_do_not_count(tmp_path):
    """The bundle's wheel (setuptools' packages.find) ships no file of a hidden folder or of a
    folder without __init__.py, and no dangling link: a stray notebook checkpoint gave the server a
    fingerprint no installed bundle had, and an editor's lock link (``.#x.py``, dangling) was a
    FileNotFoundError traceback. Each leaves the fingerprint as it was."""
    roots = _copy_tree(tmp_path / "copy")
    fp = tree_fingerprint(roots)
    hidden = roots["fedsim"] / ".ipynb_checkpoints"
    hidden.mkdir()
    (hidden / "client-checkpoint.py").write_text("X = 1\n")
    loose = roots["strategies"] / "scratch"  # no __init__.py: not a package, not in the wheel
    loose.mkdir()
    (loose / "try.py").write_text("X = 2\n")
    (roots["fedsim"] / ".#strategy.py").symlink_to(tmp_path / "nowhere" / "lock")
    assert tree_fingerprint(roots) == fp
    (loose / "__init__.py").write_text("")  # now a package the wheel ships: it counts
    assert tree_fingerprint(roots) != fp
