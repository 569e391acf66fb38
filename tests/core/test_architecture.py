"""The import rules of docs/architecture.md are enforced by import-linter: the tree keeps them, and a
copy of it with one forbidden import of each kind fails the check."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.fixtures import ROOT

PACKAGES = ("bot", "flywheel", "prompts")
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}  # the copy's packages, not the installed ones
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", str(tree / "pyproject.toml")],
        cwd=tree, env=env, capture_output=True, text=True,
    )  # fmt: skip


@pytest.fixture
def tree_copy(tmp_path: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_tree_keeps_every_contract(tree_copy: Path) -> None:
    result = lint_imports(tree_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "statement", "contract"),
    [
        ("bot/review/leak.py", "import flywheel.cycle", "bot never imports the trainer"),
        ("bot/review/leak.py", "import gitlab", "forge libraries only in bot.forges"),
        ("bot/api/leak.py", "from bot.review import job", "the API hands work to the queue"),
        ("bot/feedback/leak.py", "from bot.review import pipeline", "layers:"),
        ("bot/models.py", "import bot.forges", "layers:"),  # the bottom layer importing one above
    ],
)
def test_a_forbidden_import_breaks_its_contract(
    tree_copy: Path, module: str, statement: str, contract: str
) -> None:
    path = tree_copy / module
    before = path.read_text() if path.exists() else '"""A module."""\n'
    path.write_text(f"{before}\n{statement}\n")
    result = lint_imports(tree_copy)
    assert result.returncode == 1, result.stdout
    broken = [line for line in result.stdout.splitlines() if line.endswith("BROKEN")]
    assert any(line.startswith(contract) for line in broken), result.stdout


def test_every_module_says_its_job() -> None:
    """Each module opens with a docstring (the package map in docs/architecture.md is built from them)."""
    missing = [
        str(path.relative_to(ROOT))
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if "migrations" not in path.parts and not ast.get_docstring(ast.parse(path.read_text()))
    ]
    assert missing == []
