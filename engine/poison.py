"""Chunks that used up their attempts are bisected, not failed whole (``core.chunks.split``).

Two places meet an exhausted chunk: the reconciler's timer (a chunk whose worker died on
its last attempt: its lease ran out) and, rarely, a delivery that claims a chunk already
given back with no attempt left. Both call :func:`split_exhausted`, which splits in SQL and
sends one message per new chunk. The sender is set by the worker when it starts consuming
(``worker.reconciler``); without one (unit tests, a process without a broker) the new
chunks wait for a worker's lost-message sweep (``worker.sweeper``) to send them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from core.chunks.claim import Claim
from core.chunks.split import SplitOutcome, exhausted_chunks, split_chunk

if TYPE_CHECKING:
    from engine.chunk_work import ChunkReport

log = logging.getLogger(__name__)

Sender = Callable[[str, int, str], None]  # (job_id, chunk_index, model)

# Set by the consuming worker; see the module docstring.
SENDER: list[Sender] = []

EXHAUSTED_REASON = "every attempt stopped without finishing (worker killed, or hung past its lease)"


def split_exhausted(
    engine: Engine, job_id: str, index: int, *, max_attempts: int, reason: str = EXHAUSTED_REASON
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
        _send(outcome)
    elif outcome.failed_items:
        log.error(
            "chunk %d of job %s: its last unscored item stopped the worker on every attempt; "
            "recorded as a per-item error",
            index,
            job_id,
        )
    return outcome


def split_all_exhausted(engine: Engine, models: list[str], *, max_attempts: int) -> int:
    """:func:`split_exhausted` for every exhausted chunk of ``models``; how many were taken."""
    with engine.connect() as conn:
        found = exhausted_chunks(conn, models, max_attempts=max_attempts)
    taken = 0
    for job_id, index in found:
        if split_exhausted(engine, job_id, index, max_attempts=max_attempts) is not None:
            taken += 1
    return taken


def _send(outcome: SplitOutcome) -> None:
    if not SENDER:
        return
    for child in outcome.children:
        try:
            SENDER[0](outcome.job_id, child, outcome.model)
        except Exception:
            # The chunk stays queued; the lost-message sweep sends it later.
            log.exception("could not send chunk %d of job %s", child, outcome.job_id)


def exhausted_report(engine: Engine, claim: Claim) -> ChunkReport:
    """What a delivery that met an exhausted chunk did: split it (the chunk task logs it)."""
    from engine.chunk_work import ChunkOutcome, ChunkReport

    assert claim.chunk is not None
    chunk = claim.chunk
    # The chunk's own count is the limit it reached; its halves get one attempt under it.
    outcome = split_exhausted(engine, chunk.job_id, chunk.index, max_attempts=claim.attempts)
    if outcome is None:
        return ChunkReport(ChunkOutcome.SKIPPED, "already split", attempts=claim.attempts)
    if outcome.children:
        reason = "out of attempts: split into chunks " + ", ".join(map(str, outcome.children))
    else:
        reason = "out of attempts: its last item recorded as a per-item error"
    return ChunkReport(
        ChunkOutcome.SKIPPED, reason, scored=outcome.failed_items, attempts=claim.attempts
    )
