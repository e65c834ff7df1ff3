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
from collections.abc import Callable
from contextlib import ExitStack
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
    SETTLED_CHUNK_STATES,
    Claim,
    ClaimOutcome,
    Delivery,
    claim_chunk,
    delivery_state,
)
from core.chunks.fair import Fairness, chunks_waiting, claim_fairest, stamp_served
from core.chunks.runs import claim_next_run, take_following
from core.chunks.split import hand_back, split_exhausted
from core.config import Settings
from core.jobs.lifecycle import Chunk, load_items, mark_running
from core.jobs.predictions import Prediction
from core.jobs.result_rows import ResultRows
from core.jobs.results import ScoredItem, WriteOutcome, scored_indexes
from core.jobs.retry_marks import pending_retries, write_scored
from core.jobs.status import ChunkStatus, JobDriver, JobStatus
from core.queues import ChunkSend
from engine.claim_pace import items_within, record_claim
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
from engine.turn_clock import TurnClock, WorkerTime
from engine.window_writer import writes_overlap

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
    fair = driver.kind == JobDriver.SERVICE and settings.fair_claiming
    with engine.connect() as conn:
        state = delivery_state(conn, job_id, chunk_index)
        # With fair claiming a message is a token for "a chunk of this model waits", and a
        # settled chunk's message is one whose chunk another delivery took (in a run, with
        # cross-job siblings) or scored: where no chunk of the model waits at all, the claim
        # below would find none. One probe instead of a transaction with a ranking of every
        # active job: such messages are most of a big job's (all but the few whose claims
        # started its runs): 3.3 ms each on PostgreSQL against 1.2 ms for the probe.
        settled_token = (
            state is not None
            and state.chunk_status in SETTLED_CHUNK_STATES
            and (not fair or not chunks_waiting(conn, state.runs_on))
        )
    if state is None:
        return ChunkReport(ChunkOutcome.SKIPPED, "no such job")
    if settled_token:
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
            if state.chunk_status in SETTLED_CHUNK_STATES:
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
            if driver.kind == JobDriver.SERVICE and not state.training:
                # A fast model takes the chunks after this one with it (core.chunks.runs),
                # with fair claiming no more than a turn's work: a turn's end is where
                # another job may take the worker, and a longer run left that to the
                # hand-back, a few windows late (a newcomer found a whole job's run ahead).
                most, workers = _run_bounds(settings, runner, driver, state.runs_on, fair)
                claim = take_following(
                    conn, claim, most, lease_s=settings.chunk_lease_s, workers=workers
                )
    if not claim.claimed:
        return _unclaimed(engine, claim, driver.send)
    assert claim.chunk is not None
    report = _work_on_claimed(engine, settings, claim, state, runner, driver, max_attempts, fair)
    if (claim.chunk.job_id, claim.chunk.index) != (job_id, chunk_index):
        return replace(report, worked_on=(claim.chunk.job_id, claim.chunk.index))
    return report


def _run_bounds(
    settings: Settings, runner: Runner, driver: Driver, model: str, fair: bool
) -> tuple[int, int | None]:
    """How many items a run of chunks may hold (``chunk_claim_s`` of the runner's pace; with
    fair claiming no more than a turn's), and how many workers serve ``model`` (None:
    unknown), whose shares the run leaves (:func:`core.chunks.runs.take_following`)."""
    seconds = settings.chunk_claim_s
    if fair:
        seconds = min(seconds, settings.fair_time_slice_s)
    workers = driver.workers_for(model) if driver.workers_for else None
    return items_within(runner, seconds), workers


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
        training_time = WorkerTime({job_id: 1}) if fair else None
        try:
            return train_claimed(engine, settings, claim, driver, max_attempts)
        finally:
            _charge_apart(engine, training_time)
    siblings = gather_siblings(engine, settings, runner, model, claim) if driver.cross_job else []
    claims = [claim, *siblings]
    # Fair claiming ranks keys by the worker time they received: all of it is charged.
    worker_time = WorkerTime(_items_by_job(claims)) if fair else None
    # The job's next runs, claimed while this one is scored (_next_runs).
    extensions: list[Claim] = []
    try:
        yield_on = state.runs_on if fair and not siblings else None
        return _score_claimed(
            engine, settings, claims, runner, driver, yield_on, worker_time, extensions
        )
    except Exception as exc:
        _charge_apart(engine, worker_time)
        reason = f"{type(exc).__name__}: {exc}"
        if siblings or extensions:
            # Other jobs' chunks, and this job's runs claimed ahead, go back to the queue
            # with their attempt counted; any chunk message of the model claims them again.
            with engine.begin() as conn:
                release_chunks(conn, [_key(c) for c in [*siblings, *extensions]])
        if claim.attempts >= max_attempts:
            abandon_chunk(engine, model, revision, claim.chunk, claim.attempts, reason)
            raise ChunkAttemptError(reason, attempts=claim.attempts, retry=False) from exc
        with engine.begin() as conn:
            release_chunks(conn, [(job_id, chunk_index)])
        raise ChunkAttemptError(reason, attempts=claim.attempts, retry=True) from exc


