"""Job deadlines (``expires_after_s``): the claim, the write and the reconciler's sweep each
end an overdue job as ``expired``, keeping its rows so far. On SQLite with a fake runner;
tests/integration/test_job_expiry_service.py runs the same against real processes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, update

from core.chunks.claim import ClaimOutcome, claim_chunk
from core.clock import utcnow
from core.config import Settings
from core.db import dispose_engines, get_engine
from core.inputs.items import InputItem
from core.jobs.expiry import expire_overdue
from core.jobs.lifecycle import Job, create_job, get_job
from core.jobs.predictions import Prediction
from core.jobs.status import FINAL_JOB_STATES, ChunkStatus, JobDriver, JobStatus
from core.migrate import upgrade
from core.models.registry import Backend, ModelSpec, Task
from core.schedules.runner import _JOB_TO_RUN
from core.tables import chunks, jobs, results
from engine.chunk_work import ChunkOutcome, work_on_chunk
from engine.runners.base import Progress, Runner

SPEC = ModelSpec(
    name="fake", task=Task.TEXT_CLASSIFICATION, backend=Backend.TRANSFORMERS, source="/nowhere"
)
OTHER = ModelSpec(
    name="unserved", task=Task.TEXT_CLASSIFICATION, backend=Backend.TRANSFORMERS, source="/x"
)


@pytest.fixture()
def engine(tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'expiry.db'}"
    upgrade(url)
    yield get_engine(url)
    dispose_engines()


def new_job(
    engine: Engine,
    count: int,
    *,
    chunk_size: int = 4,
    spec: ModelSpec = SPEC,
    expires_after_s: float | None = 3600,
    driver: JobDriver = JobDriver.SERVICE,
) -> Job:
    # Equal lengths (two digits): write windows then hold write_batch_size texts each.
    inputs = [InputItem(item_id=f"r{i}", text=f"text {i:02d}") for i in range(count)]
    with engine.begin() as conn:
        return create_job(
            conn,
            spec,
            inputs,
            chunk_size=chunk_size,
            expires_after_s=expires_after_s,
            driver=driver,
        )


def overdue(engine: Engine, job_id: str) -> None:
    """Move the job's deadline into the past (rather than sleep through it)."""
    with engine.begin() as conn:
        conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )


def chunk_statuses(engine: Engine, job_id: str) -> list[str]:
    with engine.connect() as conn:
        return list(
            conn.scalars(
                select(chunks.c.status).where(chunks.c.job_id == job_id).order_by(chunks.c.index)
            )
        )


def result_count(engine: Engine, job_id: str) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).where(results.c.job_id == job_id)) or 0)


def read(engine: Engine, job_id: str) -> Job:
    with engine.connect() as conn:
        job = get_job(conn, job_id)
    assert job is not None
    return job


def test_expired_is_a_final_state_known_to_the_schedule_runner() -> None:
    assert JobStatus.EXPIRED.is_final
    # Every final job state ends a schedule run one way or another.
    assert set(_JOB_TO_RUN) == FINAL_JOB_STATES


def test_a_job_stores_its_deadline(engine: Engine) -> None:
    before = utcnow()
    job = new_job(engine, 4, expires_after_s=60)
    assert job.expires_at is not None
    assert before + timedelta(seconds=59) <= job.expires_at.replace(tzinfo=before.tzinfo)
    assert new_job(engine, 4, expires_after_s=None).expires_at is None


def test_a_claim_within_the_deadline_takes_the_chunk(engine: Engine) -> None:
    job = new_job(engine, 8)
    with engine.begin() as conn:
        claim = claim_chunk(conn, job.id, 0, lease_s=60, max_attempts=3)
    assert claim.outcome == ClaimOutcome.CLAIMED


def test_a_claim_past_the_deadline_is_refused_and_expires_the_job(engine: Engine) -> None:
    job = new_job(engine, 8)
    overdue(engine, job.id)
    with engine.begin() as conn:
        claim = claim_chunk(conn, job.id, 0, lease_s=60, max_attempts=3)
    assert claim.outcome == ClaimOutcome.EXPIRED
    after = read(engine, job.id)
    assert after.status == JobStatus.EXPIRED
    assert after.finished_at is not None
    # The remaining chunks never run.
    assert chunk_statuses(engine, job.id) == [ChunkStatus.CANCELLED.value] * 2
    # A later delivery finds it expired, without changing anything.
    with engine.begin() as conn:
        again = claim_chunk(conn, job.id, 1, lease_s=60, max_attempts=3)
    assert again.outcome == ClaimOutcome.EXPIRED
    assert read(engine, job.id).finished_at == after.finished_at


