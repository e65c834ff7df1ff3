"""Claiming a job's chunks in SQL: the lease that makes chunk tasks idempotent.

Redis may deliver a chunk message more than once (late acks, ``visibility_timeout``
redelivery, a retry racing a slow worker). The chunk row decides who works: a claim is one
conditional ``UPDATE``, so two deliveries cannot both win it, and the ``leased_until``
deadline lets a later delivery take over a chunk whose worker died. Plain SQL only (no
Celery here), so the same rules can be tested and reused without a broker. Renewing,
finishing and releasing claimed chunks (one or many at once) is :mod:`core.chunks.batches`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Exists,
    Select,
    and_,
    exists,
    or_,
    select,
    true,
    update,
)

from core.clock import utcnow
from core.jobs.expiry import expire_job, within_deadline
from core.jobs.lifecycle import Chunk
from core.jobs.status import ACTIVE_JOB_STATES, ChunkStatus, JobDriver, JobStatus
from core.tables import chunks, jobs, training_runs


class ClaimOutcome(StrEnum):
    """Why a delivery of a chunk task may or may not work on the chunk."""

    CLAIMED = "claimed"  # this delivery holds the lease: score the chunk
    DONE = "done"  # already scored by an earlier delivery
    CANCELLED = "cancelled"  # the chunk or its job was cancelled
    JOB_FINAL = "job_final"  # the job is completed or failed: nothing left to do
    EXPIRED = "expired"  # the job is past its deadline: this claim expired it (or one before)
    BUSY = "busy"  # another delivery holds a live lease: try again when it runs out
    EXHAUSTED = "exhausted"  # every attempt was used up (a poison chunk)
    MISSING = "missing"  # no such job or chunk (deleted, or a stray message)


@dataclass(frozen=True, slots=True)
class Claim:
    outcome: ClaimOutcome
    chunk: Chunk | None = None
    attempts: int = 0
    # For BUSY: seconds until the holder's lease runs out.
    retry_in_s: float = 0.0

    @property
    def claimed(self) -> bool:
        return self.outcome == ClaimOutcome.CLAIMED


@dataclass(frozen=True, slots=True)
class Delivery:
    """What a chunk message needs to know first: its job's model and both states."""

    model: str
    model_revision: str | None
    # The model whose workers run the chunk (``model``, or a training job's base).
    runs_on: str
    training: bool  # a training job's chunk: train ``model`` on ``runs_on``
    job_status: JobStatus
    chunk_status: ChunkStatus | None  # None: the job has no such chunk
    attempts: int


# A chunk with nothing left to claim: scored, or its items moved to new chunks (SPLIT,
# MERGED: core.chunks.split, core.chunks.runs), which are finished too.
SETTLED_CHUNK_STATES = frozenset({ChunkStatus.DONE, ChunkStatus.SPLIT, ChunkStatus.MERGED})


def delivery_state(conn: Connection, job_id: str, index: int) -> Delivery | None:
    """The job and chunk a message names, in one query; None if there is no such job.

    With cross-job batching most deliveries of small jobs' chunks find them already done by
    another chunk's batch; answering those with a single read keeps the no-op cheap.
    """
    row = conn.execute(
        select(
            jobs.c.model,
            jobs.c.model_revision,
            jobs.c.runs_on,
            jobs.c.status,
            chunks.c.status.label("chunk_status"),
            chunks.c.attempts,
            training_runs.c.job_id.label("training_job"),
        )
        .select_from(
            jobs.outerjoin(
                chunks, and_(chunks.c.job_id == jobs.c.id, chunks.c.index == index)
            ).outerjoin(training_runs, training_runs.c.job_id == jobs.c.id)
        )
        .where(jobs.c.id == job_id)
    ).first()
    if row is None:
        return None
    return Delivery(
        model=row.model,
        model_revision=row.model_revision,
        runs_on=row.runs_on,
        training=row.training_job is not None,
        job_status=JobStatus(row.status),
        chunk_status=ChunkStatus(row.chunk_status) if row.chunk_status is not None else None,
        attempts=row.attempts or 0,
    )


