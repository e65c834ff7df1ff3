"""Writing and reading the results table.

Each write is one transaction: it first takes the job's row and checks that the job is
still active, then the batch's rows (``COPY`` on PostgreSQL, a multi-row INSERT on SQLite,
both skipping rows already present) and the job's counters move together. So a retried or
duplicated batch can neither write a row twice nor count it twice, the job turns
``completed`` in the very transaction that writes its last row, and once a job is final
(cancelled, expired, completed, failed) no write moves its numbers again; a write that
finds its job past its deadline expires it instead of writing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Text,
    and_,
    bindparam,
    case,
    cast,
    exists,
    func,
    or_,
    select,
    update,
)

from core.clock import utcnow
from core.jobs.bulk_copy import is_postgresql, move_staged, stage_rows
from core.jobs.expiry import expire_job
from core.jobs.pairs_json import COMPACT_SEPARATORS, DEFAULT_SEPARATORS, PairsJson
from core.jobs.predictions import Prediction
from core.jobs.result_rows import ResultRows
from core.jobs.sqlite_rows import insert_columns
from core.jobs.status import ACTIVE_JOB_STATES, JobStatus
from core.tables import items, jobs, results, retry_items


@dataclass(frozen=True, slots=True)
class ScoredItem:
    index: int
    item_id: str
    prediction: Prediction
    # The prediction came from the result cache (core.cache), not a forward pass.
    cached: bool = False


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    succeeded: int
    failed: int
    # The job was no longer active (cancelled, completed, failed, deleted) when the write
    # took its row: nothing was written for it, and nothing will be.
    refused: bool = False

    @property
    def written(self) -> int:
        return self.succeeded + self.failed


RESULT_ROW_COLUMNS = (
    "job_id",
    "index",
    "item_id",
    "label",
    "score",
    "top_k",
    "error",
    "model",
    "model_revision",
    "created_at",
    "cached",
)


def _stage_rows(conn: Connection, columns: list[Sequence[Any]]) -> None:
    """PostgreSQL: ``COPY`` the rows (``RESULT_ROW_COLUMNS`` order, column by column, top-k
    as JSON text) into the session's staging table, before any job row is locked
    (:func:`core.jobs.bulk_copy.stage_rows`)."""
    stage_rows(conn, results, RESULT_ROW_COLUMNS, zip(*columns, strict=True))


def _insert_new_rows(
    conn: Connection, columns: list[Sequence[Any]], active: set[str]
) -> list[tuple[str, Any]]:
    """Insert the rows of ``active`` jobs not yet present; (job_id, error) of each.

    On PostgreSQL the rows were staged already (:func:`_stage_rows`); this moves them.
    """
    if is_postgresql(conn):
        moved = move_staged(
            conn,
            results,
            RESULT_ROW_COLUMNS,
            conflict=("job_id", "index"),
            returning=("job_id", "error"),
            only=("job_id", sorted(active)),
        )
        return [(job_id, error) for job_id, error in moved]
    if conn.dialect.name != "sqlite":  # pragma: no cover - only the two supported databases
        raise RuntimeError(f"unsupported database dialect {conn.dialect.name!r}")
    job_ids = columns[0]
    if not all(job_id in active for job_id in set(job_ids)):
        keep = [i for i, job_id in enumerate(job_ids) if job_id in active]
        columns = [[column[i] for i in keep] for column in columns]
    # Through the driver (core.jobs.sqlite_rows): SQLAlchemy's per-row parameter handling
    # cost more than SQLite's own work in `bulkscore score`.
    inserted = insert_columns(
        conn,
        results,
        RESULT_ROW_COLUMNS,
        columns,
        conflict=("job_id", "index"),
        returning=("job_id", "error"),
        encoders={"top_k": _sqlite_json},
    )
    return [(job_id, error) for job_id, error in inserted]


def _sqlite_json(text: str | None) -> str:
    """What SQLite stores for a top-k value already made JSON text (:func:`_top_k_texts`):
    the text, and for None what SQLAlchemy's JSON type stores there, JSON ``null`` (the
    column is not ``none_as_null``)."""
    return "null" if text is None else text


def _top_k_texts(conn: Connection, rows: ResultRows) -> list[str | None]:
    """Each row's top-k pairs as the JSON text its database stores: SQLAlchemy's JSON type
    (``json.dumps``' separators) on SQLite, compact for ``COPY`` on PostgreSQL; None for a
    row without pairs."""
    encode = PairsJson(COMPACT_SEPARATORS if is_postgresql(conn) else DEFAULT_SEPARATORS)
    texts: list[str | None] = []
    for part in rows.parts:
        texts += part.top_k_json(encode)
    return texts


def write_results(
    conn: Connection,
    job_id: str,
    model: str,
    model_revision: str | None,
    scored: Sequence[ScoredItem],
) -> WriteOutcome:
    """Insert ``scored`` rows not yet present and advance the job's counters, atomically;
    nothing at all (a ``refused`` outcome) if the job is no longer active.

    Call inside a transaction (``engine.begin()``).
    """
    outcomes = write_job_results(conn, model, model_revision, {job_id: scored})
    return outcomes.get(job_id, WriteOutcome(0, 0))


def write_job_results(
    conn: Connection,
    model: str,
    model_revision: str | None,
    scored_by_job: Mapping[str, Sequence[ScoredItem]],
) -> dict[str, WriteOutcome]:
    """:func:`write_results` for several jobs of one model: :func:`write_result_rows`, with
    an outcome for every job of ``scored_by_job`` (one with no rows: nothing written)."""
    if not any(scored_by_job.values()):
        return {}
    outcomes = write_result_rows(conn, model, model_revision, ResultRows.from_scored(scored_by_job))
    return {job_id: outcomes.get(job_id, WriteOutcome(0, 0)) for job_id in scored_by_job}


def write_result_rows(
    conn: Connection, model: str, model_revision: str | None, rows: ResultRows
) -> dict[str, WriteOutcome]:
    """Write ``rows`` of several jobs of one model in one statement per step; the outcome
    of each job that has rows.

    On PostgreSQL the rows are first streamed into the session's staging table, which
    locks nothing shared; then each job's row is taken (:func:`lock_active_jobs`); a job
    no longer active gets a ``refused`` outcome and nothing written. For the others, rows
    not yet present are inserted and each job's counters advance by exactly the rows
    inserted for it, in the caller's transaction: a batch that mixes small jobs keeps every
    job's accounting as if it had been written alone. Call inside a transaction.
    """
    if not len(rows):
        return {}
    now = utcnow()
    count = len(rows)
    labels: list[str | None] = []
    scores: list[float | None] = []
    errors: list[str | None] = []
    for part in rows.parts:  # the runner's columns (arrays for a text classifier)
        labels += part.labels()
        scores += part.scores()
        errors += part.errors()
    # Column by column, RESULT_ROW_COLUMNS order.
    columns: list[Sequence[Any]] = [
        rows.job_id,
        rows.index,
        rows.item_id,
        labels,
        scores,
        _top_k_texts(conn, rows),
        errors,
        [model] * count,
        [model_revision] * count,
        [now] * count,
        rows.cached,
    ]
    if is_postgresql(conn):
        # Streamed before the job rows are taken: a writer frozen mid-COPY holds no lock
        # that another worker's write of the same job would wait for.
        _stage_rows(conn, columns)
    job_ids = set(rows.job_id)
    active = lock_active_jobs(conn, job_ids)
    succeeded: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    for job_id, error in _insert_new_rows(conn, columns, active):
        (failed if error is not None else succeeded)[job_id] += 1
    outcomes = {
        job_id: WriteOutcome(
            succeeded=succeeded[job_id], failed=failed[job_id], refused=job_id not in active
        )
        for job_id in job_ids
    }
    _advance_counters(conn, {job: o for job, o in outcomes.items() if o.written}, now)
    return outcomes


def lock_active_jobs(conn: Connection, job_ids: Collection[str]) -> set[str]:
    """Take the rows of ``job_ids`` for this transaction; return the jobs still active.

    A write and every change of a job's status (a cancel, a failure, the write that
    completes it) then follow one another on the job's row: a write that takes the row
    after a cancel committed finds ``cancelled`` and writes nothing, and a cancel that
    takes it after a write committed reports numbers that include that write. Call before
    any change to shared rows in the writing transaction (staging rows in the session's
    own temporary table may come first: they lock nothing).
    """
    if not job_ids:
        return set()
    ids = sorted(job_ids)
    active = [state.value for state in ACTIVE_JOB_STATES]
    if is_postgresql(conn):
        # FOR NO KEY UPDATE: the lock the counters' UPDATE takes anyway, taken up front and
        # in id order (rows are locked as the sort returns them), so two writers sharing
        # jobs wait for each other instead of deadlocking. After a wait, the row read is
        # the version the other transaction committed.
        rows = conn.execute(
            select(jobs.c.id, jobs.c.status, jobs.c.expires_at)
            .where(jobs.c.id.in_(ids))
            .order_by(jobs.c.id)
            .with_for_update(key_share=True)
        )
        locked = {job_id: expires_at for job_id, status, expires_at in rows if status in active}
        return set(locked) - _expire_overdue_among(conn, locked)
    # SQLite locks the whole database, and its driver opens the transaction only at the
    # first write (a SELECT would read outside it): a no-op UPDATE takes the write lock at
    # once and holds it to the commit.
    touched = conn.execute(
        update(jobs)
        .where(and_(jobs.c.id.in_(ids), jobs.c.status.in_(active)))
        .values(status=jobs.c.status)
        .returning(jobs.c.id, jobs.c.expires_at)
    )
    locked = {job_id: expires_at for job_id, expires_at in touched}
    return set(locked) - _expire_overdue_among(conn, locked)


def _expire_overdue_among(conn: Connection, deadlines: Mapping[str, Any]) -> set[str]:
    """Expire those of the locked jobs (id -> ``expires_at``) past their deadline; return
    them.

    So no row is written after a job's deadline, even by a worker that claimed its chunk
    before it: the write that would have come after expires the job instead.
    """
    now = utcnow()
    return {
        job_id
        for job_id, expires_at in deadlines.items()
        if expires_at is not None and expire_job(conn, job_id, now=now)
    }


def _advance_counters(conn: Connection, outcomes: Mapping[str, WriteOutcome], now: Any) -> None:
    if not outcomes:
        return
    done_after = jobs.c.succeeded + jobs.c.failed + bindparam("b_written")
    # Two comparisons rather than IN: an expanding IN cannot go into an executemany.
    finishes = and_(
        done_after >= jobs.c.total,
        or_(jobs.c.status == JobStatus.QUEUED.value, jobs.c.status == JobStatus.RUNNING.value),
        # Every item has a row, but an error row still waiting for its retry is not done
        # (core.jobs.retry_marks): the write that replaces the last one completes the job.
        ~exists(select(retry_items.c.index).where(retry_items.c.job_id == jobs.c.id)),
    )
    statement = (
        update(jobs)
        .where(jobs.c.id == bindparam("b_id"))
        .values(
            succeeded=jobs.c.succeeded + bindparam("b_succeeded"),
            failed=jobs.c.failed + bindparam("b_failed"),
            status=case((finishes, JobStatus.COMPLETED.value), else_=jobs.c.status),
            started_at=case((jobs.c.started_at.is_(None), now), else_=jobs.c.started_at),
            finished_at=case((finishes, now), else_=jobs.c.finished_at),
        )
    )
    # Sorted by job id: two workers advancing the same jobs lock their rows in one order,
    # so they wait for each other instead of deadlocking.
    conn.execute(
        statement,
        [
            {
                "b_id": job_id,
                "b_written": outcome.written,
                "b_succeeded": outcome.succeeded,
                "b_failed": outcome.failed,
            }
            for job_id, outcome in sorted(outcomes.items())
        ],
    )


def scored_indexes(conn: Connection, job_id: str, start: int, stop: int) -> set[int]:
    """Indexes in ``[start, stop)`` that already have a result row."""
    query = select(results.c.index).where(
        and_(results.c.job_id == job_id, results.c.index >= start, results.c.index < stop)
    )
    return set(conn.scalars(query))


def scored_indexes_many(
    conn: Connection, ranges: Sequence[tuple[str, int, int]]
) -> dict[str, set[int]]:
    """:func:`scored_indexes` for several ``(job_id, start, stop)`` ranges in one query."""
    if not ranges:
        return {}
    query = select(results.c.job_id, results.c.index).where(
        or_(
            *(
                and_(results.c.job_id == job_id, results.c.index >= start, results.c.index < stop)
                for job_id, start, stop in ranges
            )
        )
    )
    found: dict[str, set[int]] = {job_id: set() for job_id, _, _ in ranges}
    for job_id, index in conn.execute(query):
        found[job_id].add(index)
    return found


def _as_dict(row: Any) -> dict[str, Any]:
    return {
        "index": row.index,
        "id": row.item_id,
        "label": row.label,
        "score": row.score,
        "top_k": row.top_k,
        "error": row.error,
        "cached": row.cached,
    }


def _page_query(job_id: str, after: int, limit: int, top_k_text: bool = False) -> Any:
    # As text, top_k skips a JSON parse here and a re-encode in the export (see core.jobs.export).
    top_k = cast(results.c.top_k, Text).label("top_k") if top_k_text else results.c.top_k
    return (
        select(
            results.c.index,
            results.c.item_id,
            results.c.label,
            results.c.score,
            top_k,
            results.c.error,
            results.c.cached,
        )
        .where(and_(results.c.job_id == job_id, results.c.index > after))
        .order_by(results.c.index)
        .limit(limit)
    )


def _attach_items(
    conn: Connection, job_id: str, rows: list[dict[str, Any]], with_input: bool
) -> None:
    """Give each row its input's ``metadata`` (and with ``with_input`` its text, ``input``).

    One index range scan over the page's items, not a join: a join's plan depends on the
    planner's statistics, and on a job stored a moment ago (none yet) PostgreSQL chose plans
    that made an export ten times slower. Rows and items are both in index order.
    """
    columns = [items.c.index, items.c.metadata]
    if with_input:
        columns.append(items.c.text)
    found: dict[int, Any] = {}
    if rows:
        query = select(*columns).where(
            and_(
                items.c.job_id == job_id,
                items.c.index >= rows[0]["index"],
                items.c.index <= rows[-1]["index"],
            )
        )
        found = {item[0]: item for item in conn.execute(query)}
    for row in rows:
        item = found.get(row["index"])
        row["metadata"] = None if item is None else item[1]
        if with_input:
            row["input"] = None if item is None else item[2]


def read_page(
    conn: Connection,
    job_id: str,
    after: int = -1,
    limit: int = 100,
    top_k_text: bool = False,
    with_input: bool = False,
) -> list[dict[str, Any]]:
    """Up to ``limit`` result rows with ``index > after``, in index order.

    Each row has its input's ``metadata`` (None when it had none). With ``top_k_text`` each
    row's ``top_k`` is the stored JSON text (or None), unparsed; with ``with_input`` each
    row has ``input``, the input's text (None for an image or an input refused at intake).
    """
    rows = [_as_dict(row) for row in conn.execute(_page_query(job_id, after, limit, top_k_text))]
    _attach_items(conn, job_id, rows, with_input)
    return rows


def _keyset_pages(
    read: Callable[[int], list[dict[str, Any]]], page_size: int
) -> Iterator[dict[str, Any]]:
    after = -1
    while True:
        page = read(after)
        yield from page
        if len(page) < page_size:
            return
        after = page[-1]["index"]


def iter_results(
    conn: Connection,
    job_id: str,
    page_size: int = 5000,
    top_k_text: bool = False,
    with_input: bool = False,
) -> Iterator[dict[str, Any]]:
    """Every result row of a job in index order, read a page at a time (keyset paging)."""
    return _keyset_pages(
        lambda after: read_page(conn, job_id, after, page_size, top_k_text, with_input),
        page_size,
    )


def stream_results(
    engine: Engine,
    job_id: str,
    page_size: int = 5000,
    top_k_text: bool = False,
    with_input: bool = False,
) -> Iterator[dict[str, Any]]:
    """:func:`iter_results` for a consumer as slow as a download: each page is read in a
    transaction of its own, so none stays open (idle, and ended by the server after
    ``db_idle_in_transaction_timeout_s``) while the consumer takes its time."""

    def read(after: int) -> list[dict[str, Any]]:
        with engine.connect() as conn:
            return read_page(conn, job_id, after, page_size, top_k_text, with_input)

    return _keyset_pages(read, page_size)


def has_item_metadata(conn: Connection, job_id: str) -> bool:
    """Whether any input of the job carried metadata (a CSV export then has the column)."""
    query = (
        select(items.c.index)
        .where(and_(items.c.job_id == job_id, items.c.metadata.is_not(None)))
        .limit(1)
    )
    return conn.execute(query).first() is not None


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


def cached_count(conn: Connection, job_id: str) -> int:
    """How many of the job's rows came from the result cache (``results.cached``)."""
    query = select(func.count()).where(and_(results.c.job_id == job_id, results.c.cached))
    return int(conn.scalar(query) or 0)
