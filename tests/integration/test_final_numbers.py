"""A final status means final numbers: on PostgreSQL a result write and a cancel take the
job's row in turn, so no write lands after a cancel, whichever commits first.

Each race is made deterministic: one side holds its transaction open, the other is started
in a thread and seen waiting for the row in ``pg_stat_activity``, then the first commits.
(Against real workers: ``test_faults.py::test_8_cancel_while_chunks_are_in_flight``.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from sqlalchemy import Engine, func, select, text

from core.db import get_engine
from core.inputs.items import InputItem
from core.jobs.lifecycle import Job, cancel_job, create_job, get_job
from core.jobs.predictions import Prediction
from core.jobs.results import ScoredItem, WriteOutcome, write_job_results, write_results
from core.jobs.status import JobStatus
from core.migrate import upgrade
from core.models.registry import ModelSpec
from core.tables import results

SPEC = ModelSpec(name="m", task="text-classification", backend="transformers", source="/x")
T = TypeVar("T")


def pg_engine(url: str) -> Engine:
    upgrade(url)
    return get_engine(url)


def new_job(engine: Engine, count: int = 10) -> Job:
    inputs = [InputItem(item_id=f"r{i}", text=f"text {i}") for i in range(count)]
    with engine.begin() as conn:
        return create_job(conn, SPEC, inputs, chunk_size=count)


def scored(indexes: range) -> list[ScoredItem]:
    return [ScoredItem(i, f"r{i}", Prediction(label="x", score=1.0)) for i in indexes]


def write(engine: Engine, job_id: str, indexes: range) -> WriteOutcome:
    with engine.begin() as conn:
        return write_results(conn, job_id, "m", None, scored(indexes))


def cancel_and_read(engine: Engine, job_id: str) -> Job:
    """What ``POST /v1/jobs/{id}/cancel`` does and answers."""
    with engine.begin() as conn:
        cancel_job(conn, job_id)
        job = get_job(conn, job_id)
    assert job is not None
    return job


def job_of(engine: Engine, job_id: str) -> Job:
    with engine.connect() as conn:
        job = get_job(conn, job_id)
    assert job is not None
    return job


def rows_of(engine: Engine, job_id: str) -> int:
    with engine.connect() as conn:
        query = select(func.count()).select_from(results).where(results.c.job_id == job_id)
        return int(conn.scalar(query))


def run_while_held(engine: Engine, pool: ThreadPoolExecutor, work: Callable[[], T]) -> Future[T]:
    """Start ``work`` in a thread and return once it waits for a row lock."""
    future = pool.submit(work)
    deadline = time.monotonic() + 10
    query = text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    while True:
        with engine.connect() as conn:
            if conn.scalar(query):
                return future
        assert not future.done(), f"finished without waiting: {future.result()}"
        assert time.monotonic() < deadline, "never waited for the row"
        time.sleep(0.02)


def test_a_write_that_waited_for_a_cancel_writes_nothing(pg_url: str) -> None:
    engine = pg_engine(pg_url)
    job = new_job(engine)
    with ThreadPoolExecutor(1) as pool, engine.connect() as canceller:
        with canceller.begin():
            cancel_job(canceller, job.id)
            reported = get_job(canceller, job.id)
            # A chunk's write window, scored before the cancel, arrives now.
            late = run_while_held(engine, pool, lambda: write(engine, job.id, range(5)))
        outcome = late.result(timeout=10)
    assert reported is not None and reported.done == 0
    assert outcome.refused and outcome.written == 0
    final = job_of(engine, job.id)
    assert (final.status, final.succeeded, final.failed) == (JobStatus.CANCELLED, 0, 0)
    assert rows_of(engine, job.id) == 0


def test_a_cancel_that_waited_for_a_write_reports_it_and_refuses_the_next(pg_url: str) -> None:
    engine = pg_engine(pg_url)
    job = new_job(engine)
    with ThreadPoolExecutor(1) as pool, engine.connect() as writer:
        with writer.begin():
            first = write_results(writer, job.id, "m", None, scored(range(4)))
            cancel = run_while_held(engine, pool, lambda: cancel_and_read(engine, job.id))
        reported = cancel.result(timeout=10)
    assert first.written == 4 and not first.refused
    # The cancel's answer includes the write that committed before it ...
    assert (reported.status, reported.done) == (JobStatus.CANCELLED, 4)
    # ... and another chunk's window, written after it, moves nothing.
    later = write(engine, job.id, range(4, 10))
    assert later.refused and later.written == 0
    final = job_of(engine, job.id)
    assert (final.status, final.done) == (JobStatus.CANCELLED, 4)
    assert rows_of(engine, job.id) == 4


def test_a_batch_of_several_jobs_skips_only_the_cancelled_one(pg_url: str) -> None:
    engine = pg_engine(pg_url)
    kept, cancelled = new_job(engine, 3), new_job(engine, 3)
    cancel_and_read(engine, cancelled.id)
    with engine.begin() as conn:
        outcomes = write_job_results(
            conn, "m", None, {kept.id: scored(range(3)), cancelled.id: scored(range(3))}
        )
    assert outcomes[kept.id] == WriteOutcome(3, 0)
    assert outcomes[cancelled.id] == WriteOutcome(0, 0, refused=True)
    assert job_of(engine, kept.id).status == JobStatus.COMPLETED
    assert (rows_of(engine, kept.id), rows_of(engine, cancelled.id)) == (3, 0)
    assert job_of(engine, cancelled.id).done == 0


def test_a_completed_job_takes_no_late_rows(pg_url: str) -> None:
    # A stale delivery of a chunk another worker finished: refused, not merely deduplicated.
    engine = pg_engine(pg_url)
    job = new_job(engine, 4)
    assert write(engine, job.id, range(4)).written == 4
    assert job_of(engine, job.id).status == JobStatus.COMPLETED
    assert write(engine, job.id, range(4)).refused
    assert job_of(engine, job.id).done == 4 == rows_of(engine, job.id)
