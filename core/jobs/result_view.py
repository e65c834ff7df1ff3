"""Results as the web job page shows them: filtered, paged in SQL, with each input's text.

A page of a 100,000-item job reads one page of rows by keyset (``index > after``) on the
results' primary key, never the whole job; each input's text is cut in SQL to what a table
cell shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, func, select

from core.tables import items, results

# Characters of an input's text a results row shows (the full text stays in the export).
TEXT_PREVIEW_CHARS = 300


@dataclass(frozen=True, slots=True)
class ResultFilter:
    """What the results table narrows to; None or False: no narrowing."""

    label: str | None = None
    errors_only: bool = False
    score_below: float | None = None


def filtered_page(
    conn: Connection, job_id: str, result_filter: ResultFilter, after: int = -1, limit: int = 50
) -> list[dict[str, Any]]:
    """Up to ``limit`` rows with ``index > after`` that pass the filter, in index order.

    Each row has the result's fields and ``text``: its input's text, cut to
    :data:`TEXT_PREVIEW_CHARS` (None for an image input).
    """
    conditions = [results.c.job_id == job_id, results.c.index > after]
    if result_filter.label is not None:
        conditions.append(results.c.label == result_filter.label)
    if result_filter.errors_only:
        conditions.append(results.c.error.is_not(None))
    if result_filter.score_below is not None:
        conditions.append(results.c.score < result_filter.score_below)
    # The page of results first (keyset on their primary key, LIMIT), then the texts of
    # just those rows: a join before the LIMIT may let the planner hash every item of the job.
    page = (
        select(
            results.c.job_id,
            results.c.index,
            results.c.item_id,
            results.c.label,
            results.c.score,
            results.c.top_k,
            results.c.error,
        )
        .where(and_(*conditions))
        .order_by(results.c.index)
        .limit(limit)
        .subquery("page")
    )
    query = (
        select(
            page.c.index,
            page.c.item_id,
            page.c.label,
            page.c.score,
            page.c.top_k,
            page.c.error,
            func.substr(items.c.text, 1, TEXT_PREVIEW_CHARS).label("text"),
        )
        .select_from(
            page.outerjoin(
                items, and_(items.c.job_id == page.c.job_id, items.c.index == page.c.index)
            )
        )
        .order_by(page.c.index)
    )
    return [
        {
            "index": row.index,
            "id": row.item_id,
            "label": row.label,
            "score": row.score,
            "top_k": row.top_k,
            "error": row.error,
            "text": row.text,
        }
        for row in conn.execute(query)
    ]


def item_image(conn: Connection, job_id: str, index: int) -> bytes | None:
    """The stored bytes of an image input, or None (no such item, or a text item)."""
    data = conn.scalar(
        select(items.c.data).where(and_(items.c.job_id == job_id, items.c.index == index))
    )
    return bytes(data) if data is not None else None
