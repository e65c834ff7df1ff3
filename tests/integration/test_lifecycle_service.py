"""Deleting jobs and the retention purge on the real service: PostgreSQL, Redis, the API
and a real ``bulkscore worker`` process (the GPU stand-in over a tiny model) scoring another
job meanwhile.

The jobs neither deleted nor purged must keep the promise (tests/ledger.py: 0 lost, 0
duplicate); a deleted job's worker writes nothing after the deletion and does not fail.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from api_support import UnitApi, bearer, serve
from ledger import Ledger, audit
from models import paced_text_model, write_models_file
from services import flushed_redis, fresh_postgres_database
from sqlalchemy import func, select
from worker_support import WorkerProcess, poll, running_worker, worker_env

from core.clock import utcnow
from core.config import Settings
from core.heartbeats import redis_client, workers_by_model
from core.jobs.purge import Cutoffs, purge
from core.migrate import upgrade
from core.tables import chunks, items, jobs, results

MODEL = "tiny"
TIMEOUT_S = 120.0


@dataclass
class Service:
    api: UnitApi
    worker: WorkerProcess

    def read(self, job_id: str) -> dict[str, Any]:
        response = self.api.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    def rows(self, table: Any, job_id: str) -> int:
        with self.api.engine.connect() as conn:
            return int(conn.scalar(select(func.count()).where(table.c.job_id == job_id)) or 0)

    def wait_status(self, job_id: str, status: str) -> dict[str, Any]:
        return poll(
            lambda: (job := self.read(job_id))["status"] == status and job,
            TIMEOUT_S,
            f"job {job_id} to be {status}",
        )


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, tiny_text_model: Path) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("lifecycle-service")
    # The big job must still be scoring while its neighbours are deleted, and the victim
    # while it is cancelled: at 20,000 tokens/s, 4,000 texts take at least 4 s here.
    entry = paced_text_model(tiny_text_model, 20_000, max_batch_size=8, max_batch_tokens=512)
    models = write_models_file(tmp / "models.toml", {MODEL: entry})
    with fresh_postgres_database() as pg_url, flushed_redis() as redis_url:
        upgrade(pg_url)
        # Small write windows: many short scoring transactions interleave with the deletes.
        env = worker_env(pg_url, redis_url, models, BULKSCORE_WRITE_BATCH_SIZE="16")
        settings = Settings(
            database_url=pg_url, broker_url=redis_url, models=models, chunk_size=500
        )
        with running_worker(["--models", MODEL], env, tmp / "worker.log") as worker:
            client = redis_client(redis_url)
            poll(lambda: workers_by_model(client).get(MODEL), TIMEOUT_S, "a tiny heartbeat")
            client.close()
            with serve(settings) as api:
                yield Service(api, worker)


@pytest.fixture(scope="module")
def ledger() -> Ledger:
    """Every job of the module's service: the audit counts any job it does not know."""
    return Ledger()


def texts(count: int, tag: str) -> list[str]:
    return [f"{tag} review {i} " + "a good film " * (i % 12) for i in range(count)]


def test_delete_and_purge_while_another_job_scores(service: Service, ledger: Ledger) -> None:
    api, engine = service.api, service.api.engine
    doomed = ledger.submit(api, texts(300, "doomed")).json()["id"]
    old = ledger.submit(api, texts(400, "old")).json()["id"]
    for job_id in (doomed, old):
        service.wait_status(job_id, "completed")

    # A big job scoring while its neighbours are deleted and purged.
    scoring = ledger.submit(api, texts(4000, "scoring")).json()["id"]
    poll(lambda: service.rows(results, scoring) >= 64, TIMEOUT_S, "the big job under way")

    deleted = api.client.delete(f"/v1/jobs/{doomed}", headers=bearer(api.key))
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["deleted"] == {"items": 300, "chunks": 1, "results": 300}
    refused = api.client.delete(f"/v1/jobs/{scoring}", headers=bearer(api.key))
    assert refused.status_code == 409 and refused.json()["code"] == "job_active"

    # Every final job finished before a minute from now is past both limits; batches of 50
    # rows make the purge many short transactions among the worker's writes.
    ahead = utcnow() + timedelta(minutes=1)
    report = purge(engine, Cutoffs(inputs_before=ahead, results_before=ahead), batch=50)
    assert report.job_ids == [old] and (report.input_rows, report.result_rows) == (400, 400)
    assert service.rows(items, scoring) == 4000, "an active job is never purged"

    service.wait_status(scoring, "completed")
    assert audit(engine, ledger, [scoring]).problems() == {}
    assert service.read(old)["purged"]["results"] is not None
    assert api.get(f"/v1/jobs/{old}/results").status_code == 410
    assert api.get(f"/v1/jobs/{doomed}").status_code == 404
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).where(jobs.c.id == doomed)) == 0


def test_a_worker_finishing_a_deleted_jobs_chunk_writes_nothing_and_goes_on(
    service: Service, ledger: Ledger
) -> None:
    api = service.api
    victim = ledger.submit(api, texts(3000, "victim")).json()["id"]
    poll(lambda: service.rows(results, victim) >= 32, TIMEOUT_S, "the victim under way")
    cancelled = api.client.post(f"/v1/jobs/{victim}/cancel", headers=bearer(api.key))
    assert cancelled.json()["status"] == "cancelled"
    # Deleted while the worker is still inside its chunk: its next write finds no job.
    deleted = api.client.delete(f"/v1/jobs/{victim}", headers=bearer(api.key))
    assert deleted.status_code == 200, deleted.text
    time.sleep(2)
    for table in (items, chunks, results):
        assert service.rows(table, victim) == 0, table.name

    # The worker did not fail: the next job completes and keeps the promise.
    after = ledger.submit(api, texts(200, "after")).json()["id"]
    service.wait_status(after, "completed")
    assert audit(api.engine, ledger, [after]).problems() == {}
    assert "Traceback" not in service.worker.log
