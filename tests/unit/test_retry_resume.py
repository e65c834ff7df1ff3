"""Retry of error rows and resume of cancelled or expired jobs, on SQLite with a fake runner.

The same paths run on PostgreSQL through a real worker (with a ``kill -9``) in
``tests/integration/test_retry_resume_service.py``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from sqlalchemy import Engine, func, select, update

from core.chunks.split import split_exhausted
from core.clock import utcnow
from core.config import Settings
from core.db import dispose_engines, get_engine
from core.inputs.items import InputItem
from core.jobs import retry_marks
from core.jobs.expiry import expire_job
from core.jobs.lifecycle import Job, cancel_job, create_job, get_job, list_chunks
from core.jobs.predictions import Prediction
from core.jobs.requeue import RequeueRefused, resume_job, retry_errors
from core.jobs.status import ChunkStatus, JobStatus
from core.migrate import upgrade
from core.models.registry import ModelSpec
from core.tables import chunks, jobs, results, retry_items
from engine.chunk_work import work_on_chunk
from engine.delivery import Driver
from engine.runners.base import Progress, Runner

SPEC = ModelSpec(name="fake", task="text-classification", backend="transformers", source="/nowhere")


class FlakyRunner(Runner):
    """Labels texts by length; raises for the texts in ``failing``; counts every input."""

    name = "fake"
    revision = None

    def __init__(self, failing: set[str] | None = None) -> None:
        self.failing = failing or set()
        self.seen: list[str] = []

    def setup(self, device: str = "cpu") -> None:
        pass

    def predict(self, batch: Sequence[Any], progress: Progress | None = None) -> list[Prediction]:
        self.seen.extend(batch)
        bad = [text for text in batch if text in self.failing]
        if bad:
            raise RuntimeError(f"CUDA out of memory on {bad[0]}")
        return [Prediction(label=f"len{len(text)}", score=1.0) for text in batch]


@pytest.fixture()
def engine(tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'retry.db'}"
    upgrade(url)
    yield get_engine(url)
    dispose_engines()


SETTINGS = Settings(database_url="sqlite://", chunk_lease_s=60, chunk_max_attempts=3)


def new_job(engine: Engine, texts: list[str], chunk_size: int = 4) -> Job:
    inputs = [
        InputItem(item_id=f"r{i}", text=text)
        if text
        else InputItem(item_id=f"r{i}", error="empty text")
        for i, text in enumerate(texts)
    ]
    with engine.begin() as conn:
        return create_job(conn, SPEC, inputs, chunk_size=chunk_size)


def run_queued(engine: Engine, job_id: str, runner: Runner) -> None:
    """Deliver every queued chunk of the job once, as workers would."""
    with engine.connect() as conn:
        queued = list_chunks(conn, job_id, ChunkStatus.QUEUED)
    driver = Driver(runner_for={"fake": runner}.get, cross_job=False)
    for chunk in queued:
        work_on_chunk(engine, SETTINGS, job_id, chunk.index, driver)


def job_of(engine: Engine, job_id: str) -> Job:
    with engine.connect() as conn:
        job = get_job(conn, job_id)
    assert job is not None
    return job


def rows_of(engine: Engine, job_id: str) -> dict[int, tuple[str | None, str | None]]:
    with engine.connect() as conn:
        found = conn.execute(
            select(results.c.index, results.c.label, results.c.error).where(
                results.c.job_id == job_id
            )
        ).all()
    return {index: (label, error) for index, label, error in found}


def marks_of(engine: Engine, job_id: str) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).where(retry_items.c.job_id == job_id)) or 0)


def assert_consistent(engine: Engine, job: Job) -> None:
    """One row per item, counters equal to the rows."""
    rows = rows_of(engine, job.id)
    assert sorted(rows) == list(range(job.total))
    assert job.succeeded == sum(1 for _, error in rows.values() if error is None)
    assert job.failed == sum(1 for _, error in rows.values() if error is not None)


TEXTS = ["a", "bb", "", "dddd", "eeeee", "ffffff", "g", "hh", "iii", "jjjj"]


def scored_with_failures(engine: Engine) -> Job:
    """A completed job: item 2 refused at intake, items 3 and 8 failed in the model."""
    job = new_job(engine, TEXTS)
    run_queued(engine, job.id, FlakyRunner(failing={"dddd", "iii"}))
    done = job_of(engine, job.id)
    assert (done.status, done.succeeded, done.failed) == (JobStatus.COMPLETED, 7, 3)
    return done


def test_retry_rescores_only_the_failed_items_and_replaces_their_rows(engine: Engine) -> None:
    job = scored_with_failures(engine)
    with engine.begin() as conn:
        queued = retry_errors(conn, job.id, chunk_size=4)
    # The intake refusal (item 2) is not retried: scoring it again cannot succeed.
    assert queued.items == 2 and queued.job.status == JobStatus.RUNNING
    assert marks_of(engine, job.id) == 2
    runner = FlakyRunner()
    run_queued(engine, job.id, runner)
    assert sorted(runner.seen) == ["dddd", "iii"], "only the failed items reach the model"
    after = job_of(engine, job.id)
    assert (after.status, after.succeeded, after.failed) == (JobStatus.COMPLETED, 9, 1)
    assert after.finished_at is not None
    rows = rows_of(engine, job.id)
    assert rows[3] == ("len4", None) and rows[8] == ("len3", None)
    assert rows[2] == (None, "empty text")
    assert marks_of(engine, job.id) == 0
    assert_consistent(engine, after)


def test_a_retry_that_fails_again_keeps_one_error_row(engine: Engine) -> None:
    job = scored_with_failures(engine)
    with engine.begin() as conn:
        retry_errors(conn, job.id, chunk_size=4)
    run_queued(engine, job.id, FlakyRunner(failing={"iii"}))
    after = job_of(engine, job.id)
    assert (after.status, after.succeeded, after.failed) == (JobStatus.COMPLETED, 8, 2)
    assert "out of memory" in (rows_of(engine, job.id)[8][1] or "")
    assert_consistent(engine, after)


def test_errors_matching_picks_the_rows_to_retry(engine: Engine) -> None:
    job = scored_with_failures(engine)
    with engine.begin() as conn, pytest.raises(RequeueRefused, match="containing 'timeout'"):
        retry_errors(conn, job.id, chunk_size=4, errors_matching="timeout")
    with engine.begin() as conn:
        queued = retry_errors(conn, job.id, chunk_size=4, errors_matching="on iii")
    assert queued.items == 1
    runner = FlakyRunner()
    run_queued(engine, job.id, runner)
    assert runner.seen == ["iii"]
    after = job_of(engine, job.id)
    assert (after.status, after.succeeded, after.failed) == (JobStatus.COMPLETED, 8, 2)


def test_retry_is_refused_without_errors_or_before_the_job_completed(engine: Engine) -> None:
    clean = new_job(engine, ["a", "bb"])
    with engine.begin() as conn, pytest.raises(RequeueRefused, match="still queued"):
        retry_errors(conn, clean.id, chunk_size=4)
    run_queued(engine, clean.id, FlakyRunner())
    with engine.begin() as conn, pytest.raises(RequeueRefused, match="no error rows"):
        retry_errors(conn, clean.id, chunk_size=4)
    refused_only = new_job(engine, ["a", ""])
    run_queued(engine, refused_only.id, FlakyRunner())
    with engine.begin() as conn, pytest.raises(RequeueRefused, match="refused at intake"):
        retry_errors(conn, refused_only.id, chunk_size=4)
    cancelled = new_job(engine, ["a", "bb"])
    with engine.begin() as conn:
        cancel_job(conn, cancelled.id)
    with engine.begin() as conn, pytest.raises(RequeueRefused, match="resume it first"):
        retry_errors(conn, cancelled.id, chunk_size=4)
    with engine.begin() as conn, pytest.raises(LookupError):
        retry_errors(conn, "f" * 32, chunk_size=4)


def test_a_crash_inside_the_replacing_write_keeps_the_old_row(engine: Engine) -> None:
    job = scored_with_failures(engine)
    with engine.begin() as conn:
        retry_errors(conn, job.id, chunk_size=4)
    before = rows_of(engine, job.id)

    def crash(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("killed between the delete and the insert")

    # The error rows and marks are deleted before the insert that crashes: the rollback
    # must bring back every one of them, and the counters with them.
    with (
        mock.patch.object(retry_marks, "write_result_rows", side_effect=crash),
        pytest.raises(Exception, match="killed between"),
    ):
        run_queued(engine, job.id, FlakyRunner())
    assert rows_of(engine, job.id) == before
    assert marks_of(engine, job.id) == 2
    mid = job_of(engine, job.id)
    assert (mid.status, mid.succeeded, mid.failed) == (JobStatus.RUNNING, 7, 3)
    # The chunk was given back; its next delivery does the replacement.
    run_queued(engine, job.id, FlakyRunner())
    after = job_of(engine, job.id)
    assert (after.status, after.succeeded, after.failed) == (JobStatus.COMPLETED, 9, 1)
    assert_consistent(engine, after)


def test_a_second_delivery_of_a_retry_chunk_writes_nothing(engine: Engine) -> None:
    job = scored_with_failures(engine)
    with engine.begin() as conn:
        queued = retry_errors(conn, job.id, chunk_size=4)
    run_queued(engine, job.id, FlakyRunner())
    # A redelivered message of a retry chunk (say the worker died before its ack): the
    # chunk is done; even forced back to queued, its marks are gone and nothing is written.
    with engine.begin() as conn:
        conn.execute(
            update(chunks)
            .where(chunks.c.job_id == job.id, chunks.c.index.in_(queued.chunk_indexes))
            .values(status=ChunkStatus.QUEUED.value)
        )
        conn.execute(update(jobs).where(jobs.c.id == job.id).values(status="running"))
    runner = FlakyRunner()
    run_queued(engine, job.id, runner)
    assert runner.seen == []
    after = job_of(engine, job.id)
    assert (after.succeeded, after.failed) == (9, 1)
    assert_consistent(engine, after)


def test_a_retried_item_that_kills_every_attempt_gets_one_new_error_row(engine: Engine) -> None:
    job = scored_with_failures(engine)
    with engine.begin() as conn:
        queued = retry_errors(conn, job.id, chunk_size=4, errors_matching="on iii")
        (index,) = queued.chunk_indexes
        # Every attempt of the retry chunk died: exhausted, with one marked item in it.
        conn.execute(
            update(chunks)
            .where(chunks.c.job_id == job.id, chunks.c.index == index)
            .values(attempts=3, status=ChunkStatus.QUEUED.value)
        )
    outcome = split_exhausted(engine, job.id, index, max_attempts=3, send=None)
    assert outcome is not None and outcome.failed_items == 1
    after = job_of(engine, job.id)
    assert (after.status, after.succeeded, after.failed) == (JobStatus.COMPLETED, 7, 3)
    assert "stopped the worker" in (rows_of(engine, job.id)[8][1] or "")
    assert marks_of(engine, job.id) == 0
    assert_consistent(engine, after)


def test_resume_scores_the_rest_of_a_cancelled_job(engine: Engine) -> None:
    job = new_job(engine, TEXTS)
    driver = Driver(runner_for={"fake": FlakyRunner()}.get, cross_job=False)
    work_on_chunk(engine, SETTINGS, job.id, 0, driver)
    with engine.begin() as conn:
        cancel_job(conn, job.id)
    with engine.begin() as conn, pytest.raises(RequeueRefused, match="cancelled"):
        retry_errors(conn, job.id, chunk_size=4)
    with engine.begin() as conn:
        queued = resume_job(conn, job.id, chunk_size=4)
    assert queued.items == 6 and queued.job.status == JobStatus.RUNNING
    runner = FlakyRunner()
    run_queued(engine, job.id, runner)
    # In any order: chunks are claimed fairly, and texts scored in length order.
    assert sorted(runner.seen) == sorted(TEXTS[4:]), "only the unscored items reach the model"
    after = job_of(engine, job.id)
    assert (after.status, after.succeeded, after.failed) == (JobStatus.COMPLETED, 9, 1)
    assert_consistent(engine, after)
    with engine.begin() as conn, pytest.raises(RequeueRefused, match="only a cancelled"):
        resume_job(conn, job.id, chunk_size=4)


def test_resume_of_an_expired_job_clears_its_deadline(engine: Engine) -> None:
    job = new_job(engine, TEXTS)
    with engine.begin() as conn:
        conn.execute(
            update(jobs)
            .where(jobs.c.id == job.id)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
        assert expire_job(conn, job.id)
    with engine.begin() as conn:
        queued = resume_job(conn, job.id, chunk_size=4)
    assert queued.items == 10 and queued.job.expires_at is None
    run_queued(engine, job.id, FlakyRunner())
    after = job_of(engine, job.id)
    assert (after.status, after.succeeded, after.failed) == (JobStatus.COMPLETED, 9, 1)
    assert_consistent(engine, after)


def test_a_retry_cancelled_midway_is_finished_by_resume(engine: Engine) -> None:
    job = scored_with_failures(engine)
    with engine.begin() as conn:
        retry_errors(conn, job.id, chunk_size=4)
        cancel_job(conn, job.id)
    # The marks stay with their error rows; the job is not complete while they wait.
    with engine.begin() as conn:
        queued = resume_job(conn, job.id, chunk_size=4)
    assert queued.items == 2
    run_queued(engine, job.id, FlakyRunner())
    after = job_of(engine, job.id)
    assert (after.status, after.succeeded, after.failed) == (JobStatus.COMPLETED, 9, 1)
    assert marks_of(engine, job.id) == 0
    assert_consistent(engine, after)


def test_retry_chunks_span_at_most_chunk_size_indexes(engine: Engine) -> None:
    texts = [f"t{i}" for i in range(40)]
    failing = {"t0", "t1", "t17", "t39"}
    job = new_job(engine, texts, chunk_size=40)
    run_queued(engine, job.id, FlakyRunner(failing=failing))
    with engine.begin() as conn:
        queued = retry_errors(conn, job.id, chunk_size=10)
    with engine.connect() as conn:
        spans = [
            (c.start, c.stop) for c in list_chunks(conn, job.id) if c.index in queued.chunk_indexes
        ]
    assert spans == [(0, 2), (17, 18), (39, 40)]


def test_a_schedules_job_is_not_resumed(engine: Engine) -> None:
    # The schedule's next run reads a cancelled run's window again: resuming the job too
    # would score its items in two jobs.
    job = new_job(engine, TEXTS)
    with engine.begin() as conn:
        conn.execute(update(jobs).where(jobs.c.id == job.id).values(schedule="nightly"))
        cancel_job(conn, job.id)
    with engine.begin() as conn, pytest.raises(RequeueRefused, match="schedule 'nightly'"):
        resume_job(conn, job.id, chunk_size=4)
