"""Claiming a run of a job's chunks at once, for a model fast enough to finish many.

A chunk is sized in items at submit (``chunk_size``), when nobody knows the model's pace: 512
texts are seconds of a CPU model's work but 20 ms of a GPU's. Every claim fills the
worker's stage pipeline (read, tokenise, forward pass, rows, write) and drains it at the
chunk's end (the last write committed, the chunk finished, the next one claimed and read),
so with the GPU stand-in a worker's tokenizer idled half of a 512-text chunk's time
(``bench/README.md``, issue 16). So a worker that knows its model's pace extends its claim
(:func:`take_following`): the queued chunks that follow the claimed one in its job are
taken with it, up to about ``chunk_claim_s`` of work, and scored in one pipeline.

It is the move of a bisection or a hand-back (:mod:`core.chunks.split`) the other way:
work moves into a new chunk, never into an existing one. The claimed chunk and the chunks
taken with it are marked ``merged`` and one new chunk covers their items, claimed by the
same holder in the same transaction. So a late delivery of any of their messages finds its
chunk finished (as a split one), a worker that dies leaves one running chunk whose lease
runs out like any other's (its rows so far are kept, the rest is scored by the retry), and
a hand-back or a bisection of the new chunk works as for any chunk.

Bounds, so that a run never costs what it saves elsewhere:
- with fair claiming, a run holds at most a turn's work (``fair_time_slice_s``): a turn's
  end is where another job may take the worker (the caller sizes ``most_items``);
- only a first attempt is extended: a chunk that failed before stays small, so that its
  poison item is bisected in a few steps;
- at most a ``1 / workers`` share of the job's queued chunks (rounded up) is taken, where
  ``workers`` is how many serve the model (live heartbeats; ``UNKNOWN_WORKERS`` while
  unknown): each other worker finds its share waiting, and a big job spreads over them;
- only contiguous chunks never attempted, locked ``FOR UPDATE SKIP LOCKED``: a chunk
  another worker is claiming is skipped, and the run stops at the gap it leaves.
"""

from __future__ import annotations

import math
from datetime import datetime

from sqlalchemy import Connection, and_, func, select, update

from core.chunks.claim import Claim, take_chunk
from core.clock import utcnow
from core.jobs.lifecycle import append_chunks
from core.jobs.status import ChunkStatus
from core.tables import chunks

# The share of a job's queued chunks a run takes while nobody has counted the model's
# workers: half, as if one other worker were there.
UNKNOWN_WORKERS = 2


def take_following(
    conn: Connection,
    claim: Claim,
    most_items: int,
    *,
    lease_s: float,
    workers: int | None = None,
    now: datetime | None = None,
) -> Claim:
    """Extend ``claim`` (just taken, in this transaction) with the queued chunks after it
    in its job, to at most ``most_items`` items and a ``1 / workers`` share of those queued
    (None: unknown, ``UNKNOWN_WORKERS``); the claim of the chunk that now holds them, or
    ``claim`` itself when there is nothing to take. Call inside the claim's transaction."""
    chunk = claim.chunk
    if chunk is None or claim.attempts != 1 or most_items <= chunk.stop - chunk.start:
        return claim
    now = now or utcnow()
    after = and_(
        chunks.c.job_id == chunk.job_id,
        chunks.c.status == ChunkStatus.QUEUED.value,
        chunks.c.attempts == 0,
        chunks.c.start >= chunk.stop,
    )
    waiting = conn.scalar(select(func.count()).select_from(chunks).where(after)) or 0
    if not waiting:
        return claim
    candidates = conn.execute(
        select(chunks.c.index, chunks.c.start, chunks.c.stop)
        .where(after)
        .order_by(chunks.c.start)
        .limit(math.ceil(waiting / max(workers or UNKNOWN_WORKERS, 1)))
        .with_for_update(skip_locked=True)
    ).all()
    taken: list[int] = []
    stop = chunk.stop
    for number, start, end in candidates:
        if start != stop or end - chunk.start > most_items:
            break
        taken.append(number)
        stop = end
    if not taken:
        return claim
    merged = {
        chunks.c.status: ChunkStatus.MERGED.value,
        chunks.c.leased_until: None,
        chunks.c.updated_at: now,
    }
    conn.execute(
        update(chunks)
        .where(and_(chunks.c.job_id == chunk.job_id, chunks.c.index.in_(taken), after))
        .values(merged)
    )
    conn.execute(
        update(chunks)
        .where(and_(chunks.c.job_id == chunk.job_id, chunks.c.index == chunk.index))
        .values(merged)
    )
    (index,) = append_chunks(conn, chunk.job_id, [(chunk.start, stop)], now=now)
    queued = chunks.c.status == ChunkStatus.QUEUED.value
    extended = take_chunk(conn, chunk.job_id, index, queued, lease_s=lease_s, now=now)
    assert extended is not None  # created in this transaction, unseen by anyone else
    return extended


def claim_next_run(
    conn: Connection,
    job_id: str,
    most_items: int,
    *,
    lease_s: float,
    workers: int | None = None,
    now: datetime | None = None,
) -> Claim | None:
    """Claim the first queued, never attempted chunk of ``job_id`` with the run after it
    (:func:`take_following`): what the job's next delivery would claim, taken by the worker
    already scoring the job before its current run ends (``engine.chunk_work``); None if no
    such chunk is left, another worker is claiming it, or it holds more than ``most_items``
    (a slow model's chunk is many turns of work: claimed ahead, it would only be kept from
    another worker). Call inside a transaction."""
    now = now or utcnow()
    queued = and_(chunks.c.status == ChunkStatus.QUEUED.value, chunks.c.attempts == 0)
    first = conn.execute(
        select(chunks.c.index, chunks.c.start, chunks.c.stop)
        .where(and_(chunks.c.job_id == job_id, queued))
        .order_by(chunks.c.start)
        .limit(1)
        .with_for_update(skip_locked=True)
    ).first()
    if first is None:
        return None
    # By position: a Row's .index is the tuple method to type checkers, not the column.
    index, start, stop = first
    if stop - start > most_items:
        return None
    claim = take_chunk(conn, job_id, index, queued, lease_s=lease_s, now=now)
    if claim is None:
        return None
    return take_following(conn, claim, most_items, lease_s=lease_s, workers=workers, now=now)
