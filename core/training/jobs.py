"""Training jobs in SQL: a ``jobs`` row polled like any other, plus its ``training_runs`` row.

A training job is a job without items and with one chunk (index 0, ``[0, 1)``): ``jobs.model``
is the name being trained, ``jobs.runs_on`` its base (whose workers train it, from the base's
queue), ``total`` the number of examples, and on completion ``succeeded``/``failed`` count the
examples used and skipped and ``model_revision`` the version it registered ("v2"). Its
``training_runs`` row marks it as a training job and holds the request (the uploaded data
for jobs that run on the workers). The chunk is claimed, leased, renewed, released, swept
and re-sent exactly as a scoring job's (:mod:`engine.chunk_work`), so a killed worker's or a
lost message's training is taken up again like any chunk.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, and_, exists, insert, select, update

from core.clock import utcnow
from core.jobs.lifecycle import Job, get_job, mark_failed, new_job_id
from core.jobs.status import ChunkStatus, JobDriver, JobStatus
from core.models.registry import ModelSpec
from core.models.trained import version_label
from core.tables import chunks, jobs, training_runs
from core.training.data import DataFormat
from core.training.defaults import DEFAULT_HOLDOUT_FRACTION, DEFAULT_SEED

TRAINING_CHUNK = 0  # a training job's one chunk


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
    driver: JobDriver = JobDriver.SERVICE,
) -> Job:
    """Insert a queued training job, its run and its chunk in the caller's transaction."""
    now = utcnow()
    job_id = new_job_id()
    conn.execute(
        insert(jobs).values(
            id=job_id,
            model=name,
            model_revision=None,
            input_kind=base.input_kind.value,
            status=JobStatus.QUEUED.value,
            total=total,
            succeeded=0,
            failed=0,
            owner_key_id=owner_key_id,
            created_at=now,
            driver=driver.value,
            runs_on=base.name,
        )
    )
    conn.execute(
        insert(chunks).values(
            job_id=job_id,
            index=TRAINING_CHUNK,
            start=0,
            stop=1,
            status=ChunkStatus.QUEUED.value,
            attempts=0,
            updated_at=now,
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


def is_training_job(conn: Connection, job_id: str) -> bool:
    return bool(conn.scalar(select(exists().where(training_runs.c.job_id == job_id))))


def _finish_chunk(conn: Connection, job_id: str) -> None:
    conn.execute(
        update(chunks)
        .where(chunks.c.job_id == job_id)
        .values(status=ChunkStatus.DONE.value, leased_until=None, updated_at=utcnow())
    )


def fail_training_job(conn: Connection, job_id: str, reason: str) -> None:
    """The job ``failed`` with ``reason`` and its chunk finished: there is nothing to retry
    (the data is unusable, the name taken) or no attempt left. No bisection: one chunk,
    nothing to split."""
    mark_failed(conn, job_id, reason)
    _finish_chunk(conn, job_id)


def complete_training_job(
    conn: Connection, job_id: str, version: int, used: int, skipped: int
) -> bool:
    """running -> completed with the version it registered, its chunk done; False if it was
    cancelled (or completed by another delivery)."""
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
    if done:
        _finish_chunk(conn, job_id)
    return bool(done)
