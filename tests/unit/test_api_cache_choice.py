"""The ``cache`` choice of a job in the API: JSON and multipart, stored on the job, shown,
and part of the idempotent request (SQLite, fake queue)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from api_support import TEXT_MODEL, UnitApi, bearer, unit_api
from sqlalchemy import select

from core.tables import jobs


@pytest.fixture()
def api(tmp_path: Path) -> Iterator[UnitApi]:
    with unit_api(tmp_path) as api:
        yield api


def stored_choice(api: UnitApi, job_id: str) -> bool:
    with api.engine.connect() as conn:
        return bool(conn.scalar(select(jobs.c.use_cache).where(jobs.c.id == job_id)))


def test_a_job_uses_the_cache_unless_it_says_cache_false(api: UnitApi) -> None:
    body = {"model": TEXT_MODEL, "inputs": [{"text": "a"}]}
    default = api.client.post("/v1/jobs", json=body, headers=bearer(api.key)).json()
    fresh = api.client.post(
        "/v1/jobs", json={**body, "cache": False}, headers=bearer(api.key)
    ).json()
    assert default["cache"] is True and stored_choice(api, default["id"])
    assert fresh["cache"] is False and not stored_choice(api, fresh["id"])
    assert api.get(f"/v1/jobs/{fresh['id']}").json()["cache"] is False


def test_cache_must_be_a_boolean(api: UnitApi) -> None:
    body = {"model": TEXT_MODEL, "inputs": [{"text": "a"}], "cache": "sometimes"}
    assert api.client.post("/v1/jobs", json=body, headers=bearer(api.key)).status_code == 422


@pytest.mark.parametrize(
    ("value", "status", "cached"),
    [
        ("false", 202, False),
        ("0", 202, False),
        ("true", 202, True),
        ("", 202, True),
        ("x", 422, None),
    ],
)
def test_the_multipart_form_takes_cache(
    api: UnitApi, value: str, status: int, cached: bool | None
) -> None:
    response = api.client.post(
        "/v1/jobs",
        data={"model": TEXT_MODEL, "cache": value},
        files={"file": ("in.txt", b"one\ntwo\n", "text/plain")},
        headers=bearer(api.key),
    )
    assert response.status_code == status, response.text
    if cached is not None:
        assert response.json()["cache"] is cached
        assert stored_choice(api, response.json()["id"]) is cached


def test_the_cache_choice_is_part_of_the_idempotent_request(api: UnitApi) -> None:
    body = {"model": TEXT_MODEL, "inputs": [{"text": "a"}]}
    headers = {**bearer(api.key), "Idempotency-Key": "k1"}
    assert api.client.post("/v1/jobs", json=body, headers=headers).status_code == 202
    assert api.client.post("/v1/jobs", json=body, headers=headers).status_code == 200
    other = {**body, "cache": False}
    assert api.client.post("/v1/jobs", json=other, headers=headers).status_code == 409
