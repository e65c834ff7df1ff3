"""Chunk claims, leases and one delivery of a chunk task, on SQLite with a fake runner."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, update

from core.chunks.batches import finish_chunks, release_chunks
from core.chunks.claim import ClaimOutcome, as_utc, claim_chunk
from core.clock import utcnow
from core.config import Settings
from core.db import dispose_engines, get_engine
from core.inputs.items import InputItem
from core.jobs.lifecycle import Job, cancel_job, create_job, get_job
from core.jobs.predictions import Prediction
from core.jobs.status import ChunkStatus, JobStatus
from core.migrate import upgrade
from core.models.registry import ModelSpec
from core.tables import chunks, jobs, results
from engine import chunk_work, delivery
from engine.chunk_work import work_on_chunk
from engine.delivery import ChunkAttemptError, ChunkOutcome, Driver
from engine.runners.base import Progress, Runner
from engine.scoring import WINDOWS_IN_FLIGHT

SPEC = ModelSpec(name="fake", task="text-classification", backend="transformers", source="/nowhere")


class FakeRunner(Runner):
    """Labels every text by its length; ``on_predict`` lets a test act mid-chunk."""

    name = "fake"
    revision = None

    def __init__(self, on_predict: Callable[[], None] | None = None) -> None:
        self.calls: list[int] = []
        self.on_predict = on_predict

    def setup(self, device: str = "cpu") -> None:
        pass

    def predict(self, batch: Sequence[Any], progress: Progress | None = None) -> list[Prediction]:
        self.calls.append(len(batch))
        if self.on_predict is not None:
            self.on_predict()
        if progress is not None:
            progress(len(batch))
        return [Prediction(label=f"len{len(str(text))}", score=1.0) for text in batch]


@pytest.fixture()
def engine(tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'chunks.db'}"
    upgrade(url)
    yield get_engine(url)
    dispose_engines()


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"chunk_lease_s": 60, "chunk_max_attempts": 3, **overrides}
    return Settings(database_url="sqlite://", **values)


def new_job(engine: Engine, count: int = 10, chunk_size: int = 5) -> Job:
    inputs = [InputItem(item_id=f"r{i}", text="x" * (i + 1)) for i in range(count)]
    with engine.begin() as conn:
        return create_job(conn, SPEC, inputs, chunk_size=chunk_size)


def chunk_row(engine: Engine, job_id: str, index: int) -> Any:
    with engine.connect() as conn:
        return conn.execute(
            select(chunks).where(chunks.c.job_id == job_id, chunks.c.index == index)
        ).one()


def result_count(engine: Engine, job_id: str) -> int:
    with engine.connect() as conn:
        return int(
            conn.scalar(select(func.count()).select_from(results).where(results.c.job_id == job_id))
        )


def job_of(engine: Engine, job_id: str) -> Job:
    with engine.connect() as conn:
        job = get_job(conn, job_id)
    assert job is not None
    return job


def claim(engine: Engine, job_id: str, index: int, **kwargs: Any) -> Any:
    kwargs.setdefault("lease_s", 60)
    kwargs.setdefault("max_attempts", 3)
    with engine.begin() as conn:
        return claim_chunk(conn, job_id, index, **kwargs)


# -- claims ---------------------------------------------------------------------------------


def test_a_chunk_is_claimed_once_while_its_lease_lives(engine: Engine) -> None:
    job = new_job(engine)
    first = claim(engine, job.id, 1)
    assert first.outcome == ClaimOutcome.CLAIMED and first.attempts == 1
    assert first.chunk is not None and (first.chunk.start, first.chunk.stop) == (5, 10)
    row = chunk_row(engine, job.id, 1)
    assert row.status == "running" and row.attempts == 1
    second = claim(engine, job.id, 1)
    assert second.outcome == ClaimOutcome.BUSY
    assert 55 < second.retry_in_s <= 60


def test_an_expired_lease_is_taken_over_and_counted(engine: Engine) -> None:
    job = new_job(engine)
    claim(engine, job.id, 0)
    later = utcnow() + timedelta(seconds=61)
    takeover = claim(engine, job.id, 0, now=later)
    assert takeover.outcome == ClaimOutcome.CLAIMED and takeover.attempts == 2
    assert as_utc(chunk_row(engine, job.id, 0).leased_until) > later


def test_claims_stop_after_the_last_attempt(engine: Engine) -> None:
    job = new_job(engine)
    now = utcnow()
    for attempt in range(3):
        assert claim(engine, job.id, 0, now=now + timedelta(seconds=61 * attempt)).claimed
    exhausted = claim(engine, job.id, 0, now=now + timedelta(seconds=61 * 3))
    assert exhausted.outcome == ClaimOutcome.EXHAUSTED and exhausted.attempts == 3


def test_done_cancelled_final_and_missing_chunks_are_not_claimed(engine: Engine) -> None:
    job = new_job(engine)
    claim(engine, job.id, 0)
    with engine.begin() as conn:
        finish_chunks(conn, [(job.id, 0)], ChunkStatus.DONE)
    assert claim(engine, job.id, 0).outcome == ClaimOutcome.DONE
    assert claim(engine, job.id, 7).outcome == ClaimOutcome.MISSING
    assert claim(engine, "no-such-job", 0).outcome == ClaimOutcome.MISSING
    with engine.begin() as conn:
        cancel_job(conn, job.id)
    assert claim(engine, job.id, 1).outcome == ClaimOutcome.CANCELLED
    assert chunk_row(engine, job.id, 1).attempts == 0

    failed = new_job(engine)
    with engine.begin() as conn:
        from core.jobs.lifecycle import mark_failed

        mark_failed(conn, failed.id, "model exploded")
    assert claim(engine, failed.id, 0).outcome == ClaimOutcome.JOB_FINAL


def test_finish_refuses_a_non_final_status(engine: Engine) -> None:
    job = new_job(engine)
    with engine.begin() as conn, pytest.raises(ValueError):
        finish_chunks(conn, [(job.id, 0)], ChunkStatus.RUNNING)


# -- one delivery ---------------------------------------------------------------------------


def test_a_delivery_scores_its_chunk_and_a_second_one_is_a_token_for_the_next(
    engine: Engine,
) -> None:
    job = new_job(engine)
    runner = FakeRunner()
    lookup = {"fake": runner}.get
    beats: list[int] = []
    driver = Driver(runner_for=lookup, progress=beats.append)
    report = work_on_chunk(engine, settings(), job.id, 0, driver)
    assert (report.outcome, report.scored, report.attempts) == (ChunkOutcome.DONE, 5, 1)
    assert report.worked_on is None, "nothing ranks before the chunk it names"
    assert sum(beats) == 5, "progress must count every scored item"
    assert chunk_row(engine, job.id, 0).status == "done"
    assert job_of(engine, job.id).status == JobStatus.RUNNING

    # Fair claiming: a message is a token for its model, so a second delivery of chunk 0
    # (done) takes the chunk still waiting.
    again = work_on_chunk(engine, settings(), job.id, 0, lookup)
    assert (again.outcome, again.worked_on) == (ChunkOutcome.DONE, (job.id, 1))
    assert runner.calls == [5, 5]
    assert chunk_row(engine, job.id, 0).attempts == 1

    # Chunk 1's own message then finds nothing waiting and its chunk done: a no-op.
    last = work_on_chunk(engine, settings(), job.id, 1, lookup)
    assert last.outcome == ChunkOutcome.SKIPPED and last.reason == "chunk already done"
    assert runner.calls == [5, 5], "a no-op delivery must not run the model"
    final = job_of(engine, job.id)
    assert (final.status, final.succeeded, final.failed) == (JobStatus.COMPLETED, 10, 0)
    assert result_count(engine, job.id) == 10


def test_first_in_first_out_when_fair_claiming_is_off(engine: Engine) -> None:
    job = new_job(engine)
    runner = FakeRunner()
    lookup = {"fake": runner}.get
    fifo = settings(fair_claiming=False)
    work_on_chunk(engine, fifo, job.id, 0, lookup)
    again = work_on_chunk(engine, fifo, job.id, 0, lookup)
    assert again.outcome == ChunkOutcome.SKIPPED and again.reason == "chunk already done"
    assert runner.calls == [5], "the second delivery must not run the model"
    assert chunk_row(engine, job.id, 1).status == "queued"


def test_a_job_of_a_model_not_loaded_here_is_not_claimed(engine: Engine) -> None:
    job = new_job(engine)
    report = work_on_chunk(engine, settings(), job.id, 0, {}.get)
    assert report.outcome == ChunkOutcome.WRONG_MODEL and report.model == "fake"
    row = chunk_row(engine, job.id, 0)
    assert (row.status, row.attempts) == ("queued", 0)


def test_a_cancel_during_a_chunk_refuses_the_window_being_scored(engine: Engine) -> None:
    # The cancel commits while the first window is in the model: its write finds the job
    # cancelled and writes nothing, so the numbers the cancel reported stay final.
    job = new_job(engine, count=10, chunk_size=10)

    def cancel() -> None:
        with engine.begin() as conn:
            cancel_job(conn, job.id)

    runner = FakeRunner(on_predict=cancel)
    report = work_on_chunk(engine, settings(write_batch_size=3), job.id, 0, {"fake": runner}.get)
    assert report.outcome == ChunkOutcome.CANCELLED
    # The windows started before the cancel landed (two run at once), then it is seen.
    assert len(runner.calls) <= WINDOWS_IN_FLIGHT, "the cancel stops the scoring"
    assert result_count(engine, job.id) == 0
    assert chunk_row(engine, job.id, 0).status == "cancelled"
    final = job_of(engine, job.id)
    assert (final.status, final.succeeded, final.failed) == (JobStatus.CANCELLED, 0, 0)


def test_a_stale_delivery_whose_job_another_finished_is_skipped_not_cancelled(
    engine: Engine,
) -> None:
    # This delivery's worker hung; a re-sent delivery finished the chunk and the job meanwhile.
    job = new_job(engine, count=10, chunk_size=10)

    def finished_elsewhere() -> None:
        with engine.begin() as conn:
            conn.execute(update(chunks).values(status=ChunkStatus.DONE.value))
            conn.execute(update(jobs).values(status=JobStatus.COMPLETED.value))

    runner = FakeRunner(on_predict=finished_elsewhere)
    report = work_on_chunk(engine, settings(write_batch_size=3), job.id, 0, {"fake": runner}.get)
    assert report.outcome == ChunkOutcome.SKIPPED
    assert report.reason == "job completed by another delivery during the chunk"
    assert len(runner.calls) <= WINDOWS_IN_FLIGHT, "the windows started, then the finish is seen"
    assert chunk_row(engine, job.id, 0).status == "done"
    assert job_of(engine, job.id).status == JobStatus.COMPLETED


def test_progress_renews_the_lease(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    job = new_job(engine)
    # Every reading of the chunk's clock is 1000 s after the last: each batch renews.
    clock = iter(range(0, 100_000, 1000))
    monkeypatch.setattr(delivery, "monotonic", lambda: float(next(clock)))
    seen: list[Any] = []

    def look() -> None:
        seen.append(as_utc(chunk_row(engine, job.id, 0).leased_until))

    runner = FakeRunner(on_predict=look)
    before = utcnow()
    # Windows by count (fair_window_s 0): one predict call per item, whatever the pace.
    lease = settings(chunk_lease_s=600, write_batch_size=1, fair_window_s=0)
    work_on_chunk(engine, lease, job.id, 0, {"fake": runner}.get)
    assert len(seen) == 5
    # Each later batch sees a lease renewed after the previous batch's progress.
    assert seen[1] > seen[0] >= before + timedelta(seconds=599)
    assert seen == sorted(seen) and len(set(seen)) == 5


def test_a_failed_attempt_gives_the_chunk_back_for_a_retry(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = new_job(engine)

    def broken(*_args: Any, **_kwargs: Any) -> None:
        raise ConnectionError("database went away")

    monkeypatch.setattr(chunk_work, "score_jobs", broken)
    with pytest.raises(ChunkAttemptError) as caught:
        work_on_chunk(engine, settings(), job.id, 0, {"fake": FakeRunner()}.get)
    assert caught.value.retry and caught.value.attempts == 1
    row = chunk_row(engine, job.id, 0)
    assert (row.status, row.attempts, row.leased_until) == ("queued", 1, None)


def test_the_last_failed_attempt_turns_unscored_items_into_errors(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = new_job(engine, count=5, chunk_size=5)

    def broken(*_args: Any, **_kwargs: Any) -> None:
        raise ConnectionError("database went away")

    monkeypatch.setattr(chunk_work, "score_jobs", broken)
    with pytest.raises(ChunkAttemptError) as caught:
        work_on_chunk(engine, settings(chunk_max_attempts=1), job.id, 0, {"fake": FakeRunner()}.get)
    assert not caught.value.retry
    final = job_of(engine, job.id)
    assert (final.status, final.succeeded, final.failed) == (JobStatus.COMPLETED, 0, 5)
    assert chunk_row(engine, job.id, 0).status == "done"


def test_a_chunk_whose_worker_died_every_time_is_split_not_abandoned(engine: Engine) -> None:
    # Bisected to find the item that kills workers (core/chunks/split.py;
    # the whole search is tested in tests/unit/test_chunk_repair.py).
    job = new_job(engine, count=10, chunk_size=5)
    runner = FakeRunner()
    work_on_chunk(engine, settings(), job.id, 0, {"fake": runner}.get)
    # Chunk 1: three attempts that each died holding the lease.
    with engine.begin() as conn:
        conn.execute(
            update(chunks)
            .where(chunks.c.job_id == job.id, chunks.c.index == 1)
            .values(status="running", attempts=3, leased_until=utcnow() - timedelta(seconds=1))
        )
    report = work_on_chunk(engine, settings(), job.id, 1, {"fake": runner}.get)
    assert report.outcome == ChunkOutcome.SKIPPED and "split into chunks 2, 3" in report.reason
    assert runner.calls == [5], "an exhausted chunk must not reach the model again"
    assert chunk_row(engine, job.id, 1).status == "split"
    halves = [chunk_row(engine, job.id, index) for index in (2, 3)]
    assert [(row.start, row.stop, row.status, row.attempts) for row in halves] == [
        (5, 7, "queued", 2),
        (7, 10, "queued", 2),
    ]
    for index in (2, 3):
        assert work_on_chunk(engine, settings(), job.id, index, {"fake": runner}.get).outcome == (
            ChunkOutcome.DONE
        )
    final = job_of(engine, job.id)
    assert (final.status, final.succeeded, final.failed) == (JobStatus.COMPLETED, 10, 0)


# -- expired leases -------------------------------------------------------------------------


def test_expired_chunks_of_served_models_are_released_once(engine: Engine) -> None:
    from core.chunks.claim import release_expired

    job = new_job(engine, count=15, chunk_size=5)
    now = utcnow()
    claim(engine, job.id, 0, now=now - timedelta(seconds=120))  # lease ran out
    claim(engine, job.id, 1, now=now)  # lease still live
    with engine.begin() as conn:
        assert release_expired(conn, ["other-model"], now=now) == []
        assert release_expired(conn, ["fake"], now=now) == [(job.id, 0, "fake")]
        assert release_expired(conn, ["fake"], now=now) == [], "only one caller re-sends"
    row = chunk_row(engine, job.id, 0)
    assert (row.status, row.attempts, row.leased_until) == ("queued", 1, None)
    assert chunk_row(engine, job.id, 1).status == "running"

    with engine.begin() as conn:
        cancel_job(conn, job.id)
        later = now + timedelta(seconds=3600)
        assert release_expired(conn, ["fake"], now=later) == [], "not for a cancelled job"


def test_a_failed_attempt_of_a_job_made_final_meanwhile_is_cancelled_not_requeued(
    engine: Engine,
) -> None:
    # A cancel (or a deadline) lands while an attempt runs, then the attempt fails: giving
    # the chunk back would leave a queued chunk under a final job, never to run.
    job = new_job(engine)
    with engine.begin() as conn:
        assert claim_chunk(conn, job.id, 0, lease_s=60, max_attempts=3).claimed
        cancel_job(conn, job.id)
        release_chunks(conn, [(job.id, 0)])
    assert chunk_row(engine, job.id, 0).status == ChunkStatus.CANCELLED.value
