"""Cross-job batching: one delivery scores other jobs' queued chunks with its own (SQLite)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, update

from core.chunks.batches import claim_siblings
from core.config import Settings
from core.db import dispose_engines, get_engine
from core.inputs.items import InputItem
from core.jobs.lifecycle import Job, cancel_job, create_job, get_job
from core.jobs.predictions import Prediction
from core.jobs.status import JobStatus
from core.migrate import upgrade
from core.models.registry import ModelSpec
from core.tables import chunks, results
from engine import chunk_work
from engine.chunk_work import work_on_chunk
from engine.delivery import ChunkAttemptError, ChunkOutcome
from engine.runners.base import Progress, Runner

FAKE = ModelSpec(name="fake", task="text-classification", backend="transformers", source="/x")
OTHER = ModelSpec(name="other", task="text-classification", backend="transformers", source="/x")


class FakeRunner(Runner):
    """Labels each text by its length; records the size of every predict call."""

    name = "fake"
    revision = None

    def __init__(self, max_batch_size: int = 64, on_predict: Callable[[], None] | None = None):
        self.max_batch_size = max_batch_size
        self.calls: list[list[str]] = []
        self.on_predict = on_predict

    def setup(self, device: str = "cpu") -> None:
        pass

    def predict(self, batch: Sequence[Any], progress: Progress | None = None) -> list[Prediction]:
        self.calls.append([str(text) for text in batch])
        if self.on_predict is not None:
            self.on_predict()
        if progress is not None:
            progress(len(batch))
        return [Prediction(label=f"len{len(str(t))}", score=1.0 / len(str(t))) for t in batch]


@pytest.fixture()
def engine(tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'cross.db'}"
    upgrade(url)
    yield get_engine(url)
    dispose_engines()


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "chunk_lease_s": 60,
        "chunk_max_attempts": 3,
        "cross_job_wait_ms": 0,
        **overrides,
    }
    return Settings(database_url="sqlite://", **values)


def small_jobs(
    engine: Engine, count: int, size: int = 1, spec: ModelSpec = FAKE, one_length: bool = False
) -> list[Job]:
    made = []
    with engine.begin() as conn:
        for number in range(count):
            # Lengths grow job by job: scored in length order, the jobs' items stay apart.
            texts = ["x" * (10 * number + 1 + k) for k in range(size)]
            if one_length:
                # Write windows hold write_batch_size texts only when no text is longer than
                # the mean (engine.window_order); equal lengths keep the jobs' order.
                texts = [f"job {number:02d} text {k:02d}" for k in range(size)]
            inputs = [InputItem(item_id=f"j{number}-{k}", text=t) for k, t in enumerate(texts)]
            made.append(create_job(conn, spec, inputs, chunk_size=size))
    return made


def job_of(engine: Engine, job_id: str) -> Job:
    with engine.connect() as conn:
        job = get_job(conn, job_id)
    assert job is not None
    return job


def chunk_state(engine: Engine, job_id: str) -> tuple[str, int]:
    with engine.connect() as conn:
        row = conn.execute(select(chunks).where(chunks.c.job_id == job_id)).one()
    return row.status, row.attempts


def result_rows(engine: Engine, job_id: str) -> list[Any]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(results).where(results.c.job_id == job_id).order_by(results.c.index)
            )
        )


def test_one_delivery_scores_queued_small_jobs_in_one_predict(engine: Engine) -> None:
    jobs = small_jobs(engine, 6)
    runner = FakeRunner()
    report = work_on_chunk(engine, settings(), jobs[0].id, 0, {"fake": runner}.get)

    assert report.outcome == ChunkOutcome.DONE and report.scored == 1
    assert [(b.job_id, b.index, b.outcome, b.scored) for b in report.batched] == [
        (job.id, 0, ChunkOutcome.DONE, 1) for job in jobs[1:]
    ]
    assert [len(call) for call in runner.calls] == [6], "one forward for six jobs"
    for number, job in enumerate(jobs):
        final = job_of(engine, job.id)
        assert (final.status, final.succeeded, final.failed) == (JobStatus.COMPLETED, 1, 0)
        assert chunk_state(engine, job.id) == ("done", 1)
        [row] = result_rows(engine, job.id)
        assert (row.item_id, row.label) == (f"j{number}-0", f"len{10 * number + 1}")

    # The siblings' own messages arrive later: each is a no-op that never runs the model.
    for job in jobs[1:]:
        again = work_on_chunk(engine, settings(), job.id, 0, {"fake": runner}.get)
        assert (again.outcome, again.reason) == (ChunkOutcome.SKIPPED, "chunk already done")
    assert len(runner.calls) == 1
    assert all(len(result_rows(engine, job.id)) == 1 for job in jobs)


def test_a_batch_holds_at_most_its_item_limit_one_chunk_per_job(engine: Engine) -> None:
    jobs = small_jobs(engine, 10, size=2)  # ten jobs of two items, one chunk each
    runner = FakeRunner()
    report = work_on_chunk(
        engine, settings(cross_job_max_items=7), jobs[0].id, 0, {"fake": runner}.get
    )
    # 2 (own) + 2 + 2 = 6; a fourth two-item chunk would pass 7.
    assert [b.job_id for b in report.batched] == [jobs[1].id, jobs[2].id]
    # Six items, six distinct texts (lengths grow job by job).
    assert [len(call) for call in runner.calls] == [6]
    assert chunk_state(engine, jobs[3].id) == ("queued", 0)


def test_by_default_a_batch_gathers_up_to_a_chunk_of_small_jobs(engine: Engine) -> None:
    jobs = small_jobs(engine, 12)
    runner = FakeRunner(max_batch_size=4)  # one forward pass: 4 inputs
    report = work_on_chunk(engine, settings(chunk_size=10), jobs[0].id, 0, {"fake": runner}.get)
    # Beyond one forward pass: ten items, sorted by length together by the runner.
    assert len(report.batched) == 9 and [len(call) for call in runner.calls] == [10]


def test_chunks_that_fill_a_forward_pass_keep_their_own_tasks(engine: Engine) -> None:
    small = small_jobs(engine, 2)
    big = small_jobs(engine, 1, size=4)[0]
    runner = FakeRunner(max_batch_size=4)
    report = work_on_chunk(engine, settings(), small[0].id, 0, {"fake": runner}.get)
    assert [b.job_id for b in report.batched] == [small[1].id]
    assert chunk_state(engine, big.id) == ("queued", 0), "a big chunk is left to its message"
    alone = work_on_chunk(engine, settings(), big.id, 0, {"fake": runner}.get)
    assert alone.batched == ()


def test_only_fresh_queued_chunks_of_active_jobs_of_the_same_model_join(
    engine: Engine,
) -> None:
    own, cancelled, retried, elsewhere, fresh = small_jobs(engine, 4) + small_jobs(engine, 1)
    with engine.begin() as conn:
        cancel_job(conn, cancelled.id)
        conn.execute(update(chunks).where(chunks.c.job_id == retried.id).values(attempts=1))
    other_model = small_jobs(engine, 1, spec=OTHER)[0]
    with engine.begin() as conn:
        conn.execute(update(chunks).where(chunks.c.job_id == elsewhere.id).values(status="running"))
    report = work_on_chunk(engine, settings(), own.id, 0, {"fake": FakeRunner()}.get)
    assert [b.job_id for b in report.batched] == [fresh.id]
    assert chunk_state(engine, cancelled.id) == ("cancelled", 0)
    assert chunk_state(engine, retried.id) == ("queued", 1)
    assert chunk_state(engine, other_model.id) == ("queued", 0)


def test_a_retried_chunk_runs_alone(engine: Engine) -> None:
    first, second = small_jobs(engine, 2)
    with engine.begin() as conn:
        conn.execute(update(chunks).where(chunks.c.job_id == first.id).values(attempts=1))
    runner = FakeRunner()
    report = work_on_chunk(engine, settings(), first.id, 0, {"fake": runner}.get)
    assert report.attempts == 2 and report.batched == ()
    assert chunk_state(engine, second.id) == ("queued", 0)


def test_batching_can_be_turned_off(engine: Engine) -> None:
    jobs = small_jobs(engine, 3)
    runner = FakeRunner()
    off = settings(cross_job_batching=False)
    report = work_on_chunk(engine, off, jobs[0].id, 0, {"fake": runner}.get)
    assert report.batched == () and [len(c) for c in runner.calls] == [1]


def test_a_failed_batch_gives_every_chunk_back(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = small_jobs(engine, 3)

    def broken(*_args: Any, **_kwargs: Any) -> None:
        raise ConnectionError("database went away")

    monkeypatch.setattr(chunk_work, "score_jobs", broken)
    with pytest.raises(ChunkAttemptError) as caught:
        work_on_chunk(engine, settings(), jobs[0].id, 0, {"fake": FakeRunner()}.get)
    assert caught.value.retry
    # Queued again with the attempt counted: their own messages claim them (alone) later.
    assert [chunk_state(engine, job.id) for job in jobs] == [("queued", 1)] * 3
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(results)) == 0


def test_a_sibling_job_cancelled_mid_batch_stops_alone(engine: Engine) -> None:
    jobs = small_jobs(engine, 3, size=4, one_length=True)

    def cancel_the_second() -> None:
        with engine.begin() as conn:
            cancel_job(conn, jobs[1].id)

    runner = FakeRunner(on_predict=cancel_the_second)
    # Windows of 4 rows: the first holds the delivery's own chunk; the second job is
    # cancelled during it. Its window reaches the model only if it was started before
    # (two windows run at once: engine.scoring.WINDOWS_IN_FLIGHT); it is never written.
    report = work_on_chunk(
        engine, settings(write_batch_size=4), jobs[0].id, 0, {"fake": runner}.get
    )
    assert report.outcome == ChunkOutcome.DONE
    assert [(b.job_id, b.outcome) for b in report.batched] == [
        (jobs[1].id, ChunkOutcome.CANCELLED),
        (jobs[2].id, ChunkOutcome.DONE),
    ]
    assert [len(call) for call in runner.calls] in ([4, 4], [4, 4, 4])
    assert chunk_state(engine, jobs[1].id) == ("cancelled", 1)
    assert result_rows(engine, jobs[1].id) == []
    assert job_of(engine, jobs[2].id).status == JobStatus.COMPLETED
    assert job_of(engine, jobs[1].id).status == JobStatus.CANCELLED


def test_two_gatherers_never_claim_the_same_chunk(engine: Engine) -> None:
    jobs = small_jobs(engine, 5)
    with engine.begin() as conn:
        first = claim_siblings(conn, "fake", exclude_jobs=[], max_items=3, max_chunks=3, lease_s=60)
        second = claim_siblings(
            conn, "fake", exclude_jobs=[], max_items=10, max_chunks=10, lease_s=60
        )
    taken = [c.chunk.job_id for c in first + second if c.chunk is not None]
    assert sorted(taken) == sorted(job.id for job in jobs)
    assert len(first) == 3 and len(second) == 2


def test_a_failed_gather_still_scores_the_delivery_s_own_chunk(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine import cross_job

    jobs = small_jobs(engine, 2)

    def broken(*_args: Any, **_kwargs: Any) -> None:
        raise ConnectionError("lost the database mid-gather")

    monkeypatch.setattr(cross_job, "claim_siblings", broken)
    report = work_on_chunk(engine, settings(), jobs[0].id, 0, {"fake": FakeRunner()}.get)
    assert (report.outcome, report.batched) == (ChunkOutcome.DONE, ())
    assert chunk_state(engine, jobs[0].id) == ("done", 1)
    assert chunk_state(engine, jobs[1].id) == ("queued", 0)


def test_only_a_trickle_of_small_jobs_waits_once_for_more(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine import cross_job

    waits: list[float] = []
    monkeypatch.setattr(cross_job.time, "sleep", waits.append)
    runner = FakeRunner(max_batch_size=4)
    wait = settings(cross_job_wait_ms=30)

    lone = small_jobs(engine, 1)[0]
    work_on_chunk(engine, wait, lone.id, 0, {"fake": runner}.get)
    assert waits == [], "a lone job has nothing to wait for"

    trickle = small_jobs(engine, 2)  # two one-text jobs: half a forward pass
    work_on_chunk(engine, wait, trickle[0].id, 0, {"fake": runner}.get)
    assert waits == [0.03], "a trickle waits once"

    backlog = small_jobs(engine, 6)  # more than a forward pass queued: no wait
    work_on_chunk(engine, wait, backlog[0].id, 0, {"fake": runner}.get)
    assert waits == [0.03]
