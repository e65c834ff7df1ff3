"""Install profiles: the base package is the API, the CLI client and the beat, with no ML
framework; ``[worker]`` and ``[keras]`` bring the frameworks, and ``install.sh`` installs
everything."""

from __future__ import annotations

import builtins
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from core.models.registry import ModelSpec
from engine.runners import ModelLoadError, build_runner

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]


def _name(requirement: str) -> str:
    for stop in "[<>=!~; ":
        requirement = requirement.split(stop)[0]
    return requirement.lower()


def _modules_of(requirements: list[str]) -> set[str]:
    """Top-level import names of the installed distributions behind ``requirements``."""
    wanted = {_name(r).replace("_", "-") for r in requirements}
    modules = set()
    for module, dists in metadata.packages_distributions().items():
        if any(d.lower().replace("_", "-") in wanted for d in dists):
            modules.add(module)
    return modules


def test_the_frameworks_are_extras_not_base_dependencies() -> None:
    base = {_name(r) for r in PROJECT["dependencies"]}
    extras = PROJECT["optional-dependencies"]
    assert {"torch", "transformers", "scikit-learn"} <= {_name(r) for r in extras["worker"]}
    assert {_name(r) for r in extras["keras"]} == {"tensorflow-cpu"}
    assert not base & {"torch", "transformers", "tensorflow-cpu", "scikit-learn", "onnxruntime"}


PROBE = """
import importlib, pkgutil, sys
import api.app, cli.main, worker.beat, core
for found in pkgutil.walk_packages(core.__path__, "core."):
    importlib.import_module(found.name)
print(" ".join(sorted({name.split(".")[0] for name in sys.modules})))
"""


def test_the_api_the_cli_and_core_need_nothing_from_the_extras() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = set(done.stdout.split())
    extras = PROJECT["optional-dependencies"]
    from_extras = _modules_of(extras["worker"] + extras["keras"])
    assert from_extras, "the extras' distributions must be installed for this check"
    assert not loaded & from_extras, sorted(loaded & from_extras)


def test_install_sh_and_the_image_install_the_extras() -> None:
    assert '-e ".[dev,worker,keras]"' in (REPO / "install.sh").read_text()
    assert 'pip install -e ".[worker,keras]"' in (REPO / "Dockerfile").read_text()


def test_a_missing_framework_is_named_with_its_install_profile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_import = builtins.__import__

    def without_torch(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "engine.runners.transformers_text":
            raise ModuleNotFoundError("No module named 'torch'", name="torch")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_torch)
    spec = ModelSpec(name="m", task="text-classification", backend="transformers", source="/x")
    with pytest.raises(ModelLoadError, match=r"needs torch.*pip install 'bulkscore\[worker\]'"):
        build_runner(spec)
