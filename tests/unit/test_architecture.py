"""The layers are a check that fails: import contracts, lazy imports that say why, dead code.

- ``lint-imports`` (import-linter, contracts in ``pyproject.toml``): ``core`` imports none of
  the packages above it nor any web, queue or ML framework; ``api`` imports no ``engine`` and
  no ML framework; ``engine`` imports no ``api``, ``worker`` or Celery; no package imports
  one above it.
- A function-level import of the project's own code is allowed only under a comment that
  starts with ``Deferred:`` and says why (a framework's start-up cost).
- ``vulture`` finds no unused code at 60% confidence (names only a framework uses are in
  ``vulture_whitelist.py``, each with its reason).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("core", "engine", "api", "worker", "cli")
BIN = Path(sys.executable).parent


def test_the_import_contracts_hold() -> None:
    done = subprocess.run(
        [str(BIN / "lint-imports"), "--no-cache"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def _project_import(node: ast.AST) -> bool:
    if isinstance(node, ast.ImportFrom):
        names = [node.module or ""]
        if node.level:
            return True
    elif isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        return False
    return any(name.split(".")[0] in PACKAGES for name in names)


def _unexplained_lazy_imports(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    tree = ast.parse("\n".join(lines))
    found = []
    for function in ast.walk(tree):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(function):
            if not _project_import(node):
                continue
            # Walk up over the imports (and blank lines) of the same block to its comment.
            row = node.lineno - 2  # the line above, 0-based
            while row >= 0 and (
                not lines[row].strip() or lines[row].strip().startswith(("from ", "import "))
            ):
                row -= 1
            comment = []
            while row >= 0 and lines[row].strip().startswith("#"):
                comment.insert(0, lines[row].strip())
                row -= 1
            if not any(line.startswith("# Deferred:") for line in comment):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: {lines[node.lineno - 1]}")
    return found


def test_lazy_imports_of_the_project_say_why() -> None:
    found = [
        problem
        for package in PACKAGES
        for path in sorted((REPO / package).rglob("*.py"))
        for problem in _unexplained_lazy_imports(path)
    ]
    assert not found, "function-level imports without a '# Deferred: why' comment:\n" + "\n".join(
        found
    )


def test_no_dead_code() -> None:
    done = subprocess.run(
        [str(BIN / "vulture")],  # paths, confidence and decorators: pyproject.toml
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


FRAMEWORK_PROBE = """
import sys
import cli.main, worker.main, worker.tasks, worker.training_task, engine.in_process
print(sorted(m for m in sys.modules if m.split(".")[0] in
      {"torch", "tensorflow", "keras", "transformers", "onnxruntime", "sklearn"}))
"""


def test_importing_the_worker_and_the_cli_loads_no_ml_framework() -> None:
    # The worker pins its GPU (CUDA_VISIBLE_DEVICES) after importing these modules and
    # before loading any model: a framework imported earlier would see every GPU.
    done = subprocess.run(
        [sys.executable, "-c", FRAMEWORK_PROBE],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
