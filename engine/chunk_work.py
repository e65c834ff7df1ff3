"""One delivery of a chunk, without Celery: claim the chunk, score it, finish it.

Both drivers call :func:`work_on_chunk`: the Celery task (``worker.tasks``), which turns
the :class:`ChunkReport` into messaging (retry later, re-route, nothing), and ``bulkscore
score`` in-process (:mod:`engine.in_process`). Everything that touches SQL is here, so it
is tested with fakes and SQLite as well as through a real worker, and both drivers claim,
lease and finish a chunk the same way: no chunk of either is left ``queued``.

A training job's one chunk goes the same way (claim, lease, attempts, renewals from the
training's progress), routed by ``jobs.runs_on`` to the workers of its base; instead of
scoring items, the delivery trains (:func:`engine.trainer.train_job`) with the driver's
backbone. A failed attempt is released for a retry like a chunk's; out of attempts, or on
a failure no retry can mend (unusable data, a name of another owner), the job ends
``failed`` with the reason: there is nothing to bisect.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from time import monotonic

from sqlalchemy import Engine

from core.chunks.batches import (
    ChunkKey,
    active_jobs,
    finish_chunks,
    job_statuses,
    load_chunk_items,
    release_chunks,
    renew_leases,
)
from core.chunks.claim import (
    Claim,
    ClaimOutcome,
    claim_chunk,
    delivery_state,
)
from core.chunks.split import split_exhausted
from core.config import Settings
from core.jobs.lifecycle import Chunk, load_items, mark_running
from core.jobs.predictions import Prediction
from core.jobs.results import ScoredItem, scored_indexes, write_results
from core.jobs.status import ChunkStatus, JobDriver, JobStatus
from core.models.trained import TrainedModel
from core.queues import ChunkSend
from core.training.jobs import fail_training_job
from engine.cross_job import gather_siblings
from engine.runners.base import Progress, Runner
from engine.scoring import JobItems, score_jobs
from engine.trainer import FINAL_ERRORS, BackboneFor, ExamplesFor, train_job

log = logging.getLogger(__name__)

RunnerLookup = Callable[[str], Runner | None]


@dataclass(frozen=True, slots=True)
class Driver:
    """Who is working on a chunk, and what that driver may do besides scoring it."""

    # The runner of a model this process has loaded, or None.
    runner_for: RunnerLookup
    kind: JobDriver = JobDriver.SERVICE
    # Called with a count as items are scored (a worker's liveness heartbeat, a progress
    # bar), including items found already scored.
    progress: Progress | None = None
    # Sends the new chunks of a split; None: the lost-message sweep sends them later.
    send: ChunkSend | None = None
    # None: settings.chunk_max_attempts. An embedded run is retried by hand, never split.
    max_attempts: int | None = None
    # Claim other jobs' queued chunks to score with a small one (the service only).
    cross_job: bool = True
    # The feature extractor a training job's base is trained on; None: this driver trains
    # nothing (it leaves training chunks to one that does).
    backbone_for: BackboneFor | None = None
    # A training run's examples; None: its stored upload (bulkscore train: local files).
    training_examples: ExamplesFor | None = None

    @classmethod
    def embedded(cls, runner: Runner, progress: Progress | None = None) -> Driver:
        """The in-process driver of ``bulkscore score``: its own job, its own runner."""
        return cls(
            runner_for=lambda _model: runner,
            kind=JobDriver.EMBEDDED,
            progress=progress,
            max_attempts=EMBEDDED_MAX_ATTEMPTS,
            cross_job=False,
        )


# A person re-runs `bulkscore score --job-id` after a crash; no attempt limit applies, and
# the column is a 32-bit integer.
EMBEDDED_MAX_ATTEMPTS = 2**31 - 1


# A job that stops its chunks midway by its own request: cancelled, or past its deadline.
STOPPED_JOB_STATES = frozenset({JobStatus.CANCELLED, JobStatus.EXPIRED})


class ChunkOutcome(StrEnum):
    """What one delivery did."""

    DONE = "done"  # scored (items already scored by an earlier attempt were skipped)
    CANCELLED = "cancelled"  # the job was cancelled or expired: stopped before or during the chunk
    SKIPPED = "skipped"  # nothing to do: the chunk is done, or the job is final or gone
    BUSY = "busy"  # another delivery holds the chunk: deliver again after retry_in_s
    WRONG_MODEL = "wrong_model"  # this process has not loaded the job's model
    FAILED = "failed"  # a training job that cannot succeed: failed with the reason


@dataclass(frozen=True, slots=True)
class BatchedChunk:
    """Another job's chunk this delivery claimed and scored with its own (cross-job)."""

    job_id: str
    index: int
    outcome: ChunkOutcome
    scored: int
    already_scored: int
    attempts: int


@dataclass(frozen=True, slots=True)
class ChunkReport:
    outcome: ChunkOutcome
    reason: str = ""
    model: str | None = None
    scored: int = 0
    already_scored: int = 0
    attempts: int = 0
    retry_in_s: float = 0.0
    batched: tuple[BatchedChunk, ...] = ()
    trained: TrainedModel | None = None  # the version a training chunk registered


