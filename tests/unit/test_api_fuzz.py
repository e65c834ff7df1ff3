"""Property-based fuzzing of the whole API from its OpenAPI schema: nothing answers 5xx.

The requests (``tests/fuzz_support.py``) go to the ASGI app in-process, on a real SQLite
database with a fake job queue. ``tests/integration/test_api_fuzz_process.py`` sends the
same requests to a real ``bulkscore api`` on PostgreSQL and Redis, whose types are narrower
(32-bit integers, no NUL in text).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from api_support import IMAGE_MODEL, TEXT_MODEL, UnitApi, bearer, unit_api
from fuzz_support import server_errors


@pytest.fixture()
def api(tmp_path: Path) -> Iterator[UnitApi]:
    with unit_api(tmp_path) as api:
        yield api


def test_no_generated_request_gets_a_server_error(api: UnitApi) -> None:
    # One real job, so that the job routes see an id that exists as well as random ones.
    job_id = api.post_job(["a text", "another"]).json()["id"]
    schema = schemathesis.openapi.from_asgi("/openapi.json", api.client.app)

    report = server_errors(
        schema, bearer(api.key), {"job_id": [job_id], "name": [TEXT_MODEL, IMAGE_MODEL]}
    )

    assert len(report.operations) >= 8, "every documented route is fuzzed"
    assert report.server_errors == []
    assert report.not_problems == []
    # Errors of several kinds were met, each with its stable code.
    assert {"invalid_request", "job_not_found"} <= set(report.codes), report.codes
    assert len(report.unsatisfiable) < len(report.operations) / 2, report.unsatisfiable
    with_path_parameters = {op for op in report.operations if "{" in op}
    assert {op for op, _ in report.real_paths} == with_path_parameters
    assert len(with_path_parameters) >= 4
