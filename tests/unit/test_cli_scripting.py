"""The CLI as scripts meet it: a fast --help, --version, completion, clean help, and
settings errors as one line with status 2 (from the environment or a .env file)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import typer
from typer.core import TyperGroup
from typer.testing import CliRunner

from cli.main import app
from core.config import reset_settings_cache
from core.db import dispose_engines
from core.migrate import upgrade

REPO = Path(__file__).resolve().parents[2]

# What `bulkscore --help` must not import: each costs from 0.1 s (fastapi) to seconds.
FRAMEWORKS = {
    "torch",
    "transformers",
    "tensorflow",
    "keras",
    "celery",
    "kombu",
    "fastapi",
    "starlette",
    "uvicorn",
    "numpy",
    "PIL",
    # Not a framework, but ~0.1 s: loaded by the commands that need SQL only. (pydantic is
    # not listed: Typer itself loads it to render some options' help.)
    "sqlalchemy",
}

HELP_PROBE = """
import sys
sys.argv = ["bulkscore", *sys.argv[1:]]
from cli.main import app
try:
    app()
finally:
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in FRAMEWORKS)
    sys.stderr.write("LOADED " + repr(loaded) + "\\n")
"""


def _bulkscore(*args: str, cwd: Path = REPO, **env: str) -> subprocess.CompletedProcess[str]:
    """``bulkscore ARGS`` in a fresh interpreter (this worktree's code), stdout piped."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BULKSCORE_")}
    environ["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=cwd,
        env=environ | env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("args", [["--help"], ["submit", "--help"], ["models", "show", "--help"]])
def test_help_imports_no_framework(args: list[str]) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BULKSCORE_")}
    done = subprocess.run(
        [sys.executable, "-c", f"FRAMEWORKS = {FRAMEWORKS!r}\n" + HELP_PROBE, *args],
        cwd=REPO,
        env=environ | {"PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "Usage:" in done.stdout
    assert "LOADED []" in done.stderr, done.stderr


def test_version_is_the_package_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"bulkscore {version('bulkscore')}"


def test_completion_is_offered() -> None:
    result = CliRunner().invoke(app, ["--show-completion", "bash"])
    assert result.exit_code == 0, result.output
    assert "complete" in result.stdout and "_BULKSCORE_COMPLETE" in result.stdout.upper()


def _all_commands(group: TyperGroup, ctx: typer.Context, path: list[str]) -> list[list[str]]:
    found = [path]
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        if isinstance(command, TyperGroup):
            found += _all_commands(command, ctx, [*path, name])
        else:
            found.append([*path, name])
    return found


def test_no_command_shows_a_type_after_a_flag() -> None:
    group = typer.main.get_command(app)
    assert isinstance(group, TyperGroup)
    commands = _all_commands(group, typer.Context(group), [])
    assert ["jobs", "list"] in commands and ["submit"] in commands
    for path in commands:
        result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, (path, result.output)
        assert "<bool>" not in result.stdout, path
        assert "--help" in result.stdout
    # Options that take a value still say which.
    assert "<str>" in CliRunner().invoke(app, ["submit", "--help"]).stdout


BAD = "error: BULKSCORE_MAX_BATCH_SIZE: must be an integer >= 1 (got 'abc')"


@pytest.mark.parametrize(
    "args",
    [
        ["keys", "list"],
        ["models", "show", "sentiment"],
        ["api", "--port", "1"],
        ["worker", "--models", "sentiment"],
        ["beat"],
    ],
)
def test_a_bad_setting_is_one_line_and_status_2(args: list[str]) -> None:
    done = _bulkscore(*args, BULKSCORE_MAX_BATCH_SIZE="abc")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == BAD
    assert done.stdout == ""


def test_the_env_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("BULKSCORE_MAX_BATCH_SIZE=abc\n")
    done = _bulkscore("keys", "list", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.strip() == BAD
    # The environment wins over the file.
    done = _bulkscore(
        "keys",
        "list",
        cwd=tmp_path,
        BULKSCORE_MAX_BATCH_SIZE="8",
        BULKSCORE_DATABASE_URL=f"sqlite:///{tmp_path / 'absent.db'}",
    )
    assert "BULKSCORE_MAX_BATCH_SIZE" not in done.stderr


def test_keys_print_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    monkeypatch.setenv("BULKSCORE_DATABASE_URL", url)
    reset_settings_cache()
    upgrade(url)
    try:
        created = json.loads(CliRunner().invoke(app, ["keys", "create", "ci", "--json"]).stdout)
        listed = json.loads(CliRunner().invoke(app, ["keys", "list", "--json"]).stdout)
        revoked = json.loads(CliRunner().invoke(app, ["keys", "revoke", "ci", "--json"]).stdout)
        remaining = json.loads(CliRunner().invoke(app, ["keys", "list", "--json"]).stdout)
    finally:
        reset_settings_cache()
        dispose_engines()
    assert created["name"] == "ci" and created["key"].startswith("bsk_")
    assert [(key["id"], key["name"]) for key in listed] == [(created["id"], "ci")]
    assert "key" not in listed[0] and created["key"].startswith(listed[0]["prefix"])
    assert [key["id"] for key in revoked] == [created["id"]] and revoked[0]["revoked_at"]
    assert remaining == []
