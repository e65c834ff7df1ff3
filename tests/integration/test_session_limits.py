"""Every PostgreSQL session bulkscore opens bounds how long it can sit in a transaction and
wait for a lock, by role, on a real server (the frozen worker itself is scenario 7b of
``test_faults.py``)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from api_support import FakeJobQueue, bearer, serve, write_api_models_file
from sqlalchemy import Connection, Engine, func, select, text
from sqlalchemy.exc import DBAPIError

from core import db
from core.config import Settings
from core.db import DbRole, SessionLimits, get_engine, set_process_role
from core.inputs.items import InputItem
from core.jobs.lifecycle import Job, create_job, get_job
from core.jobs.predictions import Prediction
from core.jobs.results import ScoredItem, iter_results, stream_results, write_results
from core.jobs.status import JobStatus
from core.migrate import upgrade
from core.models.registry import ModelSpec
from core.tables import jobs

SPEC = ModelSpec(name="m", task="text-classification", backend="transformers", source="/x")


def engine_for(url: str, role: DbRole, **limits: int) -> Engine:
    return get_engine(url, SessionLimits.for_role(role, Settings(**limits)))


def new_job(engine: Engine, count: int) -> Job:
    inputs = [InputItem(item_id=f"r{i}", text=f"text {i}") for i in range(count)]
    with engine.begin() as conn:
        return create_job(conn, SPEC, inputs, chunk_size=count)


@contextmanager
def holding_job_row(engine: Engine, job_id: str) -> Iterator[Connection]:
    """A transaction that holds the job's row (as a write or a cancel in progress does)."""
    with engine.connect() as conn, conn.begin():
        conn.execute(select(jobs.c.id).where(jobs.c.id == job_id).with_for_update())
        yield conn


@pytest.mark.parametrize("role", list(DbRole))
def test_each_role_s_sessions_set_its_limits_and_name_themselves(pg_url: str, role: DbRole) -> None:
    limits = dict(
        db_idle_in_transaction_timeout_s=7,
        api_db_lock_timeout_s=2,
        worker_db_lock_timeout_s=11,
        beat_db_lock_timeout_s=13,
        cli_db_lock_timeout_s=17,
    )
    expected_lock = {DbRole.API: 2, DbRole.WORKER: 11, DbRole.BEAT: 13, DbRole.CLI: 17}[role]
    engine = engine_for(pg_url, role, **limits)
    # Twice: the settings hold after a transaction is rolled back and the connection reused.
    for _ in range(2):
        with engine.connect() as conn:
            assert conn.scalar(text("SHOW lock_timeout")) == f"{expected_lock}s"
            assert conn.scalar(text("SHOW idle_in_transaction_session_timeout")) == "7s"
            assert conn.scalar(text("SHOW application_name")) == f"bulkscore-{role}-{os.getpid()}"
            conn.rollback()


def test_the_server_ends_a_session_frozen_in_its_transaction_and_frees_its_rows(
    pg_url: str,
) -> None:
    upgrade(pg_url)
    frozen_engine = engine_for(pg_url, DbRole.WORKER, db_idle_in_transaction_timeout_s=1)
    other = engine_for(pg_url, DbRole.WORKER)
    job = new_job(other, 3)
    with frozen_engine.connect() as frozen:
        frozen.begin()
        frozen.execute(select(jobs.c.id).where(jobs.c.id == job.id).with_for_update())
        time.sleep(2.5)  # "frozen": inside the transaction, sending nothing
        started = time.monotonic()
        with holding_job_row(other, job.id):
            waited = time.monotonic() - started
        assert waited < 1.0, f"the row was still held {waited:.1f}s after the timeout"
        # When it wakes up, its session is gone: what it did in it never commits.
        with pytest.raises(DBAPIError, match="idle-in-transaction timeout"):
            frozen.execute(text("SELECT 1"))


