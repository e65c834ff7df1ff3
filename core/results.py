"""Writing and reading the results table.

Each write is one transaction: the batch's rows (a multi-row INSERT that skips rows already
present) and the job's counters move together, so a retried or duplicated batch can neither
write a row twice nor count it twice, and the job turns ``completed`` in the very
transaction that writes its last row.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, case, select, update
from sqlalchemy.dialects import postgresql, sqlite

from core.clock import utcnow
from core.predictions import Prediction
from core.status import JobStatus
from core.tables import jobs, results


@dataclass(frozen=True, slots=True)
class ScoredItem:
    index: int
    item_id: str
    prediction: Prediction


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    succeeded: int
    failed: int

    @property
    def written(self) -> int:
        return self.succeeded + self.failed


def _insert_skipping_existing(conn: Connection) -> Any:
    dialect = conn.dialect.name
    if dialect == "postgresql":
        statement = postgresql.insert(results)
    elif dialect == "sqlite":
        statement = sqlite.insert(results)
    else:  # pragma: no cover - only the two supported databases reach here
        raise RuntimeError(f"unsupported database dialect {dialect!r}")
    return statement.on_conflict_do_nothing(index_elements=["job_id", "index"]).returning(
        results.c.error
    )


def write_results(
    conn: Connection,
    job_id: str,
    model: str,
    model_revision: str | None,
    scored: Sequence[ScoredItem],
) -> WriteOutcome:
    """Insert ``scored`` rows not yet present and advance the job's counters, atomically.

    Call inside a transaction (``engine.begin()``).
    """
    if not scored:
        return WriteOutcome(0, 0)
    now = utcnow()
    rows = [
        {
            "job_id": job_id,
            "index": item.index,
            "item_id": item.item_id,
            "label": item.prediction.label,
            "score": item.prediction.score,
            "top_k": [list(pair) for pair in item.prediction.top_k] or None,
            "error": item.prediction.error,
            "model": model,
            "model_revision": model_revision,
            "created_at": now,
        }
        for item in scored
    ]
    inserted = conn.execute(_insert_skipping_existing(conn), rows).all()
    failed = sum(1 for row in inserted if row.error is not None)
    outcome = WriteOutcome(succeeded=len(inserted) - failed, failed=failed)
    if outcome.written:
        _advance_counters(conn, job_id, outcome)
    return outcome


def _advance_counters(conn: Connection, job_id: str, outcome: WriteOutcome) -> None:
    now = utcnow()
    done_after = jobs.c.succeeded + jobs.c.failed + outcome.written
    finishes = and_(
        done_after >= jobs.c.total,
        jobs.c.status.in_([JobStatus.QUEUED.value, JobStatus.RUNNING.value]),
    )
    conn.execute(
        update(jobs)
        .where(jobs.c.id == job_id)
        .values(
            succeeded=jobs.c.succeeded + outcome.succeeded,
            failed=jobs.c.failed + outcome.failed,
            status=case((finishes, JobStatus.COMPLETED.value), else_=jobs.c.status),
            started_at=case((jobs.c.started_at.is_(None), now), else_=jobs.c.started_at),
            finished_at=case((finishes, now), else_=jobs.c.finished_at),
        )
    )


def scored_indexes(conn: Connection, job_id: str, start: int, stop: int) -> set[int]:
    """Indexes in ``[start, stop)`` that already have a result row."""
    query = select(results.c.index).where(
        and_(results.c.job_id == job_id, results.c.index >= start, results.c.index < stop)
    )
    return set(conn.scalars(query))


RESULT_COLUMNS = ("index", "id", "label", "score", "top_k", "error")


def _as_dict(row: Any) -> dict[str, Any]:
    return {
        "index": row.index,
        "id": row.item_id,
        "label": row.label,
        "score": row.score,
        "top_k": row.top_k,
        "error": row.error,
    }


def _page_query(job_id: str, after: int, limit: int) -> Any:
    return (
        select(
            results.c.index,
            results.c.item_id,
            results.c.label,
            results.c.score,
            results.c.top_k,
            results.c.error,
        )
        .where(and_(results.c.job_id == job_id, results.c.index > after))
        .order_by(results.c.index)
        .limit(limit)
    )


def read_page(
    conn: Connection, job_id: str, after: int = -1, limit: int = 100
) -> list[dict[str, Any]]:
    """Up to ``limit`` result rows with ``index > after``, in index order."""
    return [_as_dict(row) for row in conn.execute(_page_query(job_id, after, limit))]


def iter_results(conn: Connection, job_id: str, page_size: int = 5000) -> Iterator[dict[str, Any]]:
    """Every result row of a job in index order, read a page at a time (keyset paging)."""
    after = -1
    while True:
        page = read_page(conn, job_id, after, page_size)
        yield from page
        if len(page) < page_size:
            return
        after = page[-1]["index"]


def label_counts(conn: Connection, job_id: str) -> dict[str, int]:
    """How many results of the job got each label (per-item errors are not counted)."""
    from sqlalchemy import func

    query = (
        select(results.c.label, func.count())
        .where(and_(results.c.job_id == job_id, results.c.label.is_not(None)))
        .group_by(results.c.label)
        .order_by(func.count().desc())
    )
    return {label: count for label, count in conn.execute(query)}
