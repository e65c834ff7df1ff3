"""Cross-job batching: a small chunk gathers other jobs' queued chunks to score with it.

One task per chunk means one forward pass per one-text job: a thousand tiny jobs cost a
thousand passes where one thousand-text job costs a few dozen. So when a chunk task holds a
chunk smaller than one forward pass, it claims other jobs' queued small chunks of the same
model in SQL (``core.chunks.batches.claim_siblings``), up to a chunk's worth of items, waiting
once (``cross_job_wait_ms``) if they do not yet fill a forward pass, and scores them all in
shared ``predict`` calls, sorted by length together.

Why SQL claims rather than a consumer that fetches several Redis messages: chunk state
already lives in SQL with leases and attempt counts, and every delivery already starts with
a claim there, so a sibling claimed here is indistinguishable from one whose own message
arrived; nothing about acking, redelivery, the reconciler or Celery's prefetch changes. A
sibling's own message, delivered later, finds the chunk done and is acked as a no-op.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy import Engine

from core.chunks.batches import claim_siblings, mark_jobs_running
from core.chunks.claim import Claim
from core.chunks.fair import Fairness
from core.config import Settings
from engine.runners.base import Runner

log = logging.getLogger(__name__)


def batch_items(runner: Runner, settings: Settings) -> int:
    """The most items one cross-job batch holds: the setting, else a chunk's worth.

    More than one forward pass: the runner sorts the whole batch by length, so a batch of a
    chunk's size pads as little as a big job's chunk does, and its per-task costs (claims,
    writes, the siblings' no-op deliveries) are spread over as many items. Measured on the
    bench texts: 64-item batches scored ~38 items/s, 512-item ones as fast as a big job.
    """
    return settings.cross_job_max_items or max(settings.chunk_size, runner.max_batch_size)


def gather_siblings(
    engine: Engine, settings: Settings, runner: Runner, model: str, claim: Claim
) -> list[Claim]:
    """Claim other jobs' chunks to score with ``claim``'s; the claims, oldest first.

    Nothing is gathered when batching is off, when ``claim`` already fills a batch, or when
    it is a retry (its first attempt failed: it may hold a poison input, so it runs alone).
    """
    chunk = claim.chunk
    if not settings.cross_job_batching or chunk is None or claim.attempts > 1:
        return []
    # A chunk as big as the job's chunks may be (``chunk_size``) is a big job's: on a GPU
    # worker (batches of 2,048) every 512-item chunk was smaller than a pass, so each of a
    # lone big job's chunks asked for siblings and found none (~10 ms a chunk on a 2-core
    # machine, issue 16), and big jobs' chunks were taken from their own tasks.
    small = min(runner.max_batch_size, settings.chunk_size)
    size = chunk.stop - chunk.start
    if size >= small:
        return []  # fills a forward pass by itself: a big job's chunk, left to its own task
    room = batch_items(runner, settings) - size
    gathered: list[Claim] = []
    for look in range(2):
        if room <= 0:
            break
        if look:
            # Other small jobs are arriving but fill less than one forward pass: give those
            # submitted a moment apart one short chance to join. Never for a lone job or a
            # big job's chunk (nothing else queued: nothing to wait for), never twice per
            # task, and a backlog never waits (its first look fills the batch).
            if not settings.cross_job_wait_ms or not gathered or size >= small:
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
                    max_chunk_items=small - 1,
                    fairness=Fairness.of(settings) if settings.fair_claiming else None,
                )
                mark_jobs_running(conn, {c.chunk.job_id for c in found if c.chunk is not None})
        except Exception:
            # Gathering only saves forward passes: a failed look (rolled back, nothing
            # claimed) must not cost the chunk this delivery already holds.
            log.warning("could not gather other jobs' chunks for %s", model, exc_info=True)
            break
        gathered.extend(found)
        added = sum(c.chunk.stop - c.chunk.start for c in found if c.chunk is not None)
        room -= added
        size += added
    return gathered
