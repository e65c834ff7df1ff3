"""Chunks of several jobs handled as one batch: claim, renew, finish and release them together.

Cross-job batching (see ``engine/cross_job.py``): a chunk task that holds a small chunk also
claims other jobs' *queued* chunks of the same model, so a thousand one-text jobs cost a few
forward passes instead of a thousand. Each sibling is claimed exactly like a chunk whose own
message arrived (status ``running``, one attempt counted, a lease), so every rule of
``core.chunks.claim`` still holds: the sibling's own message, delivered later, finds it ``done``
(or ``running`` under a live lease) and does nothing, and a worker that dies mid-batch leaves
leases that run out and are re-sent by the reconciler.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Connection, and_, exists, or_, select, tuple_, update

from core.chunks.claim import Claim, ClaimOutcome, service_jobs
from core.chunks.fair import Fairness, ranked, stamp_served
from core.clock import utcnow
from core.inputs.items import InputItem
from core.jobs.lifecycle import Chunk
from core.jobs.status import ACTIVE_JOB_STATES, ChunkStatus, JobStatus
from core.tables import chunks, items, jobs

ChunkKey = tuple[str, int]  # (job_id, chunk index)

# Candidates read per sibling claim; more than a batch can take, so chunks skipped for
# size or for being a second chunk of one job leave enough to fill it.
SCAN_FACTOR = 4


def _keys_match(keys: Collection[ChunkKey]) -> ColumnElement[bool]:
    return tuple_(chunks.c.job_id, chunks.c.index).in_(list(keys))


def claim_siblings(
    conn: Connection,
    model: str,
    *,
    exclude_jobs: Collection[str],
    max_items: int,
    max_chunks: int,
    lease_s: float,
    max_chunk_items: int | None = None,
    fairness: Fairness | None = None,
    now: datetime | None = None,
) -> list[Claim]:
    """Claim queued first-attempt chunks of other active jobs of ``model``, fairest first
    (:mod:`core.chunks.fair`; oldest first without ``fairness``), and stamp their jobs
    served.

    At most ``max_chunks`` chunks holding at most ``max_items`` items in all, each of at
    most ``max_chunk_items`` items (small jobs' chunks; a big job's chunks keep their own
    tasks, so that several workers share it), one chunk per job (so per-job totals are
    per-chunk totals). Only chunks never attempted qualify: a
    chunk on its second attempt may hold an input that kills workers, and runs alone so it
    cannot spend other jobs' attempts. Call inside a transaction; on PostgreSQL the
    candidates are locked ``FOR UPDATE SKIP LOCKED``, so two workers gathering at once take
    different chunks instead of waiting for each other, and the conditional ``UPDATE``
    keeps the claim exclusive on SQLite too.
    """
    if max_items < 1 or max_chunks < 1:
        return []
    now = now or utcnow()
    size = chunks.c.stop - chunks.c.start
    conditions = [
        chunks.c.status == ChunkStatus.QUEUED.value,
        chunks.c.attempts == 0,
        size <= min(max_items, max_chunk_items or max_items),
        service_jobs([model]),
        # Scoring chunks of the same model only: a training job of a base runs on the
        # base's workers too, and is never batched into a scoring forward pass.
        jobs.c.model == model,
    ]
    if exclude_jobs:
        conditions.append(chunks.c.job_id.not_in(list(exclude_jobs)))
    columns = (chunks.c.job_id, chunks.c.index, chunks.c.start, chunks.c.stop)
    if fairness is not None:
        query = ranked(model, fairness, now, *columns, training=False)
    else:
        query = (
            select(*columns)
            .join(jobs, jobs.c.id == chunks.c.job_id)
            # FIFO: chunks queued first are batched first.
            .order_by(chunks.c.updated_at, chunks.c.job_id, chunks.c.index)
        )
    candidates = conn.execute(
        query.where(and_(*conditions))
        .limit(max_chunks * SCAN_FACTOR)
        .with_for_update(of=chunks, skip_locked=True)
    ).all()
    picked: list[ChunkKey] = []
    taken_jobs: set[str] = set()
    room = max_items
    for job_id, index, start, stop in candidates:
        if len(picked) == max_chunks:
            break
        if job_id in taken_jobs or stop - start > room:
            continue
        picked.append((job_id, index))
        taken_jobs.add(job_id)
        room -= stop - start
    if not picked:
        return []
    claimed = conn.execute(
        update(chunks)
        .where(
            and_(
                _keys_match(picked),
                chunks.c.status == ChunkStatus.QUEUED.value,
                chunks.c.attempts == 0,
            )
        )
        .values(
            status=ChunkStatus.RUNNING.value,
            attempts=chunks.c.attempts + 1,
            leased_until=now + timedelta(seconds=lease_s),
            updated_at=now,
        )
        .returning(
            chunks.c.job_id, chunks.c.index, chunks.c.start, chunks.c.stop, chunks.c.attempts
        )
    ).all()
    order = {key: position for position, key in enumerate(picked)}
    rows = sorted(claimed, key=lambda row: order[(row[0], row[1])])
    if fairness is not None:
        stamp_served(conn, {row[0] for row in rows}, now, fairness)
    return [
        Claim(ClaimOutcome.CLAIMED, Chunk(job_id, index, start, stop), attempts)
        for job_id, index, start, stop, attempts in rows
    ]


def load_chunk_items(
    conn: Connection, batch: Sequence[Chunk]
) -> dict[ChunkKey, list[tuple[int, InputItem]]]:
    """The items of every chunk of ``batch`` in one query, by chunk, in index order."""
    if not batch:
        return {}
    ranges = or_(
        *(
            and_(items.c.job_id == c.job_id, items.c.index >= c.start, items.c.index < c.stop)
            for c in batch
        )
    )
    owner: dict[str, list[Chunk]] = {}
    for c in sorted(batch, key=lambda c: c.start):
        owner.setdefault(c.job_id, []).append(c)
    loaded: dict[ChunkKey, list[tuple[int, InputItem]]] = {(c.job_id, c.index): [] for c in batch}
    query = (
        select(
            items.c.job_id,
            items.c.index,
            items.c.item_id,
            items.c.text,
            items.c.data,
            items.c.error,
        )
        .where(ranges)
        .order_by(items.c.job_id, items.c.index)
    )
    # An item's chunk is its job's last chunk starting at or before it. Rows come in index
    # order, so one walk along each job's chunks finds them: with a bisection and keyword
    # arguments per item, 20,000 items took 72 ms against 55, at the serial start of every
    # bulkscore score and every claimed run (issue 16).
    job = ""
    held: list[Chunk] = []
    at = 0
    rows: list[tuple[int, InputItem]] = []
    for job_id, index, item_id, text, data, error in conn.execute(query):
        if job_id != job:
            job, held, at = job_id, owner[job_id], 0
            rows = loaded[(job_id, held[0].index)]
        while at + 1 < len(held) and held[at + 1].start <= index:
            at += 1
            rows = loaded[(job_id, held[at].index)]
        rows.append((index, InputItem(item_id, text, data, error)))
    return loaded


def mark_jobs_running(conn: Connection, job_ids: Collection[str]) -> None:
    """queued -> running for each job, stamping ``started_at`` once."""
    if not job_ids:
        return
    now = utcnow()
    conn.execute(
        update(jobs)
        .where(and_(jobs.c.id.in_(list(job_ids)), jobs.c.status == JobStatus.QUEUED.value))
        .values(status=JobStatus.RUNNING.value, started_at=now)
    )


def active_jobs(conn: Connection, job_ids: Collection[str]) -> set[str]:
    """The ``job_ids`` whose job is still queued or running (not cancelled, failed, gone)."""
    if not job_ids:
        return set()
    query = select(jobs.c.id).where(
        and_(jobs.c.id.in_(list(job_ids)), jobs.c.status.in_([s.value for s in ACTIVE_JOB_STATES]))
    )
    return set(conn.scalars(query))


def job_statuses(conn: Connection, job_ids: Collection[str]) -> dict[str, JobStatus]:
    """The status of each of ``job_ids`` that still exists."""
    if not job_ids:
        return {}
    query = select(jobs.c.id, jobs.c.status).where(jobs.c.id.in_(list(job_ids)))
    return {job_id: JobStatus(status) for job_id, status in conn.execute(query)}


def renew_leases(conn: Connection, keys: Sequence[ChunkKey], lease_s: float) -> None:
    """Push the leases of running chunks ``keys`` ``lease_s`` into the future."""
    if not keys:
        return
    now = utcnow()
    conn.execute(
        update(chunks)
        .where(and_(_keys_match(keys), chunks.c.status == ChunkStatus.RUNNING.value))
        .values(leased_until=now + timedelta(seconds=lease_s), updated_at=now)
    )


def finish_chunks(conn: Connection, keys: Sequence[ChunkKey], status: ChunkStatus) -> None:
    """End the chunks' attempts as ``done`` or ``cancelled`` and drop their leases (a chunk
    already done stays done: a late, stale delivery cannot undo it)."""
    if status not in (ChunkStatus.DONE, ChunkStatus.CANCELLED):
        raise ValueError(f"a chunk finishes as done or cancelled, not {status.value!r}")
    if not keys:
        return
    conn.execute(
        update(chunks)
        .where(and_(_keys_match(keys), chunks.c.status != ChunkStatus.DONE.value))
        .values(status=status.value, leased_until=None, updated_at=utcnow())
    )


def release_chunks(conn: Connection, keys: Sequence[ChunkKey]) -> None:
    """Give running chunks back (their attempt failed), so that a retry can claim them at
    once; their attempt counts are kept.

    A chunk whose job became final meanwhile (cancelled or expired while the attempt ran)
    is not given back but finished as ``cancelled``: no retry may run it, and a final job
    keeps no chunk waiting.
    """
    if not keys:
        return
    running = and_(_keys_match(keys), chunks.c.status == ChunkStatus.RUNNING.value)
    job_active = exists(
        select(jobs.c.id).where(
            and_(
                jobs.c.id == chunks.c.job_id,
                jobs.c.status.in_([s.value for s in ACTIVE_JOB_STATES]),
            )
        )
    )
    now = utcnow()
    conn.execute(
        update(chunks)
        .where(and_(running, job_active))
        .values(status=ChunkStatus.QUEUED.value, leased_until=None, updated_at=now)
    )
    conn.execute(
        update(chunks)
        .where(and_(running, ~job_active))
        .values(status=ChunkStatus.CANCELLED.value, leased_until=None, updated_at=now)
    )
