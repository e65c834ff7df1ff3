"""No silent waits: queue information, the unserved-model warning and ``expires_after_s``
in the API, on SQLite with a fake queue (its ``live_workers`` stand for heartbeats)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from api_support import TEXT_MODEL, FakeJobQueue, UnitApi, bearer, unit_api

from api.schemas import STATUS_DESCRIPTION
from core.jobs.expiry import MAX_EXPIRES_AFTER_S
from core.jobs.status import JobStatus


@pytest.fixture()
def api(tmp_path: Path) -> Iterator[UnitApi]:
    with unit_api(tmp_path, chunk_size=2) as api:
        yield api


def post(api: UnitApi, texts: list[str], **extra: object) -> dict:  # type: ignore[type-arg]
    body = {"model": TEXT_MODEL, "inputs": [{"text": t} for t in texts], **extra}
    response = api.client.post("/v1/jobs", json=body, headers=bearer(api.key))
    assert response.status_code == 202, response.text
    return response.json()  # type: ignore[no-any-return]


def test_a_served_models_job_shows_its_place_without_warnings(api: UnitApi) -> None:
    first = post(api, ["a", "b", "c"])  # two chunks
    second = post(api, ["d"])
    assert first["queue"] == {"runs_on": TEXT_MODEL, "chunks_ahead": 0, "worker_live": True}
    # Round-robin: one chunk of the older job runs, then this job's.
    assert second["queue"]["chunks_ahead"] == 1
    assert second["warnings"] == []
    read = api.get(f"/v1/jobs/{second['id']}").json()
    assert read["queue"]["chunks_ahead"] == 1
    # A high-priority job goes before every chunk of the normal ones.
    urgent = post(api, ["e"], priority="high")
    assert (urgent["priority"], urgent["queue"]["chunks_ahead"]) == ("high", 0)
    assert api.get(f"/v1/jobs/{second['id']}").json()["queue"]["chunks_ahead"] == 2
    # Cancelling the first job takes its chunks out of the way; the urgent one stays.
    api.client.post(f"/v1/jobs/{first['id']}/cancel", headers=bearer(api.key))
    assert api.get(f"/v1/jobs/{second['id']}").json()["queue"]["chunks_ahead"] == 1
    # A final job has no queue.
    cancelled = api.get(f"/v1/jobs/{first['id']}").json()
    assert cancelled["queue"] is None and cancelled["warnings"] == []


def test_a_job_for_a_model_no_live_worker_serves_carries_a_warning(tmp_path: Path) -> None:
    with unit_api(tmp_path, FakeJobQueue(live_workers={})) as api:
        job = post(api, ["a"])
        assert job["queue"]["worker_live"] is False
        [warning] = job["warnings"]
        assert f"no live worker serves model {TEXT_MODEL!r}" in warning
        assert f"bulkscore worker --models {TEXT_MODEL}" in warning
        assert api.get(f"/v1/jobs/{job['id']}").json()["warnings"] == [warning]


def test_a_read_without_the_broker_still_answers(tmp_path: Path) -> None:
    queue = FakeJobQueue()
    with unit_api(tmp_path, queue) as api:
        job = post(api, ["a"])
        queue.down = True
        read = api.get(f"/v1/jobs/{job['id']}")
        assert read.status_code == 200
        assert read.json()["queue"]["worker_live"] is None
        assert read.json()["warnings"] == []


def test_expires_after_s_sets_the_deadline(api: UnitApi) -> None:
    job = post(api, ["a"], expires_after_s=60)
    assert job["expires_at"] is not None
    assert post(api, ["b"])["expires_at"] is None


@pytest.mark.parametrize("value", [0, 0.5, -1, MAX_EXPIRES_AFTER_S + 1, "soon"])
def test_expires_after_s_outside_its_bounds_is_a_422(api: UnitApi, value: object) -> None:
    body = {"model": TEXT_MODEL, "inputs": [{"text": "a"}], "expires_after_s": value}
    response = api.client.post("/v1/jobs", json=body, headers=bearer(api.key))
    assert response.status_code == 422


@pytest.mark.parametrize(("value", "status"), [("30", 202), ("0", 422), ("nan", 422), ("x", 422)])
def test_the_multipart_form_takes_expires_after_s(api: UnitApi, value: str, status: int) -> None:
    response = api.client.post(
        "/v1/jobs",
        data={"model": TEXT_MODEL, "expires_after_s": value},
        files={"file": ("in.txt", b"one\ntwo\n", "text/plain")},
        headers=bearer(api.key),
    )
    assert response.status_code == status, response.text
    if status == 202:
        assert response.json()["expires_at"] is not None


def test_the_deadline_is_part_of_the_idempotent_request(api: UnitApi) -> None:
    body = {"model": TEXT_MODEL, "inputs": [{"text": "a"}], "expires_after_s": 60}
    headers = {**bearer(api.key), "Idempotency-Key": "k1"}
    assert api.client.post("/v1/jobs", json=body, headers=headers).status_code == 202
    assert api.client.post("/v1/jobs", json=body, headers=headers).status_code == 200
    other = {**body, "expires_after_s": 120}
    assert api.client.post("/v1/jobs", json=other, headers=headers).status_code == 409


@pytest.mark.parametrize(
    ("value", "status"), [("high", 202), ("low", 202), ("", 202), ("urgent", 422)]
)
def test_the_multipart_form_takes_priority(api: UnitApi, value: str, status: int) -> None:
    response = api.client.post(
        "/v1/jobs",
        data={"model": TEXT_MODEL, "priority": value},
        files={"file": ("in.txt", b"one\ntwo\n", "text/plain")},
        headers=bearer(api.key),
    )
    assert response.status_code == status, response.text
    if status == 202:
        assert response.json()["priority"] == (value or "normal")
    else:
        assert "priority must be one of high, normal, low" in response.text


def test_priority_is_part_of_the_idempotent_request_and_checked(api: UnitApi) -> None:
    body = {"model": TEXT_MODEL, "inputs": [{"text": "a"}], "priority": "low"}
    headers = {**bearer(api.key), "Idempotency-Key": "k2"}
    assert api.client.post("/v1/jobs", json=body, headers=headers).status_code == 202
    assert api.client.post("/v1/jobs", json=body, headers=headers).status_code == 200
    other = {**body, "priority": "high"}
    assert api.client.post("/v1/jobs", json=other, headers=headers).status_code == 409
    wrong = {**body, "priority": "soon"}
    assert api.client.post("/v1/jobs", json=wrong, headers=bearer(api.key)).status_code == 422


def test_the_schema_documents_every_status() -> None:
    for state in JobStatus:
        assert f"`{state.value}`" in STATUS_DESCRIPTION
