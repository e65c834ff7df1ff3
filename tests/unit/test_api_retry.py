"""POST /v1/jobs/{id}/retry and /resume: the app on SQLite, a fake queue."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from api_support import TEXT_MODEL, FakeJobQueue, UnitApi, bearer, fake_scores, unit_api
from sqlalchemy import func, select

from core.tables import retry_items


@pytest.fixture()
def api(tmp_path: Path) -> Iterator[UnitApi]:
    with unit_api(tmp_path, chunk_size=2) as api:
        yield api


def completed_with_errors(api: UnitApi, count: int = 6) -> str:
    """A completed job whose odd indexes are error rows (fake_scores)."""
    job_id = api.post_job([f"text {i}" for i in range(count)]).json()["id"]
    fake_scores(api.engine, job_id, range(count))
    assert api.get(f"/v1/jobs/{job_id}").json()["status"] == "completed"
    return job_id


def post(api: UnitApi, path: str, key: str | None = None, **kwargs: object) -> object:
    return api.client.post(path, headers=bearer(key or api.key), **kwargs)  # type: ignore[arg-type]


def test_retry_queues_the_error_rows_and_sends_their_chunks(api: UnitApi) -> None:
    job_id = completed_with_errors(api)
    api.queue.sent.clear()
    response = post(api, f"/v1/jobs/{job_id}/retry")
    assert response.status_code == 202  # type: ignore[attr-defined]
    body = response.json()  # type: ignore[attr-defined]
    assert body["status"] == "running" and body["requeued"] == 3
    assert body["finished_at"] is None
    assert body["counts"] == {"total": 6, "succeeded": 3, "failed": 3}
    # Indexes 1, 3, 5 with chunk_size 2: a chunk spans at most 2 indexes, so one each,
    # numbered after the job's first three.
    assert api.queue.sent == [(job_id, TEXT_MODEL, [3, 4, 5])]
    with api.engine.connect() as conn:
        marked = conn.scalar(select(func.count()).where(retry_items.c.job_id == job_id))
    assert marked == 3


def test_retry_with_errors_matching(api: UnitApi) -> None:
    job_id = completed_with_errors(api)
    response = post(api, f"/v1/jobs/{job_id}/retry", json={"errors_matching": "bad item 3"})
    assert response.status_code == 202 and response.json()["requeued"] == 1  # type: ignore[attr-defined]
    # Running now: a second retry is refused until it completes.
    again = post(api, f"/v1/jobs/{job_id}/retry")
    assert again.status_code == 409  # type: ignore[attr-defined]
    assert "still running" in again.json()["detail"]  # type: ignore[attr-defined]


def test_retry_refusals(api: UnitApi) -> None:
    job_id = completed_with_errors(api)
    none_match = post(api, f"/v1/jobs/{job_id}/retry", json={"errors_matching": "timeout"})
    assert none_match.status_code == 409  # type: ignore[attr-defined]
    assert "no error rows containing 'timeout'" in none_match.json()["detail"]  # type: ignore[attr-defined]
    bad_body = post(api, f"/v1/jobs/{job_id}/retry", json={"errors_matching": ""})
    assert bad_body.status_code == 422  # type: ignore[attr-defined]
    unknown_field = post(api, f"/v1/jobs/{job_id}/retry", json={"errors": "x"})
    assert unknown_field.status_code == 422  # type: ignore[attr-defined]

    queued = api.post_job(["a", "b"]).json()["id"]
    not_final = post(api, f"/v1/jobs/{queued}/retry")
    assert not_final.status_code == 409  # type: ignore[attr-defined]
    assert "still queued" in not_final.json()["detail"]  # type: ignore[attr-defined]

    clean = api.post_job(["a"]).json()["id"]
    fake_scores(api.engine, clean, [0])  # index 0: a label, and the job is complete
    no_errors = post(api, f"/v1/jobs/{clean}/retry")
    assert no_errors.status_code == 409  # type: ignore[attr-defined]
    assert "no error rows" in no_errors.json()["detail"]  # type: ignore[attr-defined]


def test_another_keys_job_is_not_found(api: UnitApi) -> None:
    job_id = completed_with_errors(api)
    for action in ("retry", "resume"):
        response = post(api, f"/v1/jobs/{job_id}/{action}", key=api.other_key)
        assert response.status_code == 404  # type: ignore[attr-defined]
    missing = post(api, f"/v1/jobs/{'0' * 32}/retry")
    assert missing.status_code == 404  # type: ignore[attr-defined]


def test_resume_of_a_cancelled_job(api: UnitApi) -> None:
    job_id = api.post_job([f"t{i}" for i in range(5)]).json()["id"]
    fake_scores(api.engine, job_id, [0, 1])
    assert post(api, f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"  # type: ignore[attr-defined]
    api.queue.sent.clear()
    response = post(api, f"/v1/jobs/{job_id}/resume")
    assert response.status_code == 202  # type: ignore[attr-defined]
    body = response.json()  # type: ignore[attr-defined]
    assert body["status"] == "running" and body["requeued"] == 3
    # The three unscored items (2, 3, 4) in new chunks after the job's first three.
    assert api.queue.sent == [(job_id, TEXT_MODEL, [3, 4])]
    fake_scores(api.engine, job_id, [2, 3, 4])
    done = api.get(f"/v1/jobs/{job_id}").json()
    assert done["status"] == "completed" and done["counts"]["succeeded"] == 3


def test_resume_refusals(api: UnitApi) -> None:
    job_id = completed_with_errors(api)
    completed = post(api, f"/v1/jobs/{job_id}/resume")
    assert completed.status_code == 409  # type: ignore[attr-defined]
    assert "retry its errors instead" in completed.json()["detail"]  # type: ignore[attr-defined]
    queued = api.post_job(["a"]).json()["id"]
    active = post(api, f"/v1/jobs/{queued}/resume")
    assert active.status_code == 409  # type: ignore[attr-defined]
    assert "only a cancelled or expired job" in active.json()["detail"]  # type: ignore[attr-defined]


def test_retry_with_the_broker_down_is_recorded_with_a_warning(tmp_path: Path) -> None:
    queue = FakeJobQueue()
    with unit_api(tmp_path, queue=queue, chunk_size=2) as api:
        job_id = completed_with_errors(api)
        queue.down = True
        response = post(api, f"/v1/jobs/{job_id}/retry")
        assert response.status_code == 202  # type: ignore[attr-defined]
        body = response.json()  # type: ignore[attr-defined]
        assert body["requeued"] == 3
        assert any("broker" in warning for warning in body["warnings"])
