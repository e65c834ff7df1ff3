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

from core.jobs.results import ScoredItem, WriteOutcome, lock_active_jobs, write_job_results
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
    scored_by_job: Mapping[str, Sequence[ScoredItem]],
    retrying: Mapping[str, Collection[int]],
) -> dict[str, WriteOutcome]:
    """:func:`core.jobs.results.write_job_results`, where the rows of ``retrying`` indexes
    (marked when the caller read them) replace their error rows (:func:`replace_error_rows`).

    Call inside a transaction.
    """
    fresh: dict[str, list[ScoredItem]] = {}
    again: dict[str, list[ScoredItem]] = {}
    for job_id, rows in scored_by_job.items():
        marked = retrying.get(job_id)
        if not marked:  # the usual case: no row of the job waits for a retry
            if rows:
                fresh[job_id] = list(rows)
            continue
        for row in rows:
            (again if row.index in marked else fresh).setdefault(job_id, []).append(row)
    written = write_job_results(conn, model, model_revision, fresh) if fresh else {}
    replaced = replace_error_rows(conn, model, model_revision, again) if again else {}
    outcomes = {}
    for job_id in scored_by_job:
        first = written.get(job_id, WriteOutcome(0, 0))
        second = replaced.get(job_id, WriteOutcome(0, 0))
        outcomes[job_id] = WriteOutcome(
            succeeded=first.succeeded + second.succeeded,
            failed=first.failed + second.failed,
            refused=first.refused or second.refused,
        )
    return outcomes


def replace_error_rows(
    conn: Connection,
    model: str,
    model_revision: str | None,
    scored_by_job: Mapping[str, Sequence[ScoredItem]],
) -> dict[str, WriteOutcome]:
    """Replace each still-marked error row of ``scored_by_job`` by its new row.

    The jobs' rows are locked first, as for every result write; a job no longer active is
    ``refused`` (its marks and error rows stay). Indexes whose mark is gone (replaced by
    another delivery already) are left alone. Call inside a transaction.
    """
    active = lock_active_jobs(conn, scored_by_job)
    outcomes: dict[str, WriteOutcome] = {}
    for job_id, rows in sorted(scored_by_job.items()):
        if job_id not in active:
            outcomes[job_id] = WriteOutcome(0, 0, refused=True)
            continue
        claimed = set(
            conn.scalars(
                delete(retry_items)
                .where(
                    and_(
                        retry_items.c.job_id == job_id,
                        retry_items.c.index.in_([row.index for row in rows]),
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
        new_rows = [row for row in rows if row.index in claimed]
        outcomes[job_id] = write_job_results(conn, model, model_revision, {job_id: new_rows})[
            job_id
        ]
    return outcomes
