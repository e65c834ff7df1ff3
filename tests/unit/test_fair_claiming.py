"""Fair claiming (core.chunks.fair) and the hand-back of a chunk's rest (engine.chunk_work),
on SQLite and on a real PostgreSQL, with a fake runner."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select, update

from core.chunks.claim import ClaimOutcome, claim_chunk
from core.chunks.fair import (
    Fairness,
    ahead_of,
    charge_service,
    chunks_ahead,
    claim_fairest,
    job_ranks,
    outranked,
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
from core.tables import chunks, jobs, key_clocks, results
from engine.chunk_work import work_on_chunk
from engine.delivery import ChunkOutcome, Driver
from engine.runners.base import Progress, Runner
from engine.scoring import WINDOWS_IN_FLIGHT

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
        assert outranked(conn, big.id, "fake", FAIR) is False
    other = new_job(engine, 4, owner=b)
    with engine.begin() as conn:
        assert outranked(conn, big.id, "fake", FAIR), "a never-served key goes first"
        assert chunks_ahead(conn, other.id, "fake", FAIR) == 0
        # A second worker takes b's chunk: now each key has one running, and the other's
        # queued chunks do not outrank either holder.
        second = claim_fairest(conn, "fake", FAIR, lease_s=60, max_attempts=3)
        assert second is not None and second.chunk is not None
        assert second.chunk.job_id == other.id
        assert outranked(conn, big.id, "fake", FAIR) is False
        assert outranked(conn, other.id, "fake", FAIR) is False


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
    # The windows started when it was asked (the first in the balanced order,
    # engine.window_order, and at most one more: engine.scoring.WINDOWS_IN_FLIGHT), then
    # the hand-back.
    assert len(runner.calls) <= WINDOWS_IN_FLIGHT
    assert report.scored == sum(len(call) for call in runner.calls) < 10
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
    from engine.turn_clock import TurnClock, WorkerTime

    a, b = key(engine, "a"), key(engine, "b")
    holder = new_job(engine, 4, owner=a)
    new_job(engine, 2, owner=b)  # waits, from another key
    settings = Settings(database_url="sqlite://", fair_time_slice_s=30)
    hold_first_chunk(engine, holder)
    for ends_in, expected in ((25, False), (-15, True)):
        with engine.begin() as conn:
            conn.execute(
                update(jobs)
                .where(jobs.c.id == holder.id)
                .values(
                    last_served_at=utcnow() - timedelta(seconds=30 - ends_in),
                    turn_ends_at=utcnow() + timedelta(seconds=ends_in),
                )
            )
        # Its chunk started now; its turn 5 s ago (not over), then 45 s ago (over, and the
        # waiting key, never served, ranks first).
        clock = TurnClock(engine, settings, holder.id, "fake", WorkerTime({holder.id: 4}))
        assert clock() is expected


def served(engine: Engine, *served_jobs: Job, clock: float | None = None) -> None:
    """Mark ``served_jobs`` served (their turns over), and set their key's clock."""
    with engine.begin() as conn:
        for job in served_jobs:
            conn.execute(
                update(jobs)
                .where(jobs.c.id == job.id)
                .values(last_served_at=utcnow() - timedelta(seconds=5), turn_ends_at=None)
            )
        if clock is not None:
            conn.execute(
                key_clocks.delete().where(key_clocks.c.owner == served_jobs[0].owner_key_id)
            )
            conn.execute(
                key_clocks.insert().values(
                    owner=served_jobs[0].owner_key_id, runs_on="fake", clock_s=clock
                )
            )


def clock_of(engine: Engine, owner: int | None) -> float | None:
    with engine.connect() as conn:
        return conn.scalar(select(key_clocks.c.clock_s).where(key_clocks.c.owner == (owner or 0)))


def test_keys_rank_by_the_worker_time_they_received(engine: Engine) -> None:
    """Not by whose turn came last: a key that had a long turn waits until the other has
    had as much (turns end at window boundaries, so they differ in length)."""
    a, b = key(engine, "a"), key(engine, "b")
    first, second = new_job(engine, 6, owner=a), new_job(engine, 6, owner=b)
    served(engine, first, clock=3.0)
    served(engine, second, clock=4.5)  # b was served last, but a has had less time
    assert claim_order(engine, 1) == [(first.id, 0)]
    with engine.begin() as conn:
        charge_service(conn, first.id, 1.0)  # 4.0: still below b's 4.5
    served(engine, first)  # its turn is over
    assert claim_order(engine, 1) == [(first.id, 1)]
    with engine.begin() as conn:
        charge_service(conn, first.id, 1.0)  # 5.0: now b has had less
    served(engine, first)
    assert claim_order(engine, 1) == [(second.id, 0)]
    assert clock_of(engine, a) == pytest.approx(5.0)


def test_a_key_clock_counts_every_job_of_the_key(engine: Engine) -> None:
    """One clock per key and model: time charged to any of its jobs counts for all, and
    stays when the job it was charged to ends."""
    a, b = key(engine, "a"), key(engine, "b")
    one, two = new_job(engine, 4, owner=a), new_job(engine, 4, owner=a)
    other = new_job(engine, 4, owner=b)
    served(engine, one, two, clock=10.0)
    served(engine, other, clock=11.0)
    with engine.begin() as conn:
        charge_service(conn, one.id, 1.5)
        conn.execute(update(jobs).where(jobs.c.id == one.id).values(status="completed"))
    assert clock_of(engine, a) == pytest.approx(11.5)
    assert claim_order(engine, 1) == [(other.id, 0)], "b has had less than a's two jobs"