class ChunkAttemptError(RuntimeError):
    """A claimed attempt failed; ``retry`` says whether another attempt may follow."""

    def __init__(self, message: str, *, attempts: int, retry: bool) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.retry = retry


def work_on_chunk(
    engine: Engine,
    settings: Settings,
    job_id: str,
    chunk_index: int,
    driver: Driver | RunnerLookup,
) -> ChunkReport:
    """Handle one delivery of chunk ``chunk_index`` of job ``job_id`` by ``driver``.

    A bare runner lookup is the service's driver with no heartbeat and no sender.

    Raises:
        ChunkAttemptError: Scoring failed after the chunk was claimed; the chunk was given
            back for a retry (``retry``) or, out of attempts, its unscored items were
            written as per-item errors.
    """
    if not isinstance(driver, Driver):
        driver = Driver(runner_for=driver)
    max_attempts = driver.max_attempts or settings.chunk_max_attempts
    with engine.connect() as conn:
        state = delivery_state(conn, job_id, chunk_index)
    if state is None:
        return ChunkReport(ChunkOutcome.SKIPPED, "no such job")
    if state.chunk_status == ChunkStatus.DONE:
        # The common case for small jobs' chunks batched by another delivery: one read.
        return ChunkReport(ChunkOutcome.SKIPPED, "chunk already done", attempts=state.attempts)
    model, revision = state.model, state.model_revision
    runner = driver.runner_for(state.runs_on)
    if runner is None:
        # Checked before claiming, so a stray message costs the chunk no attempt.
        return ChunkReport(ChunkOutcome.WRONG_MODEL, "model not loaded here", model=state.runs_on)
    if state.training and driver.backbone_for is None:
        return ChunkReport(ChunkOutcome.SKIPPED, "this driver does not train")
    with engine.begin() as conn:
        claim = claim_chunk(
            conn,
            job_id,
            chunk_index,
            lease_s=settings.chunk_lease_s,
            max_attempts=max_attempts,
            driver=driver.kind,
        )
        if claim.claimed:
            mark_running(conn, job_id)
    if not claim.claimed:
        return _unclaimed(engine, claim, driver.send)
    assert claim.chunk is not None
    if state.training:
        return _train_claimed(engine, settings, claim, driver, max_attempts)
    siblings = gather_siblings(engine, settings, runner, model, claim) if driver.cross_job else []
    try:
        return _score_claimed(engine, settings, [claim, *siblings], runner, driver.progress)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        if siblings:
            # Other jobs' chunks go back to the queue with their attempt counted; their own
            # messages (or retries of them) claim them again.
            with engine.begin() as conn:
                release_chunks(conn, [_key(c) for c in siblings])
        if claim.attempts >= max_attempts:
            abandon_chunk(engine, model, revision, claim.chunk, claim.attempts, reason)
            raise ChunkAttemptError(reason, attempts=claim.attempts, retry=False) from exc
        with engine.begin() as conn:
            release_chunks(conn, [(job_id, chunk_index)])
        raise ChunkAttemptError(reason, attempts=claim.attempts, retry=True) from exc


def _split(engine: Engine, claim: Claim, send: ChunkSend | None) -> ChunkReport:
    """What a delivery that met an exhausted chunk did: split it (the chunk task logs it)."""
    assert claim.chunk is not None
    chunk = claim.chunk
    # The chunk's own count is the limit it reached; its halves get one attempt under it.
    outcome = split_exhausted(
        engine, chunk.job_id, chunk.index, max_attempts=claim.attempts, send=send
    )
    if outcome is None:
        return ChunkReport(ChunkOutcome.SKIPPED, "already split", attempts=claim.attempts)
    if outcome.failed_job:
        return ChunkReport(
            ChunkOutcome.FAILED, "training out of attempts: failed", attempts=claim.attempts
        )
    if outcome.children:
        reason = "out of attempts: split into chunks " + ", ".join(map(str, outcome.children))
    else:
        reason = "out of attempts: its last item recorded as a per-item error"
    return ChunkReport(
        ChunkOutcome.SKIPPED, reason, scored=outcome.failed_items, attempts=claim.attempts
    )


def _key(claim: Claim) -> ChunkKey:
    assert claim.chunk is not None
    return (claim.chunk.job_id, claim.chunk.index)


def _lease_keeper(
    engine: Engine, settings: Settings, keys: list[ChunkKey], on_progress: Progress | None
) -> Progress:
    """A progress callback that also renews the leases of ``keys`` every third of a lease.

    Chunks that make progress keep their leases, so only a stalled or dead worker's chunks
    are taken over by a later delivery.
    """
    renew_every = settings.chunk_lease_s / 3
    last_renewal = monotonic()

    def progress(count: int) -> None:
        nonlocal last_renewal
        if on_progress is not None:
            on_progress(count)
        if monotonic() - last_renewal >= renew_every:
            with engine.begin() as conn:
                renew_leases(conn, keys, settings.chunk_lease_s)
            last_renewal = monotonic()

    return progress


