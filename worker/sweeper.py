"""Re-send chunks whose Redis message was lost (see ``core.chunks.sweep``).

Runs from the reconciler's timer. A chunk is re-sent only when it has been queued longer
than ``chunk_resend_after_s`` and its model's queue is empty, so a backlog is never
duplicated; a duplicate that does slip through (a message held for a retry countdown) is
harmless, because the SQL claim lets one delivery score the chunk.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import redis
from sqlalchemy import Engine

from core.chunks.sweep import stale_queued_chunks, take_for_resend
from core.heartbeats import queue_depth
from core.queues import model_queue

log = logging.getLogger(__name__)


def resend_lost(
    engine: Engine,
    client: redis.Redis,
    models: list[str],
    send: Callable[[str, int, str], None],
    *,
    older_than_s: float,
) -> int:
    """Re-send the lost chunks of ``models``; how many were sent."""
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
