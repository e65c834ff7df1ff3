"""Cross-job batching: a small chunk gathers other jobs' queued chunks to score with it.

One task per chunk means one forward pass per one-text job: a thousand tiny jobs cost a
thousand passes where one thousand-text job costs a few dozen. So when a chunk task holds a
chunk smaller than a batch, it claims other jobs' queued chunks of the same model in SQL
(``core.chunk_batches.claim_siblings``) until the batch is full or, once, a short wait has
passed, and scores them all in shared ``predict`` calls.

Why SQL claims rather than a consumer that fetches several Redis messages: chunk state
already lives in SQL with leases and attempt counts, and every delivery already starts with
a claim there, so a sibling claimed here is indistinguishable from one whose own message
arrived; nothing about acking, redelivery, the reconciler or Celery's prefetch changes. A
sibling's own message, delivered later, finds the chunk done and is acked as a no-op.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy import Engine

from core.chunk_batches import claim_siblings, mark_jobs_running
from core.chunks import Claim
from core.config import Settings

log = logging.getLogger(__name__)

# Items per batch when neither the settings nor the runner say (a CPU text batch).
DEFAULT_BATCH_ITEMS = 64


def batch_items(runner: Any, settings: Settings) -> int:
    """The most items one cross-job batch holds: the setting, else the model's batch size."""
    if settings.cross_job_max_items:
        return settings.cross_job_max_items
    size = getattr(runner, "max_batch_size", None)
    return size if isinstance(size, int) and size > 0 else DEFAULT_BATCH_ITEMS


def gather_siblings(
    engine: Engine, settings: Settings, runner: Any, model: str, claim: Claim
) -> list[Claim]:
    """Claim other jobs' chunks to score with ``claim``'s; the claims, oldest first.

    Nothing is gathered when batching is off, when ``claim`` already fills a batch, or when
    it is a retry (its first attempt failed: it may hold a poison input, so it runs alone).
    """
    chunk = claim.chunk
    if not settings.cross_job_batching or chunk is None or claim.attempts > 1:
        return []
    room = batch_items(runner, settings) - (chunk.stop - chunk.start)
    gathered: list[Claim] = []
    for look in range(2):
        if room <= 0:
            break
        if look:
            # The batch is not full: give small jobs submitted a moment apart one short
            # chance to join it. Bounded (one wait per task), so a lone job is delayed by
            # at most this, and a backlog never waits (its first look fills the batch).
            if not settings.cross_job_wait_ms:
                break
            time.sleep(settings.cross_job_wait_ms / 1000)
        exclude = {chunk.job_id} | {c.chunk.job_id for c in gathered if c.chunk is not None}
        try:
            with engine.begin() as conn:
                found = claim_siblings(
                    conn,
                    model,
                    exclude_jobs=exclude,
                    max_items=room,
                    max_chunks=room,
                    lease_s=settings.chunk_lease_s,
                )
                mark_jobs_running(conn, {c.chunk.job_id for c in found if c.chunk is not None})
        except Exception:
            # Gathering only saves forward passes: a failed look (rolled back, nothing
            # claimed) must not cost the chunk this delivery already holds.
            log.warning("could not gather other jobs' chunks for %s", model, exc_info=True)
            break
        gathered.extend(found)
        room -= sum(c.chunk.stop - c.chunk.start for c in found if c.chunk is not None)
    return gathered
