"""``bulkscore retry`` and ``bulkscore resume`` against the in-process API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_support import TEXT_MODEL, UnitApi, fake_scores, unit_api
from click.testing import Result
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import cli.client
from cli.main import app
from core.config import reset_settings_cache


@pytest.fixture()
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[UnitApi]:
    with unit_api(tmp_path, chunk_size=2) as api:
        # The CLI's HTTP client talks to the app in-process instead of over a socket.
        def in_process_client(base_url: str, headers: dict[str, str], **_: Any) -> TestClient:
            return TestClient(api.client.app, base_url=base_url, headers=headers)

        monkeypatch.setattr(cli.client.httpx, "Client", in_process_client)
        monkeypatch.setenv("BULKSCORE_API_URL", "http://testserver")
        monkeypatch.setenv("BULKSCORE_API_KEY", api.key)
        reset_settings_cache()
        yield api
    reset_settings_cache()


def run(*args: str) -> Result:
    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def completed_with_errors(api: UnitApi) -> str:
    job_id = api.post_job([f"text {i}" for i in range(6)]).json()["id"]
    fake_scores(api.engine, job_id, range(6))  # odd indexes are error rows
    return str(job_id)


def test_retry_queues_the_error_rows(api: UnitApi) -> None:
    job_id = completed_with_errors(api)
    api.queue.sent.clear()
    result = run("retry", job_id, "--errors-matching", "bad item")
    assert result.exit_code == 0, result.output
    assert f"job {job_id}: 3 error row(s) queued for retry" in result.stderr
    assert api.queue.sent == [(job_id, TEXT_MODEL, [3, 4, 5])]
    again = run("retry", job_id)
    assert again.exit_code == 2
    assert "still running" in again.stderr and "HTTP 409" in again.stderr


def test_retry_with_nothing_matching_exits_2_with_the_reason(api: UnitApi) -> None:
    job_id = completed_with_errors(api)
    result = run("retry", job_id, "--errors-matching", "timeout")
    assert result.exit_code == 2
    assert "no error rows containing 'timeout'" in result.stderr


def test_resume(api: UnitApi) -> None:
    job_id = api.post_job(["a", "b", "c"]).json()["id"]
    fake_scores(api.engine, job_id, [0])
    assert run("cancel", job_id).exit_code == 0
    result = run("resume", job_id)
    assert result.exit_code == 0, result.output
    assert f"job {job_id}: 2 unscored item(s) queued again" in result.stderr
    refused = run("resume", job_id)
    assert refused.exit_code == 2 and "only a cancelled or expired job" in refused.stderr
