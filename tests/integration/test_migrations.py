"""The migrations apply and revert cleanly on SQLite and on the real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, inspect

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
