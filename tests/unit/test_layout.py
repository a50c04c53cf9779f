"""The layering rule (README "Layout"): imports run downward only, through the installed namespace.

`stream/` imports no stage; a stage (ingest, retrain, updater, recommender) imports `stream/`
and itself, never another stage; only `deploy/` (the composition layer) imports stages.
Lazy imports inside functions count too: they run back up just the same. Every folder is installed
as `recstream.<folder>`; importing it by its bare name would load a second copy of the module
from the working directory (two registries of metrics, two settings classes).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("ingest", "retrain", "updater", "recommender")
ALLOWED = {
    "stream": {"stream"},
    **{stage: {"stream", stage} for stage in STAGES},
    "deploy": {"stream", *STAGES, "deploy"},
}


PACKAGES = set(ALLOWED)


def imported_names(path: Path) -> list[str]:
    """The absolute module names a file imports, lazy imports included."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
    return names


def project_imports(path: Path) -> set[str]:
    """The project folders a module imports (`recstream.<folder>...` -> folder)."""
    parts = (name.split(".") for name in imported_names(path))
    return {p[1] for p in parts if p[0] == "recstream" and len(p) > 1 and p[1] in PACKAGES}


def bare_imports(path: Path) -> set[str]:
    """Imports of a project folder by its bare name instead of through `recstream.`."""
    return {name for name in imported_names(path) if name.split(".")[0] in PACKAGES}


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_imports_run_downward_only(folder: str) -> None:
    wrong = {
        str(path.relative_to(ROOT)): sorted(imported - ALLOWED[folder])
        for path in sorted((ROOT / folder).rglob("*.py"))
        if (imported := project_imports(path)) - ALLOWED[folder]
    }
    assert not wrong, f"imports that run back up or sideways from {folder}/: {wrong}"


def test_every_import_goes_through_the_namespace() -> None:
    files = [p for folder in (*PACKAGES, "bench", "tests") for p in sorted((ROOT / folder).rglob("*.py"))]
    bare = {str(p.relative_to(ROOT)): sorted(found) for p in files if (found := bare_imports(p))}
    assert len(files) > 100
    assert not bare, f"imports by bare folder name: {bare}"


def test_the_rules_see_a_violation(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "def f():\n    from recstream.deploy.cli import main\n    import recstream.retrain.job\n"
        "    import json\n    from stream import settings\n"
    )
    assert project_imports(module) == {"deploy", "retrain"}
    assert bare_imports(module) == {"stream"}