def _train_claimed(
    engine: Engine, settings: Settings, claim: Claim, driver: Driver, max_attempts: int
) -> ChunkReport:
    """One attempt at a claimed training chunk: train, register, complete (one transaction
    finishes the job and its chunk), or fail/release it."""
    assert claim.chunk is not None and driver.backbone_for is not None
    job_id, key = claim.chunk.job_id, _key(claim)
    progress = _lease_keeper(engine, settings, [key], driver.progress)
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


def _unclaimed(engine: Engine, claim: Claim, send: ChunkSend | None) -> ChunkReport:
    outcome = claim.outcome
    if outcome == ClaimOutcome.BUSY:
        return ChunkReport(
            ChunkOutcome.BUSY,
            "leased by another delivery",
            attempts=claim.attempts,
            retry_in_s=claim.retry_in_s,
        )
    if outcome == ClaimOutcome.EXHAUSTED:
        # Bisected to find the poison item instead of failing every item.
        return _split(engine, claim, send)
    if outcome == ClaimOutcome.CANCELLED:
        return ChunkReport(ChunkOutcome.CANCELLED, "job cancelled", attempts=claim.attempts)
    if outcome == ClaimOutcome.EXPIRED:
        return ChunkReport(
            ChunkOutcome.CANCELLED, "job expired (past its deadline)", attempts=claim.attempts
        )
    reasons = {
        ClaimOutcome.DONE: "chunk already done",
        ClaimOutcome.JOB_FINAL: "job already final",
        ClaimOutcome.MISSING: "no such chunk",
    }
    return ChunkReport(ChunkOutcome.SKIPPED, reasons[outcome], attempts=claim.attempts)


def _score_claimed(
    engine: Engine,
    settings: Settings,
    claims: list[Claim],
    runner: Runner,
    on_progress: Progress | None,
) -> ChunkReport:
    """Score the claimed chunks (this delivery's first, then its cross-job siblings).

    Every chunk belongs to a different job, so per-job totals are per-chunk totals. Rows are
    committed before the chunks are marked done, and both before the task returns (and so
    before its message is acked).
    """
    batch = [claim.chunk for claim in claims if claim.chunk is not None]
    keys = [(chunk.job_id, chunk.index) for chunk in batch]
    progress = _lease_keeper(engine, settings, keys, on_progress)

    def still_active(job_ids: set[str]) -> set[str]:
        with engine.connect() as conn:
            return active_jobs(conn, job_ids)

    with engine.connect() as conn:
        loaded = load_chunk_items(conn, batch)
    totals, stopped = score_jobs(
        engine,
        runner,
        [JobItems(chunk.job_id, loaded[(chunk.job_id, chunk.index)]) for chunk in batch],
        write_batch_size=settings.write_batch_size,
        progress=progress,
        still_active=still_active,
    )
    with engine.begin() as conn:
        finish_chunks(conn, [k for k in keys if k[0] not in stopped], ChunkStatus.DONE)
        finish_chunks(conn, [k for k in keys if k[0] in stopped], ChunkStatus.CANCELLED)
        # A job stops being active when it is cancelled, but also when another delivery of
        # a chunk (this one's, re-sent after this worker hung) finished it: that is no
        # cancellation, and the log must not say so.
        stopped_statuses = job_statuses(conn, stopped)
        finished_elsewhere = {
            job_id: status
            for job_id, status in stopped_statuses.items()
            if status not in STOPPED_JOB_STATES
        }

    def outcome(job_id: str) -> ChunkOutcome:
        if job_id in finished_elsewhere:
            return ChunkOutcome.SKIPPED
        return ChunkOutcome.CANCELLED if job_id in stopped else ChunkOutcome.DONE

    def reason(job_id: str) -> str:
        if job_id in finished_elsewhere:
            return f"job {finished_elsewhere[job_id].value} by another delivery during the chunk"
        if job_id not in stopped:
            return ""
        status = stopped_statuses.get(job_id, JobStatus.CANCELLED)
        return f"job {status.value} during the chunk"

    first, others = claims[0], claims[1:]
    assert first.chunk is not None
    own = totals[first.chunk.job_id]
    batched = tuple(
        BatchedChunk(
            job_id=c.chunk.job_id,
            index=c.chunk.index,
            outcome=outcome(c.chunk.job_id),
            scored=totals[c.chunk.job_id].succeeded + totals[c.chunk.job_id].failed,
            already_scored=totals[c.chunk.job_id].skipped,
            attempts=c.attempts,
        )
        for c in others
        if c.chunk is not None
    )
    return ChunkReport(
        outcome(first.chunk.job_id),
        reason(first.chunk.job_id),
        scored=own.succeeded + own.failed,
        already_scored=own.skipped,
        attempts=first.attempts,
        batched=batched,
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
        finish_chunks(conn, [(chunk.job_id, chunk.index)], ChunkStatus.DONE)
    log.error("chunk %d of job %s abandoned: %s", chunk.index, chunk.job_id, message)
    return outcome.written