def test_a_new_key_starts_at_the_lowest_active_clock(engine: Engine) -> None:
    """A key that arrives is first in line (never served), and its first claim starts its
    clock at the lowest of the active keys': not at 0, which would give it every key's past
    time, nor at the highest. A key back after a while starts there too, its old clock
    forgotten; a key's new job changes nothing."""
    a, b, c = key(engine, "a"), key(engine, "b"), key(engine, "c")
    served(engine, new_job(engine, 4, owner=a), clock=50.0)
    served(engine, new_job(engine, 4, owner=b), clock=20.0)
    with engine.begin() as conn:
        conn.execute(key_clocks.insert().values(owner=c, runs_on="fake", clock_s=99.0))
    newcomer = new_job(engine, 4, owner=c)
    assert claim_order(engine, 1) == [(newcomer.id, 0)]
    assert clock_of(engine, c) == pytest.approx(20.0)
    another_of_a = new_job(engine, 2, owner=a)
    with engine.begin() as conn:
        stamp_served(conn, [another_of_a.id], fairness=FAIR)
    assert clock_of(engine, a) == pytest.approx(50.0)
    # Alone on the model, a key starts at 0.
    with engine.begin() as conn:
        conn.execute(update(jobs).values(status="completed"))
    alone = new_job(engine, 2, owner=b)
    assert claim_order(engine, 1) == [(alone.id, 0)]
    assert clock_of(engine, b) == 0.0


def test_a_chunk_charges_its_worker_time_to_its_key(engine: Engine) -> None:
    """At each window and in the transaction that ends the claim (hand-back or finish)."""
    big = new_job(engine, 10, chunk_size=10, text="y")

    def submit_small(call: int) -> None:
        if call == 1:
            time.sleep(0.05)
            new_job(engine, 1, text="z")

    driver = Driver(runner_for={"fake": FakeRunner(on_predict=submit_small)}.get, send=None)
    report = work_on_chunk(engine, settings(), big.id, 0, driver)
    assert report.outcome == ChunkOutcome.YIELDED, report.reason
    handed_back_at = clock_of(engine, None)
    assert handed_back_at is not None and 0.05 <= handed_back_at < 30
    report = work_on_chunk(engine, settings(), big.id, 0, driver)
    assert report.outcome == ChunkOutcome.DONE, report.reason
    assert report.worked_on is not None and report.worked_on[0] != big.id, "the small one"
    # Same key (no owner): the small one's finish charged the key's clock.
    small = clock_of(engine, None)
    assert small > handed_back_at


def test_chunks_ahead_answers_as_the_full_ranking_does(engine: Engine) -> None:
    # A lone job (the probe's 0), then others at every level, some claimed or drained,
    # an embedded job (never in the service's queue) and a job cancelled.
    a, b = key(engine, "a"), key(engine, "b")
    jobs_made = [new_job(engine, 6, owner=a)]
    with engine.begin() as conn:
        assert chunks_ahead(conn, jobs_made[0].id, "fake", FAIR) == 0
    jobs_made += [
        new_job(engine, 4, owner=b, priority=Priority.HIGH),
        new_job(engine, 2, owner=b),
        new_job(engine, 4, owner=a, priority=Priority.LOW),
        new_job(engine, 2, owner=b, driver=JobDriver.EMBEDDED),
        new_job(engine, 2, owner=a),
    ]
    with engine.begin() as conn:
        claim_fairest(conn, "fake", FAIR, lease_s=60, max_attempts=3)
        claim_fairest(conn, "fake", FAIR, lease_s=60, max_attempts=3)
        conn.execute(
            update(jobs)
            .where(jobs.c.id == jobs_made[-1].id)
            .values(status=JobStatus.CANCELLED.value)
        )
    seen = set()
    for _ in range(8):
        with engine.begin() as conn:
            for job in jobs_made:
                answer = chunks_ahead(conn, job.id, "fake", FAIR)
                ranked = ahead_of(job_ranks(conn, "fake", FAIR), job.id)  # no probe first
                assert answer == ranked, job.id
                seen.add(answer)
            claim_fairest(conn, "fake", FAIR, lease_s=60, max_attempts=3)
    assert len(seen) > 2, seen  # queues of several lengths were compared, not only zeros


@pytest.mark.parametrize("settled", ["done", "merged", "split"])
def test_a_settled_chunks_message_with_nothing_waiting_is_skipped_by_one_read(
    engine: Engine, settled: str
) -> None:
    # The messages of chunks another delivery took in a run (merged), scored (done) or
    # bisected (split) are most of a big job's: where no chunk of the model waits, one read
    # answers them, with no claiming transaction (no ranking, no lock, no write).
    job = new_job(engine, 6)
    with engine.begin() as conn:
        conn.execute(update(chunks).where(chunks.c.job_id == job.id).values(status=settled))
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        statements.append(statement)

    runner = FakeRunner()
    event.listen(engine, "before_cursor_execute", seen)
    try:
        report = work_on_chunk(engine, settings(), job.id, 1, {"fake": runner}.get)
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert (report.outcome, report.reason) == (ChunkOutcome.SKIPPED, "chunk already done")
    assert not runner.calls
    assert all(text.lstrip().upper().startswith("SELECT") for text in statements), statements
    assert not any("FOR UPDATE" in text.upper() for text in statements), statements
    assert len(statements) == 2, statements  # the delivery's state, and the probe

    # With a chunk of the model waiting, the same message is a token that claims it.
    other = new_job(engine, 2)
    token = work_on_chunk(engine, settings(), job.id, 1, {"fake": runner}.get)
    assert token.worked_on == (other.id, 0) and token.outcome == ChunkOutcome.DONE
