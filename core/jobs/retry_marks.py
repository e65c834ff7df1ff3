"""Error rows marked for a retry, and the write that replaces them.

A retry (:mod:`core.jobs.requeue`) marks each error row to re-score with a row of
``retry_items`` and queues chunks over those indexes. Whatever scores a range (a chunk
task, a cross-job batch, ``bulkscore score``) treats a marked index as not yet scored,
and writes its new row with :func:`write_scored`, which replaces the error row instead of
skipping it as already written. The replacement is one transaction on the job's locked
row: the mark is deleted, then the error row, then the new row is inserted and the
counters move (``failed`` down by one, then up by one for the new row's kind). So:

- a crash before the commit leaves the mark and the old row; the next delivery does it;
- a delivery after the commit (a redelivered message, a second worker) finds no mark and
  writes nothing: never two rows, never none;
- the job completes only once no mark is left (:func:`core.jobs.results._advance_counters`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from sqlalchemy import Connection, and_, delete, or_, select, update

from core.jobs.result_rows import ResultRows
from core.jobs.results import WriteOutcome, lock_active_jobs, write_result_rows
from core.tables import jobs, results, retry_items


def pending_retries(conn: Connection, job_id: str, start: int, stop: int) -> set[int]:
    """Marked indexes of ``job_id`` in ``[start, stop)``: error rows waiting for a retry."""
    return pending_retries_many(conn, [(job_id, start, stop)]).get(job_id, set())


def pending_retries_many(
    conn: Connection, ranges: Sequence[tuple[str, int, int]]
) -> dict[str, set[int]]:
    """:func:`pending_retries` for several ``(job_id, start, stop)`` ranges in one query."""
    found: dict[str, set[int]] = {job_id: set() for job_id, _, _ in ranges}
    if not ranges:
        return found
    query = select(retry_items.c.job_id, retry_items.c.index).where(
        or_(
            *(
                and_(
                    retry_items.c.job_id == job_id,
                    retry_items.c.index >= start,
                    retry_items.c.index < stop,
                )
                for job_id, start, stop in ranges
            )
        )
    )
    for job_id, index in conn.execute(query):
        found[job_id].add(index)
    return found


def write_scored(
    conn: Connection,
    model: str,
    model_revision: str | None,
    rows: ResultRows,
    retrying: Mapping[str, Collection[int]],
) -> dict[str, WriteOutcome]:
    """:func:`core.jobs.results.write_result_rows`, where the rows of ``retrying`` indexes
    (marked when the caller read them) replace their error rows (:func:`replace_error_rows`).

    Returns the outcome of each job that has rows. Call inside a transaction.
    """
    marked = {job_id: set(indexes) for job_id, indexes in retrying.items() if indexes}
    again = (
        [
            position
            for position, (job_id, index) in enumerate(zip(rows.job_id, rows.index, strict=True))
            if job_id in marked and index in marked[job_id]
        ]
        if marked
        else []
    )
    if not again:  # the usual case: no row waits for a retry
        return write_result_rows(conn, model, model_revision, rows)
    replacing = set(again)
    fresh = rows.only(position for position in range(len(rows)) if position not in replacing)
    written = write_result_rows(conn, model, model_revision, fresh) if len(fresh) else {}
    replaced = replace_error_rows(conn, model, model_revision, rows.only(again))
    outcomes = {}
    for job_id in set(rows.job_id):
        first = written.get(job_id, WriteOutcome(0, 0))
        second = replaced.get(job_id, WriteOutcome(0, 0))
        outcomes[job_id] = WriteOutcome(
            succeeded=first.succeeded + second.succeeded,
            failed=first.failed + second.failed,
            refused=first.refused or second.refused,
        )
    return outcomes


def replace_error_rows(
    conn: Connection, model: str, model_revision: str | None, rows: ResultRows
) -> dict[str, WriteOutcome]:
    """Replace each still-marked error row of ``rows`` by its new row.

    The jobs' rows are locked first, as for every result write; a job no longer active is
    ``refused`` (its marks and error rows stay). Indexes whose mark is gone (replaced by
    another delivery already) are left alone. Call inside a transaction.
    """
    active = lock_active_jobs(conn, set(rows.job_id))
    outcomes: dict[str, WriteOutcome] = {}
    for job_id in sorted(set(rows.job_id)):
        if job_id not in active:
            outcomes[job_id] = WriteOutcome(0, 0, refused=True)
            continue
        positions = [i for i, owner in enumerate(rows.job_id) if owner == job_id]
        claimed = set(
            conn.scalars(
                delete(retry_items)
                .where(
                    and_(
                        retry_items.c.job_id == job_id,
                        retry_items.c.index.in_([rows.index[i] for i in positions]),
                    )
                )
                .returning(retry_items.c.index)
            )
        )
        if not claimed:
            outcomes[job_id] = WriteOutcome(0, 0)
            continue
        removed = conn.scalars(
            delete(results)
            .where(
                and_(
                    results.c.job_id == job_id,
                    results.c.index.in_(sorted(claimed)),
                    results.c.error.is_not(None),
                )
            )
            .returning(results.c.index)
        ).all()
        if removed:
            conn.execute(
                update(jobs).where(jobs.c.id == job_id).values(failed=jobs.c.failed - len(removed))
            )
        # The new rows go in as any write does, and move the counters back up; with the
        # job's last mark deleted above, this is the write that completes it.
        new_rows = rows.only(i for i in positions if rows.index[i] in claimed)
        outcomes[job_id] = write_result_rows(conn, model, model_revision, new_rows).get(
            job_id, WriteOutcome(0, 0)
        )
    return outcomes
