"""Re-send chunks whose worker died, instead of waiting hours for Redis to redeliver them.

Every worker runs this from its consumer's timer, for the models it serves, in this order:

1. chunks that used up their attempts are bisected to find a poison item
   (:func:`core.chunks.split.split_all_exhausted`);
2. chunks left ``running`` past their lease are released in SQL (only one worker wins each)
   and sent again (:func:`core.chunks.claim.release_expired`);
3. chunks queued for long with an empty queue lost their message and are sent again
   (:func:`core.chunks.sweep.resend_lost`);
4. jobs past their ``expires_after_s`` deadline end ``expired``, whatever model they run
   on (:func:`core.jobs.expiry.expire_overdue`): a job no worker claims (its model is
   served by none) still ends;
5. the result cache is trimmed to ``cache_max_rows`` and ``cache_max_age_s``
   (:func:`core.cache.upkeep.evict`): oldest rows first, in small transactions of their
   own, never inside a scoring transaction, so eviction never holds up a writer for long.

Each of 1-3 finds only the service's own jobs (:func:`core.chunks.claim.service_jobs`), never an
embedded ``bulkscore score`` job on the same database.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import bootsteps

from core.cache.upkeep import evict
from core.chunks.claim import release_expired
from core.chunks.split import split_all_exhausted
from core.chunks.sweep import resend_lost
from core.config import Settings, get_settings
from core.db import get_engine
from core.heartbeats import redis_client
from core.jobs.expiry import expire_overdue
from core.queues import ChunkSend, chunk_sender
from worker import warm

log = logging.getLogger(__name__)

MAX_INTERVAL_S = 60.0


def interval_s(lease_s: float) -> float:
    """Check twice per lease, so a dead worker's chunk waits at most about 1.5 leases."""
    return min(lease_s / 2, MAX_INTERVAL_S)


def resend_expired(send: ChunkSend, settings: Settings) -> int:
    """Split exhausted chunks, then release and re-send expired ones; how many were sent."""
    models = warm.loaded_models()
    if not models:
        return 0
    engine = get_engine(settings.database_url)
    # First: a chunk out of attempts must be bisected, not released to fail as a whole.
    split_all_exhausted(engine, models, max_attempts=settings.chunk_max_attempts, send=send)
    with engine.begin() as conn:
        released = release_expired(conn, models)
    for job_id, index, model in released:
        # If this send fails the chunk stays queued and the original message still comes
        # back after visibility_timeout: late, but not lost.
        send(job_id, index, model)
        log.warning(
            "chunk %d of job %s: its worker stopped renewing the lease; re-sent", index, job_id
        )
    return len(released)


def reconcile(send: ChunkSend, client: redis.Redis, settings: Settings) -> None:
    """One timer tick: the five steps of the module docstring, each on its own."""
    try:
        resend_expired(send, settings)
    except Exception:  # a database hiccup must not stop the consumer
        log.exception("could not check for expired chunk leases")
    try:
        resend_lost(
            get_engine(settings.database_url),
            client,
            warm.loaded_models(),
            send,
            older_than_s=settings.chunk_resend_after_s,
        )
    except Exception:
        log.exception("could not check for chunks whose message was lost")
    try:
        expire_jobs(settings)
    except Exception:
        log.exception("could not check for jobs past their deadline")
    try:
        evict_cache(settings)
    except Exception:
        log.exception("could not trim the result cache")


def expire_jobs(settings: Settings) -> list[str]:
    """Expire the service's jobs past their deadline; their ids."""
    with get_engine(settings.database_url).begin() as conn:
        expired = expire_overdue(conn)
    for job_id in expired:
        log.warning("job %s: not finished by its deadline (expires_after_s); expired", job_id)
    return expired


def evict_cache(settings: Settings) -> int:
    """Trim the result cache to its limits; how many rows were deleted."""
    if not settings.cache_max_rows and not settings.cache_max_age_s:
        return 0
    deleted = evict(
        get_engine(settings.database_url),
        max_rows=settings.cache_max_rows,
        max_age_s=settings.cache_max_age_s,
    )
    if deleted:
        log.info("result cache: evicted %d rows (oldest first)", deleted)
    return deleted


class ReconcileStep(bootsteps.StartStopStep):
    """Runs :func:`reconcile` on the consumer's timer while the worker consumes."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.timer_entry: Any = None

    def start(self, c: Any) -> None:
        settings = get_settings()
        send = chunk_sender(c.app)
        client = redis_client(settings.broker_url)
        every = interval_s(settings.chunk_lease_s)
        self.timer_entry = c.timer.call_repeatedly(every, reconcile, (send, client, settings))

    def stop(self, c: Any) -> None:
        if self.timer_entry is not None:
            self.timer_entry.cancel()
            self.timer_entry = None