def _items_by_job(claims: list[Claim]) -> dict[str, int]:
    return {c.chunk.job_id: c.chunk.stop - c.chunk.start for c in claims if c.chunk is not None}


def _charge_apart(engine: Engine, worker_time: WorkerTime | None) -> None:
    """Charge what ``worker_time`` holds in a transaction of its own (a claim that ends
    without one of its own: training, or a failure)."""
    if worker_time is None:
        return
    try:
        with engine.begin() as conn:
            worker_time.charge(conn)
    except Exception:
        # Only a scheduling hint: it must not hide the outcome of the claim.
        log.warning("could not charge worker time", exc_info=True)


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
    worker_time: WorkerTime | None,
    extensions: list[Claim],
) -> ChunkReport:
    """Score the claimed chunks (this delivery's first, then its cross-job siblings).

    Every chunk belongs to a different job, so per-job totals are per-chunk totals. Rows are
    committed before the chunks are marked done, and both before the task returns (and so
    before its message is acked). ``yield_on`` (fair claiming, one chunk: the model it runs
    on; None: never yield): between write
    windows, once the chunk has run ``fair_time_slice_s``, a job ranked before this one
    that is waiting takes the worker: the unscored rest goes back to the queue as a new
    chunk (:func:`core.chunks.split.hand_back`). ``worker_time`` (fair claiming): charged
    at each check after the turn (with ``yield_on``) and in the transaction that ends the
    claim. With ``yield_on``, the job's next runs are claimed while this one is scored
    (:func:`_next_runs`, appended to ``extensions``) and finished, handed back or released
    with it.
    """
    batch = [claim.chunk for claim in claims if claim.chunk is not None]
    keys = [(chunk.job_id, chunk.index) for chunk in batch]
    progress = lease_keeper(engine, settings, keys, driver.progress)

    first = claims[0]
    assert first.chunk is not None
    should_yield = (
        TurnClock(engine, settings, first.chunk.job_id, yield_on, worker_time)
        if yield_on is not None and worker_time is not None
        else None
    )
    with ExitStack() as held:
        # One connection, in autocommit, for the cancel check before each window: a checkout
        # per check cost a ping, the query and a rollback (three round trips on PostgreSQL),
        # 0.9 s of a worker's 3.2 s of main-thread time per 20,000 texts with the GPU
        # stand-in (bench/README.md, issue 16). Not on an in-memory SQLite database: its
        # one connection per thread is also the one this thread's writes use.
        reads = held.enter_context(engine.connect()) if writes_overlap(engine) else None
        if reads is not None:
            reads.execution_options(isolation_level="AUTOCOMMIT")

        def still_active(job_ids: set[str]) -> set[str]:
            if reads is not None:
                return active_jobs(reads, job_ids)
            with engine.connect() as conn:
                return active_jobs(conn, job_ids)

        started = monotonic()
        with engine.connect() as conn:
            loaded = load_chunk_items(conn, batch)
        more_work = None
        if yield_on is not None:
            more_work = _next_runs(
                engine, settings, first.chunk.job_id, yield_on, runner, driver, extensions, keys
            )
        run = score_jobs(
            engine,
            runner,
            [JobItems(chunk.job_id, loaded[(chunk.job_id, chunk.index)]) for chunk in batch],
            write_batch_size=settings.write_batch_size,
            progress=progress,
            still_active=still_active,
            should_yield=should_yield,
            window_s=settings.fair_window_s,
            more_work=more_work,
        )
    totals, stopped = run.totals, run.stopped
    scored = sum(total.succeeded + total.failed for total in totals.values())
    record_claim(runner, scored, monotonic() - started)
    if run.yielded:
        assert yield_on is not None  # only a chunk that may yield has yielded
        rest = run.yielded[first.chunk.job_id]
        holding = [first, *extensions]
        return _hand_back(engine, holding, yield_on, rest, totals, driver.send, worker_time)
    with engine.begin() as conn:
        if worker_time is not None:
            worker_time.charge(conn)  # before the finish, which may end the job
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


