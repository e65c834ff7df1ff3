"""A training job's one chunk, claimed like any other: train, register and finish it.

A training job is routed by ``jobs.runs_on`` to the workers of its base and claimed,
leased and retried like a scoring chunk (:func:`engine.chunk_work.work_on_chunk` hands the
claim here); the lease is renewed from the training's progress. Out of attempts, or on a
failure no retry can mend (unusable data, a name of another owner), the job ends
``failed`` with the reason: there is nothing to bisect.
"""

from __future__ import annotations

import logging

from sqlalchemy import Engine

from core.chunks.batches import finish_chunks, release_chunks
from core.chunks.claim import Claim
from core.config import Settings
from core.jobs.status import ChunkStatus
from core.training.jobs import fail_training_job
from engine.delivery import ChunkAttemptError, ChunkOutcome, ChunkReport, Driver, lease_keeper
from engine.trainer import FINAL_ERRORS, train_job

log = logging.getLogger(__name__)


def train_claimed(
    engine: Engine, settings: Settings, claim: Claim, driver: Driver, max_attempts: int
) -> ChunkReport:
    """One attempt at a claimed training chunk: train, register, complete (one transaction
    finishes the job and its chunk), or fail/release it."""
    assert claim.chunk is not None and driver.backbone_for is not None
    job_id, key = claim.chunk.job_id, (claim.chunk.job_id, claim.chunk.index)
    progress = lease_keeper(engine, settings, [key], driver.progress)
    try:
        model = train_job(
            engine, settings, job_id, driver.backbone_for, driver.training_examples, progress
        )
    except FINAL_ERRORS as exc:
        with engine.begin() as conn:
            fail_training_job(conn, job_id, str(exc))
        return ChunkReport(ChunkOutcome.FAILED, str(exc), attempts=claim.attempts)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        log.exception("training job %s: attempt %d failed", job_id, claim.attempts)
        if claim.attempts >= max_attempts:
            with engine.begin() as conn:
                fail_training_job(
                    conn, job_id, f"out of attempts ({claim.attempts}); last: {reason}"
                )
            raise ChunkAttemptError(reason, attempts=claim.attempts, retry=False) from exc
        with engine.begin() as conn:
            release_chunks(conn, [key])
        raise ChunkAttemptError(reason, attempts=claim.attempts, retry=True) from exc
    if model is None:
        with engine.begin() as conn:
            finish_chunks(conn, [key], ChunkStatus.CANCELLED)
        return ChunkReport(
            ChunkOutcome.CANCELLED, "job cancelled during the training", attempts=claim.attempts
        )
    accuracy = model.accuracy or 0.0
    return ChunkReport(
        ChunkOutcome.DONE,
        f"trained {model.name} {model.revision}, held-out accuracy {accuracy:.3f}",
        attempts=claim.attempts,
        trained=model,
    )
