"""Bisecting a chunk that used up its attempts, to find the item that kills workers.

A chunk whose every attempt ended without finishing (the worker was killed, ran out of
memory, or hung past its lease) almost always holds one bad input, a "poison" item that
crashes the process natively (a segfault in a tokenizer, an allocation the OOM killer
ends). Failing the whole chunk would fail hundreds of good items with it. Instead the
unscored part of the chunk is split into two new chunks, each with one attempt; the half
that holds the poison item fails again and is split again, the other half completes. A
chunk down to a single unscored item that fails is that item's per-item error, with the
reason. For a chunk of ``n`` items this costs ``max_attempts + ceil(log2 n)`` failed
attempts in all, and only the poison item is recorded as failed.

Two places meet an exhausted chunk: a worker's reconciler timer (a chunk whose worker died
on its last attempt: its lease ran out; :func:`split_all_exhausted`) and, rarely, a delivery
that claims a chunk already given back with no attempt left (:func:`split_exhausted`). Both
split in SQL and then send one message per new chunk through the ``send`` they are given;
without one (a process with no broker) the new chunks wait for a worker's lost-message
sweep (:mod:`core.chunks.sweep`) to send them.

A training job's one chunk has nothing to split: out of attempts, the job fails with the
reason (:func:`core.training.jobs.fail_training_job`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, Connection, Engine, and_, or_, select, update

from core.chunks.claim import service_jobs
from core.clock import utcnow
from core.jobs.lifecycle import append_chunks, load_items
from core.jobs.predictions import Prediction
from core.jobs.result_rows import ResultRows
from core.jobs.results import ScoredItem, WriteOutcome, scored_indexes
from core.jobs.retry_marks import pending_retries, write_scored
from core.jobs.status import ChunkStatus
from core.queues import ChunkSend
from core.tables import chunks, jobs
from core.training.jobs import fail_training_job, is_training_job

log = logging.getLogger(__name__)

EXHAUSTED_REASON = "every attempt stopped without finishing (worker killed, or hung past its lease)"


@dataclass(frozen=True, slots=True)
class SplitOutcome:
    """What became of one exhausted chunk."""

    job_id: str
    index: int
    model: str
    # The new chunks (their indexes), empty when nothing was left to split.
    children: tuple[int, ...] = ()
    # Items written as per-item errors (a single unscored item that failed alone).
    failed_items: int = 0
    # A training job's chunk: the job failed (nothing to split).
    failed_job: bool = False


def _exhausted(max_attempts: int, now: datetime) -> ColumnElement[bool]:
    # Queued with no attempt left (given back by core.chunks.claim.release_expired), or still
    # running under a lease that ran out: its last holder died or hung.
    return and_(
        chunks.c.attempts >= max_attempts,
        or_(
            chunks.c.status == ChunkStatus.QUEUED.value,
            and_(chunks.c.status == ChunkStatus.RUNNING.value, chunks.c.leased_until <= now),
        ),
    )


def exhausted_chunks(
    conn: Connection,
    models: list[str],
    *,
    max_attempts: int,
    now: datetime | None = None,
    limit: int = 50,
) -> list[tuple[str, int]]:
    """``(job_id, index)`` of active jobs' chunks of ``models`` that used up their attempts."""
    now = now or utcnow()
    rows = conn.execute(
        select(chunks.c.job_id, chunks.c.index)
        .join(jobs, jobs.c.id == chunks.c.job_id)
        .where(and_(_exhausted(max_attempts, now), service_jobs(models)))
        .order_by(chunks.c.updated_at)
        .limit(limit)
    ).all()
    return [(str(job_id), int(index)) for job_id, index in rows]


