"""The chunk table as unit tests read and age it (SQLite or PostgreSQL alike)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Engine, select, update

from core.clock import utcnow
from core.tables import chunks


def chunk_table(engine: Engine, job_id: str) -> list[tuple[int, int, int, str, int]]:
    """``(index, start, stop, status, attempts)`` of every chunk of ``job_id``, by index."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                chunks.c.index, chunks.c.start, chunks.c.stop, chunks.c.status, chunks.c.attempts
            )
            .where(chunks.c.job_id == job_id)
            .order_by(chunks.c.index)
        )
        return [tuple(row) for row in rows]


def expire(engine: Engine, job_id: str, index: int) -> None:
    """The worker holding the chunk died: its lease is in the past."""
    with engine.begin() as conn:
        conn.execute(
            update(chunks)
            .where(chunks.c.job_id == job_id, chunks.c.index == index)
            .values(leased_until=utcnow() - timedelta(seconds=1))
        )
