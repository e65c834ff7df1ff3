"""Deleting a job (core.jobs.deletion, DELETE /v1/jobs/{id}, `bulkscore jobs delete`) on
SQLite, with a fake queue."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from api_support import TEXT_MODEL, UnitApi, bearer, fake_scores, unit_api
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, insert, select
from typer.testing import CliRunner

import cli.client
from cli.main import app
from core.chunks.batches import finish_chunks
from core.clock import utcnow
from core.config import reset_settings_cache
from core.jobs.deletion import JobActive, delete_job, delete_rows_in_batches
from core.jobs.lifecycle import cancel_job, get_job
from core.jobs.predictions import Prediction
from core.jobs.results import ScoredItem, write_results
from core.jobs.status import ChunkStatus
from core.tables import chunks, items, jobs, results, schedule_runs


@pytest.fixture()
def api(tmp_path: Path) -> Iterator[UnitApi]:
    with unit_api(tmp_path, chunk_size=2) as api:
        yield api


def completed(api: UnitApi, count: int = 7) -> str:
    job_id = api.post_job([f"text {i}" for i in range(count)]).json()["id"]
    fake_scores(api.engine, job_id, range(count))
    return job_id


def rows_of(engine: Engine, job_id: str) -> dict[str, int]:
    with engine.connect() as conn:
        counts = {
            table.name: int(conn.scalar(select(func.count()).where(table.c.job_id == job_id)) or 0)
            for table in (items, chunks, results)
        }
        counts["jobs"] = int(conn.scalar(select(func.count()).where(jobs.c.id == job_id)) or 0)
    return counts


def test_delete_removes_the_job_in_batches_and_leaves_other_jobs_alone(api: UnitApi) -> None:
    doomed = completed(api)
    other = completed(api)
    before_other = rows_of(api.engine, other)

    # Batches of 2 rows: every table of the job takes several transactions.
    gone = delete_job(api.engine, doomed, batch=2)

    assert (gone.items, gone.chunks, gone.results) == (7, 4, 7)
    assert rows_of(api.engine, doomed) == {"items": 0, "chunks": 0, "results": 0, "jobs": 0}
    assert (
        rows_of(api.engine, other)
        == before_other
        == {
            "items": 7,
            "chunks": 4,
            "results": 7,
            "jobs": 1,
        }
    )


def test_batches_delete_lowest_indexes_first_and_stop_at_the_last(api: UnitApi) -> None:
    job_id = completed(api, count=5)
    with api.engine.begin() as conn:
        # The rows are not contiguous: a retry's gaps, say.
        conn.execute(results.delete().where(results.c.index == 2))
    assert delete_rows_in_batches(api.engine, results, job_id, batch=3) == 4
    assert delete_rows_in_batches(api.engine, results, job_id, batch=3) == 0


def test_an_active_job_is_refused_until_cancelled(api: UnitApi) -> None:
    job_id = api.post_job(["a", "b", "c"]).json()["id"]
    with pytest.raises(JobActive, match="cancel it first"):
        delete_job(api.engine, job_id)
    assert rows_of(api.engine, job_id)["items"] == 3  # nothing went

    refused = api.client.delete(f"/v1/jobs/{job_id}", headers=bearer(api.key))
    assert refused.status_code == 409
    assert refused.json()["code"] == "job_active"
    assert "cancel it first" in refused.json()["detail"]

    with api.engine.begin() as conn:
        cancel_job(conn, job_id)
    deleted = api.client.delete(f"/v1/jobs/{job_id}", headers=bearer(api.key))
    assert deleted.status_code == 200
    assert deleted.json() == {"id": job_id, "deleted": {"items": 3, "chunks": 2, "results": 0}}


def test_delete_over_the_api(api: UnitApi, caplog: pytest.LogCaptureFixture) -> None:
    job_id = completed(api, count=3)
    stranger = api.client.delete(f"/v1/jobs/{job_id}", headers=bearer(api.other_key))
    assert stranger.status_code == 404 and stranger.json()["code"] == "job_not_found"
    assert rows_of(api.engine, job_id)["jobs"] == 1

    with caplog.at_level("INFO", logger="core.jobs.deletion"):
        deleted = api.client.delete(f"/v1/jobs/{job_id}", headers=bearer(api.key))
    assert deleted.status_code == 200
    assert deleted.json()["deleted"] == {"items": 3, "chunks": 2, "results": 3}
    # The log names the job and counts, never an input.
    logged = " ".join(record.getMessage() for record in caplog.records)
    assert f"deleted job {job_id}: 3 items, 2 chunks, 3 results" in logged
    assert "text 0" not in logged

    assert api.get(f"/v1/jobs/{job_id}").status_code == 404
    again = api.client.delete(f"/v1/jobs/{job_id}", headers=bearer(api.key))
    assert again.status_code == 404


def test_a_late_worker_write_for_a_deleted_job_writes_nothing(api: UnitApi) -> None:
    job_id = api.post_job(["a", "b", "c", "d"]).json()["id"]
    fake_scores(api.engine, job_id, [0])  # a worker is midway through the job
    with api.engine.begin() as conn:
        cancel_job(conn, job_id)
    delete_job(api.engine, job_id)

    late = ScoredItem(index=1, item_id="r1", prediction=Prediction(label="POSITIVE", score=0.9))
    with api.engine.begin() as conn:
        outcome = write_results(conn, job_id, TEXT_MODEL, None, [late])
        finish_chunks(conn, [(job_id, 0)], ChunkStatus.DONE)  # no row: a no-op
    assert outcome.refused and outcome.written == 0
    assert rows_of(api.engine, job_id) == {"items": 0, "chunks": 0, "results": 0, "jobs": 0}


def test_a_schedule_run_outlives_its_deleted_job(api: UnitApi) -> None:
    job_id = completed(api, count=2)
    now = utcnow()
    with api.engine.begin() as conn:
        run_id = conn.execute(
            insert(schedule_runs)
            .values(
                schedule="nightly",
                due_at=now - timedelta(days=1),
                status="completed",
                job_id=job_id,
                items=2,
                created_at=now,
                finished_at=now,
            )
            .returning(schedule_runs.c.id)
        ).scalar_one()
    delete_job(api.engine, job_id)
    with api.engine.connect() as conn:
        run = conn.execute(select(schedule_runs).where(schedule_runs.c.id == run_id)).one()
        assert get_job(conn, job_id) is None
    assert run.job_id is None and run.status == "completed" and run.items == 2


def test_jobs_delete_command(api: UnitApi, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def in_process_client(base_url: str, headers: dict[str, str], **_: Any) -> TestClient:
        return TestClient(api.client.app, base_url=base_url, headers=headers)

    monkeypatch.setattr(cli.client.httpx, "Client", in_process_client)
    monkeypatch.setenv("BULKSCORE_API_URL", "http://testserver")
    monkeypatch.setenv("BULKSCORE_API_KEY", api.key)
    reset_settings_cache()
    try:
        runner = CliRunner()
        first, second, active = completed(api, 3), completed(api, 2), api.post_job(["x"])
        shown = runner.invoke(app, ["jobs", "delete", first])
        as_json = runner.invoke(app, ["jobs", "delete", second, "--json"])
        refused = runner.invoke(app, ["jobs", "delete", active.json()["id"]])
        missing = runner.invoke(app, ["jobs", "delete", first])
    finally:
        reset_settings_cache()
    assert shown.exit_code == 0, shown.output
    assert f"deleted job {first}: 3 items, 2 chunks, 3 results" in shown.stdout
    assert json.loads(as_json.stdout) == {
        "id": second,
        "deleted": {"items": 2, "chunks": 1, "results": 2},
    }
    assert refused.exit_code != 0 and "cancel it first" in refused.stderr
    assert missing.exit_code != 0 and "(HTTP 404)" in missing.stderr


def test_a_deletion_cut_short_blocks_requeues_and_a_second_delete_finishes_it(
    api: UnitApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = completed(api, count=5)

    def crash(*_: object, **__: object) -> int:
        raise RuntimeError("the process died midway")

    with monkeypatch.context() as patched:
        patched.setattr("core.jobs.deletion.delete_rows_in_batches", crash)
        with pytest.raises(RuntimeError):
            delete_job(api.engine, job_id)

    # Marked purged before any row went: nothing can put it back to work meanwhile.
    shown = api.get(f"/v1/jobs/{job_id}").json()
    assert shown["purged"]["inputs"] is not None and shown["purged"]["results"] is not None
    retried = api.client.post(f"/v1/jobs/{job_id}/retry", headers=bearer(api.key))
    assert retried.status_code == 409 and retried.json()["code"] == "inputs_purged"
    assert api.get(f"/v1/jobs/{job_id}/results").status_code == 410

    again = api.client.delete(f"/v1/jobs/{job_id}", headers=bearer(api.key))
    assert again.status_code == 200
    assert again.json()["deleted"] == {"items": 5, "chunks": 3, "results": 5}
    assert rows_of(api.engine, job_id) == {"items": 0, "chunks": 0, "results": 0, "jobs": 0}
