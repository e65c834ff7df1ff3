"""Schedule runs on the real PostgreSQL: windows, the claim, overlap, failures, source errors.

Jobs are scored in-process: the ``enqueue`` callable given to the runner calls
``engine.scoring.score_items`` with the tiny model, the same function the chunk task
calls, so a job completes without a broker. ``test_schedule_beat.py`` drives the same
rules through real Celery processes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import Engine, create_engine, func, select, text

from core.config import Settings
from core.jobs.deletion import delete_job
from core.jobs.lifecycle import Job, cancel_job, get_job, load_items, mark_failed
from core.jobs.priority import Priority
from core.jobs.purge import Cutoffs, purge
from core.jobs.results import iter_results
from core.keys import create_key
from core.migrate import upgrade
from core.models.registry import Registry
from core.schedules.config import Schedule, parse_schedules
from core.schedules.runner import RunOutcome, run_schedule, tick
from core.schedules.runs import RunStatus, get_run
from core.schedules.state import load_watermark
from core.tables import jobs, results
from engine.runners import Runner, build_runner
from engine.scoring import score_items

QUERY = (
    "SELECT id, body AS text, updated_at FROM reviews "
    "WHERE updated_at > COALESCE(:since, TIMESTAMPTZ '1970-01-01') ORDER BY id"
)
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
SETTINGS = Settings(chunk_size=2)


def due(day: int) -> datetime:
    return datetime(2025, 3, day, 2, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def registry(models_file: Path) -> Registry:
    return Registry.load(models_file)


@pytest.fixture(scope="module")
def tiny_runner(registry: Registry) -> Runner:
    runner = build_runner(registry.get("tiny"))
    runner.setup("cpu")
    return runner


@pytest.fixture()
def engine(pg_url: str) -> Iterator[Engine]:
    upgrade(pg_url)
    engine = create_engine(pg_url)
    yield engine
    engine.dispose()


@pytest.fixture()
def shop() -> Iterator[tuple[str, Engine]]:
    """A second database holding the user's ``reviews`` table."""
    from services import fresh_postgres_database

    with fresh_postgres_database() as url:
        shop_engine = create_engine(url)
        with shop_engine.begin() as conn:
            conn.execute(
                text("CREATE TABLE reviews (id int PRIMARY KEY, body text, updated_at timestamptz)")
            )
        add_reviews(shop_engine, {1: "great film", 2: "dull", 3: "loved it"}, T0)
        yield url, shop_engine
        shop_engine.dispose()


def add_reviews(shop_engine: Engine, bodies: dict[int, str], at: datetime) -> None:
    with shop_engine.begin() as conn:
        for offset, (review_id, body) in enumerate(bodies.items()):
            conn.execute(
                text(
                    "INSERT INTO reviews VALUES (:id, :body, :at) ON CONFLICT (id) "
                    "DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at"
                ),
                {"id": review_id, "body": body, "at": at + timedelta(seconds=offset)},
            )


def sql_schedule(registry: Registry, url: str, name: str = "nightly", **extra: Any) -> Schedule:
    entry = {"cron": "0 2 * * *", "model": "tiny", "source": "sql", "url": url, "query": QUERY}
    return parse_schedules({name: {**entry, "watermark": "updated_at", **extra}}, registry)[0]


def scorer(engine: Engine, runner: Runner) -> Callable[[Job, Sequence[int]], None]:
    """A ``send`` that scores the whole job here and now."""

    def enqueue(job: Job, _chunk_indexes: Sequence[int]) -> None:
        with engine.connect() as conn:
            indexed = load_items(conn, job.id, 0, job.total)
        score_items(engine, job.id, runner, indexed)

    return enqueue


def leave_queued(job: Job, _chunk_indexes: Sequence[int]) -> None:
    """A ``send`` whose job nobody works on (it stays queued)."""


def scored_ids(engine: Engine, job_id: str | None) -> list[str]:
    with engine.connect() as conn:
        query = select(results.c.item_id).where(results.c.job_id == job_id).order_by("index")
        return list(conn.scalars(query))


