"""Finding queued chunks whose message was lost, so that a worker can send it again.

A chunk row is ``queued`` from the moment its job is committed; its Redis message may never
arrive: the API process died between the commit and the send, Redis lost its last second
of writes in a crash (``appendfsync everysec``), or someone flushed the queue. Such a chunk
would wait forever, and its job would never finish. A queued chunk is presumed lost when it
has waited longer than ``older_than`` *and* its model's queue is empty (the caller checks
the queue): a chunk merely waiting behind a backlog is never re-sent. Re-sending is safe in
any case: the SQL claim lets only one delivery score a chunk.

Workers run :func:`resend_lost` from their reconciler's timer. A duplicate that does slip
through (a message held for a retry countdown) is harmless for the same reason.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import redis
from sqlalchemy import Connection, Engine, and_, update

from core.chunks.claim import chunks_of_active_jobs
from core.clock import utcnow
from core.heartbeats import queue_depth
from core.jobs.status import ChunkStatus
from core.queues import ChunkSend, model_queue
from core.tables import chunks

log = logging.getLogger(__name__)


def stale_queued_chunks(
    conn: Connection,
    models: list[str],
    *,
    older_than_s: float,
    now: datetime | None = None,
    limit: int = 100,
) -> list[tuple[str, int, str]]:
    """``(job_id, index, model)`` of queued chunks of active jobs untouched for a while."""
    now = now or utcnow()
    cutoff = now - timedelta(seconds=older_than_s)
    rows = conn.execute(
        chunks_of_active_jobs(
            models, chunks.c.status == ChunkStatus.QUEUED.value, chunks.c.updated_at <= cutoff
        )
        .order_by(chunks.c.updated_at)
        .limit(limit)
    ).all()
    # By position: a Row's .index is the tuple method, not the column.
    return [(str(job_id), int(index), str(model)) for job_id, index, model in rows]


def take_for_resend(
    conn: Connection, job_id: str, index: int, *, older_than_s: float, now: datetime | None = None
) -> bool:
    """Stamp a stale queued chunk as re-sent now; False if another worker took it first.

    The stamp (``updated_at``) makes the chunk young again, so each lost chunk is re-sent
    once per ``older_than_s`` by one worker, not by every worker on every tick.
    """
    now = now or utcnow()
    cutoff = now - timedelta(seconds=older_than_s)
    changed = conn.execute(
        update(chunks)
        .where(
            and_(
                chunks.c.job_id == job_id,
                chunks.c.index == index,
                chunks.c.status == ChunkStatus.QUEUED.value,
                chunks.c.updated_at <= cutoff,
            )
        )
        .values(updated_at=now)
    ).rowcount
    return bool(changed)


def resend_lost(
    engine: Engine,
    client: redis.Redis,
    models: list[str],
    send: ChunkSend,
    *,
    older_than_s: float,
) -> int:
    """Re-send the lost chunks of ``models`` whose queue is empty; how many were sent."""
    with engine.connect() as conn:
        stale = stale_queued_chunks(conn, models, older_than_s=older_than_s)
    if not stale:
        return 0
    empty: dict[str, bool] = {}
    sent = 0
    for job_id, index, model in stale:
        if model not in empty:
            empty[model] = queue_depth(client, model_queue(model)) == 0
        if not empty[model]:
            continue  # messages are waiting: this chunk's may be among them
        with engine.begin() as conn:
            if not take_for_resend(conn, job_id, index, older_than_s=older_than_s):
                continue
        send(job_id, index, model)
        sent += 1
        log.warning(
            "chunk %d of job %s was queued for over %ds with an empty queue (its message was "
            "lost); re-sent",
            index,
            job_id,
            int(older_than_s),
        )
    return sent
