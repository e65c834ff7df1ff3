"""Training jobs in SQL: a ``jobs`` row polled like any other, plus its ``training_runs`` row.

A training job is a job without items or chunks: ``jobs.model`` is the name being trained,
``total`` the number of examples, and on completion ``succeeded``/``failed`` count the
examples used and skipped and ``model_revision`` the version it registered ("v2"). Its
``training_runs`` row marks it as a training job and holds the request (the uploaded data
for jobs that run on the workers).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, and_, insert, select, update

from core.clock import utcnow
from core.jobs.lifecycle import Job, get_job, new_job_id
from core.jobs.status import JobDriver, JobStatus
from core.models.registry import ModelSpec
from core.models.trained import version_label
from core.tables import jobs, training_runs
from core.training.data import DataFormat

DEFAULT_HOLDOUT_FRACTION = 0.2
DEFAULT_SEED = 0


@dataclass(frozen=True, slots=True)
class TrainingRun:
    """What a training job trains: ``name`` on ``base``, from ``data`` (None: local files)."""

    job_id: str
    name: str
    base: str
    data_format: DataFormat
    data: bytes | None
    holdout_fraction: float
    seed: int


def create_training_job(
    conn: Connection,
    *,
    name: str,
    base: ModelSpec,
    total: int,
    data_format: DataFormat,
    data: bytes | None,
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION,
    seed: int = DEFAULT_SEED,
    owner_key_id: int | None = None,
    status: JobStatus = JobStatus.QUEUED,
    driver: JobDriver = JobDriver.SERVICE,
) -> Job:
    """Insert a training job and its run in the caller's transaction."""
    now = utcnow()
    job_id = new_job_id()
    conn.execute(
        insert(jobs).values(
            id=job_id,
            model=name,
            model_revision=None,
            input_kind=base.input_kind.value,
            status=status.value,
            total=total,
            succeeded=0,
            failed=0,
            owner_key_id=owner_key_id,
            created_at=now,
            started_at=now if status == JobStatus.RUNNING else None,
            driver=driver.value,
        )
    )
    conn.execute(
        insert(training_runs).values(
            job_id=job_id,
            name=name,
            base=base.name,
            data_format=data_format.value,
            data=data,
            holdout_fraction=holdout_fraction,
            seed=seed,
            created_at=now,
        )
    )
    job = get_job(conn, job_id)
    assert job is not None
    return job


def get_training_run(conn: Connection, job_id: str) -> TrainingRun | None:
    """The run of training job ``job_id``; None if it is no training job (or is gone)."""
    row = conn.execute(select(training_runs).where(training_runs.c.job_id == job_id)).first()
    if row is None:
        return None
    return TrainingRun(
        job_id=row.job_id,
        name=row.name,
        base=row.base,
        data_format=DataFormat(row.data_format),
        data=row.data,
        holdout_fraction=float(row.holdout_fraction),
        seed=int(row.seed),
    )


def claim_training_job(conn: Connection, job_id: str) -> bool:
    """queued -> running; False if the job is final (cancelled, done) or gone.

    A job already ``running`` is taken over: Redis only delivers a training message again
    when the worker that had it died before acknowledging it. Should both still run, the
    unique ``trained_models.job_id`` lets only one of them register a version.
    """
    now = utcnow()
    claimed = conn.execute(
        update(jobs)
        .where(
            and_(
                jobs.c.id == job_id,
                jobs.c.status.in_([JobStatus.QUEUED.value, JobStatus.RUNNING.value]),
            )
        )
        .values(status=JobStatus.RUNNING.value, started_at=now)
    ).rowcount
    return bool(claimed)


def complete_training_job(
    conn: Connection, job_id: str, version: int, used: int, skipped: int
) -> bool:
    """running -> completed with the version it registered; False if it was cancelled."""
    done = conn.execute(
        update(jobs)
        .where(and_(jobs.c.id == job_id, jobs.c.status == JobStatus.RUNNING.value))
        .values(
            status=JobStatus.COMPLETED.value,
            model_revision=version_label(version),
            succeeded=used,
            failed=skipped,
            finished_at=utcnow(),
        )
    ).rowcount
    return bool(done)
