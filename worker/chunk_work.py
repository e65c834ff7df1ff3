"""One delivery of a chunk task, without Celery: claim the chunk, score it, finish it.

The Celery task (``worker.tasks``) turns the :class:`ChunkReport` this returns into
messaging (retry later, re-route, nothing); everything that touches SQL is here, so it is
tested with fakes and SQLite as well as through a real worker.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from time import monotonic

from sqlalchemy import Engine, select

from core.chunks import Claim, ClaimOutcome, claim_chunk, finish_chunk, release_chunk, renew_lease
from core.config import Settings
from core.jobs import Chunk, get_job, load_items, mark_running
from core.predictions import Prediction
from core.results import ScoredItem, scored_indexes, write_results
from core.status import ACTIVE_JOB_STATES, ChunkStatus, JobStatus
from core.tables import jobs
from worker.runners.base import Runner
from worker.scoring import score_items

log = logging.getLogger(__name__)

RunnerLookup = Callable[[str], Runner | None]


class ChunkOutcome(StrEnum):
    """What one delivery did."""

    DONE = "done"  # scored (items already scored by an earlier attempt were skipped)
    CANCELLED = "cancelled"  # the job was cancelled: stopped before or during the chunk
    SKIPPED = "skipped"  # nothing to do: the chunk is done, or the job is final or gone
    BUSY = "busy"  # another delivery holds the chunk: deliver again after retry_in_s
    ABANDONED = "abandoned"  # out of attempts: unscored items were written as errors
    WRONG_MODEL = "wrong_model"  # this process has not loaded the job's model


@dataclass(frozen=True, slots=True)
class ChunkReport:
    outcome: ChunkOutcome
    reason: str = ""
    model: str | None = None
    scored: int = 0
    already_scored: int = 0
    attempts: int = 0
    retry_in_s: float = 0.0


class ChunkAttemptError(RuntimeError):
    """A claimed attempt failed; ``retry`` says whether another attempt may follow."""

    def __init__(self, message: str, *, attempts: int, retry: bool) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.retry = retry


def job_is_active(engine: Engine, job_id: str) -> bool:
    with engine.connect() as conn:
        status = conn.scalar(select(jobs.c.status).where(jobs.c.id == job_id))
    return status is not None and JobStatus(status) in ACTIVE_JOB_STATES


def work_on_chunk(
    engine: Engine,
    settings: Settings,
    job_id: str,
    chunk_index: int,
    runner_for: RunnerLookup,
    heartbeat: Callable[[], None] | None = None,
) -> ChunkReport:
    """Handle one delivery of chunk ``chunk_index`` of job ``job_id``.

    Raises:
        ChunkAttemptError: Scoring failed after the chunk was claimed; the chunk was given
            back for a retry (``retry``) or, out of attempts, its unscored items were
            written as per-item errors.
    """
    with engine.connect() as conn:
        job = get_job(conn, job_id)
    if job is None:
        return ChunkReport(ChunkOutcome.SKIPPED, "no such job")
    runner = runner_for(job.model)
    if runner is None:
        # Checked before claiming, so a stray message costs the chunk no attempt.
        return ChunkReport(ChunkOutcome.WRONG_MODEL, "model not loaded here", model=job.model)
    with engine.begin() as conn:
        claim = claim_chunk(
            conn,
            job_id,
            chunk_index,
            lease_s=settings.chunk_lease_s,
            max_attempts=settings.chunk_max_attempts,
        )
        if claim.claimed:
            mark_running(conn, job_id)
    if not claim.claimed:
        return _unclaimed(engine, job.model, job.model_revision, claim)
    assert claim.chunk is not None
    try:
        return _score_claimed(engine, settings, claim.chunk, claim.attempts, runner, heartbeat)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        if claim.attempts >= settings.chunk_max_attempts:
            abandon_chunk(
                engine, job.model, job.model_revision, claim.chunk, claim.attempts, reason
            )
            raise ChunkAttemptError(reason, attempts=claim.attempts, retry=False) from exc
        with engine.begin() as conn:
            release_chunk(conn, job_id, chunk_index)
        raise ChunkAttemptError(reason, attempts=claim.attempts, retry=True) from exc


def _unclaimed(engine: Engine, model: str, revision: str | None, claim: Claim) -> ChunkReport:
    outcome = claim.outcome
    if outcome == ClaimOutcome.BUSY:
        return ChunkReport(
            ChunkOutcome.BUSY,
            "leased by another delivery",
            attempts=claim.attempts,
            retry_in_s=claim.retry_in_s,
        )
    if outcome == ClaimOutcome.EXHAUSTED:
        assert claim.chunk is not None
        reason = "every attempt stopped without finishing (worker killed or lease lost)"
        written = abandon_chunk(engine, model, revision, claim.chunk, claim.attempts, reason)
        return ChunkReport(ChunkOutcome.ABANDONED, reason, scored=written, attempts=claim.attempts)
    if outcome == ClaimOutcome.CANCELLED:
        return ChunkReport(ChunkOutcome.CANCELLED, "job cancelled", attempts=claim.attempts)
    reasons = {
        ClaimOutcome.DONE: "chunk already done",
        ClaimOutcome.JOB_FINAL: "job already final",
        ClaimOutcome.MISSING: "no such chunk",
    }
    return ChunkReport(ChunkOutcome.SKIPPED, reasons[outcome], attempts=claim.attempts)


def _score_claimed(
    engine: Engine,
    settings: Settings,
    chunk: Chunk,
    attempts: int,
    runner: Runner,
    heartbeat: Callable[[], None] | None,
) -> ChunkReport:
    stopped = False
    renew_every = settings.chunk_lease_s / 3
    last_renewal = monotonic()

    def should_stop() -> bool:
        nonlocal stopped
        stopped = stopped or not job_is_active(engine, chunk.job_id)
        return stopped

    def progress(_count: int) -> None:
        # A chunk that makes progress keeps its lease, so only a stalled or dead worker's
        # chunk is taken over by a later delivery.
        nonlocal last_renewal
        if heartbeat is not None:
            heartbeat()
        if monotonic() - last_renewal >= renew_every:
            with engine.begin() as conn:
                renew_lease(conn, chunk.job_id, chunk.index, settings.chunk_lease_s)
            last_renewal = monotonic()

    with engine.connect() as conn:
        items = load_items(conn, chunk.job_id, chunk.start, chunk.stop)
    totals = score_items(
        engine,
        chunk.job_id,
        runner,
        items,
        write_batch_size=settings.write_batch_size,
        progress=progress,
        should_stop=should_stop,
    )
    status = ChunkStatus.CANCELLED if stopped else ChunkStatus.DONE
    with engine.begin() as conn:
        finish_chunk(conn, chunk.job_id, chunk.index, status)
    return ChunkReport(
        ChunkOutcome.CANCELLED if stopped else ChunkOutcome.DONE,
        "job cancelled during the chunk" if stopped else "",
        scored=totals.succeeded + totals.failed,
        already_scored=totals.skipped,
        attempts=attempts,
    )


def abandon_chunk(
    engine: Engine, model: str, revision: str | None, chunk: Chunk, attempts: int, reason: str
) -> int:
    """Write a per-item error for every unscored item of ``chunk`` and mark it done.

    A chunk that fails every attempt (a poison input that kills the worker, say) must not
    hold its job open forever: its items get errors that say why, and the job completes.
    """
    message = f"not scored: chunk {chunk.index} failed {attempts} attempt(s): {reason}"[:2000]
    with engine.begin() as conn:
        done = scored_indexes(conn, chunk.job_id, chunk.start, chunk.stop)
        missing = [
            ScoredItem(index=index, item_id=item.item_id, prediction=Prediction.failure(message))
            for index, item in load_items(conn, chunk.job_id, chunk.start, chunk.stop)
            if index not in done
        ]
        outcome = write_results(conn, chunk.job_id, model, revision, missing)
        finish_chunk(conn, chunk.job_id, chunk.index, ChunkStatus.DONE)
    log.error("chunk %d of job %s abandoned: %s", chunk.index, chunk.job_id, message)
    return outcome.written
