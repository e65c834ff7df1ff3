"""The migrations apply and revert cleanly on SQLite and on the real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, inspect, text

from core.migrate import downgrade, upgrade
from core.tables import metadata

TABLES = {
    "api_keys",
    "jobs",
    "items",
    "chunks",
    "results",
    "schedule_runs",
    "schedule_state",
    "schedule_files",
    "trained_models",
    "training_runs",
    "result_cache",
    "purge_runs",
}


def check_round_trip(url: str) -> None:
    upgrade(url)
    engine = create_engine(url)
    try:
        inspector = inspect(engine)
        assert set(inspector.get_table_names()) >= TABLES
        for table in metadata.tables.values():
            columns = {c["name"] for c in inspector.get_columns(table.name)}
            assert columns == {c.name for c in table.columns}, table.name
        pk = inspector.get_pk_constraint("results")["constrained_columns"]
        assert pk == ["job_id", "index"]
        downgrade(url, "base")
        assert not TABLES & set(inspect(engine).get_table_names())
        upgrade(url)  # and back up again: downgrade left nothing behind that blocks it
    finally:
        engine.dispose()


def test_sqlite_round_trip(tmp_path: Path) -> None:
    check_round_trip(f"sqlite:///{tmp_path / 'm.db'}")


def test_postgresql_round_trip(pg_url: str) -> None:
    check_round_trip(pg_url)


def test_0005_gives_each_trained_version_its_training_jobs_owner(pg_url: str) -> None:
    upgrade(pg_url, "0004")
    engine = create_engine(pg_url)
    now = "2026-12-01T00:00:00+00:00"
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO api_keys (id, name, key_hash, prefix, created_at) "
                    "VALUES (7, 'alice', 'h', 'p', :now)"
                ),
                {"now": now},
            )
            for job_id, owner in (("by-alice", 7), ("by-operator", None)):
                conn.execute(
                    text(
                        "INSERT INTO jobs (id, model, input_kind, status, total, succeeded, "
                        "failed, owner_key_id, created_at) VALUES (:id, 'm', 'text', "
                        "'completed', 1, 1, 0, :owner, :now)"
                    ),
                    {"id": job_id, "owner": owner, "now": now},
                )
            # A training job still running on its base: it gets a queued chunk to resume.
            conn.execute(
                text(
                    "INSERT INTO jobs (id, model, input_kind, status, total, succeeded, "
                    "failed, created_at) VALUES ('training', 'm', 'text', 'running', 9, 0, 0, "
                    ":now)"
                ),
                {"now": now},
            )
            conn.execute(
                text(
                    "INSERT INTO training_runs (job_id, name, base, data_format, "
                    "holdout_fraction, seed, created_at) VALUES ('training', 'm', 'base', "
                    "'csv', 0.2, 0, :now)"
                ),
                {"now": now},
            )
            for version, job_id in ((1, "by-alice"), (2, "by-operator"), (3, None)):
                conn.execute(
                    text(
                        "INSERT INTO trained_models (name, version, base, task, input_kind, "
                        "labels, metrics, head, head_sha256, job_id, created_at) VALUES "
                        "('m', :v, 'b', 't', 'text', '[]', '{}', '\\x00', 'h', :job, :now)"
                    ),
                    {"v": version, "job": job_id, "now": now},
                )
        upgrade(pg_url, "0005")
        with engine.connect() as conn:
            owners = conn.execute(
                text("SELECT version, owner_key_id FROM trained_models ORDER BY version")
            ).all()
            runs_on = conn.execute(text("SELECT id, runs_on FROM jobs ORDER BY id")).all()
        assert [tuple(row) for row in owners] == [(1, 7), (2, None), (3, None)]
        # Scoring jobs (no training run) run on their own model.
        assert [tuple(row) for row in runs_on] == [
            ("by-alice", "m"),
            ("by-operator", "m"),
            ("training", "base"),
        ]
        with engine.connect() as conn:
            added = conn.execute(
                text('SELECT job_id, "index", start, stop, status FROM chunks')
            ).all()
        assert [tuple(row) for row in added] == [("training", 0, 0, 1, "queued")]
        downgrade(pg_url, "0004")
        with engine.connect() as conn:
            assert "owner_key_id" not in {
                c["name"] for c in inspect(conn).get_columns("trained_models")
            }
    finally:
        engine.dispose()


def test_0006_down_turns_expired_jobs_into_cancelled_ones(pg_url: str) -> None:
    upgrade(pg_url, "0006")
    engine = create_engine(pg_url)
    try:
        with engine.begin() as conn:
            for job_id, status in (("a" * 32, "expired"), ("b" * 32, "queued")):
                conn.execute(
                    text(
                        "INSERT INTO jobs (id, model, input_kind, status, total, succeeded, "
                        "failed, created_at, driver, runs_on, expires_at) VALUES (:id, 'm', "
                        "'text', :status, 1, 0, 0, now(), 'service', 'm', now())"
                    ),
                    {"id": job_id, "status": status},
                )
        downgrade(pg_url, "0005")
        assert "expires_at" not in {c["name"] for c in inspect(engine).get_columns("jobs")}
        with engine.connect() as conn:
            statuses = dict(conn.execute(text("SELECT id, status FROM jobs ORDER BY id")).all())
        # Versions before 0006 know no "expired": the final state with the same meaning.
        assert statuses == {"a" * 32: "cancelled", "b" * 32: "queued"}
        upgrade(pg_url)
    finally:
        engine.dispose()
