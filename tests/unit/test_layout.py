"""The layering rule (README "Layout"): imports run downward only.

`stream/` imports no stage; a stage (ingest, retrain, updater, recommender) imports `stream/`
and itself, never another stage; only `deploy/` (the composition layer) imports stages.
Lazy imports inside functions count too: they run back up just the same.
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


FOLDERS = set(ALLOWED) | {"bench", "tests"}


def project_imports(path: Path) -> set[str]:
    """The top-level folders of the project that a module imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            top = name.split(".")[0]
            if top in FOLDERS:
                found.add(top)
    return found


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_imports_run_downward_only(folder: str) -> None:
    wrong = {
        str(path.relative_to(ROOT)): sorted(imported - ALLOWED[folder])
        for path in sorted((ROOT / folder).rglob("*.py"))
        if (imported := project_imports(path)) - ALLOWED[folder]
    }
    assert not wrong, f"imports that run back up or sideways from {folder}/: {wrong}"


def test_the_rule_sees_a_violation(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from deploy.cli import main\n    import retrain.job\n    import json\n")
    assert project_imports(module) == {"deploy", "retrain"}
