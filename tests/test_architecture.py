"""docs/architecture.md stays true: the layering it states holds, and every module, function
and test it names exists."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
PACKAGES = ("fedsim", "strategies", "attacks")


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names; relative imports are within the package)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module)
    return out


@pytest.mark.parametrize("package", ["strategies", "attacks"])
def test_rules_and_attacks_import_nothing_from_fedsim(package):
    bad = [
        f"{p.relative_to(ROOT)}: {m}"
        for p in sorted((ROOT / package).rglob("*.py"))
        for m in _imports(p)
        if m == "fedsim" or m.startswith("fedsim.")
    ]
    assert not bad, bad


def test_attack_probes_import_no_rules():
    bad = [f"{p.relative_to(ROOT)}: {m}" for p in sorted((ROOT / "attacks" / "probes").rglob("*.py"))
           for m in _imports(p) if m.split(".")[0] in ("fedsim", "strategies")]
    assert not bad, bad


def _ray_importers(root: Path) -> list[str]:
    """The files of ``root``/fedsim that import Ray: ``import ray``, ``from ray... import``, or
    ``importlib.import_module("ray...")`` / ``__import__("ray...")`` with a literal name."""
    def is_ray(name: str | None) -> bool:
        return bool(name) and name.split(".")[0] == "ray"

    out = []
    for p in sorted((root / "fedsim").rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            if isinstance(node, ast.Call):
                f = node.func
                fname = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
                dynamic = fname in ("import_module", "__import__") and node.args
                names = [node.args[0].value] if dynamic and isinstance(node.args[0], ast.Constant) else []
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            if any(isinstance(n, str) and is_ray(n) for n in names):
                out.append(p.relative_to(root).as_posix())
                break
    return out


def test_only_the_backend_imports_ray():
    """Starting, using and stopping Ray is ``fedsim.backend``'s job (``make_backend``, ``run_tasks``,
    ``kill_actors``, ``ray_version``); the sweep, the probes and the runner go through it. Its lean-start
    helpers, ``fedsim.ray_lean``, are handed the ``ray`` module and import none."""
    assert _ray_importers(ROOT) == ["fedsim/backend.py"]


def _atomic_writers(root: Path) -> list[str]:
    """The files of ``root``/fedsim that replace a file by hand (``os.replace``, ``os.rename``,
    ``tempfile.mkstemp``) rather than through ``rundir.atomic_file``."""
    out = []
    for p in sorted((root / "fedsim").rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            f = node.func if isinstance(node, ast.Call) else None
            if (isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name)
                    and (f.value.id, f.attr) in {("os", "replace"), ("os", "rename"), ("tempfile", "mkstemp")}):
                out.append(p.relative_to(root).as_posix())
                break
    return out


def test_one_atomic_writer():
    """Run files, probes.json, sweep.json, feature caches and Flower's partitions.json are all
    written by ``fedsim.rundir.atomic_file`` (synced temp file, rename, temp removed on error)."""
    assert _atomic_writers(ROOT) == ["fedsim/rundir.py"]


def _resolve(dotted: str) -> bool:
    """Whether ``dotted`` (``fedsim.scenario.resolve_f``, ``scenario.resolve_f``) names a module, or
    an attribute or dataclass field of one."""
    parts = dotted.split(".")
    if parts[0] not in PACKAGES:
        parts = ["fedsim", *parts]
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            if hasattr(obj, name):
                obj = getattr(obj, name)
            elif name in getattr(obj, "__dataclass_fields__", {}):
                return name == parts[-1]
            else:
                return False
        return True
    return False


def test_every_name_in_the_architecture_doc_exists():
    text = DOC.read_text()
    fedsim_modules = {p.stem for p in (ROOT / "fedsim").iterdir() if p.suffix == ".py" or p.is_dir()}
    names = set()
    for token in re.findall(r"`([A-Za-z_][\w.]*)[`(]", text):
        head = token.split(".")[0]
        is_file = token.rsplit(".", 1)[-1] in ("json", "jsonl", "yaml", "md", "py", "pt", "txt")
        if "." in token and not is_file and (head in PACKAGES or head in fedsim_modules):
            names.add(token)
    missing = sorted(n for n in names if not _resolve(n))
    assert len(names) > 40 and not missing, missing
    paths = set(re.findall(r"`((?:tests|docs|fedsim|strategies|attacks)/[\w./-]+?)(?:::(\w+))?`", text))
    gone = [p for p, _ in paths if not (ROOT / p).exists()]
    gone += [f"{p}::{t}" for p, t in paths if t and f"def {t}(" not in (ROOT / p).read_text()]
    assert not gone, gone
    for test in re.findall(r"`(test_\w+)`", text):  # bare test names: in some tests/ file
        assert any(f"def {test}(" in p.read_text() for p in (ROOT / "tests").glob("test_*.py")), test


def test_the_architecture_doc_names_every_module():
    """Every module of fedsim, fedsim.data and fedsim.flower is named in the doc (a split's new
    module too): ``fedsim.X`` / ``fedsim.data.X``, or for the Flower plumbing `X` in its list."""
    text = DOC.read_text()
    unnamed = [f"fedsim.{p.stem}" for p in sorted((ROOT / "fedsim").glob("*.py"))
               if p.stem != "__init__" and not re.search(rf"fedsim\.{p.stem}\b", text)]
    unnamed += [f"fedsim.data.{p.stem}" for p in sorted((ROOT / "fedsim" / "data").glob("*.py"))
                if p.stem != "__init__" and f"fedsim.data.{p.stem}" not in text]
    unnamed += [f"fedsim.flower.{p.stem}" for p in sorted((ROOT / "fedsim" / "flower").glob("*.py"))
                if p.stem != "__init__" and f"fedsim.flower.{p.stem}" not in text and f"`{p.stem}`" not in text]
    assert not unnamed, unnamed


def test_code_points_at_sections_that_exist():
    """Docstrings cite ``(docs/architecture.md, "Section")``; each section is a heading of the doc."""
    headings = set(re.findall(r"^#+ (.+?)(?: \(.*\))?$", DOC.read_text(), flags=re.M))
    cited = {
        (str(p.relative_to(ROOT)), s)
        for pkg in PACKAGES
        for p in (ROOT / pkg).rglob("*.py")
        for s in re.findall(r'docs/architecture\.md, "([^"]+)"', p.read_text())
    }
    assert len(cited) >= 4 and all(s in headings for _, s in cited), sorted(cited)


def test_probes_never_import_the_runner():
    """The runner hands the probes their retraining as a callable (``Run.retrain_without``): no
    probe module imports ``fedsim.runner``, even lazily, so runner → probes is one-way."""
    mods = ["probes", "probe_context", "probe_unlearning", "probe_unlearning_membership", "probe_unlearning_methods",
            "probe_cloning", "probe_runs", "probe_registry", "probe_builtins", "probe_fedunlearn", "probe_rollback"]
    bad = [f"fedsim/{m}.py: {i}" for m in mods for i in _imports(ROOT / "fedsim" / f"{m}.py")
           if i.split(".")[:2] == ["fedsim", "runner"]]
    assert not bad, bad


def test_the_probe_registry_imports_neither_torch_nor_pydantic():
    """``fedsim list probe`` reads the registry and the built-ins' keys without torch or pydantic."""
    for m in ("probe_registry", "probe_builtins"):
        heavy = {i for i in _imports(ROOT / "fedsim" / f"{m}.py") if i.split(".")[0] in ("torch", "pydantic")}
        assert not heavy, (m, heavy)


def test_fedlib_is_a_leaf_and_attacks_import_no_rules():
    """fedlib (shared by strategies and attacks) imports neither of them nor fedsim; attacks
    share math with the rules only through it."""
    bad = [f"{p.relative_to(ROOT)}: {m}" for p in sorted((ROOT / "fedlib").rglob("*.py"))
           for m in _imports(p) if m.split(".")[0] in ("fedsim", "strategies", "attacks")]
    bad += [f"{p.relative_to(ROOT)}: {m}" for p in sorted((ROOT / "attacks").rglob("*.py"))
            for m in _imports(p) if m.split(".")[0] == "strategies"]
    assert not bad, bad