def split_chunk(
    conn: Connection,
    job_id: str,
    index: int,
    *,
    max_attempts: int,
    reason: str,
    now: datetime | None = None,
) -> SplitOutcome | None:
    """Split exhausted chunk ``index`` of ``job_id`` in two, or fail its last item.

    The parent is taken with one conditional ``UPDATE`` (only one caller wins it) and marked
    ``split``; a later delivery of its message finds it finished and does nothing. Each new
    chunk gets a single attempt (``max_attempts - 1`` already counted), so a poison half is
    split again after one more crash, and is never batched with other jobs' chunks (only
    never-attempted chunks are). Call inside a transaction.

    Returns:
        What was done, or None when the chunk is not (or no longer) exhausted.
    """
    now = now or utcnow()
    taken = conn.execute(
        update(chunks)
        .where(
            and_(chunks.c.job_id == job_id, chunks.c.index == index, _exhausted(max_attempts, now))
        )
        .values(status=ChunkStatus.SPLIT.value, leased_until=None, updated_at=now)
        .returning(chunks.c.start, chunks.c.stop, chunks.c.attempts)
    ).first()
    if taken is None:
        return None
    if is_training_job(conn, job_id):
        # One chunk, no items: nothing to bisect. The job fails with the reason.
        fail_training_job(conn, job_id, f"out of attempts: {reason}")
        return SplitOutcome(job_id, index, "", failed_job=True)
    job = conn.execute(select(jobs.c.model, jobs.c.model_revision).where(jobs.c.id == job_id)).one()
    # An error row marked for a retry is not scored yet: it is bisected like any other.
    retrying = pending_retries(conn, job_id, taken.start, taken.stop)
    done = scored_indexes(conn, job_id, taken.start, taken.stop) - retrying
    unscored = [i for i in range(taken.start, taken.stop) if i not in done]
    if len(unscored) <= 1:
        failed = _fail_items(
            conn, job_id, job.model, job.model_revision, unscored, reason, retrying
        )
        _finish(conn, job_id, index, now)
        return SplitOutcome(job_id, index, job.model, failed_items=failed)
    middle = unscored[len(unscored) // 2]
    halves = [(unscored[0], middle), (middle, unscored[-1] + 1)]
    children = append_chunks(conn, job_id, halves, attempts=max(max_attempts - 1, 0), now=now)
    return SplitOutcome(job_id, index, job.model, children=children)


def hand_back(
    conn: Connection,
    job_id: str,
    index: int,
    *,
    attempts: int,
    rest: tuple[int, int],
    now: datetime | None = None,
) -> int | None:
    """Give the unscored ``rest`` (``[lo, hi)``) of running chunk ``index`` back to the
    queue as a new chunk, so that a more urgent job's chunk runs first; its index.

    The same move as a bisection: the parent is marked ``split`` (by this holder only: it
    must still be running on attempt ``attempts``, so a holder whose lease was taken over
    hands nothing back) and the new chunk covers the rest. Items of ``rest`` that were
    scored already have rows, which the new chunk's delivery skips, so nothing is lost or
    written twice. The new chunk keeps the parent's earlier failed attempts (this one did
    not fail), so a poison item behind the hand-back is still bisected in time. Returns
    None when the chunk was no longer this holder's. Call inside a transaction.
    """
    now = now or utcnow()
    taken = conn.execute(
        update(chunks)
        .where(
            and_(
                chunks.c.job_id == job_id,
                chunks.c.index == index,
                chunks.c.status == ChunkStatus.RUNNING.value,
                chunks.c.attempts == attempts,
            )
        )
        .values(status=ChunkStatus.SPLIT.value, leased_until=None, updated_at=now)
    ).rowcount
    if not taken:
        return None
    (child,) = append_chunks(conn, job_id, [rest], attempts=max(attempts - 1, 0), now=now)
    return child


def _fail_items(
    conn: Connection,
    job_id: str,
    model: str,
    revision: str | None,
    unscored: list[int],
    reason: str,
    retrying: set[int],
) -> int:
    if not unscored:
        return 0
    message = f"not scored: this item stopped the worker on every attempt to score it ({reason})"
    failures = [
        ScoredItem(index=i, item_id=item.item_id, prediction=Prediction.failure(message))
        for i, item in load_items(conn, job_id, unscored[0], unscored[-1] + 1)
    ]
    # A retried item that stopped the worker again: its new error row replaces the old one.
    rows = ResultRows.from_scored({job_id: failures})
    written = write_scored(conn, model, revision, rows, {job_id: retrying})
    return written.get(job_id, WriteOutcome(0, 0)).written


def _finish(conn: Connection, job_id: str, index: int, now: datetime) -> None:
    # Nothing left to bisect: the parent is simply done (its rows are all written).
    conn.execute(
        update(chunks)
        .where(and_(chunks.c.job_id == job_id, chunks.c.index == index))
        .values(status=ChunkStatus.DONE.value, updated_at=now)
    )


def split_exhausted(
    engine: Engine,
    job_id: str,
    index: int,
    *,
    max_attempts: int,
    send: ChunkSend | None,
    reason: str = EXHAUSTED_REASON,
) -> SplitOutcome | None:
    """Split (or, down to one item, fail) one exhausted chunk and send its new chunks."""
    with engine.begin() as conn:
        outcome = split_chunk(conn, job_id, index, max_attempts=max_attempts, reason=reason)
    if outcome is None:
        return None
    if outcome.children:
        log.warning(
            "chunk %d of job %s used up its attempts; split into chunks %s to find the item "
            "that stops workers",
            index,
            job_id,
            ", ".join(str(child) for child in outcome.children),
        )
        _send_children(outcome, send)
    elif outcome.failed_job:
        log.error("training job %s used up its attempts; failed", job_id)
    elif outcome.failed_items:
        log.error(
            "chunk %d of job %s: its last unscored item stopped the worker on every attempt; "
            "recorded as a per-item error",
            index,
            job_id,
        )
    return outcome


def split_all_exhausted(
    engine: Engine, models: list[str], *, max_attempts: int, send: ChunkSend | None
) -> int:
    """:func:`split_exhausted` for every exhausted chunk of ``models``; how many were taken."""
    with engine.connect() as conn:
        found = exhausted_chunks(conn, models, max_attempts=max_attempts)
    taken = 0
    for job_id, index in found:
        outcome = split_exhausted(engine, job_id, index, max_attempts=max_attempts, send=send)
        if outcome is not None:
            taken += 1
    return taken


def _send_children(outcome: SplitOutcome, send: ChunkSend | None) -> None:
    if send is None:
        return
    for child in outcome.children:
        try:
            send(outcome.job_id, child, outcome.model)
        except Exception:
            # The chunk stays queued; the lost-message sweep sends it later.
            log.exception("could not send chunk %d of job %s", child, outcome.job_id)
