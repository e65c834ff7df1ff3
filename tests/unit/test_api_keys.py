"""API keys: core.keys on SQLite, and the ``bulkscore keys`` commands."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from typer.testing import CliRunner

from cli.main import app
from core.config import reset_settings_cache
from core.db import dispose_engines, get_engine
from core.keys import ApiKeyError, authenticate, create_key, hash_key, list_keys, revoke_key
from core.tables import api_keys, metadata

KEY_PATTERN = re.compile(r"^bsk_[A-Za-z0-9_-]{32}$")


@pytest.fixture()
def db_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    metadata.create_all(get_engine(url))
    monkeypatch.setenv("BULKSCORE_DATABASE_URL", url)
    reset_settings_cache()
    yield url
    reset_settings_cache()
    dispose_engines()


@pytest.fixture()
def engine(db_url: str) -> Engine:
    return get_engine(db_url)


def test_a_key_is_stored_only_as_its_hash_and_prefix(engine: Engine) -> None:
    with engine.begin() as conn:
        key_id, plaintext = create_key(conn, "ci")
    assert KEY_PATTERN.match(plaintext)
    with engine.connect() as conn:
        row = conn.execute(select(api_keys)).one()
    assert row.id == key_id
    assert row.key_hash == hash_key(plaintext) and len(row.key_hash) == 64
    assert row.prefix == plaintext[:12]
    assert plaintext not in [str(value) for value in row]


def test_authenticate_accepts_only_active_keys(engine: Engine) -> None:
    with engine.begin() as conn:
        ci_id, ci = create_key(conn, "ci")
        alice_id, alice = create_key(conn, "alice")
    with engine.connect() as conn:
        assert authenticate(conn, ci) == ci_id
        assert authenticate(conn, alice) == alice_id
        assert authenticate(conn, ci[:-1] + ("A" if ci[-1] != "A" else "B")) is None
        assert authenticate(conn, "") is None
        assert authenticate(conn, None) is None
        assert authenticate(conn, "bsk_" + "x" * 500) is None
    with engine.begin() as conn:
        revoke_key(conn, "ci")
    with engine.connect() as conn:
        assert authenticate(conn, ci) is None
        assert authenticate(conn, alice) == alice_id


def test_keys_are_unique(engine: Engine) -> None:
    with engine.begin() as conn:
        keys = {create_key(conn, f"k{i}")[1] for i in range(50)}
    assert len(keys) == 50


def test_revoke_by_name_prefix_or_key(engine: Engine) -> None:
    with engine.begin() as conn:
        create_key(conn, "first")
        _, second = create_key(conn, "second")
        _, third = create_key(conn, "third")
        by_name = revoke_key(conn, "first")
        by_prefix = revoke_key(conn, second[:12])
        by_key = revoke_key(conn, third)
        again = revoke_key(conn, "first")
        nothing = revoke_key(conn, "nobody")
    assert [key.name for key in by_name + by_prefix + by_key] == ["first", "second", "third"]
    assert all(key.revoked_at is not None for key in by_name + by_prefix + by_key)
    assert again == nothing == []


def test_active_key_names_are_distinct(engine: Engine) -> None:
    with engine.begin() as conn:
        create_key(conn, "ci")
    with pytest.raises(ApiKeyError, match="already named 'ci'"), engine.begin() as conn:
        create_key(conn, "ci")
    with engine.begin() as conn:
        revoke_key(conn, "ci")
        create_key(conn, "ci")  # a revoked key's name may be reused
        with pytest.raises(ApiKeyError):
            create_key(conn, "   ")
    with engine.connect() as conn:
        assert [(key.name, key.active) for key in list_keys(conn)] == [("ci", False), ("ci", True)]
        assert [key.name for key in list_keys(conn, include_revoked=False)] == ["ci"]


def test_keys_cli_create_list_revoke(engine: Engine) -> None:
    runner = CliRunner()

    created = runner.invoke(app, ["keys", "create", "alice"])
    assert created.exit_code == 0, created.output
    plaintext = created.stdout.strip()
    assert KEY_PATTERN.match(plaintext)
    assert "cannot be shown again" in created.stderr
    with engine.connect() as conn:
        assert authenticate(conn, plaintext) is not None

    listed = runner.invoke(app, ["keys", "list"])
    assert listed.exit_code == 0
    assert "alice" in listed.stdout and plaintext[:12] in listed.stdout
    assert plaintext not in listed.stdout

    revoked = runner.invoke(app, ["keys", "revoke", plaintext[:12]])
    assert revoked.exit_code == 0
    assert "revoked key" in revoked.stdout
    with engine.connect() as conn:
        assert authenticate(conn, plaintext) is None
    assert "alice" not in runner.invoke(app, ["keys", "list"]).stdout
    assert "alice" in runner.invoke(app, ["keys", "list", "--all"]).stdout


def test_keys_cli_errors_are_clean(engine: Engine) -> None:
    runner = CliRunner()
    runner.invoke(app, ["keys", "create", "bob"])

    duplicate = runner.invoke(app, ["keys", "create", "bob"])
    missing = runner.invoke(app, ["keys", "revoke", "nobody"])

    assert duplicate.exit_code == 2 and "already named 'bob'" in duplicate.stderr
    assert missing.exit_code == 2 and "no active key" in missing.stderr
    assert duplicate.exception is None or isinstance(duplicate.exception, SystemExit)


def test_keys_cli_on_an_unmigrated_database_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BULKSCORE_DATABASE_URL", f"sqlite:///{tmp_path / 'empty.db'}")
    reset_settings_cache()
    try:
        result = CliRunner().invoke(app, ["keys", "create", "x"])
    finally:
        reset_settings_cache()
        dispose_engines()
    assert result.exit_code == 1
    assert "bulkscore db upgrade" in result.stderr
    assert "Traceback" not in result.output