class ExpiringRunner(Runner):
    """Scores texts; after ``before_deadline`` predictions the job's deadline has passed."""

    name: str = "fake"
    revision: str | None = None

    def __init__(self, engine: Engine, job_id: str, before_deadline: int) -> None:
        self.engine, self.job_id, self.left = engine, job_id, before_deadline

    def setup(self, device: str = "cpu") -> None:
        pass

    def predict(self, batch: Sequence[Any], progress: Progress | None = None) -> list[Prediction]:
        self.left -= len(batch)
        if self.left < 0:
            overdue(self.engine, self.job_id)
        return [Prediction(label="ok", score=1.0) for _ in batch]


def test_a_worker_delivery_of_an_overdue_job_reports_it_expired(engine: Engine) -> None:
    job = new_job(engine, 4)
    overdue(engine, job.id)
    runners: dict[str, Runner] = {"fake": ExpiringRunner(engine, job.id, before_deadline=99)}
    report = work_on_chunk(engine, Settings(database_url="sqlite://"), job.id, 0, runners.get)
    assert report.outcome == ChunkOutcome.CANCELLED
    assert report.reason == "job expired (past its deadline)"
    assert result_count(engine, job.id) == 0
    assert read(engine, job.id).status == JobStatus.EXPIRED


def test_a_chunk_being_scored_stops_at_its_deadline_keeping_its_rows(engine: Engine) -> None:
    job = new_job(engine, 12, chunk_size=12)
    settings = Settings(database_url="sqlite://", write_batch_size=4, max_batch_size=4)
    # The deadline passes while the third window is scored.
    runner = ExpiringRunner(engine, job.id, before_deadline=8)
    report = work_on_chunk(engine, settings, job.id, 0, {"fake": runner}.get)
    assert report.outcome == ChunkOutcome.CANCELLED
    assert report.reason == "job expired during the chunk"
    after = read(engine, job.id)
    assert after.status == JobStatus.EXPIRED
    # Windows are predicted up to two ahead of their writes (engine.scoring, with the
    # writer beside them: engine.window_writer), so the deadline may pass before the first
    # or second write; the third window's write never lands. Whatever landed stays, and the
    # counters say the same.
    rows = result_count(engine, job.id)
    assert rows in (0, 4, 8)
    assert (after.succeeded, after.failed) == (rows, 0)


def test_the_sweep_expires_overdue_jobs_of_any_model_once(engine: Engine) -> None:
    served = new_job(engine, 4)
    unserved = new_job(engine, 4, spec=OTHER)
    no_deadline = new_job(engine, 4, expires_after_s=None)
    in_time = new_job(engine, 4)
    embedded = new_job(engine, 4, driver=JobDriver.EMBEDDED)
    for job in (served, unserved, embedded):
        overdue(engine, job.id)
    with engine.begin() as conn:
        expired = expire_overdue(conn)
    assert sorted(expired) == sorted([served.id, unserved.id])
    for job in (served, unserved):
        assert read(engine, job.id).status == JobStatus.EXPIRED
        assert chunk_statuses(engine, job.id) == [ChunkStatus.CANCELLED.value]
    for job in (no_deadline, in_time, embedded):
        assert read(engine, job.id).status == JobStatus.QUEUED
    with engine.begin() as conn:
        assert expire_overdue(conn) == []


def test_a_finished_job_is_never_expired(engine: Engine) -> None:
    job = new_job(engine, 4)
    with engine.begin() as conn:
        conn.execute(
            update(jobs).where(jobs.c.id == job.id).values(status=JobStatus.COMPLETED.value)
        )
    overdue(engine, job.id)
    with engine.begin() as conn:
        assert expire_overdue(conn) == []
    assert read(engine, job.id).status == JobStatus.COMPLETED
