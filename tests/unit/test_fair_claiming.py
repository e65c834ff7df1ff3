"""Fair claiming (core.chunks.fair) and the hand-back of a chunk's rest (engine.chunk_work),
on SQLite and on a real PostgreSQL, with a fake runner."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, update

from core.chunks.claim import ClaimOutcome, as_utc, claim_chunk
from core.chunks.fair import (
    Fairness,
    chunks_ahead,
    claim_fairest,
    job_ranks,
    outranked_since,
    queue_stats,
    stamp_served,
)
from core.chunks.split import hand_back
from core.clock import utcnow
from core.config import Settings
from core.db import dispose_engines, get_engine
from core.inputs.items import InputItem
from core.jobs.lifecycle import Job, create_job, get_job
from core.jobs.predictions import Prediction
from core.jobs.priority import Priority
from core.jobs.status import JobDriver, JobStatus
from core.keys import create_key
from core.migrate import upgrade
from core.models.registry import ModelSpec
from core.tables import chunks, jobs, results
from engine.chunk_work import work_on_chunk
from engine.delivery import ChunkOutcome, Driver
from engine.runners.base import Progress, Runner

SPEC = ModelSpec(name="fake", task="text-classification", backend="transformers", source="/nowhere")
FAIR = Fairness(aging_s=600)


class FakeRunner(Runner):
    """Labels each text by its length; ``on_predict`` lets a test act mid-chunk."""

    name = "fake"
    revision = None

    def __init__(self, on_predict: Callable[[int], None] | None = None) -> None:
        self.calls: list[list[str]] = []
        self.on_predict = on_predict

    def setup(self, device: str = "cpu") -> None:
        pass

    def predict(self, batch: Sequence[Any], progress: Progress | None = None) -> list[Prediction]:
        self.calls.append([str(text) for text in batch])
        if self.on_predict is not None:
            self.on_predict(len(self.calls))
        if progress is not None:
            progress(len(batch))
        return [Prediction(label=f"len{len(str(text))}", score=1.0) for text in batch]


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'fair.db'}"
        upgrade(url)
        yield get_engine(url)
        dispose_engines()
        return
    from services import fresh_postgres_database

    with fresh_postgres_database() as url:
        upgrade(url)
        yield get_engine(url)
        dispose_engines()


def key(engine: Engine, name: str) -> int:
    with engine.begin() as conn:
        return create_key(conn, name)[0]


def new_job(
    engine: Engine,
    items: int,
    *,
    owner: int | None = None,
    chunk_size: int = 2,
    priority: Priority = Priority.NORMAL,
    driver: JobDriver = JobDriver.SERVICE,
    text: str = "x",
) -> Job:
    # Distinct texts (dedup and the result cache would hide a second scoring of an item).
    inputs = [InputItem(item_id=str(i), text=f"{text * (i % 7 + 1)} {i}") for i in range(items)]
    with engine.begin() as conn:
        return create_job(
            conn,
            SPEC,
            inputs,
            chunk_size=chunk_size,
            owner_key_id=owner,
            priority=priority,
            driver=driver,
        )


def claim_order(engine: Engine, count: int) -> list[tuple[str, int]]:
    """Claim ``count`` chunks one by one, as successive deliveries would; finish each."""
    order = []
    for _ in range(count):
        with engine.begin() as conn:
            claim = claim_fairest(conn, "fake", FAIR, lease_s=60, max_attempts=3)
            assert claim is not None and claim.chunk is not None
            chunk = claim.chunk
            conn.execute(
                update(chunks)
                .where(chunks.c.job_id == chunk.job_id, chunks.c.index == chunk.index)
                .values(status="done")
            )
        order.append((chunk.job_id, chunk.index))
    return order


def test_keys_take_turns_then_jobs_of_a_key_then_chunks_in_order(engine: Engine) -> None:
    a, b = key(engine, "a"), key(engine, "b")
    big = new_job(engine, 8, owner=a)  # four chunks, first in the queue
    small = new_job(engine, 2, owner=b)  # one chunk, arrives later from another key
    second = new_job(engine, 4, owner=a)  # two chunks, a's second job
    order = claim_order(engine, 7)
    assert order == [
        (big.id, 0),
        (small.id, 0),  # key b never served: before a's second chunk
        (second.id, 0),  # a's turn again: its job never served goes first
        (big.id, 1),
        (second.id, 1),
        (big.id, 2),
        (big.id, 3),
    ]
    with engine.begin() as conn:
        assert claim_fairest(conn, "fake", FAIR, lease_s=60, max_attempts=3) is None


def test_a_handed_back_rest_runs_before_the_jobs_later_chunks(engine: Engine) -> None:
    job = new_job(engine, 6)  # chunks 0, 1, 2 of two items each
    with engine.begin() as conn:
        claim = claim_fairest(conn, "fake", FAIR, lease_s=60, max_attempts=3)
        assert claim is not None and claim.chunk is not None and claim.chunk.index == 0
        rest = hand_back(conn, job.id, 0, attempts=1, rest=(1, 2))
    assert rest == 3, "the rest is a new chunk, with the next index"
    # Its items come first in the job, so it runs first: by index it would go last, and a
    # job would leave every chunk's rest (its slowest windows) until its end.
    assert claim_order(engine, 3) == [(job.id, 3), (job.id, 1), (job.id, 2)]


def test_higher_priority_first_and_a_waiting_low_job_climbs(engine: Engine) -> None:
    low = new_job(engine, 2, priority=Priority.LOW)
    normal = new_job(engine, 2)
    high = new_job(engine, 2, priority=Priority.HIGH)
    assert [job for job, _ in claim_order(engine, 3)] == [high.id, normal.id, low.id]

    starved = new_job(engine, 2, priority=Priority.LOW)
    fresh = new_job(engine, 2)
    with engine.begin() as conn:  # the low job has waited longer than priority_aging_s
        conn.execute(
            update(jobs)
            .where(jobs.c.id == starved.id)
            .values(created_at=utcnow() - timedelta(seconds=FAIR.aging_s + 5))
        )
    assert [job for job, _ in claim_order(engine, 2)] == [starved.id, fresh.id]


def test_only_service_scoring_chunks_with_attempts_left_are_taken(engine: Engine) -> None:
    embedded = new_job(engine, 2, driver=JobDriver.EMBEDDED)
    exhausted = new_job(engine, 2)
    with engine.begin() as conn:
        conn.execute(update(chunks).where(chunks.c.job_id == exhausted.id).values(attempts=3))
        assert claim_fairest(conn, "fake", FAIR, lease_s=60, max_attempts=3) is None
        assert claim_fairest(conn, "other", FAIR, lease_s=60, max_attempts=3) is None
    with engine.connect() as conn:
        statuses = conn.execute(select(chunks.c.status).where(chunks.c.job_id == embedded.id))
        assert [s for (s,) in statuses] == ["queued"]


def test_a_holder_is_outranked_by_a_new_job_but_two_holders_do_not_trade(engine: Engine) -> None:
    a, b = key(engine, "a"), key(engine, "b")
    big = new_job(engine, 8, owner=a)
    with engine.begin() as conn:
        held = claim_fairest(conn, "fake", FAIR, lease_s=60, max_attempts=3)
        assert held is not None and held.chunk is not None and held.chunk.job_id == big.id
        # Only its own job waits: nothing to hand back to.
        assert outranked_since(conn, big.id, "fake", FAIR) is None
    other = new_job(engine, 4, owner=b)
    with engine.begin() as conn:
        assert outranked_since(conn, big.id, "fake", FAIR), "a never-served key goes first"
        assert chunks_ahead(conn, other.id, "fake", FAIR) == 0
        # A second worker takes b's chunk: now each key has one running, and the other's
        # queued chunks do not outrank either holder.
        second = claim_fairest(conn, "fake", FAIR, lease_s=60, max_attempts=3)
        assert second is not None and second.chunk is not None
        assert second.chunk.job_id == other.id
        assert outranked_since(conn, big.id, "fake", FAIR) is None
        assert outranked_since(conn, other.id, "fake", FAIR) is None


def test_queue_stats_count_by_priority_and_age_the_longest_wait(engine: Engine) -> None:
    new_job(engine, 4, priority=Priority.LOW)
    old = new_job(engine, 2)
    with engine.begin() as conn:
        conn.execute(
            update(jobs)
            .where(jobs.c.id == old.id)
            .values(created_at=utcnow() - timedelta(seconds=90))
        )
        stats = queue_stats(conn)
    assert stats.queued_by_priority == {"high": 0, "normal": 1, "low": 2}
    assert 89 <= stats.oldest_wait_s["fake"] < 200


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "chunk_lease_s": 60,
        "chunk_max_attempts": 3,
        "write_batch_size": 2,
        "fair_time_slice_s": 0.0,
        "cross_job_batching": False,
        **overrides,
    }
    return Settings(database_url="sqlite://", **values)


def rows_of(engine: Engine, job_id: str) -> list[tuple[int, str]]:
    with engine.connect() as conn:
        return [
            (int(index), str(label))
            for index, label in conn.execute(
                select(results.c.index, results.c.label)
                .where(results.c.job_id == job_id)
                .order_by(results.c.index)
            )
        ]


def test_a_big_chunk_hands_its_rest_back_to_a_new_job_and_nothing_is_lost_or_doubled(
    engine: Engine,
) -> None:
    big = new_job(engine, 10, chunk_size=10, text="y")
    made: list[Job] = []

    def submit_small(call: int) -> None:
        if call == 1:  # while the first window of the big chunk is scored
            made.append(new_job(engine, 1, text="z"))

    runner = FakeRunner(on_predict=submit_small)
    sent: list[tuple[str, int, str]] = []
    driver = Driver(runner_for={"fake": runner}.get, send=lambda *args: sent.append(args))
    report = work_on_chunk(engine, settings(), big.id, 0, driver)
    [small] = made
    assert report.outcome == ChunkOutcome.YIELDED, report.reason
    # One window (its first in the balanced order, engine.window_order), then the hand-back.
    assert report.scored == len(runner.calls[0]) < 10
    [(job_id, child, model)] = sent
    assert (job_id, model) == (big.id, "fake")
    with engine.connect() as conn:
        parent, rest = conn.execute(
            select(chunks.c.status, chunks.c.start, chunks.c.stop, chunks.c.attempts)
            .where(chunks.c.job_id == big.id)
            .order_by(chunks.c.index)
        ).all()
    assert parent[0] == "split"
    assert rest[0] == "queued" and rest[3] == 0, "a hand-back is no failed attempt"

    # The next delivery (the rest's own message, a token) takes the small job first.
    first = work_on_chunk(engine, settings(), big.id, child, driver)
    assert first.worked_on == (small.id, 0) and first.outcome == ChunkOutcome.DONE
    last = work_on_chunk(engine, settings(), small.id, 0, driver)
    assert last.worked_on == (big.id, child) and last.outcome == ChunkOutcome.DONE
    with engine.connect() as conn:
        done = get_job(conn, big.id)
        assert done is not None and (done.status, done.succeeded) == (JobStatus.COMPLETED, 10)
        assert (
            conn.scalar(select(func.count()).select_from(results).where(results.c.job_id == big.id))
            == 10
        )
    assert [index for index, _ in rows_of(engine, big.id)] == list(range(10))
    # Every item reached the model once: the hand-back scored nothing twice.
    scored = sum(len(call) for call in runner.calls)
    assert scored == 11


def test_no_hand_back_within_the_time_slice_or_with_fair_claiming_off(engine: Engine) -> None:
    for overrides in ({"fair_time_slice_s": 3600.0}, {"fair_claiming": False}):
        big = new_job(engine, 6, chunk_size=6)
        runner = FakeRunner(on_predict=lambda call: new_job(engine, 1) and None)
        report = work_on_chunk(engine, settings(**overrides), big.id, 0, {"fake": runner}.get)
        assert report.outcome == ChunkOutcome.DONE and report.scored == 6, overrides


def test_a_hand_back_by_a_holder_whose_lease_was_taken_over_gives_back_nothing(
    engine: Engine,
) -> None:
    big = new_job(engine, 6, chunk_size=6)

    def lose_the_lease(call: int) -> None:
        if call == 1:
            new_job(engine, 1)
            with engine.begin() as conn:  # the lease runs out; another delivery takes over
                conn.execute(
                    update(chunks)
                    .where(chunks.c.job_id == big.id)
                    .values(leased_until=utcnow() - timedelta(seconds=1))
                )
                taken = claim_chunk(conn, big.id, 0, lease_s=60, max_attempts=3)
                assert taken.outcome == ClaimOutcome.CLAIMED

    runner = FakeRunner(on_predict=lose_the_lease)
    report = work_on_chunk(engine, settings(), big.id, 0, {"fake": runner}.get)
    assert report.outcome == ChunkOutcome.YIELDED and "taken over" in report.reason
    with engine.connect() as conn:
        assert conn.execute(
            select(chunks.c.status, chunks.c.attempts).where(chunks.c.job_id == big.id)
        ).all() == [("running", 2)]


def test_a_turn_outlives_its_chunk_and_ends_on_time(engine: Engine) -> None:
    """A job whose chunk runs out before its turn does keeps the worker for the rest of the
    turn (its next chunk, no new stamp); once the turn is over, the other key goes."""
    turns = Fairness(aging_s=600, turn_s=60)
    a, b = key(engine, "a"), key(engine, "b")
    first = new_job(engine, 6, owner=a)  # three chunks
    other = new_job(engine, 4, owner=b)  # two chunks
    start = utcnow()

    def claim_at(moment: Any) -> tuple[str, int]:
        with engine.begin() as conn:
            claim = claim_fairest(conn, "fake", turns, lease_s=60, max_attempts=3, now=moment)
            assert claim is not None and claim.chunk is not None
            conn.execute(
                update(chunks)
                .where(chunks.c.job_id == claim.chunk.job_id, chunks.c.index == claim.chunk.index)
                .values(status="done")
            )
            return claim.chunk.job_id, claim.chunk.index

    def stamp(job: Job) -> Any:
        with engine.connect() as conn:
            return conn.scalar(select(jobs.c.last_served_at).where(jobs.c.id == job.id))

    assert claim_at(start) == (first.id, 0)
    opened = stamp(first)
    # Its chunk ended 10 s into a 60 s turn: its next chunk, and the turn is not reopened.
    assert claim_at(start + timedelta(seconds=10)) == (first.id, 1)
    assert stamp(first) == opened
    # (Counted per claim, as before turns, the other key would have gone there.)
    # The turn is over: the other key, then the first job again with a turn of its own.
    assert claim_at(start + timedelta(seconds=61)) == (other.id, 0)
    assert claim_at(start + timedelta(seconds=62)) == (other.id, 1)  # b's turn still runs
    assert claim_at(start + timedelta(seconds=130)) == (first.id, 2)
    assert stamp(first) != opened


def hold_first_chunk(engine: Engine, job: Job) -> None:
    """Mark ``job``'s chunk 0 running, as a worker holding it would."""
    with engine.begin() as conn:
        conn.execute(
            update(chunks)
            .where(chunks.c.job_id == job.id, chunks.c.index == 0)
            .values(status="running")
        )


