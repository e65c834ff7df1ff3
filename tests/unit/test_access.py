"""Access beyond tests/unit/test_api_auth.py and test_api_keys.py: revocation end to end,
keys nowhere in plaintext, and the constant-time comparison."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_support import UnitApi, bearer, fake_scores, unit_api
from sqlalchemy import MetaData, select
from typer.testing import CliRunner

import core.keys
from cli.main import app as cli_app
from core.config import reset_settings_cache
from core.keys import authenticate, hash_key


@pytest.fixture()
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[UnitApi]:
    with unit_api(tmp_path) as api:
        # The CLI works on the same database the API serves.
        monkeypatch.setenv("BULKSCORE_DATABASE_URL", api.settings.database_url)
        reset_settings_cache()
        yield api
    reset_settings_cache()


def every_route(job_id: str) -> list[tuple[str, str]]:
    return [
        ("GET", "/v1/jobs"),
        ("GET", f"/v1/jobs/{job_id}"),
        ("GET", f"/v1/jobs/{job_id}/results"),
        ("GET", f"/v1/jobs/{job_id}/results?format=csv"),
        ("GET", f"/v1/jobs/{job_id}/results?format=jsonl"),
        ("POST", f"/v1/jobs/{job_id}/cancel"),
        ("GET", "/v1/models"),
    ]


def test_a_key_revoked_with_the_cli_is_refused_everywhere_at_once(api: UnitApi) -> None:
    job_id = api.post_job(["a", "b"]).json()["id"]
    fake_scores(api.engine, job_id, [0, 1])
    assert api.get(f"/v1/jobs/{job_id}/results?format=csv").status_code == 200

    revoked = CliRunner().invoke(cli_app, ["keys", "revoke", "owner"])

    assert revoked.exit_code == 0, revoked.output
    for method, path in every_route(job_id):
        response = api.client.request(method, path, headers=bearer(api.key))
        assert response.status_code == 401, (method, path)
        assert response.json()["detail"] == "invalid or revoked API key"
    assert api.post_job(["c"]).status_code == 401
    # The other key is untouched, and still cannot see the revoked key's job.
    assert api.get(f"/v1/jobs/{job_id}", key=api.other_key).status_code == 404


def test_plaintext_keys_are_nowhere_in_the_database_or_the_logs(
    api: UnitApi, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    api.post_job(["a"])
    api.client.get("/v1/jobs", headers=bearer(api.key + "x"))  # a wrong key is not logged
    dump: list[str] = []
    tables = MetaData()
    tables.reflect(api.engine)
    with api.engine.connect() as conn:
        for table in tables.sorted_tables:
            dump.extend(str(value) for row in conn.execute(select(table)) for value in row)
    for key in (api.key, api.other_key):
        assert not [value for value in dump if key in value]
        assert hash_key(key) in dump, "the hash is what is stored"
        assert key not in caplog.text


def test_keys_are_compared_as_hashes_in_constant_time(
    api: UnitApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(core.keys.hmac, "compare_digest", spy)
    with api.engine.connect() as conn:
        assert authenticate(conn, api.key) is not None
    # Digests are compared, never the key itself: a timing difference would leak only
    # bits of a SHA-256, which says nothing about the next key to try.
    assert compared == [(hash_key(api.key), hash_key(api.key))]