def as_utc(moment: datetime) -> datetime:
    """``moment`` as an aware UTC datetime (SQLite hands back naive UTC values)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _active_job(job_id: str, driver: JobDriver, now: datetime) -> Exists:
    return exists(
        select(jobs.c.id).where(
            and_(
                jobs.c.id == job_id,
                jobs.c.status.in_([s.value for s in ACTIVE_JOB_STATES]),
                jobs.c.driver == driver.value,
                within_deadline(now),
            )
        )
    )


def service_jobs(models: list[str] | None, now: datetime | None = None) -> ColumnElement[bool]:
    """Active jobs that run on ``models``, driven by the service: all a worker's sweeps may
    touch.

    Every query by which a worker finds work it was not sent (cross-job siblings, expired
    leases, exhausted chunks, lost messages) goes through this condition, so an embedded
    job (:attr:`JobDriver.EMBEDDED`) on the same database is never taken over, however long
    its process pauses. By ``jobs.runs_on``: a training job's chunk is the work of its
    base's workers, swept and re-sent to the base's queue like a scoring chunk. A job past
    its deadline is no work either: it is only waiting to be expired. ``models`` None: any.
    """
    return and_(
        jobs.c.runs_on.in_(models) if models is not None else true(),
        jobs.c.status.in_([s.value for s in ACTIVE_JOB_STATES]),
        jobs.c.driver == JobDriver.SERVICE.value,
        within_deadline(now or utcnow()),
    )


def claim_chunk(
    conn: Connection,
    job_id: str,
    index: int,
    *,
    lease_s: float,
    max_attempts: int,
    driver: JobDriver = JobDriver.SERVICE,
    now: datetime | None = None,
) -> Claim:
    """Take chunk ``index`` of ``job_id`` for one attempt, or say why not.

    A chunk is claimable when its job is active and driven by ``driver``, it has attempts
    left, and it is queued or its last holder's lease has run out. Claiming sets it
    ``running``, counts the attempt and leases it until ``now + lease_s``. A job past its
    deadline is expired by the refused claim, in the same transaction. Call inside a
    transaction.
    """
    now = now or utcnow()
    claimable = and_(
        chunks.c.job_id == job_id,
        chunks.c.index == index,
        chunks.c.attempts < max_attempts,
        or_(
            chunks.c.status == ChunkStatus.QUEUED.value,
            and_(
                chunks.c.status == ChunkStatus.RUNNING.value,
                or_(chunks.c.leased_until.is_(None), chunks.c.leased_until <= now),
            ),
        ),
        _active_job(job_id, driver, now),
    )
    taken = take_chunk(conn, job_id, index, claimable, lease_s=lease_s, now=now)
    return taken or _why_not(conn, job_id, index, max_attempts, driver, now)


def take_chunk(
    conn: Connection,
    job_id: str,
    index: int,
    claimable: ColumnElement[bool],
    *,
    lease_s: float,
    now: datetime,
) -> Claim | None:
    """The claim itself: one conditional ``UPDATE`` of chunk ``index`` of ``job_id`` where
    ``claimable`` still holds: running, one more attempt, leased until ``now + lease_s``."""
    row = conn.execute(
        update(chunks)
        .where(and_(chunks.c.job_id == job_id, chunks.c.index == index, claimable))
        .values(
            status=ChunkStatus.RUNNING.value,
            attempts=chunks.c.attempts + 1,
            leased_until=now + timedelta(seconds=lease_s),
            updated_at=now,
        )
        .returning(chunks.c.start, chunks.c.stop, chunks.c.attempts)
    ).first()
    if row is None:
        return None
    return Claim(ClaimOutcome.CLAIMED, Chunk(job_id, index, row.start, row.stop), row.attempts)


def _why_not(
    conn: Connection,
    job_id: str,
    index: int,
    max_attempts: int,
    driver: JobDriver,
    now: datetime,
) -> Claim:
    """The outcome for a chunk the claim did not take (read after the fact; races are benign)."""
    job = conn.execute(select(jobs.c.status, jobs.c.driver).where(jobs.c.id == job_id)).first()
    row = conn.execute(
        select(chunks).where(and_(chunks.c.job_id == job_id, chunks.c.index == index))
    ).first()
    # Another driver's job is no work of this one's, whatever its state.
    if job is None or row is None or job.driver != driver.value:
        return Claim(ClaimOutcome.MISSING)
    job_status = job.status
    chunk = Chunk(job_id, index, row.start, row.stop)
    status = ChunkStatus(row.status)
    if status in SETTLED_CHUNK_STATES:
        return Claim(ClaimOutcome.DONE, chunk, row.attempts)
    # Before the chunk's own status: expiring a job cancels its queued chunks.
    if job_status == JobStatus.EXPIRED.value or expire_job(conn, job_id, now=now):
        return Claim(ClaimOutcome.EXPIRED, chunk, row.attempts)
    if status == ChunkStatus.CANCELLED or job_status == JobStatus.CANCELLED.value:
        return Claim(ClaimOutcome.CANCELLED, chunk, row.attempts)
    if JobStatus(job_status).is_final:
        return Claim(ClaimOutcome.JOB_FINAL, chunk, row.attempts)
    if status == ChunkStatus.RUNNING and row.leased_until is not None:
        remaining = (as_utc(row.leased_until) - now).total_seconds()
        if remaining > 0:
            return Claim(ClaimOutcome.BUSY, chunk, row.attempts, retry_in_s=remaining)
    if row.attempts >= max_attempts:
        return Claim(ClaimOutcome.EXHAUSTED, chunk, row.attempts)
    # Only a race with another claim gets here; the other delivery holds it now.
    return Claim(ClaimOutcome.BUSY, chunk, row.attempts, retry_in_s=1.0)


def chunk_status(conn: Connection, job_id: str, index: int) -> ChunkStatus | None:
    """The chunk's status, or None if there is no such chunk."""
    value = conn.scalar(
        select(chunks.c.status).where(and_(chunks.c.job_id == job_id, chunks.c.index == index))
    )
    return ChunkStatus(value) if value is not None else None