def test_a_chunk_that_continues_a_turn_yields_when_the_turn_ends(engine: Engine) -> None:
    """The hand-back check counts the turn from the claim that opened it, not from the
    chunk's own start: a continuing chunk gets what is left of the turn."""
    from engine.chunk_work import TurnClock

    a, b = key(engine, "a"), key(engine, "b")
    holder = new_job(engine, 4, owner=a)
    new_job(engine, 2, owner=b)  # waits, from another key
    settings = Settings(database_url="sqlite://", fair_time_slice_s=30)
    hold_first_chunk(engine, holder)
    for began, expected in ((5, False), (45, True)):
        with engine.begin() as conn:
            conn.execute(
                update(jobs)
                .where(jobs.c.id == holder.id)
                .values(last_served_at=utcnow() - timedelta(seconds=began))
            )
        # Its chunk started now; its turn 5 s ago (not over), then 45 s ago (over, and the
        # waiting key, never served, ranks first).
        assert TurnClock(engine, settings, holder.id, "fake")() is expected


def test_a_turn_that_overran_makes_the_next_one_shorter(engine: Engine) -> None:
    """Deficit round-robin: a hand-back records how far the turn ran past its end, and the
    job's next turn is that much shorter (never below nothing), so the spread of turns
    (a turn ends at a window boundary) does not add up in one key's favour."""
    from engine.chunk_work import TurnClock

    turns = Fairness(aging_s=600, turn_s=1.0)
    job = new_job(engine, 6)

    def open_turn(debt: float) -> tuple[float, float]:
        with engine.begin() as conn:
            conn.execute(
                update(jobs)
                .where(jobs.c.id == job.id)
                .values(turn_debt_s=debt, turn_ends_at=utcnow() - timedelta(seconds=4))
            )
            stamp_served(conn, [job.id], fairness=turns)
            row = conn.execute(
                select(jobs.c.last_served_at, jobs.c.turn_ends_at, jobs.c.turn_debt_s).where(
                    jobs.c.id == job.id
                )
            ).one()
        return (row.turn_ends_at - row.last_served_at).total_seconds(), row.turn_debt_s

    assert open_turn(0.0) == (1.0, 0.0)
    length, debt = open_turn(0.4)
    assert length == pytest.approx(0.6) and debt == 0.0, "the debt is paid by the new turn"
    assert open_turn(2.5) == (0.0, 0.0), "a turn never goes below nothing"
    # While a turn runs, the job ranks as in its turn: not past its shortened end.
    with engine.begin() as conn:
        conn.execute(
            update(jobs)
            .where(jobs.c.id == job.id)
            .values(turn_debt_s=0.4, turn_ends_at=utcnow() - timedelta(seconds=4))
        )
        stamp_served(conn, [job.id], fairness=turns)
        opened = conn.scalar(select(jobs.c.last_served_at).where(jobs.c.id == job.id))
        [rank] = job_ranks(conn, "fake", turns, now=as_utc(opened) + timedelta(seconds=0.5))
        assert rank.turn_open
        [rank] = job_ranks(conn, "fake", turns, now=as_utc(opened) + timedelta(seconds=0.7))
        assert not rank.turn_open, "a 0.6 s turn is over at 0.7 s, though the slice is 1 s"
    # The clock of a chunk counts the turn's own end, not the configured slice.
    settings = Settings(database_url="sqlite://", fair_time_slice_s=30)
    with engine.begin() as conn:
        conn.execute(
            update(jobs)
            .where(jobs.c.id == job.id)
            .values(turn_ends_at=utcnow() - timedelta(seconds=0.5))
        )
    clock = TurnClock(engine, settings, job.id, "fake")
    # A turn that ended 0.5 s ago is over (a 30 s slice notwithstanding): the chunk yields
    # at its first window boundary, and owes the time from its own start, not the turn's end.
    assert clock.ends <= time.monotonic()
    time.sleep(0.2)
    assert 0.2 <= clock.overrun_s() < 1.0
    # Nobody waits: the job runs on, and owes nothing for the time it ran alone.
    assert clock() is False
    assert clock.overrun_s() < 0.2


