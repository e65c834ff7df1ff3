"""The schemathesis fuzzing of ``tests/fuzz_support.py`` against a real ``bulkscore api``
process on PostgreSQL and Redis: nothing answers 5xx.

PostgreSQL is narrower than SQLite, which the unit run uses: it refuses a NUL in text and
an integer past 32 bits outright, so a path or query parameter that reached SQL unchecked
answers 500 here only.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import schemathesis
from api_support import (
    IMAGE_MODEL,
    TEXT_MODEL,
    bearer,
    new_key,
    running_api,
    write_api_models_file,
)
from fuzz_support import server_errors

from core.db import get_engine
from core.migrate import upgrade


def test_no_generated_request_gets_a_server_error_from_the_api_process(
    pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    upgrade(pg_url)
    key = new_key(get_engine(pg_url), "fuzzer")
    env = {
        "BULKSCORE_DATABASE_URL": pg_url,
        "BULKSCORE_BROKER_URL": redis_url,
        "BULKSCORE_MODELS": str(write_api_models_file(tmp_path / "models.toml")),
        "BULKSCORE_MAX_BODY_BYTES": "100000",
        "BULKSCORE_LOG_LEVEL": "WARNING",
    }
    with running_api(env, tmp_path / "api.log") as server:
        body = {"model": TEXT_MODEL, "inputs": [{"id": "a", "text": "a text"}]}
        created = httpx.post(f"{server.url}/v1/jobs", json=body, headers=bearer(key))
        assert created.status_code == 202, server.log()
        schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
        report = server_errors(
            schema,
            bearer(key),
            {"job_id": [created.json()["id"]], "name": [TEXT_MODEL, IMAGE_MODEL]},
            base_url=server.url,
        )
        log = server.log()

    assert report.server_errors == [], log[-3000:]
    assert report.not_problems == []
    with_path_parameters = {op for op in report.operations if "{" in op}
    assert {op for op, _ in report.real_paths} == with_path_parameters
    assert report.statuses.get(200, 0) > 0 and report.statuses.get(422, 0) > 0
