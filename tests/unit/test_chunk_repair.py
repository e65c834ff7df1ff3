"""Exhausted chunks are bisected down to the poison item; lost messages are re-sent.

On SQLite with a fake runner; the same rules run against real processes in
tests/integration/test_faults.py (scenarios 6 and 9).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from chunk_support import chunk_table, expire
from sqlalchemy import Engine, select, update

from core.chunks.claim import claim_chunk
from core.chunks.split import exhausted_chunks, split_all_exhausted, split_chunk
from core.chunks.sweep import resend_lost, stale_queued_chunks, take_for_resend
from core.clock import utcnow
from core.config import Settings
from core.db import dispose_engines, get_engine
from core.inputs.items import InputItem
from core.jobs.lifecycle import Job, cancel_job, create_job, get_job
from core.jobs.predictions import Prediction
from core.migrate import upgrade
from core.models.registry import Backend, ModelSpec, Task
from core.tables import chunks, results
from engine.chunk_work import work_on_chunk
from engine.delivery import ChunkOutcome
from engine.runners.base import Progress, Runner

SPEC = ModelSpec(
    name="fake", task=Task.TEXT_CLASSIFICATION, backend=Backend.TRANSFORMERS, source="/nowhere"
)
MAX_ATTEMPTS = 2


class Crash(BaseException):
    """Stands for the process dying: not an Exception, so nothing below catches it."""


class PoisonRunner(Runner):
    """Scores texts; the text ``POISON`` 'kills the process' (raises :class:`Crash`)."""

    name: str = "fake"
    revision: str | None = None

    def setup(self, device: str = "cpu") -> None:
        pass

    def predict(self, batch: Sequence[Any], progress: Progress | None = None) -> list[Prediction]:
        if "POISON" in batch:
            raise Crash()
        return [Prediction(label="ok", score=1.0) for _ in batch]


@pytest.fixture()
def engine(tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'repair.db'}"
    upgrade(url)
    yield get_engine(url)
    dispose_engines()


def new_job(engine: Engine, texts: list[str], chunk_size: int) -> Job:
    inputs = [InputItem(item_id=f"r{i}", text=text) for i, text in enumerate(texts)]
    with engine.begin() as conn:
        return create_job(conn, SPEC, inputs, chunk_size=chunk_size)


def deliver(engine: Engine, job_id: str, index: int) -> Any:
    """One delivery; a Crash leaves the chunk running, as a killed worker does."""
    settings = Settings(database_url="sqlite://", chunk_lease_s=60, chunk_max_attempts=MAX_ATTEMPTS)
    try:
        runners: dict[str, Runner] = {"fake": PoisonRunner()}
        return work_on_chunk(engine, settings, job_id, index, runners.get)
    except Crash:
        expire(engine, job_id, index)
        return None


def test_a_poison_item_is_bisected_down_and_fails_alone(engine: Engine) -> None:
    texts = ["a", "b", "c", "d", "e", "POISON", "g", "h"]
    job = new_job(engine, texts, chunk_size=8)
    sent: list[tuple[str, int, str]] = []

    def send(job_id: str, index: int, model: str) -> None:
        sent.append((job_id, index, model))

    kills = 0
    for _ in range(MAX_ATTEMPTS):
        assert deliver(engine, job.id, 0) is None
        kills += 1
    # Each round: the reconciler splits what is exhausted; the new chunks are delivered.
    while True:
        assert split_all_exhausted(engine, ["fake"], max_attempts=MAX_ATTEMPTS, send=send) <= 1
        pending, sent[:] = list(sent), []
        if not pending:
            break
        for job_id, index, _model in pending:
            if deliver(engine, job_id, index) is None:
                kills += 1

    # 2 attempts of the whole chunk, then one crash per level: [4, 8), [4, 6), [5, 6).
    assert kills == MAX_ATTEMPTS + 3
    with engine.connect() as conn:
        final = get_job(conn, job.id)
        rows = dict(conn.execute(select(results.c.index, results.c.error)).all())
    assert final is not None and final.status == "completed"
    assert (final.succeeded, final.failed) == (7, 1)
    assert rows[5] is not None and "stopped the worker on every attempt" in rows[5]
    assert all(rows[i] is None for i in range(8) if i != 5)
    table = chunk_table(engine, job.id)
    assert [row[3] for row in table].count("split") == 3
    # Halves get one attempt each (max_attempts - 1 counted already).
    assert all(row[4] == MAX_ATTEMPTS for row in table)


def test_only_unscored_items_are_split(engine: Engine) -> None:
    job = new_job(engine, [f"t{i}" for i in range(10)], chunk_size=10)
    now = utcnow()
    with engine.begin() as conn:
        # Two attempts whose leases both ran out: the workers died.
        for started in (now - timedelta(seconds=200), now - timedelta(seconds=100)):
            claim_chunk(conn, job.id, 0, lease_s=60, max_attempts=MAX_ATTEMPTS, now=started)
        conn.execute(
            results.insert(),
            [
                {"job_id": job.id, "index": i, "item_id": f"r{i}", "label": "ok",
                 "model": "fake", "created_at": utcnow()}
                for i in range(4)
            ],
        )  # fmt: skip
        assert exhausted_chunks(conn, ["fake"], max_attempts=MAX_ATTEMPTS) == [(job.id, 0)]
        assert exhausted_chunks(conn, ["other"], max_attempts=MAX_ATTEMPTS) == []
        outcome = split_chunk(conn, job.id, 0, max_attempts=MAX_ATTEMPTS, reason="test")
        again = split_chunk(conn, job.id, 0, max_attempts=MAX_ATTEMPTS, reason="test")
    assert outcome is not None and outcome.children == (1, 2)
    assert again is None, "only one caller wins a chunk"
    assert chunk_table(engine, job.id) == [
        (0, 0, 10, "split", 2),
        (1, 4, 7, "queued", 1),
        (2, 7, 10, "queued", 1),
    ]


def test_a_live_or_attempt_holding_chunk_is_not_split(engine: Engine) -> None:
    job = new_job(engine, ["a", "b", "c"], chunk_size=3)
    with engine.begin() as conn:
        claim_chunk(conn, job.id, 0, lease_s=60, max_attempts=MAX_ATTEMPTS)
        assert split_chunk(conn, job.id, 0, max_attempts=MAX_ATTEMPTS, reason="x") is None
    expire(engine, job.id, 0)
    with engine.begin() as conn:  # expired, but with an attempt left: released, not split
        assert split_chunk(conn, job.id, 0, max_attempts=MAX_ATTEMPTS, reason="x") is None


def test_a_delivery_of_a_split_chunk_does_nothing(engine: Engine) -> None:
    job = new_job(engine, ["a", "POISON"], chunk_size=2)
    for _ in range(MAX_ATTEMPTS):
        deliver(engine, job.id, 0)
    # A delivery meets the exhausted chunk before any reconciler: it splits it itself.
    report = deliver(engine, job.id, 0)
    assert report.outcome == ChunkOutcome.SKIPPED and "split into chunks 1, 2" in report.reason
    # The original message, redelivered later, is a token: its chunk is finished, so it
    # takes the first half (the fairest chunk waiting).
    late = deliver(engine, job.id, 0)
    assert (late.outcome, late.worked_on) == (ChunkOutcome.DONE, (job.id, 1))
    assert chunk_table(engine, job.id)[1][3] == "done"


def test_a_cancelled_job_is_neither_split_nor_resent(engine: Engine) -> None:
    job = new_job(engine, ["a", "POISON"], chunk_size=2)
    for _ in range(MAX_ATTEMPTS):
        deliver(engine, job.id, 0)
    with engine.begin() as conn:
        cancel_job(conn, job.id)
        assert exhausted_chunks(conn, ["fake"], max_attempts=MAX_ATTEMPTS) == []
        assert stale_queued_chunks(conn, ["fake"], older_than_s=0, now=utcnow()) == []


class FakeRedis:
    def __init__(self, depth: int) -> None:
        self.depth = depth

    def pipeline(self, transaction: bool = False) -> FakeRedis:
        self.calls: list[int] = []
        return self

    def __enter__(self) -> FakeRedis:
        return self

    def __exit__(self, *_exc: object) -> None:
        pass

    def llen(self, name: str) -> None:
        self.calls.append(self.depth if "\x06" not in name else 0)

    def execute(self) -> list[int]:
        return self.calls


def test_lost_messages_are_resent_once_and_only_with_an_empty_queue(engine: Engine) -> None:
    job = new_job(engine, ["a", "b", "c", "d"], chunk_size=2)
    sent: list[tuple[str, int, str]] = []

    def send(job_id: str, index: int, model: str) -> None:
        sent.append((job_id, index, model))

    with engine.begin() as conn:
        conn.execute(update(chunks).values(updated_at=utcnow() - timedelta(seconds=600)))
    busy = FakeRedis(depth=5)
    assert resend_lost(engine, busy, ["fake"], send, older_than_s=300) == 0  # type: ignore[arg-type]
    assert sent == [], "a backlog is not a lost message"
    empty = FakeRedis(depth=0)
    assert resend_lost(engine, empty, ["fake"], send, older_than_s=300) == 2  # type: ignore[arg-type]
    assert sorted(sent) == [(job.id, 0, "fake"), (job.id, 1, "fake")]
    assert resend_lost(engine, empty, ["fake"], send, older_than_s=300) == 0  # type: ignore[arg-type]
    with engine.begin() as conn:
        assert not take_for_resend(conn, job.id, 0, older_than_s=300)
