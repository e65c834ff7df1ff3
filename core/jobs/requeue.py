"""Putting a final job back to work: retry its error rows, or resume its unscored items.

Both take the job's row first (so two requests, or a request and a worker's write, follow
one another), check the job's state, queue new chunks over the indexes to score and set
the job ``running`` again, in the caller's transaction. The caller sends the new chunks
after the commit (the API through :func:`core.queues.send_chunks`); a chunk whose message
is lost is sent again by the workers' lost-message sweep (:mod:`core.chunks.sweep`), and
``bulkscore score`` claims its own in-process.

- **Retry** (a ``completed`` job): each error row whose input was not refused at intake
  (optionally only those whose error contains a text) is marked in ``retry_items``; the
  new chunks score the marked items and replace their rows (:mod:`core.jobs.retry_marks`).
- **Resume** (a ``cancelled`` or ``expired`` job): the items with no row yet (and any
  marks a cancelled retry left) get new chunks, with fresh attempts.

Either clears the job's deadline (``expires_at``): a deadline already met or missed is not
armed again, so the requeued work cannot expire the moment it starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, and_, exists, func, insert, select, update

from core.clock import utcnow
from core.jobs.bulk_copy import is_postgresql
from core.jobs.lifecycle import Job, append_chunks, get_job
from core.jobs.status import JobStatus
from core.tables import items, jobs, results, retry_items, training_runs


class RequeueRefused(Exception):
    """The job cannot be retried or resumed as it is; the message says why."""


class InputsPurged(RequeueRefused):
    """The retention purge removed the job's inputs: there is nothing to score again."""


@dataclass(frozen=True, slots=True)
class Requeued:
    """What a retry or resume queued."""

    job: Job  # as it is after the change (``running``)
    items: int  # items queued to be scored (again)
    chunk_indexes: tuple[int, ...]  # the new chunks, to send after the commit


def retry_errors(
    conn: Connection, job_id: str, *, chunk_size: int, errors_matching: str | None = None
) -> Requeued:
    """Queue the error rows of completed job ``job_id`` to be scored again.

    ``errors_matching``: only error rows whose error contains this text (case-sensitive).

    Raises:
        LookupError: No such job.
        RequeueRefused: The job is not completed, is a training job, or has no error row
            that may be retried.
        InputsPurged: The retention purge removed its inputs.
    """
    job = _lock_job(conn, job_id)
    _refuse_training(conn, job, "retried")
    _refuse_purged(job, "retried")
    if job.status != JobStatus.COMPLETED:
        raise RequeueRefused(_why_not_retry(job))
    rows = conn.execute(
        select(results.c.index, results.c.error, items.c.error)
        .select_from(
            results.join(
                items, and_(items.c.job_id == results.c.job_id, items.c.index == results.c.index)
            )
        )
        .where(and_(results.c.job_id == job_id, results.c.error.is_not(None)))
        .order_by(results.c.index)
    ).all()
    refused = sum(1 for _, _, intake_error in rows if intake_error is not None)
    chosen = [
        index
        for index, error, intake_error in rows
        if intake_error is None and (errors_matching is None or errors_matching in error)
    ]
    if not chosen:
        raise RequeueRefused(_nothing_to_retry(job_id, errors_matching, refused))
    conn.execute(insert(retry_items), [{"job_id": job_id, "index": index} for index in chosen])
    return _requeue(conn, job, chosen, chunk_size)


def resume_job(conn: Connection, job_id: str, *, chunk_size: int) -> Requeued:
    """Queue the unscored items of cancelled or expired job ``job_id`` to be scored.

    Raises:
        LookupError: No such job.
        RequeueRefused: The job is neither cancelled nor expired, is a training job or a
            schedule's job (its next run reads the same window again), or has nothing left
            to score.
        InputsPurged: The retention purge removed its inputs.
    """
    job = _lock_job(conn, job_id)
    _refuse_training(conn, job, "resumed")
    _refuse_purged(job, "resumed")
    if job.schedule is not None:
        # Its run ended with the job, and the schedule's next run reads the same window
        # again (core.schedules.runner): resuming would score those items in two jobs.
        raise RequeueRefused(
            f"job {job_id} was made by schedule {job.schedule!r}: its next run scores the "
            "same window again, so it is not resumed (that would score its items twice)"
        )
    if job.status not in (JobStatus.CANCELLED, JobStatus.EXPIRED):
        raise RequeueRefused(
            f"job {job_id} is {job.status.value}: only a cancelled or expired job can be "
            "resumed" + (" (retry its errors instead)" if job.status == JobStatus.COMPLETED else "")
        )
    has_row = exists(
        select(results.c.index).where(
            and_(results.c.job_id == items.c.job_id, results.c.index == items.c.index)
        )
    )
    unscored = set(
        conn.scalars(select(items.c.index).where(and_(items.c.job_id == job_id, ~has_row)))
    )
    # A retry cancelled midway left marks: their error rows are scored again too.
    unscored |= set(conn.scalars(select(retry_items.c.index).where(retry_items.c.job_id == job_id)))
    if not unscored:
        raise RequeueRefused(f"job {job_id} has no unscored items to resume")
    return _requeue(conn, job, sorted(unscored), chunk_size)