def test_an_api_request_behind_a_held_row_answers_503_after_its_lock_timeout(
    pg_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    upgrade(pg_url)
    settings = Settings(
        database_url=pg_url,
        models=write_api_models_file(tmp_path_factory.mktemp("models") / "models.toml"),
        api_db_lock_timeout_s=1,
    )
    with serve(settings, FakeJobQueue()) as api:
        job_id = api.post_job(["a", "b"]).json()["id"]
        holder = engine_for(pg_url, DbRole.WORKER)
        with holding_job_row(holder, job_id):
            started = time.monotonic()
            answer = api.client.post(f"/v1/jobs/{job_id}/cancel", headers=bearer(api.key))
            elapsed = time.monotonic() - started
        assert answer.status_code == 503, answer.text
        assert answer.headers["Retry-After"] == "1"
        assert "locked by another process" in answer.json()["detail"]
        assert 1.0 <= elapsed < 4.0, elapsed
        with holder.connect() as conn:
            assert conn.scalar(select(jobs.c.status).where(jobs.c.id == job_id)) == "queued"
        # The row free again, the same request goes through.
        retried = api.client.post(f"/v1/jobs/{job_id}/cancel", headers=bearer(api.key))
        assert retried.status_code == 200 and retried.json()["status"] == "cancelled"


def test_a_slow_export_holds_no_transaction_open_between_pages(pg_url: str) -> None:
    upgrade(pg_url)
    engine = engine_for(pg_url, DbRole.API, db_idle_in_transaction_timeout_s=1)
    job = new_job(engine, 12)
    with engine.begin() as conn:
        write_results(
            conn,
            job.id,
            "m",
            None,
            [ScoredItem(i, f"r{i}", Prediction(label="x", score=1.0)) for i in range(12)],
        )

    def read_slowly(rows: Iterator[dict[str, object]]) -> list[object]:
        seen = []
        for row in rows:
            seen.append(row["index"])
            if len(seen) == 5:  # a client that stops reading for a while, mid-export
                time.sleep(2.0)
        return seen

    assert read_slowly(stream_results(engine, job.id, page_size=5)) == list(range(12))
    # What it guards against: one transaction across pages is ended by the server.
    with engine.connect() as conn, pytest.raises(DBAPIError, match="idle-in-transaction"):
        read_slowly(iter_results(conn, job.id, page_size=5))
    with engine.connect() as conn:
        final = get_job(conn, job.id)
        assert final is not None and final.status == JobStatus.COMPLETED
        assert conn.scalar(select(func.count()).select_from(jobs)) == 1


def test_a_migration_waits_a_bounded_time_for_its_locks(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    upgrade(pg_url)
    # `bulkscore db upgrade` is a CLI process; the process role is restored after the test.
    monkeypatch.setattr(db, "_process_limits", [])
    set_process_role(DbRole.CLI, Settings(cli_db_lock_timeout_s=1))
    holder = engine_for(pg_url, DbRole.WORKER)
    with holder.connect() as conn, conn.begin():
        conn.execute(text("LOCK TABLE alembic_version IN ACCESS EXCLUSIVE MODE"))
        started = time.monotonic()
        with pytest.raises(DBAPIError, match="lock timeout"):
            upgrade(pg_url)
        assert time.monotonic() - started < 5


def test_an_api_process_that_stalled_in_a_transaction_answers_503_not_500(
    pg_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # The API process froze inside a request's transaction and the server ended its session
    # (idle_in_transaction_session_timeout). When it wakes, the driver raises 25P03, which
    # SQLAlchemy reports as an InternalError: the client gets a 503 to retry, never a 500.
    upgrade(pg_url)
    settings = Settings(
        database_url=pg_url,
        models=write_api_models_file(tmp_path_factory.mktemp("models") / "models.toml"),
        db_idle_in_transaction_timeout_s=1,
    )
    with serve(settings, FakeJobQueue()) as api:
        app = api.client.app
        engine = app.state.engine  # type: ignore[attr-defined]

        @app.get("/test/stall")  # type: ignore[attr-defined,untyped-decorator]
        def stall() -> dict[str, int]:
            with engine.connect() as conn:
                conn.begin()
                conn.execute(text("SELECT 1"))
                time.sleep(2.5)  # longer than the idle-in-transaction timeout
                conn.execute(text("SELECT 1"))
            return {"ok": 1}

        answer = api.client.get("/test/stall")
        assert answer.status_code == 503, answer.text
        assert answer.headers["Retry-After"] == "1"
        assert "session was ended" in answer.json()["detail"]
