"""Deleting a final job and everything it stored: items, chunks, results, retry marks.

The rows go in small batches, each its own short transaction (:data:`DELETE_BATCH` rows),
so deleting a million-item job never holds one long transaction or a lock a scoring
worker waits on for more than a moment. First, one short transaction takes the job's row,
checks it is final and stamps its inputs and results purged (``inputs_purged_at``,
``results_purged_at``): from then on a retry or resume is refused (``inputs_purged``) and
its results answer 410, so no request can put the job back to work while its rows go; a
retry or resume that took the row first made it active, and the delete is refused. The
job's row goes last. A deletion cut short (a crash) leaves a final job marked purged, which
a second delete finishes.

A worker still finishing a chunk of a job deleted meanwhile writes nothing and does not
fail: its write takes the job's row (:func:`core.jobs.results.lock_active_jobs`), finds
none, and is ``refused``; finishing its chunk updates no row. A schedule run that made the
job keeps its row (``schedule_runs.job_id`` is ``ON DELETE SET NULL``), so the schedule's
watermarks and file state are untouched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, Table, and_, delete, func, select, update

from core.clock import utcnow
from core.jobs.bulk_copy import is_postgresql
from core.jobs.lifecycle import Job, get_job
from core.tables import chunks, items, jobs, results, retry_items, training_runs

log = logging.getLogger(__name__)

# Rows per delete transaction: a few tens of milliseconds of work on PostgreSQL, so no
# transaction of a deletion or purge is long.
DELETE_BATCH = 5000


class JobActive(Exception):
    """The job is queued or running: it must be cancelled before it can be deleted."""


@dataclass(frozen=True, slots=True)
class Deleted:
    """What deleting a job removed, by table."""

    job_id: str
    items: int
    chunks: int
    results: int


def delete_rows_in_batches(
    engine: Engine, table: Table, job_id: str, *, batch: int = DELETE_BATCH
) -> int:
    """Delete ``table``'s rows of ``job_id`` (a table keyed by ``(job_id, index)``), at
    most ``batch`` per transaction, lowest indexes first; how many went."""
    deleted = 0
    while True:
        with engine.begin() as conn:
            gone = delete_batch(conn, table, job_id, batch)
        deleted += gone
        if gone < batch:
            return deleted


def delete_batch(conn: Connection, table: Table, job_id: str, batch: int) -> int:
    """Delete the ``batch`` lowest-indexed rows of ``job_id`` in ``table``; how many went."""
    # Bounded by an index range read first rather than DELETE ... LIMIT (which PostgreSQL
    # has not): the primary key's order makes each batch one index range scan.
    last = conn.scalar(
        select(table.c.index)
        .where(table.c.job_id == job_id)
        .order_by(table.c.index)
        .offset(batch - 1)
        .limit(1)
    )
    where = table.c.job_id == job_id
    if last is not None:
        where = and_(where, table.c.index <= last)
    return max(conn.execute(delete(table).where(where)).rowcount, 0)


def delete_job(engine: Engine, job_id: str, *, batch: int = DELETE_BATCH) -> Deleted:
    """Delete final job ``job_id`` with all its rows, in batches; what went.

    Raises:
        LookupError: No such job.
        JobActive: The job is queued or running (cancel it first).
    """
    with engine.begin() as conn:
        job = _lock(conn, job_id)
        if job is None:
            raise LookupError(f"no job {job_id}")
        _refuse_active(job)
        now = utcnow()
        conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id)
            .values(
                inputs_purged_at=func.coalesce(jobs.c.inputs_purged_at, now),
                results_purged_at=func.coalesce(jobs.c.results_purged_at, now),
            )
        )
    counts = {
        table.name: delete_rows_in_batches(engine, table, job_id, batch=batch)
        for table in (retry_items, results, chunks, items)
    }
    with engine.begin() as conn:
        # Its training request (if any) and the row; nothing can have made it active since
        # the stamp. Another delete may have removed the row first: what this call
        # removed stands.
        conn.execute(delete(training_runs).where(training_runs.c.job_id == job_id))
        conn.execute(delete(jobs).where(jobs.c.id == job_id))
    deleted = Deleted(
        job_id=job_id, items=counts["items"], chunks=counts["chunks"], results=counts["results"]
    )
    # Counts only: never an input or a result.
    log.info(
        "deleted job %s: %d items, %d chunks, %d results",
        job_id,
        deleted.items,
        deleted.chunks,
        deleted.results,
    )
    return deleted


def _refuse_active(job: Job) -> None:
    if not job.status.is_final:
        raise JobActive(
            f"job {job.id} is {job.status.value}: cancel it first (bulkscore cancel / POST "
            f"/v1/jobs/{job.id}/cancel), then delete it"
        )


def _lock(conn: Connection, job_id: str) -> Job | None:
    """Take the job's row for this transaction (as result writes do) and read it."""
    if is_postgresql(conn):
        conn.execute(select(jobs.c.id).where(jobs.c.id == job_id).with_for_update())
    else:
        # SQLite: a no-op UPDATE takes the database's write lock up front.
        conn.execute(update(jobs).where(jobs.c.id == job_id).values(status=jobs.c.status))
    return get_job(conn, job_id)