def _hand_back(
    engine: Engine,
    held: list[Claim],
    model: str,
    rest: tuple[int, int],
    totals: dict[str, ScoreTotals],
    send: ChunkSend | None,
    worker_time: WorkerTime | None,
) -> ChunkReport:
    """Give the unscored ``rest`` of the job's ``held`` chunks (the delivery's claim, then
    the runs claimed ahead) back as new queued chunks, one per held chunk it reaches, and
    send their messages to ``model``'s queue (tokens: the next delivery claims the fairest
    chunk, the waiting one); a held chunk the rest does not reach is done. The turn's last
    worker time is charged in the same transaction."""
    first = held[0]
    assert first.chunk is not None
    job_id = first.chunk.job_id
    own = totals[job_id]
    lo, hi = rest
    children: list[tuple[int, tuple[int, int]]] = []
    taken_over = False
    with engine.begin() as conn:
        if worker_time is not None:
            worker_time.charge(conn)
        for claim in held:
            assert claim.chunk is not None
            part = (max(lo, claim.chunk.start), min(hi, claim.chunk.stop))
            if part[0] >= part[1]:
                # Every item of it is scored: rows committed before the hand-back.
                finish_chunks(conn, [_key(claim)], ChunkStatus.DONE)
                continue
            child = hand_back(conn, job_id, claim.chunk.index, attempts=claim.attempts, rest=part)
            if child is None:
                taken_over = True
            else:
                children.append((child, part))
    if not children:
        reason = "lease taken over before the hand-back; left to its new holder"
    else:
        handed = ", ".join(f"items {a}..{b - 1} as chunk {child}" for child, (a, b) in children)
        reason = f"{handed} handed back (a job ranks first)"
        if taken_over:
            reason += "; the rest left to the new holder of a lease taken over"
    if send is not None:
        for child, _ in children:
            try:
                send(job_id, child, model)
            except Exception:
                # The chunk stays queued; the lost-message sweep sends it later.
                log.exception("could not send chunk %d of job %s", child, job_id)
    return ChunkReport(
        ChunkOutcome.YIELDED,
        reason,
        scored=own.succeeded + own.failed,
        already_scored=own.skipped,
        attempts=first.attempts,
    )


def _next_runs(
    engine: Engine,
    settings: Settings,
    job_id: str,
    model: str,
    runner: Runner,
    driver: Driver,
    extensions: list[Claim],
    keys: list[ChunkKey],
) -> Callable[[], list[JobItems]]:
    """``more_work`` for a run of ``job_id``'s chunks: the job's next run, claimed while
    this one is scored (once half of its items are planned), so that the worker's pipeline
    goes on instead of draining, finishing, taking the next message, claiming and filling
    again: two or three times per 20,000-text job with the GPU stand-in, whose runs of a
    turn's work held 4,640-10,240 texts. The service at its tokenizer's rate went from 0.52
    to 0.62 of the tokenizer's own rate (bench/README.md, issue 16).

    Only while no other job's chunk of the model waits: then the job's next delivery would
    claim the same run, and nobody waits for the worker. A job that arrives later gets it
    as from any run, at the turn's check between windows (the hand-back covers the runs
    claimed ahead too). The run claimed is what a delivery would claim (a turn's work, a
    ``1 / workers`` share of the queued chunks); its key joins ``keys`` (lease renewals and
    the finish) and its claim ``extensions``.
    """

    def more_work() -> list[JobItems]:
        try:
            with engine.begin() as conn:
                if chunks_waiting(conn, model, besides=job_id):
                    return []
                most, workers = _run_bounds(settings, runner, driver, model, fair=True)
                claim = claim_next_run(
                    conn, job_id, most, lease_s=settings.chunk_lease_s, workers=workers
                )
                if claim is None or claim.chunk is None:
                    return []
                loaded = load_chunk_items(conn, [claim.chunk])
        except Exception:
            # Only a way to keep the pipeline busy: the next delivery claims it instead.
            log.warning("could not claim the next run of job %s ahead", job_id, exc_info=True)
            return []
        extensions.append(claim)
        keys.append(_key(claim))
        return [JobItems(job_id, loaded[_key(claim)])]

    return more_work


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
        rows = ResultRows.from_scored({chunk.job_id: missing})
        written = write_scored(conn, model, revision, rows, {chunk.job_id: retrying})
        outcome = written.get(chunk.job_id, WriteOutcome(0, 0))
        finish_chunks(conn, [(chunk.job_id, chunk.index)], ChunkStatus.DONE)
    log.error("chunk %d of job %s abandoned: %s", chunk.index, chunk.job_id, message)
    return outcome.written
