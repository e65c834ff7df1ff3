"""One delivery of a chunk, without Celery: claim the chunk, score it, finish it.

Both drivers call :func:`work_on_chunk`: the Celery task (``worker.tasks``), which turns
the :class:`ChunkReport` into messaging (retry later, re-route, nothing), and ``bulkscore
score`` in-process (:mod:`engine.in_process`). Everything that touches SQL is here, so it
is tested with fakes and SQLite as well as through a real worker, and both drivers claim,
lease and finish a chunk the same way: no chunk of either is left ``queued``.

A training job's one chunk goes the same way (claim, lease, attempts), routed by
``jobs.runs_on`` to the workers of its base; once claimed, it is trained rather than scored
(:mod:`engine.training_chunk`). The driver and the report are :mod:`engine.delivery`.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from time import monotonic

from sqlalchemy import Engine

from core.chunks.batches import (
    ChunkKey,
    active_jobs,
    finish_chunks,
    job_statuses,
    load_chunk_items,
    release_chunks,
)
from core.chunks.claim import (
    Claim,
    ClaimOutcome,
    Delivery,
    claim_chunk,
    delivery_state,
)
from core.chunks.fair import (
    Fairness,
    claim_fairest,
    current_turn,
    outranked_since,
    record_overrun,
    stamp_served,
)
from core.chunks.split import hand_back, split_exhausted
from core.clock import utcnow
from core.config import Settings
from core.jobs.lifecycle import Chunk, load_items, mark_running
from core.jobs.predictions import Prediction
from core.jobs.results import ScoredItem, scored_indexes
from core.jobs.retry_marks import pending_retries, write_scored
from core.jobs.status import ChunkStatus, JobDriver, JobStatus
from core.queues import ChunkSend
from engine.cross_job import gather_siblings
from engine.delivery import (
    BatchedChunk,
    ChunkAttemptError,
    ChunkOutcome,
    ChunkReport,
    Driver,
    RunnerLookup,
    lease_keeper,
)
from engine.runners.base import Runner
from engine.scoring import JobItems, ScoreTotals, score_jobs
from engine.training_chunk import train_claimed

log = logging.getLogger(__name__)

# A job that stops its chunks midway by its own request: cancelled, or past its deadline.
STOPPED_JOB_STATES = frozenset({JobStatus.CANCELLED, JobStatus.EXPIRED})


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
    fair = driver.kind == JobDriver.SERVICE and settings.fair_claiming
    if state.chunk_status == ChunkStatus.DONE and not fair:
        # The common case for small jobs' chunks batched by another delivery: one read.
        return ChunkReport(ChunkOutcome.SKIPPED, "chunk already done", attempts=state.attempts)
    runner = driver.runner_for(state.runs_on)
    if runner is None:
        # Checked before claiming, so a stray message costs the chunk no attempt.
        return ChunkReport(ChunkOutcome.WRONG_MODEL, "model not loaded here", model=state.runs_on)
    with engine.begin() as conn:
        claim = None
        if fair:
            # The message is a token for "a chunk of this model waits": take the fairest.
            claim = claim_fairest(
                conn,
                state.runs_on,
                Fairness.of(settings),
                lease_s=settings.chunk_lease_s,
                max_attempts=max_attempts,
                training=driver.backbone_for is not None,
            )
        if claim is None:
            if state.chunk_status == ChunkStatus.DONE:
                return ChunkReport(
                    ChunkOutcome.SKIPPED, "chunk already done", attempts=state.attempts
                )
            if state.training and driver.backbone_for is None:
                return ChunkReport(ChunkOutcome.SKIPPED, "this driver does not train")
            claim = claim_chunk(
                conn,
                job_id,
                chunk_index,
                lease_s=settings.chunk_lease_s,
                max_attempts=max_attempts,
                driver=driver.kind,
            )
            if claim.claimed and fair:
                stamp_served(conn, [job_id], fairness=Fairness.of(settings))
        if claim.claimed:
            assert claim.chunk is not None
            mark_running(conn, claim.chunk.job_id)
            if claim.chunk.job_id != job_id:
                state = delivery_state(conn, claim.chunk.job_id, claim.chunk.index)
                assert state is not None  # claimed in this transaction
    if not claim.claimed:
        return _unclaimed(engine, claim, driver.send)
    assert claim.chunk is not None
    report = _work_on_claimed(engine, settings, claim, state, runner, driver, max_attempts, fair)
    if (claim.chunk.job_id, claim.chunk.index) != (job_id, chunk_index):
        return replace(report, worked_on=(claim.chunk.job_id, claim.chunk.index))
    return report


def _work_on_claimed(
    engine: Engine,
    settings: Settings,
    claim: Claim,
    state: Delivery,
    runner: Runner,
    driver: Driver,
    max_attempts: int,
    fair: bool,
) -> ChunkReport:
    """Train or score a claimed chunk (with cross-job siblings), or give it back on failure."""
    assert claim.chunk is not None
    job_id, chunk_index = claim.chunk.job_id, claim.chunk.index
    model, revision = state.model, state.model_revision
    if state.training:
        return train_claimed(engine, settings, claim, driver, max_attempts)
    siblings = gather_siblings(engine, settings, runner, model, claim) if driver.cross_job else []
    try:
        yield_on = state.runs_on if fair and not siblings else None
        return _score_claimed(engine, settings, [claim, *siblings], runner, driver, yield_on)
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
    driver: Driver,
    yield_on: str | None,
) -> ChunkReport:
    """Score the claimed chunks (this delivery's first, then its cross-job siblings).

    Every chunk belongs to a different job, so per-job totals are per-chunk totals. Rows are
    committed before the chunks are marked done, and both before the task returns (and so
    before its message is acked). ``yield_on`` (fair claiming, one chunk: the model it runs
    on; None: never yield): between write
    windows, once the chunk has run ``fair_time_slice_s``, a job ranked before this one
    that is waiting takes the worker: the unscored rest goes back to the queue as a new
    chunk (:func:`core.chunks.split.hand_back`).
    """
    batch = [claim.chunk for claim in claims if claim.chunk is not None]
    keys = [(chunk.job_id, chunk.index) for chunk in batch]
    progress = lease_keeper(engine, settings, keys, driver.progress)

    def still_active(job_ids: set[str]) -> set[str]:
        with engine.connect() as conn:
            return active_jobs(conn, job_ids)

    first = claims[0]
    assert first.chunk is not None
    should_yield = (
        TurnClock(engine, settings, first.chunk.job_id, yield_on) if yield_on is not None else None
    )
    with engine.connect() as conn:
        loaded = load_chunk_items(conn, batch)
    run = score_jobs(
        engine,
        runner,
        [JobItems(chunk.job_id, loaded[(chunk.job_id, chunk.index)]) for chunk in batch],
        write_batch_size=settings.write_batch_size,
        progress=progress,
        still_active=still_active,
        should_yield=should_yield,
    )
    totals, stopped = run.totals, run.stopped
    if run.yielded:
        assert yield_on is not None  # only a chunk that may yield has yielded
        rest = run.yielded[first.chunk.job_id]
        assert should_yield is not None
        overrun = should_yield.overrun_s()
        return _hand_back(engine, first, yield_on, rest, totals, driver.send, overrun)
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

    others = claims[1:]
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


class TurnClock:
    """``should_yield`` for a chunk of ``job_id``: True once the job's turn is over (its
    length, counted from the claim that opened the turn: a chunk that continues a turn gets
    what is left of it) and a queued chunk of a job ranked before it waits (one indexed
    query per write window, none during the turn).

    It also measures how far the turn ran past its end when it yields (:meth:`overrun_s`):
    from the end of the turn, from the check before when that one still found nobody
    waiting, or from when the job that goes next began to wait, whichever came last (a
    job that ran on alone owes nothing for it).
    """

    def __init__(self, engine: Engine, settings: Settings, job_id: str, model: str) -> None:
        self.engine = engine
        self.job_id = job_id
        self.model = model
        self.fairness = Fairness.of(settings)
        with engine.connect() as conn:
            turn = current_turn(conn, job_id)
        if turn.ends is not None:
            left = (turn.ends - utcnow()).total_seconds()
        elif turn.began is not None:  # a turn from before turns had ends: the slice
            used = (utcnow() - turn.began).total_seconds()
            left = settings.fair_time_slice_s - max(used, 0.0)
        else:
            left = settings.fair_time_slice_s
        # A turn already over gives the chunk one window (the check comes between windows).
        self.ends = monotonic() + min(max(left, 0.0), settings.fair_time_slice_s)
        self.owed_from = self.ends

    def __call__(self) -> bool:
        now = monotonic()
        if now < self.ends:
            return False
        try:
            with self.engine.connect() as conn:
                since = outranked_since(conn, self.job_id, self.model, self.fairness)
        except Exception:
            # Only a scheduling hint: a failed look must not cost the chunk its work.
            log.warning("could not check for more urgent work", exc_info=True)
            return False
        if since is None:
            self.owed_from = now
            return False
        # Owed from when the job that goes next began to wait, if that came later: a job
        # that arrived during the window owes nothing for the window's start.
        waited = max((utcnow() - since).total_seconds(), 0.0)
        self.owed_from = max(self.owed_from, now - waited)
        return True

    def overrun_s(self) -> float:
        return max(monotonic() - self.owed_from, 0.0)


def _hand_back(
    engine: Engine,
    claim: Claim,
    model: str,
    rest: tuple[int, int],
    totals: dict[str, ScoreTotals],
    send: ChunkSend | None,
    overrun_s: float,
) -> ChunkReport:
    """Give the unscored ``rest`` of ``claim``'s chunk back as a new queued chunk, and send
    its message to ``model``'s queue (a token: the next delivery claims the fairest chunk,
    the waiting one); the job's next turn is ``overrun_s`` shorter."""
    assert claim.chunk is not None
    chunk = claim.chunk
    own = totals[chunk.job_id]
    with engine.begin() as conn:
        child = hand_back(conn, chunk.job_id, chunk.index, attempts=claim.attempts, rest=rest)
        if child is not None:
            record_overrun(conn, chunk.job_id, overrun_s)
    if child is None:
        reason = "lease taken over before the hand-back; left to its new holder"
    else:
        reason = f"items {rest[0]}..{rest[1] - 1} handed back as chunk {child} (a job ranks first)"
        if send is not None:
            try:
                send(chunk.job_id, child, model)
            except Exception:
                # The chunk stays queued; the lost-message sweep sends it later.
                log.exception("could not send chunk %d of job %s", child, chunk.job_id)
    return ChunkReport(
        ChunkOutcome.YIELDED,
        reason,
        scored=own.succeeded + own.failed,
        already_scored=own.skipped,
        attempts=claim.attempts,
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
        # Error rows marked for a retry are unscored too: their new error replaces them.
        retrying = pending_retries(conn, chunk.job_id, chunk.start, chunk.stop)
        done = scored_indexes(conn, chunk.job_id, chunk.start, chunk.stop) - retrying
        missing = [
            ScoredItem(index=index, item_id=item.item_id, prediction=Prediction.failure(message))
            for index, item in load_items(conn, chunk.job_id, chunk.start, chunk.stop)
            if index not in done
        ]
        outcome = write_scored(
            conn, model, revision, {chunk.job_id: missing}, {chunk.job_id: retrying}
        )[chunk.job_id]
        finish_chunks(conn, [(chunk.job_id, chunk.index)], ChunkStatus.DONE)
    log.error("chunk %d of job %s abandoned: %s", chunk.index, chunk.job_id, message)
    return outcome.written