def chunks_of_active_jobs(models: list[str], *conditions: ColumnElement[bool]) -> Select[Any]:
    """``(job_id, index, runs_on)`` of the chunks of the service's active jobs that run on
    ``models`` and meet ``conditions``: what the lease and lost-message sweeps look for (and
    ``runs_on`` names the queue to send them to)."""
    return (
        select(chunks.c.job_id, chunks.c.index, jobs.c.runs_on)
        .join(jobs, jobs.c.id == chunks.c.job_id)
        .where(and_(*conditions, service_jobs(models)))
    )


def release_expired(
    conn: Connection, models: list[str], *, now: datetime | None = None, limit: int = 100
) -> list[tuple[str, int, str]]:
    """Give back running chunks of ``models`` whose lease ran out; return them to re-send.

    A worker killed mid-chunk (``kill -9``, the OOM killer) leaves its chunk ``running`` and
    its message unacked in Redis, which redelivers it only after ``visibility_timeout``
    (hours). Releasing the chunk here, one conditional ``UPDATE`` per chunk so only one
    caller wins it, lets the caller send a fresh message now; the attempt count is kept, so
    a chunk that kills every worker still ends as per-item errors.

    Returns:
        ``(job_id, chunk_index, model)`` of each chunk this call released.
    """
    now = now or utcnow()
    expired = conn.execute(
        chunks_of_active_jobs(
            models, chunks.c.status == ChunkStatus.RUNNING.value, chunks.c.leased_until <= now
        ).limit(limit)
    ).all()
    released = []
    for job_id, index, model in expired:
        changed = conn.execute(
            update(chunks)
            .where(
                and_(
                    chunks.c.job_id == job_id,
                    chunks.c.index == index,
                    chunks.c.status == ChunkStatus.RUNNING.value,
                    chunks.c.leased_until <= now,
                )
            )
            .values(status=ChunkStatus.QUEUED.value, leased_until=None, updated_at=now)
        ).rowcount
        if changed:
            released.append((job_id, index, model))
    return released