def job_count(engine: Engine, schedule: str) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).where(jobs.c.schedule == schedule)) or 0)


def run(engine: Engine, schedule: Schedule, at: datetime, enqueue: Any) -> RunOutcome:
    return run_schedule(engine, schedule, at, enqueue, settings=SETTINGS)


def test_each_run_scores_only_rows_new_or_changed_since_the_last_success(
    engine: Engine, shop: tuple[str, Engine], registry: Registry, tiny_runner: Runner
) -> None:
    url, shop_engine = shop
    nightly = sql_schedule(registry, url)
    score_here = scorer(engine, tiny_runner)

    first = run(engine, nightly, due(1), score_here)
    assert first.status == RunStatus.RUNNING and first.items == 3
    assert scored_ids(engine, first.job_id) == ["1", "2", "3"]
    with engine.connect() as conn:
        job = conn.execute(select(jobs).where(jobs.c.id == first.job_id)).one()
    assert (job.status, job.schedule, job.succeeded, job.owner_key_id) == (
        "completed",
        "nightly",
        3,
        None,
    )

    add_reviews(shop_engine, {4: "new one"}, T0 + timedelta(hours=1))
    add_reviews(shop_engine, {2: "dull, but the ending!"}, T0 + timedelta(hours=2))
    second = run(engine, nightly, due(2), score_here)
    assert scored_ids(engine, second.job_id) == ["2", "4"]  # only they, not 1 and 3 again
    with engine.connect() as conn:
        earlier = get_run(conn, first.run_id or 0)
        assert earlier is not None and earlier.status == RunStatus.COMPLETED
        # The committed watermark is the largest updated_at the first run saw.
        assert load_watermark(conn, "nightly") == {
            "type": "datetime",
            "value": (T0 + timedelta(seconds=2)).isoformat(),
        }

    third = run(engine, nightly, due(3), score_here)
    assert (third.status, third.job_id, third.items) == (RunStatus.EMPTY, None, 0)
    assert job_count(engine, "nightly") == 2
    with engine.connect() as conn:
        run_three = get_run(conn, third.run_id or 0)
    assert run_three is not None and run_three.finished_at is not None