def _requeue(conn: Connection, job: Job, indexes: Sequence[int], chunk_size: int) -> Requeued:
    now = utcnow()
    created = add_chunks(conn, job.id, indexes, chunk_size, now)
    conn.execute(
        update(jobs)
        .where(jobs.c.id == job.id)
        .values(
            status=JobStatus.RUNNING.value,
            finished_at=None,
            expires_at=None,
            started_at=func.coalesce(jobs.c.started_at, now),
        )
    )
    after = get_job(conn, job.id)
    assert after is not None  # its row is locked by this transaction
    return Requeued(after, len(indexes), created)


def add_chunks(
    conn: Connection, job_id: str, indexes: Sequence[int], chunk_size: int, now: datetime
) -> tuple[int, ...]:
    """New queued chunks covering the sorted ``indexes``; their chunk indexes.

    A chunk spans at most ``chunk_size`` item indexes (from its first to past its last), so
    scattered indexes never make one chunk load a whole job's items; the items in a span
    that need nothing are skipped as already scored.
    """
    spans: list[tuple[int, int]] = []
    for index in indexes:
        if spans and index - spans[-1][0] < chunk_size:
            spans[-1] = (spans[-1][0], index + 1)
        else:
            spans.append((index, index + 1))
    return append_chunks(conn, job_id, spans, now=now)


def _lock_job(conn: Connection, job_id: str) -> Job:
    """Take the job's row for this transaction (as result writes do) and read it."""
    if is_postgresql(conn):
        conn.execute(select(jobs.c.id).where(jobs.c.id == job_id).with_for_update())
    else:
        # SQLite: a no-op UPDATE takes the database's write lock up front.
        conn.execute(update(jobs).where(jobs.c.id == job_id).values(status=jobs.c.status))
    job = get_job(conn, job_id)
    if job is None:
        raise LookupError(f"no job {job_id}")
    return job


def _refuse_training(conn: Connection, job: Job, verb: str) -> None:
    trains = conn.scalar(select(training_runs.c.job_id).where(training_runs.c.job_id == job.id))
    if trains is not None:
        raise RequeueRefused(f"job {job.id} is a training job: it cannot be {verb}")


def _refuse_purged(job: Job, verb: str) -> None:
    if job.inputs_purged_at is not None:
        raise InputsPurged(
            f"job {job.id}'s inputs were purged at {job.inputs_purged_at.isoformat()} "
            f"(retention): it cannot be {verb}; submit its inputs again as a new job"
        )


def _why_not_retry(job: Job) -> str:
    if not job.status.is_final:
        return (
            f"job {job.id} is still {job.status.value}: only a completed job's errors can be "
            "retried; wait for it to finish"
        )
    if job.status in (JobStatus.CANCELLED, JobStatus.EXPIRED):
        return (
            f"job {job.id} is {job.status.value}: resume it first (bulkscore resume / POST "
            f"/v1/jobs/{job.id}/resume), then retry its errors once it has completed"
        )
    return f"job {job.id} is {job.status.value}: only a completed job's errors can be retried"


def _nothing_to_retry(job_id: str, errors_matching: str | None, refused: int) -> str:
    what = (
        "no error rows"
        if errors_matching is None
        else f"no error rows containing {errors_matching!r}"
    )
    message = f"job {job_id} has {what} to retry"
    if refused:
        message += (
            f" ({refused} error row(s) are inputs refused at intake, such as an empty text "
            "or a file that is not an image: scoring them again cannot succeed)"
        )
    return message
