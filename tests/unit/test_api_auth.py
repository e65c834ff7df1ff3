"""Bearer keys: 401 without a usable key, 404 for another key's job."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from api_support import UnitApi, bearer, fake_scores, unit_api
from sqlalchemy import select

from core.keys import revoke_key
from core.tables import jobs

JOB = "0123456789abcdef0123456789abcdef"
PROTECTED = [
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs"),
    ("GET", f"/v1/jobs/{JOB}"),
    ("GET", f"/v1/jobs/{JOB}/results"),
    ("POST", f"/v1/jobs/{JOB}/cancel"),
    ("GET", "/v1/models"),
]


@pytest.fixture()
def api(tmp_path: Path) -> Iterator[UnitApi]:
    with unit_api(tmp_path) as api:
        yield api


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer bsk_notarealkeynotarealkeynotarealkey"},
        {"Authorization": "Bearer "},
        {"Authorization": "Basic dXNlcjpwYXNz"},
    ],
    ids=["no-key", "wrong-key", "empty-key", "basic-scheme"],
)
def test_requests_without_a_valid_key_answer_401(
    api: UnitApi, method: str, path: str, headers: dict[str, str]
) -> None:
    response = api.client.request(method, path, headers=headers, json={"model": "tiny"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "API key" in response.json()["detail"]


def test_a_revoked_key_answers_401(api: UnitApi) -> None:
    assert api.get("/v1/jobs").status_code == 200
    with api.engine.begin() as conn:
        assert [key.name for key in revoke_key(conn, "owner")] == ["owner"]
    response = api.get("/v1/jobs")
    assert response.status_code == 401
    assert response.json()["detail"] == "invalid or revoked API key"
    assert api.get("/v1/jobs", key=api.other_key).status_code == 200


def test_another_keys_job_is_404_everywhere(api: UnitApi) -> None:
    job_id = api.post_job(["a", "b"]).json()["id"]
    fake_scores(api.engine, job_id, [0])
    theirs = bearer(api.other_key)

    answers = {
        "status": api.client.get(f"/v1/jobs/{job_id}", headers=theirs),
        "results": api.client.get(f"/v1/jobs/{job_id}/results", headers=theirs),
        "csv": api.client.get(f"/v1/jobs/{job_id}/results?format=csv", headers=theirs),
        "jsonl": api.client.get(f"/v1/jobs/{job_id}/results?format=jsonl", headers=theirs),
        "cancel": api.client.post(f"/v1/jobs/{job_id}/cancel", headers=theirs),
    }

    for name, response in answers.items():
        assert response.status_code == 404, name
        assert response.json()["detail"] == f"job {job_id} not found", name
    assert api.client.get("/v1/jobs", headers=theirs).json()["data"] == []
    # The stranger's cancel did nothing; the owner still sees the job and its result.
    with api.engine.connect() as conn:
        assert conn.execute(select(jobs.c.status)).scalar_one() == "running"
    assert api.get(f"/v1/jobs/{job_id}").status_code == 200
    assert len(api.get(f"/v1/jobs/{job_id}/results").json()["data"]) == 1


def test_health_endpoints_need_no_key(api: UnitApi) -> None:
    assert api.client.get("/healthz").status_code == 200
    assert api.client.get("/readyz").status_code == 200
