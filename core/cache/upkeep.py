"""Keeping the result cache within its limits, and what ``bulkscore cache`` shows and clears.

Eviction deletes the oldest rows (by ``created_at``) in small batches, each its own short
transaction outside any scoring transaction, so it never holds a lock a writer waits for
long; on PostgreSQL the rows to delete are taken with ``SKIP LOCKED``, so a row a writer
holds is simply left for the next round.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, and_, delete, func, select, tuple_

from core.clock import utcnow
from core.jobs.bulk_copy import is_postgresql
from core.tables import result_cache

EVICT_BATCH = 1000
# Most batches one call deletes: a reconciler tick stays short; the next tick goes on.
EVICT_MAX_BATCHES = 50


@dataclass(frozen=True, slots=True)
class ModelStats:
    model: str
    revision: str
    rows: int
    oldest: datetime | None
    newest: datetime | None


@dataclass(frozen=True, slots=True)
class CacheStats:
    rows: int
    models: list[ModelStats]


def cache_stats(engine: Engine) -> CacheStats:
    """Rows in the cache, in all and per (model, revision)."""
    query = (
        select(
            result_cache.c.model,
            result_cache.c.model_revision,
            func.count(),
            func.min(result_cache.c.created_at),
            func.max(result_cache.c.created_at),
        )
        .group_by(result_cache.c.model, result_cache.c.model_revision)
        .order_by(result_cache.c.model, result_cache.c.model_revision)
    )
    with engine.connect() as conn:
        models = [ModelStats(*row) for row in conn.execute(query)]
    return CacheStats(rows=sum(m.rows for m in models), models=models)


def clear_cache(engine: Engine, model: str | None = None) -> int:
    """Delete every cached row, or those of ``model``; how many."""
    statement = delete(result_cache)
    if model is not None:
        statement = statement.where(result_cache.c.model == model)
    with engine.begin() as conn:
        return max(conn.execute(statement).rowcount, 0)


def evict(
    engine: Engine,
    *,
    max_rows: int,
    max_age_s: int,
    batch: int = EVICT_BATCH,
    max_batches: int = EVICT_MAX_BATCHES,
) -> int:
    """Delete rows older than ``max_age_s``, then the oldest beyond ``max_rows`` (0: no
    limit), at most ``batch`` rows per transaction; how many were deleted."""
    deleted = 0
    budget = max_batches
    if max_age_s:
        cutoff = utcnow() - timedelta(seconds=max_age_s)
        while budget:
            budget -= 1
            gone = _delete_oldest(engine, batch, older_than=cutoff)
            deleted += gone
            if gone < batch:
                break
    if max_rows:
        with engine.connect() as conn:
            excess = int(conn.scalar(select(func.count()).select_from(result_cache)) or 0)
        excess -= max_rows
        while excess > 0 and budget:
            budget -= 1
            gone = _delete_oldest(engine, min(batch, excess))
            if not gone:
                break
            deleted += gone
            excess -= gone
    return deleted


def _delete_oldest(engine: Engine, limit: int, older_than: datetime | None = None) -> int:
    key = tuple_(result_cache.c.model, result_cache.c.model_revision, result_cache.c.input_sha256)
    oldest = select(
        result_cache.c.model, result_cache.c.model_revision, result_cache.c.input_sha256
    )
    if older_than is not None:
        oldest = oldest.where(and_(result_cache.c.created_at < older_than))
    oldest = oldest.order_by(result_cache.c.created_at).limit(limit)
    with engine.begin() as conn:
        if is_postgresql(conn):
            oldest = oldest.with_for_update(skip_locked=True)
        return max(conn.execute(delete(result_cache).where(key.in_(oldest))).rowcount, 0)
