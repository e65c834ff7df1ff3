"""No silent waits and job deadlines on the real service: PostgreSQL, Redis, the API (its
real Celery producer and heartbeat reads) and a real ``bulkscore worker`` process.

One worker serves ``tiny``; ``unserved`` is registered (same files) but no worker serves it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from api_support import UnitApi, bearer, serve
from models import paced_text_model, write_models_file
from services import flushed_redis, fresh_postgres_database
from sqlalchemy import func, select, update
from worker_support import WorkerProcess, poll, running_worker, worker_env

from core.clock import utcnow
from core.config import Settings
from core.heartbeats import redis_client, workers_by_model
from core.jobs.status import ChunkStatus
from core.migrate import upgrade
from core.tables import chunks, jobs, results

SERVED = "tiny"
UNSERVED = "unserved"
TIMEOUT_S = 60.0


@dataclass
class Service:
    api: UnitApi
    worker: WorkerProcess

    def submit(self, model: str, texts: list[str], **extra: Any) -> Any:
        body = {"model": model, "inputs": [{"text": t} for t in texts], **extra}
        return self.api.client.post("/v1/jobs", json=body, headers=bearer(self.api.key))

    def read(self, job_id: str) -> dict[str, Any]:
        response = self.api.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    def rows(self, job_id: str) -> int:
        with self.api.engine.connect() as conn:
            count = conn.scalar(
                select(func.count()).select_from(results).where(results.c.job_id == job_id)
            )
        return int(count or 0)

    def wait_status(self, job_id: str, status: str) -> dict[str, Any]:
        return poll(
            lambda: (job := self.read(job_id))["status"] == status and job,
            TIMEOUT_S,
            f"job {job_id} to be {status}",
        )


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, tiny_text_model: Path) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("expiry-service")
    # Paced (tests/models.py): the 6,000-text job is still mid-chunk when its deadline is
    # moved, however fast the machine (143,897 tokens: at least 7 s).
    entry = paced_text_model(tiny_text_model, 20_000, max_batch_size=8, max_batch_tokens=512)
    models = write_models_file(tmp / "models.toml", {SERVED: entry, UNSERVED: entry})
    with fresh_postgres_database() as pg_url, flushed_redis() as redis_url:
        upgrade(pg_url)
        # A short lease: the reconciler timer (which expires overdue jobs) ticks every 2.5 s.
        # Small write windows: a deadline reached mid-chunk stops the chunk at the next one.
        env = worker_env(
            pg_url,
            redis_url,
            models,
            BULKSCORE_CHUNK_LEASE_S="5",
            BULKSCORE_WRITE_BATCH_SIZE="16",
        )
        settings = Settings(
            database_url=pg_url, broker_url=redis_url, models=models, chunk_size=100_000
        )
        with running_worker(["--models", SERVED], env, tmp / "worker.log") as worker:
            client = redis_client(redis_url)
            poll(lambda: workers_by_model(client).get(SERVED), TIMEOUT_S, "a tiny heartbeat")
            client.close()
            with serve(settings) as api:
                yield Service(api, worker)


def test_a_job_for_an_unserved_model_is_warned_about_and_expires(service: Service) -> None:
    response = service.submit(UNSERVED, ["a good film", "a dull plot"], expires_after_s=3)
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] == "queued"
    assert job["queue"] == {"runs_on": UNSERVED, "chunks_ahead": 0, "worker_live": False}
    [warning] = job["warnings"]
    assert f"no live worker serves model {UNSERVED!r}" in warning
    assert f"bulkscore worker --models {UNSERVED}" in warning
    assert service.read(job["id"])["warnings"] == [warning]
    # No worker claims it: the tiny worker's reconciler timer ends it.
    expired = service.wait_status(job["id"], "expired")
    assert expired["counts"] == {"total": 2, "succeeded": 0, "failed": 0}
    assert expired["finished_at"] is not None
    assert expired["queue"] is None and expired["warnings"] == []
    assert service.rows(job["id"]) == 0
    service.worker.wait_for(rf"job {job['id']}: not finished by its deadline")


def test_a_served_models_job_shows_a_live_worker_and_no_warning(service: Service) -> None:
    job = service.submit(SERVED, ["a good film"]).json()
    assert job["warnings"] == []
    assert job["queue"] in (None, {"runs_on": SERVED, "chunks_ahead": 0, "worker_live": True})
    assert service.wait_status(job["id"], "completed")["counts"]["succeeded"] == 1


def test_a_deadline_reached_mid_chunk_keeps_the_rows_and_writes_nothing_after(
    service: Service,
) -> None:
    total = 6000
    texts = [f"text {i} " + "good film " * (i % 20) for i in range(total)]
    job_id = service.submit(SERVED, texts, expires_after_s=3600).json()["id"]
    poll(lambda: service.rows(job_id) >= 64, TIMEOUT_S, "the chunk to be under way")
    # The deadline passes while the worker is mid-chunk (its writes hold the job's row for
    # milliseconds at a time, so this update waits at most one write window).
    with service.api.engine.begin() as conn:
        conn.execute(update(jobs).where(jobs.c.id == job_id).values(expires_at=utcnow()))
    expired = service.wait_status(job_id, "expired")
    # The worker's next write found the job past its deadline and wrote nothing: the rows
    # are those written before it, the counters match them, and nothing lands afterwards.
    service.worker.wait_for(rf"{job_id}.*expired")
    kept = service.rows(job_id)
    assert 64 <= kept < total, kept
    assert expired["counts"]["succeeded"] + expired["counts"]["failed"] == kept
    time.sleep(2)
    assert service.rows(job_id) == kept
    with service.api.engine.connect() as conn:
        statuses = set(conn.scalars(select(chunks.c.status).where(chunks.c.job_id == job_id)))
    assert ChunkStatus.QUEUED.value not in statuses
    assert ChunkStatus.RUNNING.value not in statuses
