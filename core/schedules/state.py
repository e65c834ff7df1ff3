"""A schedule's committed state: the watermark of a sql source, the files seen by a file source.

The state moves only in :func:`commit_window`, which the run logic calls when a run's job
has completed (or, for a window with nothing to score, at once). Everything else only
reads it, so a failed or cancelled run leaves the next run the same window.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select

from core.clock import utcnow
from core.jobs.bulk_copy import dialect_insert
from core.schedules.config import Schedule, SourceKind
from core.schedules.sources.base import KnownFile
from core.tables import schedule_files, schedule_state

# Rows per INSERT when a run commits many files.
FILES_BATCH = 1000


def load_watermark(conn: Connection, schedule: str) -> Any:
    """The committed watermark (JSON), or None before the first success."""
    return conn.scalar(
        select(schedule_state.c.watermark).where(schedule_state.c.schedule == schedule)
    )


def load_files(conn: Connection, schedule: str) -> dict[str, KnownFile]:
    """The files the schedule has scored, by path."""
    query = select(
        schedule_files.c.path,
        schedule_files.c.size,
        schedule_files.c.mtime_ns,
        schedule_files.c.sha256,
        schedule_files.c.rows,
    ).where(schedule_files.c.schedule == schedule)
    return {
        path: KnownFile(size, mtime_ns, sha256, rows)
        for path, size, mtime_ns, sha256, rows in conn.execute(query)
    }


def _upsert(conn: Connection, table: Any, keys: list[str], update: list[str]) -> Any:
    statement = dialect_insert(conn, table)
    return statement.on_conflict_do_update(
        index_elements=keys, set_={name: statement.excluded[name] for name in update}
    )


def commit_window(conn: Connection, schedule: Schedule, end: Any) -> None:
    """Make a run's window end the schedule's committed state (call in a transaction).

    Args:
        conn: A connection inside the transaction that also finishes the run.
        schedule: The schedule (its source kind says what ``end`` holds).
        end: ``Window.end`` of the run: a watermark, or ``[[path, size, mtime_ns, sha256,
            rows], ...]`` (runs made before 0009 hold ``[path, size, mtime_ns]``).
    """
    now = utcnow()
    if schedule.source == SourceKind.SQL:
        if end is None:  # no row carried a watermark: nothing to move
            return
        conn.execute(
            _upsert(conn, schedule_state, ["schedule"], ["watermark", "updated_at"]),
            [{"schedule": schedule.name, "watermark": end, "updated_at": now}],
        )
        return
    rows = []
    for entry in end or []:
        known = KnownFile(*entry[1:])
        rows.append(
            {
                "schedule": schedule.name,
                "path": entry[0],
                "size": known.size,
                "mtime_ns": known.mtime_ns,
                "sha256": known.sha256,
                "rows": known.rows,
                "updated_at": now,
            }
        )
    statement = _upsert(
        conn,
        schedule_files,
        ["schedule", "path"],
        ["size", "mtime_ns", "sha256", "rows", "updated_at"],
    )
    for start in range(0, len(rows), FILES_BATCH):
        conn.execute(statement, rows[start : start + FILES_BATCH])
