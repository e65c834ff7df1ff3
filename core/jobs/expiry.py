"""Job deadlines: a job not finished by its ``expires_at`` ends ``expired``.

Enforced in two places that together cannot miss a job: a worker's claim refuses a chunk
of a job past its deadline and expires the job in the same transaction
(:func:`core.chunks.claim.claim_chunk`), and every worker's reconciler timer expires the
overdue jobs that no worker is claiming (:func:`expire_overdue`), so a job for a model
nobody serves still ends. Like a cancel, expiry keeps the rows written so far, and a
write that takes the job's row after it finds the job final and writes nothing
(:func:`core.jobs.results.lock_active_jobs`).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, Connection, and_, or_, select, update

from core.clock import utcnow
from core.jobs.status import ACTIVE_JOB_STATES, ChunkStatus, JobDriver, JobStatus
from core.tables import chunks, jobs

# Bounds of ``expires_after_s``: under a second cannot be met by any job; 30 days is far
# past any real deadline and keeps the timestamp arithmetic sane.
MIN_EXPIRES_AFTER_S = 1.0
MAX_EXPIRES_AFTER_S = 30 * 24 * 3600.0


def within_deadline(now: datetime) -> ColumnElement[bool]:
    """Jobs with no deadline, or one still ahead of ``now``."""
    return or_(jobs.c.expires_at.is_(None), jobs.c.expires_at > now)


def _overdue(now: datetime) -> ColumnElement[bool]:
    return and_(
        jobs.c.expires_at.is_not(None),
        jobs.c.expires_at <= now,
        jobs.c.status.in_([s.value for s in ACTIVE_JOB_STATES]),
    )


def expire_job(conn: Connection, job_id: str, *, now: datetime | None = None) -> bool:
    """Expire ``job_id`` if it is active and past its deadline; True if this call did.

    Its queued chunks are cancelled (they never run); a chunk being scored stops at its
    next write, which finds the job final. Counters stay as the written rows left them.
    """
    now = now or utcnow()
    changed = conn.execute(
        update(jobs)
        .where(and_(jobs.c.id == job_id, _overdue(now)))
        .values(status=JobStatus.EXPIRED.value, finished_at=now)
    ).rowcount
    if changed:
        conn.execute(
            update(chunks)
            .where(and_(chunks.c.job_id == job_id, chunks.c.status == ChunkStatus.QUEUED.value))
            .values(status=ChunkStatus.CANCELLED.value, updated_at=now)
        )
    return bool(changed)


def expire_overdue(conn: Connection, *, now: datetime | None = None, limit: int = 100) -> list[str]:
    """Expire the service's active jobs past their deadline, whatever model they run on.

    Returns:
        The ids of the jobs this call expired (one conditional update each, so two workers'
        timers never both report one).
    """
    now = now or utcnow()
    overdue = conn.scalars(
        select(jobs.c.id)
        .where(and_(_overdue(now), jobs.c.driver == JobDriver.SERVICE.value))
        .order_by(jobs.c.expires_at)
        .limit(limit)
    ).all()
    return [job_id for job_id in overdue if expire_job(conn, job_id, now=now)]