def test_a_hand_back_records_the_overrun(engine: Engine) -> None:
    big = new_job(engine, 10, chunk_size=10, text="y")

    def submit_small(call: int) -> None:
        if call == 1:
            new_job(engine, 1, text="z")

    driver = Driver(runner_for={"fake": FakeRunner(on_predict=submit_small)}.get, send=None)
    report = work_on_chunk(engine, settings(), big.id, 0, driver)
    assert report.outcome == ChunkOutcome.YIELDED, report.reason
    with engine.connect() as conn:
        debt = conn.scalar(select(jobs.c.turn_debt_s).where(jobs.c.id == big.id))
    # The slice is 0 here: the whole first window ran past the end of the turn.
    assert 0 < debt < 30


def test_a_turn_owes_only_the_time_another_job_waited(engine: Engine) -> None:
    """A job alone runs on past its turn; one that arrives later is owed only from its
    arrival, not from the end of the turn."""
    from engine.chunk_work import TurnClock

    a, b = key(engine, "a"), key(engine, "b")
    holder = new_job(engine, 4, owner=a)
    settings = Settings(database_url="sqlite://", fair_time_slice_s=30)
    hold_first_chunk(engine, holder)
    with engine.begin() as conn:
        conn.execute(
            update(jobs)
            .where(jobs.c.id == holder.id)
            .values(
                last_served_at=utcnow() - timedelta(seconds=1),
                turn_ends_at=utcnow() + timedelta(seconds=0.2),
            )
        )
    clock = TurnClock(engine, settings, holder.id, "fake")
    time.sleep(0.8)  # the turn is over; nobody has asked yet
    new_job(engine, 2, owner=b)  # arrives now
    assert clock() is True
    assert clock.overrun_s() < 0.3, "owed from the newcomer's arrival, not the turn's end"
