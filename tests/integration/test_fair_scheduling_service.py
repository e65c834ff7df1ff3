"""Fair scheduling on the real service: PostgreSQL, Redis, the API and one real
``bulkscore worker`` process serving the GPU stand-in (a tiny model's tokenizer and labels,
a forward pass that takes a set time per token).

A small job submitted behind a big one finishes first; a normal job overtakes a low one;
two keys' jobs advance together; and the hand-backs that make it so write every item
exactly once (the ledger's audit stays at 0 lost, 0 duplicate, 0 stuck).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from api_support import UnitApi, bearer, serve
from ledger import Ledger, audit
from models import paced_text_model, write_models_file
from services import flushed_redis, fresh_postgres_database
from sqlalchemy import func, select
from worker_support import WorkerProcess, poll, running_worker, worker_env

from core.config import Settings
from core.heartbeats import redis_client, workers_by_model
from core.jobs.status import ACTIVE_JOB_STATES
from core.migrate import upgrade
from core.tables import jobs

MODEL = "tiny"
TIMEOUT_S = 120.0
BIG = 6_000  # three chunks of 2,000
TOKENS_PER_S = 40_000.0  # the stand-in's forward pass (see the fixture)


@dataclass
class Service:
    api: UnitApi
    worker: WorkerProcess
    log_path: Path
    ledger: Ledger

    def submit(self, texts: list[str], key: str | None = None, **extra: Any) -> dict[str, Any]:
        body = {"model": MODEL, "inputs": [{"text": t} for t in texts], **extra}
        response = self.api.client.post("/v1/jobs", json=body, headers=bearer(key or self.api.key))
        assert response.status_code == 202, response.text
        job: dict[str, Any] = response.json()
        self.ledger.accepted.append(job["id"])
        return job

    def read(self, job_id: str, key: str | None = None) -> dict[str, Any]:
        response = self.api.get(f"/v1/jobs/{job_id}", key=key)
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    def wait_running(self, job_id: str, key: str | None = None) -> None:
        poll(
            lambda: self.read(job_id, key)["counts"]["succeeded"] > 0,
            TIMEOUT_S,
            f"job {job_id} to have rows",
            interval=0.01,
        )

    def wait_completed(self, job_id: str, key: str | None = None) -> dict[str, Any]:
        return poll(
            lambda: (job := self.read(job_id, key))["status"] == "completed" and job,
            TIMEOUT_S,
            f"job {job_id} to complete",
        )

    def quiet(self) -> None:
        """Wait for every accepted job to end, so each test starts on an idle worker."""

        def active() -> int:
            with self.api.engine.connect() as conn:
                return int(
                    conn.scalar(
                        select(func.count())
                        .select_from(jobs)
                        .where(
                            jobs.c.id.in_(self.ledger.accepted),
                            jobs.c.status.in_([s.value for s in ACTIVE_JOB_STATES]),
                        )
                    )
                    or 0
                )

        poll(lambda: active() == 0, TIMEOUT_S, "every job to end")


def texts(count: int, tag: str) -> list[str]:
    return [f"{tag} review number {i} " + "word " * (i % 23) for i in range(count)]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, tiny_text_model: Path) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("fair-service")
    # Each test needs the job ahead still running once the next one is accepted: the tiny
    # model scored a 6,000-text job in 1.2 s, and a CI run saw the low job complete before
    # the normal one. 108,000 tokens per job here: at least 2.7 s.
    entry = paced_text_model(
        tiny_text_model, TOKENS_PER_S, max_batch_size=16, max_batch_tokens=1024
    )
    models = write_models_file(tmp / "models.toml", {MODEL: entry})
    with fresh_postgres_database() as pg_url, flushed_redis() as redis_url:
        upgrade(pg_url)
        # No time slice and small windows: a waiting job that ranks first takes the worker
        # at the next window, so the tiny model's fast chunks still show the hand-back.
        env = worker_env(
            pg_url,
            redis_url,
            models,
            BULKSCORE_WRITE_BATCH_SIZE="32",
            BULKSCORE_FAIR_TIME_SLICE_S="0",
            BULKSCORE_CROSS_JOB_BATCHING="false",
        )
        settings = Settings(
            database_url=pg_url, broker_url=redis_url, models=models, chunk_size=2_000
        )
        log_path = tmp / "worker.log"
        with running_worker(["--models", MODEL], env, log_path) as worker:
            client = redis_client(redis_url)
            poll(lambda: workers_by_model(client).get(MODEL), TIMEOUT_S, "a worker heartbeat")
            client.close()
            with serve(settings) as api:
                service = Service(api, worker, log_path, Ledger())
                yield service
                problems = audit(api.engine, service.ledger).problems()
                assert problems == {}, problems


def test_a_small_job_from_another_key_finishes_before_the_big_job_ahead_of_it(
    service: Service,
) -> None:
    big = service.submit(texts(BIG, "big"))
    service.wait_running(big["id"])
    small = service.submit(texts(5, "small"), key=service.api.other_key)
    done = service.wait_completed(small["id"], key=service.api.other_key)
    assert done["counts"] == {"total": 5, "succeeded": 5, "failed": 0}
    still = service.read(big["id"])
    assert still["status"] == "running", "the small job waited for the whole big job"
    assert service.wait_completed(big["id"])["counts"]["succeeded"] == BIG
    log = service.log_path.read_text()
    assert f"of job {big['id']} yielded" in log, "the big chunk handed its rest back"
    service.quiet()


def test_a_normal_job_overtakes_a_low_one_submitted_before_it(service: Service) -> None:
    low = service.submit(texts(BIG, "low"), priority="low")
    service.wait_running(low["id"])
    normal = service.submit(texts(BIG, "normal"), key=service.api.other_key)
    finished_normal = service.wait_completed(normal["id"], key=service.api.other_key)
    assert service.read(low["id"])["status"] == "running"
    finished_low = service.wait_completed(low["id"])
    assert finished_normal["finished_at"] < finished_low["finished_at"]
    service.quiet()


def test_two_keys_jobs_advance_together(service: Service) -> None:
    first = service.submit(texts(BIG, "first"))
    service.wait_running(first["id"])
    second = service.submit(texts(BIG, "second"), key=service.api.other_key)
    service.wait_running(second["id"], key=service.api.other_key)
    # Once both run, neither waits for the other to end: when one completes, the other is
    # far along (first in, first out would leave the second at its very start).
    ended = poll(
        lambda: next(
            (
                (job_id, key)
                for job_id, key in ((first["id"], None), (second["id"], service.api.other_key))
                if service.read(job_id, key)["status"] == "completed"
            ),
            None,
        ),
        TIMEOUT_S,
        "one of the two jobs to complete",
        interval=0.05,
    )
    other = (
        service.read(second["id"], service.api.other_key)
        if ended[0] == first["id"]
        else service.read(first["id"])
    )
    assert other["counts"]["succeeded"] >= BIG // 3, other
    service.quiet()
