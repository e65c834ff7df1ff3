"""A fast model's claim takes the queued chunks after it (core.chunks.runs, engine.claim_pace).

SQLite and the real claim, scoring and finish of ``engine.chunk_work``; a worker's death is
a ``BaseException`` the chunk code does not catch, and an expired lease.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from chunk_support import chunk_table, expire
from sqlalchemy import Engine, func, select, update

from core.chunks.claim import Claim, claim_chunk
from core.chunks.runs import take_following
from core.config import Settings
from core.db import dispose_engines, get_engine
from core.inputs.items import InputItem
from core.jobs.lifecycle import Job, create_job, get_job
from core.jobs.predictions import Prediction
from core.jobs.priority import Priority
from core.migrate import upgrade
from core.models.registry import Backend, ModelSpec, Task
from core.tables import chunks, results
from engine.chunk_work import work_on_chunk
from engine.claim_pace import items_within, record_claim
from engine.delivery import ChunkAttemptError, ChunkOutcome
from engine.runners.base import Progress, Runner

SPEC = ModelSpec(
    name="fake", task=Task.TEXT_CLASSIFICATION, backend=Backend.TRANSFORMERS, source="/nowhere"
)


class Crash(BaseException):
    """Stands for the process dying: nothing in the chunk code catches it."""


class CountingRunner(Runner):
    """Scores every text ``ok``; counts each text it saw; a batch that would take it past
    ``crash_after`` texts kills the 'process'."""

    name: str = "fake"
    revision: str | None = None

    def __init__(self, crash_after: int | None = None) -> None:
        self.seen: list[str] = []
        self.crash_after = crash_after

    def setup(self, device: str = "cpu") -> None:
        pass

    def predict(self, batch: Sequence[Any], progress: Progress | None = None) -> list[Prediction]:
        if self.crash_after is not None and len(self.seen) + len(batch) > self.crash_after:
            raise Crash()
        self.seen.extend(batch)
        return [Prediction(label="ok", score=1.0) for _ in batch]


@pytest.fixture()
def engine(tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    upgrade(url)
    yield get_engine(url)
    dispose_engines()


def new_job(engine: Engine, count: int, chunk_size: int) -> Job:
    inputs = [InputItem(item_id=f"r{i}", text=f"text {i}") for i in range(count)]
    with engine.begin() as conn:
        return create_job(conn, SPEC, inputs, chunk_size=chunk_size)


def claim_and_extend(engine: Engine, job_id: str, index: int, most: int) -> Claim:
    with engine.begin() as conn:
        claim = claim_chunk(conn, job_id, index, lease_s=60, max_attempts=3)
        return take_following(conn, claim, most, lease_s=60)


def settings(**values: Any) -> Settings:
    # Fair claiming off: a delivery works on the chunk its message names (or says why not).
    base: dict[str, Any] = {
        "database_url": "sqlite://",
        "chunk_lease_s": 60,
        "fair_claiming": False,
        "cross_job_batching": False,
    }
    return Settings(**{**base, **values})


def test_a_claim_takes_contiguous_queued_chunks_up_to_its_items_and_half_the_rest(
    engine: Engine,
) -> None:
    job = new_job(engine, 20, chunk_size=2)  # chunks 0..9
    claim = claim_and_extend(engine, job.id, 0, most=100)
    # Nine chunks wait after chunk 0: it takes five of them (half, rounded up), so a second
    # worker finds the other four.
    assert claim.chunk is not None and claim.claimed and claim.attempts == 1
    assert (claim.chunk.index, claim.chunk.start, claim.chunk.stop) == (10, 0, 12)
    rows = chunk_table(engine, job.id)
    assert [row[3] for row in rows[:6]] == ["merged"] * 6
    assert [row[3] for row in rows[6:10]] == ["queued"] * 4
    assert rows[10] == (10, 0, 12, "running", 1)


@pytest.mark.parametrize(("workers", "stop"), [(1, 20), (3, 8), (9, 4)])
def test_a_claim_leaves_each_other_worker_of_the_model_its_share(
    engine: Engine, workers: int, stop: int
) -> None:
    job = new_job(engine, 20, chunk_size=2)  # chunks 0..9: nine wait after chunk 0
    with engine.begin() as conn:
        claim = claim_chunk(conn, job.id, 0, lease_s=60, max_attempts=3)
        claim = take_following(conn, claim, 100, lease_s=60, workers=workers)
    assert claim.chunk is not None and (claim.chunk.start, claim.chunk.stop) == (0, stop)


def test_the_run_stops_at_its_items_and_at_a_chunk_taken_elsewhere(engine: Engine) -> None:
    job = new_job(engine, 20, chunk_size=2)
    # Items: chunk 0 and one more fit in 5.
    claim = claim_and_extend(engine, job.id, 0, most=5)
    assert claim.chunk is not None and (claim.chunk.start, claim.chunk.stop) == (0, 4)
    # Chunk 4 is another worker's: a run from chunk 2 stops before it.
    with engine.begin() as conn:
        assert claim_chunk(conn, job.id, 4, lease_s=60, max_attempts=3).claimed
    claim = claim_and_extend(engine, job.id, 2, most=100)
    assert claim.chunk is not None and (claim.chunk.start, claim.chunk.stop) == (4, 8)


def test_a_retried_chunk_or_an_unknown_pace_takes_nothing(engine: Engine) -> None:
    job = new_job(engine, 20, chunk_size=2)
    with engine.begin() as conn:
        conn.execute(
            update(chunks).where(chunks.c.job_id == job.id, chunks.c.index == 0).values(attempts=1)
        )
    # A second attempt stays one chunk, so that its poison item is bisected in few steps.
    claim = claim_and_extend(engine, job.id, 0, most=100)
    assert claim.chunk is not None and (claim.chunk.index, claim.chunk.stop) == (0, 2)
    # A fresh runner's pace is unknown: no items to extend to.
    assert items_within(CountingRunner(), 10.0) == 0
    claim = claim_and_extend(engine, job.id, 1, most=0)
    assert claim.chunk is not None and (claim.chunk.index, claim.chunk.stop) == (1, 4)


def test_a_worker_with_a_known_pace_scores_a_run_once_and_late_messages_do_nothing(
    engine: Engine,
) -> None:
    job = new_job(engine, 40, chunk_size=4)  # chunks 0..9
    runner = CountingRunner()
    record_claim(runner, 1000, 1.0)  # 1,000 items a second: 2 s are 2,000 items
    runners: dict[str, Runner] = {"fake": runner}
    report = work_on_chunk(engine, settings(), job.id, 0, runners.get)
    # Chunk 0 and five of the nine after it, as new chunk 10.
    assert (report.outcome, report.worked_on, report.scored) == (
        ChunkOutcome.DONE,
        (job.id, 10),
        24,
    )
    # The messages of the merged chunks find them finished.
    for index in range(1, 6):
        late = work_on_chunk(engine, settings(), job.id, index, runners.get)
        assert (late.outcome, late.reason) == (ChunkOutcome.SKIPPED, "chunk already done")
    for index in range(6, 10):
        work_on_chunk(engine, settings(), job.id, index, runners.get)
    with engine.connect() as conn:
        final = get_job(conn, job.id)
        written = conn.scalar(select(func.count()).select_from(results))
    assert final is not None and final.status == "completed" and final.succeeded == 40
    assert written == 40 and sorted(runner.seen) == sorted(f"text {i}" for i in range(40))


def test_chunk_claim_s_zero_claims_one_chunk(engine: Engine) -> None:
    job = new_job(engine, 40, chunk_size=4)
    runner = CountingRunner()
    record_claim(runner, 1000, 1.0)
    report = work_on_chunk(engine, settings(chunk_claim_s=0), job.id, 0, {"fake": runner}.get)
    assert (report.worked_on, report.scored) == (None, 4)


def test_a_worker_dying_in_a_run_leaves_one_chunk_whose_retry_scores_the_rest(
    engine: Engine,
) -> None:
    job = new_job(engine, 40, chunk_size=4)
    dying = CountingRunner(crash_after=6)
    record_claim(dying, 1000, 1.0)
    # Windows of 4 items: those before the crash are written, the rest is not.
    with pytest.raises(Crash):
        work_on_chunk(engine, settings(write_batch_size=4), job.id, 0, {"fake": dying}.get)
    rows = chunk_table(engine, job.id)
    assert rows[10][1:4] == (0, 24, "running")  # the run's chunk, still leased
    expire(engine, job.id, 10)  # the lease runs out
    # The lease sweep re-sends chunk 10; its retry is a second attempt: not extended.
    retry = CountingRunner()
    record_claim(retry, 1000, 1.0)
    report = work_on_chunk(engine, settings(), job.id, 10, {"fake": retry}.get)
    assert report.outcome == ChunkOutcome.DONE and report.attempts == 2
    assert report.already_scored > 0 and report.scored + report.already_scored == 24
    assert len(retry.seen) == report.scored
    with engine.connect() as conn:
        indexes = sorted(conn.scalars(select(results.c.index)))
    assert indexes == list(range(24))  # each item once


# -- the next run claimed ahead (engine.chunk_work._next_runs) ---------------------------------


def fair_settings(**values: Any) -> Settings:
    """Fair claiming with a turn of 8 items at the runners' 1,000 items a second: runs of two
    chunks of 4, windows of 4 (by count), so that a run's windows are planned halfway soon."""
    base: dict[str, Any] = {
        "fair_claiming": True,
        "fair_time_slice_s": 0.008,
        "fair_window_s": 0.0,
        "write_batch_size": 4,
    }
    return settings(**{**base, **values})


