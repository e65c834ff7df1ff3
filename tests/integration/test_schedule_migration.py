"""Migration 0002 (schedules) goes up and down on its own, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, inspect

from core.migrate import downgrade, upgrade

SCHEDULE_TABLES = {"schedule_runs", "schedule_state", "schedule_files"}


def check_0002(url: str) -> None:
    upgrade(url)
    engine = create_engine(url)
    try:
        inspector = inspect(engine)
        assert set(inspector.get_table_names()) >= SCHEDULE_TABLES
        claim = [u["column_names"] for u in inspector.get_unique_constraints("schedule_runs")]
        assert ["schedule", "due_at"] in claim
        assert inspector.get_pk_constraint("schedule_files")["constrained_columns"] == [
            "schedule",
            "path",
        ]
        downgrade(url, "0001")
        left = set(inspect(engine).get_table_names())
        assert not SCHEDULE_TABLES & left
        assert {"jobs", "results", "api_keys"} <= left  # 0001's tables are untouched
        upgrade(url)
    finally:
        engine.dispose()


def test_0002_up_and_down_on_sqlite(tmp_path: Path) -> None:
    check_0002(f"sqlite:///{tmp_path / 'm.db'}")


def test_0002_up_and_down_on_postgresql(pg_url: str) -> None:
    check_0002(pg_url)