def test_concurrent_triggers_of_one_due_time_create_one_job(
    engine: Engine, shop: tuple[str, Engine], registry: Registry
) -> None:
    nightly = sql_schedule(registry, shop[0])
    barrier = threading.Barrier(4)
    outcomes: list[RunOutcome] = []

    def trigger() -> None:
        barrier.wait()
        outcomes.append(run(engine, nightly, due(1), leave_queued))

    threads = [threading.Thread(target=trigger) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(str(outcome.status) for outcome in outcomes) == [
        "None",
        "None",
        "None",
        "running",
    ]
    assert job_count(engine, "nightly") == 1
    # The beat firing the same due time again later is just as harmless.
    assert run(engine, nightly, due(1), leave_queued).status is None
    assert job_count(engine, "nightly") == 1


def test_a_run_is_skipped_while_the_previous_job_is_still_going(
    engine: Engine, shop: tuple[str, Engine], registry: Registry, tiny_runner: Runner
) -> None:
    nightly = sql_schedule(registry, shop[0])
    first = run(engine, nightly, due(1), leave_queued)
    second = run(engine, nightly, due(2), scorer(engine, tiny_runner))
    assert second.status == RunStatus.SKIPPED and second.job_id is None
    assert f"its job {first.job_id} is queued" in (second.error or "")
    assert job_count(engine, "nightly") == 1

    # Once the first job completes, the next run goes ahead from its watermark.
    scorer(engine, tiny_runner)(_job(engine, first.job_id), [0])
    add_reviews(shop[1], {5: "late review"}, T0 + timedelta(days=1))
    third = run(engine, nightly, due(3), scorer(engine, tiny_runner))
    assert third.status == RunStatus.RUNNING
    assert scored_ids(engine, third.job_id) == ["5"]


def test_a_schedules_job_is_low_priority_unless_the_schedule_says_otherwise(
    engine: Engine, shop: tuple[str, Engine], registry: Registry
) -> None:
    nightly = sql_schedule(registry, shop[0])
    urgent = sql_schedule(registry, shop[0], name="urgent", priority="high")
    first = run(engine, nightly, due(1), leave_queued)
    second = run(engine, urgent, due(1), leave_queued)
    assert _job(engine, first.job_id).priority == Priority.LOW
    assert _job(engine, second.job_id).priority == Priority.HIGH


def _job(engine: Engine, job_id: str | None) -> Job:
    with engine.connect() as conn:
        job = get_job(conn, job_id or "")
    assert job is not None
    return job


@pytest.mark.parametrize("ending", ["failed", "cancelled"])
def test_a_failed_or_cancelled_run_leaves_the_next_run_the_same_window(
    engine: Engine, shop: tuple[str, Engine], registry: Registry, tiny_runner: Runner, ending: str
) -> None:
    url, shop_engine = shop
    nightly = sql_schedule(registry, url)
    score_here = scorer(engine, tiny_runner)
    assert run(engine, nightly, due(1), score_here).items == 3
    add_reviews(shop_engine, {4: "fourth"}, T0 + timedelta(hours=1))

    broken = run(engine, nightly, due(2), leave_queued)
    with engine.begin() as conn:
        if ending == "failed":
            mark_failed(conn, broken.job_id or "", "model failed to load")
        else:
            cancel_job(conn, broken.job_id or "")
    add_reviews(shop_engine, {5: "fifth"}, T0 + timedelta(hours=2))

    retry = run(engine, nightly, due(3), score_here)
    assert scored_ids(engine, retry.job_id) == ["4", "5"]  # 4 again, from the same watermark
    with engine.connect() as conn:
        failed, retried = get_run(conn, broken.run_id or 0), get_run(conn, retry.run_id or 0)
    assert failed is not None and retried is not None
    assert failed.status == RunStatus(ending)
    assert f"job {broken.job_id} " in (failed.error or "")
    assert "the next run reads the same window again" in (failed.error or "")
    assert retried.window_start == failed.window_start is not None


def test_source_errors_are_recorded_and_the_other_schedules_still_run(
    engine: Engine,
    shop: tuple[str, Engine],
    registry: Registry,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = shop[0]
    secret = "Sup3r-S3cret-pw"
    with_password = url.replace("postgres@", f"postgres:{secret}@")
    unreachable = with_password.rsplit("/", 1)[0].replace(":5432", ":1") + "/shop"
    bad_query = "SELECT id, body AS text, updated_at FROM no_such_table WHERE updated_at > :since"
    missing_folder = {
        "cron": "0 2 * * *",
        "model": "tiny",
        "source": "files",
        "path": str(tmp_path / "missing" / "*.txt"),
    }
    with engine.begin() as conn:
        key_id, _ = create_key(conn, "nightly-owner")
    schedules = [
        sql_schedule(registry, unreachable, name="a-unreachable"),
        sql_schedule(registry, with_password, name="b-bad-query", query=bad_query),
        parse_schedules({"c-no-folder": missing_folder}, registry)[0],
        sql_schedule(registry, url, name="d-good", owner_key="nightly-owner"),
    ]

    caplog.set_level(logging.INFO)
    ticked = tick(engine, schedules, leave_queued, now=due(1), settings=SETTINGS)
    outcomes = {outcome.schedule: outcome for outcome in ticked}

    assert [outcomes[name].status for name in sorted(outcomes)] == [
        RunStatus.FAILED,
        RunStatus.FAILED,
        RunStatus.FAILED,
        RunStatus.RUNNING,
    ]
    errors = {name: outcome.error or "" for name, outcome in outcomes.items()}
    assert (
        "cannot connect to postgresql+psycopg://postgres:***@127.0.0.1:1/shop"
        in errors["a-unreachable"]
    )
    assert "the query failed" in errors["b-bad-query"]
    assert 'relation "no_such_table" does not exist' in errors["b-bad-query"]
    assert "missing does not exist" in errors["c-no-folder"]
    assert all(secret not in error for error in errors.values())
    assert secret not in caplog.text
    # The run rows say the same, and the good schedule's job belongs to the configured key.
    with engine.connect() as conn:
        stored = get_run(conn, outcomes["b-bad-query"].run_id or 0)
        job_id = outcomes["d-good"].job_id
        owner = conn.scalar(select(jobs.c.owner_key_id).where(jobs.c.id == job_id))
    assert stored is not None and stored.error == errors["b-bad-query"]
    assert owner == key_id
    # The next tick at the same time finds every due time claimed: nothing runs twice.
    later = due(1) + timedelta(seconds=30)
    assert tick(engine, schedules, leave_queued, now=later, settings=SETTINGS) == []


def test_files_schedule_scores_only_new_files_and_the_new_rows_of_grown_ones(
    tmp_path: Path, registry: Registry, tiny_runner: Runner
) -> None:
    # On SQLite, the embedded database: the same rules hold there.
    url = f"sqlite:///{tmp_path / 'results.db'}"
    upgrade(url)
    engine = create_engine(url)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.txt").write_text("first\nsecond\n")
    (inbox / "b.jsonl").write_text('{"id": "x", "text": "third"}\n')
    drop = parse_schedules(
        {
            "drop": {
                "cron": "*/10 * * * *",
                "model": "tiny",
                "source": "files",
                "path": str(inbox / "*"),
            }
        },
        registry,
    )[0]
    score_here = scorer(engine, tiny_runner)
    try:
        first = run(engine, drop, due(1), score_here)
        assert scored_ids(engine, first.job_id) == ["a.txt:1", "a.txt:2", "b.jsonl:x"]
        assert run(engine, drop, due(2), score_here).status == RunStatus.EMPTY

        (inbox / "c.csv").write_text("id,text\nc1,fourth\n")
        with (inbox / "a.txt").open("a") as grown:  # appended: only the new line is scored
            grown.write("third line\n")
        third = run(engine, drop, due(3), score_here)
        assert scored_ids(engine, third.job_id) == ["a.txt:3", "c.csv:c1"]
        assert run(engine, drop, due(4), score_here).status == RunStatus.EMPTY

        # Rewritten (its first lines changed): read again whole; the result cache is what
        # spares the unchanged lines a forward pass.
        (inbox / "a.txt").write_text("FIRST\nsecond\nthird line\nfourth\n")
        fifth = run(engine, drop, due(5), score_here)
        assert scored_ids(engine, fifth.job_id) == ["a.txt:1", "a.txt:2", "a.txt:3", "a.txt:4"]
    finally:
        engine.dispose()


def test_a_parquet_schedule_carries_kept_columns_into_the_jobs_export(
    tmp_path: Path, engine: Engine, registry: Registry, tiny_runner: Runner
) -> None:
    inbox = tmp_path / "lake"
    inbox.mkdir()
    table = {"review_id": ["p1", "p2", "p3"], "body": ["great", "", "awful"]}
    pq.write_table(pa.table({**table, "shop": ["north", "south", None]}), inbox / "d1.parquet")
    lake = parse_schedules(
        {
            "lake": {
                "cron": "*/10 * * * *",
                "model": "tiny",
                "source": "parquet",
                "path": str(inbox / "*.parquet"),
                "text_column": "body",
                "id_column": "review_id",
                "keep_columns": ["shop"],
            }
        },
        registry,
    )[0]
    first = run(engine, lake, due(1), scorer(engine, tiny_runner))
    with engine.connect() as conn:
        rows = list(iter_results(conn, str(first.job_id), with_input=True))
    assert [(row["id"], row["metadata"], row["input"]) for row in rows] == [
        ("d1.parquet:p1", {"shop": "north"}, "great"),
        # The empty text: an intake error (its text is not stored), its kept column still is.
        ("d1.parquet:p2", {"shop": "south"}, None),
        ("d1.parquet:p3", None, "awful"),  # a null kept cell is left out
    ]
    assert rows[1]["error"] == "empty text" and rows[0]["label"] is not None
    assert run(engine, lake, due(2), scorer(engine, tiny_runner)).status == RunStatus.EMPTY


@pytest.mark.parametrize(
    "query, message",
    [
        (
            "WITH gone AS (DELETE FROM reviews RETURNING *) SELECT id, body AS text, updated_at "
            "FROM gone WHERE updated_at > COALESCE(:since, TIMESTAMPTZ '1970-01-01')",
            # PostgreSQL names the statement, SELECT, that holds the DELETE.
            "the query failed: cannot execute SELECT in a read-only transaction",
        ),
        (
            "SELECT id, body AS text, updated_at FROM reviews "
            "WHERE :since IS NULL OR updated_at > :since",
            "this is the first run, so :since is NULL; give it a type",
        ),
    ],
    ids=["data-modifying-cte", "untyped-first-run"],
)
def test_the_query_runs_read_only_and_errors_say_how_to_fix_them(
    engine: Engine, shop: tuple[str, Engine], registry: Registry, query: str, message: str
) -> None:
    url, shop_engine = shop
    outcome = run(engine, sql_schedule(registry, url, query=query), due(1), leave_queued)
    assert outcome.status == RunStatus.FAILED and message in (outcome.error or "")
    assert ("first run" in message) == ("first run" in (outcome.error or ""))
    with shop_engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM reviews")) == 3


def test_a_job_that_cannot_be_queued_is_removed_and_the_run_failed(
    engine: Engine, shop: tuple[str, Engine], registry: Registry
) -> None:
    broker = "redis://:broker-pw-123@127.0.0.1:6399/0"

    def broker_down(job: Job, _chunk_indexes: Sequence[int]) -> None:
        raise ConnectionError(f"Error 111 connecting to {broker}. Connection refused.")

    nightly = sql_schedule(registry, shop[0])
    settings = SETTINGS.model_copy(update={"broker_url": broker})
    failed = run_schedule(engine, nightly, due(1), broker_down, settings=settings)
    error = failed.error or ""
    assert failed.status == RunStatus.FAILED
    assert "could not queue job" in error and "redis://:***@127.0.0.1:6399/0" in error
    assert "broker-pw-123" not in error
    assert job_count(engine, "nightly") == 0  # no job left queued for ever
    # Nothing was committed: the next run reads the same rows.
    assert run(engine, nightly, due(2), leave_queued).items == 3


def test_a_schedule_keeps_its_window_after_its_old_jobs_are_purged_or_deleted(
    engine: Engine, shop: tuple[str, Engine], registry: Registry, tiny_runner: Runner
) -> None:
    url, shop_engine = shop
    nightly = sql_schedule(registry, url)
    score_here = scorer(engine, tiny_runner)
    first = run(engine, nightly, due(1), score_here)
    add_reviews(shop_engine, {4: "new one"}, T0 + timedelta(hours=1))
    second = run(engine, nightly, due(2), score_here)  # finishes the first run too
    assert scored_ids(engine, second.job_id) == ["4"]
    run(engine, nightly, due(3), score_here)  # finishes the second run (nothing new)

    # Every old job's inputs and results go; one job is deleted outright.
    ahead = datetime.now(UTC) + timedelta(minutes=1)
    report = purge(engine, Cutoffs(inputs_before=ahead, results_before=ahead))
    assert sorted(report.job_ids) == sorted([first.job_id, second.job_id])
    delete_job(engine, second.job_id or "")

    # The watermark and the runs are not job data: the next run scores only what is new.
    add_reviews(shop_engine, {5: "newer still"}, T0 + timedelta(hours=2))
    fourth = run(engine, nightly, due(4), score_here)
    assert fourth.status == RunStatus.RUNNING and scored_ids(engine, fourth.job_id) == ["5"]
    with engine.connect() as conn:
        first_run, second_run = get_run(conn, first.run_id or 0), get_run(conn, second.run_id or 0)
    assert first_run is not None and first_run.status == RunStatus.COMPLETED
    assert second_run is not None and second_run.status == RunStatus.COMPLETED
    assert second_run.job_id is None  # SET NULL: the run outlives its deleted job