def chunk_states(engine: Engine, job_id: str) -> dict[str, int]:
    states: dict[str, int] = {}
    for row in chunk_table(engine, job_id):
        states[row[3]] = states.get(row[3], 0) + 1
    return states


class Newcomer(CountingRunner):
    """Submits a high-priority job of the same model once it has seen ``after`` texts: a
    job that ranks first arrives while the runs are scored."""

    def __init__(self, engine: Engine, after: int) -> None:
        super().__init__()
        self.engine = engine
        self.after = after
        self.arrived: Job | None = None

    def predict(self, batch: Sequence[Any], progress: Progress | None = None) -> list[Prediction]:
        predictions = super().predict(batch, progress)
        if self.arrived is None and len(self.seen) >= self.after:
            inputs = [InputItem(item_id=f"n{i}", text=f"urgent {i}") for i in range(3)]
            with self.engine.begin() as conn:
                self.arrived = create_job(conn, SPEC, inputs, chunk_size=4, priority=Priority.HIGH)
        return predictions


def test_a_fair_worker_claims_the_jobs_next_runs_ahead_when_nothing_else_waits(
    engine: Engine,
) -> None:
    job = new_job(engine, 40, chunk_size=4)  # chunks 0..9
    runner = CountingRunner()
    record_claim(runner, 1000, 1.0)
    report = work_on_chunk(engine, fair_settings(), job.id, 0, {"fake": runner}.get)
    # One delivery scored the whole job: its first run (two chunks), then each next run
    # claimed while the one before was scored, without a drain and a claim between them.
    assert (report.outcome, report.scored) == (ChunkOutcome.DONE, 40)
    assert sorted(runner.seen) == sorted(f"text {i}" for i in range(40))
    states = chunk_states(engine, job.id)
    assert "queued" not in states and "running" not in states, states
    with engine.connect() as conn:
        final = get_job(conn, job.id)
        indexes = sorted(conn.scalars(select(results.c.index)))
    assert final is not None and final.status == "completed" and final.succeeded == 40
    assert indexes == list(range(40))
    # The other chunks' messages are tokens for nothing now.
    late = work_on_chunk(engine, fair_settings(), job.id, 5, {"fake": runner}.get)
    assert late.outcome == ChunkOutcome.SKIPPED


def test_no_run_is_claimed_ahead_while_another_jobs_chunk_waits(engine: Engine) -> None:
    job = new_job(engine, 40, chunk_size=4)
    other = new_job(engine, 4, chunk_size=4)
    runner = CountingRunner()
    record_claim(runner, 1000, 1.0)
    report = work_on_chunk(engine, fair_settings(), job.id, 0, {"fake": runner}.get)
    worked = report.worked_on[0] if report.worked_on else job.id
    if worked == other.id:
        assert report.scored == 4
        assert chunk_states(engine, job.id) == {"queued": 10}
    else:
        # A run of a turn's work (chunks 0 and 1) and no more: the other job waits.
        assert report.scored == 8
        assert chunk_states(engine, job.id) == {"merged": 2, "done": 1, "queued": 8}
    assert chunk_states(engine, other.id).get("running", 0) == 0


def test_a_job_that_arrives_during_runs_claimed_ahead_gets_the_rest_handed_back(
    engine: Engine,
) -> None:
    job = new_job(engine, 40, chunk_size=4)
    runner = Newcomer(engine, after=20)
    record_claim(runner, 1000, 1.0)
    report = work_on_chunk(engine, fair_settings(), job.id, 0, {"fake": runner}.get)
    assert runner.arrived is not None
    assert report.outcome == ChunkOutcome.YIELDED, report
    assert 20 <= report.scored < 40
    # Nothing of the job is held any more: what is left waits in queued chunks, and the
    # runs claimed ahead that were scored whole are done.
    assert "running" not in chunk_states(engine, job.id)
    queued = sorted(row[1:3] for row in chunk_table(engine, job.id) if row[3] == "queued")
    for (_, stop), (start, _) in pairwise(queued):
        assert stop <= start, f"queued chunks overlap: {queued}"
    assert sum(stop - start for start, stop in queued) >= 40 - report.scored
    # The next deliveries score the newcomer first, then the rest of the job.
    for _ in range(20):
        with engine.connect() as conn:
            waiting = conn.execute(
                select(chunks.c.job_id, chunks.c.index).where(chunks.c.status == "queued")
            ).first()
        if waiting is None:
            break
        work_on_chunk(engine, fair_settings(), waiting[0], waiting[1], {"fake": runner}.get)
    with engine.connect() as conn:
        indexes = sorted(conn.scalars(select(results.c.index).where(results.c.job_id == job.id)))
        final = get_job(conn, job.id)
        urgent = get_job(conn, runner.arrived.id)
    assert indexes == list(range(40)), "every item once: nothing lost or written twice"
    assert final is not None and final.status == "completed"
    assert urgent is not None and urgent.status == "completed"
    assert runner.seen.count("text 0") == 1 and len(runner.seen) == 43


def test_a_failure_gives_back_the_runs_claimed_ahead_too(engine: Engine) -> None:
    job = new_job(engine, 40, chunk_size=4)

    class Failing(CountingRunner):
        """Fails outside any one item (its text prefetch: a lost device, say) once it has
        scored 24 texts: the chunk's attempt fails, not an item."""

        def prefetch(self, batch: Sequence[Any]) -> None:
            if len(self.seen) >= 24:
                raise RuntimeError("device lost")

    runner = Failing()
    record_claim(runner, 1000, 1.0)
    with pytest.raises(ChunkAttemptError):
        work_on_chunk(engine, fair_settings(), job.id, 0, {"fake": runner}.get)
    # Every chunk claimed (the first run and the runs claimed ahead) is back in the queue,
    # for any message of the model to claim; none is left running on a lease.
    states = chunk_states(engine, job.id)
    assert "running" not in states and states.get("queued", 0) >= 2, states
    with engine.connect() as conn:
        written = conn.scalar(select(func.count()).select_from(results))
    assert written == 24  # the windows before the failure are kept
