"""The job lifecycle in SQL: create a job with its items and chunks, read it, move it along.

Job state lives here and only here (never in Celery): a job is ``completed`` in the same
transaction that writes its last result row (see :mod:`core.jobs.results`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, delete, func, insert, or_, select, update

from core.clock import utcnow
from core.inputs.items import InputItem
from core.jobs.bulk_copy import copy_rows, is_postgresql
from core.jobs.priority import Priority
from core.jobs.sqlite_rows import insert_rows
from core.jobs.status import ACTIVE_JOB_STATES, ChunkStatus, JobDriver, JobStatus
from core.models.registry import ModelSpec
from core.tables import chunks, items, jobs, results, retry_items, training_runs


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    model: str
    model_revision: str | None
    input_kind: str
    status: JobStatus
    total: int
    succeeded: int
    failed: int
    owner_key_id: int | None
    schedule: str | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    idempotency_key: str | None = None
    request_hash: str | None = None
    driver: JobDriver = JobDriver.SERVICE
    # The model whose workers run its chunks: ``model``, or a training job's base.
    runs_on: str = ""
    # Not finished by then, it ends ``expired`` (core.jobs.expiry); None: no deadline.
    expires_at: datetime | None = None
    priority: Priority = Priority.NORMAL
    # When a worker last claimed one of its chunks (fair claiming's round-robin clock).
    last_served_at: datetime | None = None
    # When its current turn ends (None: none open).
    turn_ends_at: datetime | None = None
    # SHA-256 of an embedded job's inputs (core.jobs.inputs_hash); None for service jobs.
    inputs_hash: str | None = None
    # The caller's metadata object (string keys and values), echoed by the API.
    metadata: dict[str, str] | None = None
    # False: the job asked for fresh scores (``cache: false``), see core.cache.
    use_cache: bool = True
    # When the retention purge removed its inputs / results (core.jobs.purge); None: kept.
    inputs_purged_at: datetime | None = None
    results_purged_at: datetime | None = None

    @property
    def done(self) -> int:
        return self.succeeded + self.failed

    @classmethod
    def from_row(cls, row: Any) -> Job:
        data = dict(row._mapping)
        data["status"] = JobStatus(data["status"])
        data["driver"] = JobDriver(data["driver"])
        data["priority"] = Priority(data["priority"])
        return cls(**data)


@dataclass(frozen=True, slots=True)
class Chunk:
    job_id: str
    index: int
    start: int
    stop: int


# What new_job_id makes: a string from outside that is not of this form names no job, and
# is refused before it reaches SQL (the API's path parameters say so in their schema).
JOB_ID_PATTERN = "^[0-9a-f]{32}$"


def new_job_id() -> str:
    return uuid.uuid4().hex


def create_job(
    conn: Connection,
    spec: ModelSpec,
    inputs: Sequence[InputItem],
    *,
    chunk_size: int,
    job_id: str | None = None,
    owner_key_id: int | None = None,
    request_hash: str | None = None,
    schedule: str | None = None,
    driver: JobDriver = JobDriver.SERVICE,
    expires_after_s: float | None = None,
    priority: Priority = Priority.NORMAL,
    metadata: dict[str, str] | None = None,
    use_cache: bool = True,
) -> Job:
    """Insert a queued job, its items and its chunks in the caller's transaction.

    With ``expires_after_s``, a job not finished that long after now ends ``expired``.
    With ``use_cache=False`` its items neither read nor fill the result cache.

    Its idempotency key, if any, is attached only once its tasks are sent
    (:func:`attach_idempotency_key`, called by :func:`core.jobs.submit.submit_job`).
    """
    now = utcnow()
    job_id = job_id or new_job_id()
    conn.execute(
        insert(jobs).values(
            id=job_id,
            model=spec.name,
            model_revision=spec.revision,
            input_kind=spec.input_kind.value,
            status=JobStatus.QUEUED.value,
            total=len(inputs),
            succeeded=0,
            failed=0,
            owner_key_id=owner_key_id,
            request_hash=request_hash,
            schedule=schedule,
            created_at=now,
            driver=driver.value,
            runs_on=spec.name,
            expires_at=now + timedelta(seconds=expires_after_s)
            if expires_after_s is not None
            else None,
            priority=priority.value,
            metadata=metadata,
            use_cache=use_cache,
        )
    )
    _insert_items(conn, job_id, inputs)
    chunk_rows = [
        {
            "job_id": job_id,
            "index": number,
            "start": start,
            "stop": min(start + chunk_size, len(inputs)),
            "status": ChunkStatus.QUEUED.value,
            "attempts": 0,
            "updated_at": now,
        }
        for number, start in enumerate(range(0, len(inputs), chunk_size))
    ]
    if chunk_rows:
        conn.execute(insert(chunks), chunk_rows)
    if not inputs:
        # Nothing to score: an empty job is complete the moment it exists.
        conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id)
            .values(status=JobStatus.COMPLETED.value, started_at=now, finished_at=now)
        )
    job = get_job(conn, job_id)
    assert job is not None
    return job


def append_chunks(
    conn: Connection,
    job_id: str,
    spans: Sequence[tuple[int, int]],
    *,
    attempts: int = 0,
    now: datetime | None = None,
) -> tuple[int, ...]:
    """New queued chunks of ``job_id`` over the item ``spans`` (``[start, stop)``), numbered
    after its last chunk, with ``attempts`` already counted; their chunk indexes.

    What a bisection, a hand-back, a retry and a resume all do: work is never moved into an
    existing chunk, only into new ones, so a delivery of an old chunk's message finds its
    chunk as it left it.
    """
    if not spans:
        return ()
    now = now or utcnow()
    first = (
        conn.scalar(select(func.max(chunks.c.index)).where(chunks.c.job_id == job_id)) or 0
    ) + 1
    conn.execute(
        insert(chunks),
        [
            {
                "job_id": job_id,
                "index": first + offset,
                "start": start,
                "stop": stop,
                "status": ChunkStatus.QUEUED.value,
                "attempts": attempts,
                "updated_at": now,
            }
            for offset, (start, stop) in enumerate(spans)
        ],
    )
    return tuple(range(first, first + len(spans)))


ITEM_COLUMNS = ("job_id", "index", "item_id", "text", "data", "error", "metadata")


def _insert_items(conn: Connection, job_id: str, inputs: Sequence[InputItem]) -> None:
    if is_postgresql(conn):
        # COPY: a 10,000-text job is stored in a fraction of the time a multi-row INSERT
        # takes, which is most of what a submission costs (bench/service_throughput.py).
        # COPY takes JSON as text.
        copy_rows(conn, items, ITEM_COLUMNS, _item_rows(job_id, inputs, json_text=True))
        return
    # Through the driver (core.jobs.sqlite_rows): a row dict per item and SQLAlchemy's
    # per-row parameter handling cost most of `bulkscore score`'s job creation.
    insert_rows(conn, items, ITEM_COLUMNS, list(_item_rows(job_id, inputs, json_text=False)))


def _item_rows(
    job_id: str, inputs: Sequence[InputItem], json_text: bool
) -> Iterator[tuple[Any, ...]]:
    for index, item in enumerate(inputs):
        metadata: Any = item.metadata
        if json_text and metadata is not None:
            metadata = json.dumps(metadata, ensure_ascii=False)
        yield (job_id, index, item.item_id, item.text, item.data, item.error, metadata)


def get_job(conn: Connection, job_id: str, owner_key_id: int | None = None) -> Job | None:
    """The job, or None; with ``owner_key_id`` only a job that key owns."""
    query = select(jobs).where(jobs.c.id == job_id)
    if owner_key_id is not None:
        query = query.where(jobs.c.owner_key_id == owner_key_id)
    row = conn.execute(query).first()
    return Job.from_row(row) if row is not None else None


def attach_idempotency_key(conn: Connection, job_id: str, key: str) -> None:
    """Make job ``job_id`` the one its owner's ``key`` stands for.

    Raises:
        sqlalchemy.exc.IntegrityError: Another job of the same owner holds the key.
    """
    conn.execute(update(jobs).where(jobs.c.id == job_id).values(idempotency_key=key))


def find_by_idempotency_key(conn: Connection, owner_key_id: int | None, key: str) -> Job | None:
    query = select(jobs).where(jobs.c.idempotency_key == key)
    if owner_key_id is None:
        query = query.where(jobs.c.owner_key_id.is_(None))
    else:
        query = query.where(jobs.c.owner_key_id == owner_key_id)
    row = conn.execute(query).first()
    return Job.from_row(row) if row is not None else None


def list_jobs(
    conn: Connection,
    owner_key_id: int | None,
    status: JobStatus | None = None,
    limit: int = 50,
    before: tuple[datetime, str] | None = None,
    model: str | None = None,
) -> list[Job]:
    """Newest first: by ``created_at``, then ``id``, both descending (a total order).

    Args:
        before: A page's last ``(created_at, id)``: only jobs after it in that order. A
            job created since the first page sorts before it, so pages neither repeat nor
            skip a job when new ones arrive.
    """
    query = select(jobs).order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(limit)
    if owner_key_id is not None:
        query = query.where(jobs.c.owner_key_id == owner_key_id)
    if status is not None:
        query = query.where(jobs.c.status == status.value)
    if model is not None:
        query = query.where(jobs.c.model == model)
    if before is not None:
        created_at, job_id = before
        query = query.where(
            or_(
                jobs.c.created_at < created_at,
                and_(jobs.c.created_at == created_at, jobs.c.id < job_id),
            )
        )
    return [Job.from_row(row) for row in conn.execute(query)]


def list_chunks(conn: Connection, job_id: str, status: ChunkStatus | None = None) -> list[Chunk]:
    query = select(chunks.c.job_id, chunks.c.index, chunks.c.start, chunks.c.stop).where(
        chunks.c.job_id == job_id
    )
    if status is not None:
        query = query.where(chunks.c.status == status.value)
    return [Chunk(*row) for row in conn.execute(query.order_by(chunks.c.index))]


def mark_running(conn: Connection, job_id: str) -> None:
    """queued -> running, stamping ``started_at`` once."""
    conn.execute(
        update(jobs)
        .where(and_(jobs.c.id == job_id, jobs.c.status == JobStatus.QUEUED.value))
        .values(
            status=JobStatus.RUNNING.value, started_at=func.coalesce(jobs.c.started_at, utcnow())
        )
    )


def mark_failed(conn: Connection, job_id: str, error: str) -> None:
    """A job that cannot run at all (its model failed to load, say)."""
    conn.execute(
        update(jobs)
        .where(and_(jobs.c.id == job_id, jobs.c.status.in_([s.value for s in ACTIVE_JOB_STATES])))
        .values(status=JobStatus.FAILED.value, error=error[:4000], finished_at=utcnow())
    )


def cancel_job(conn: Connection, job_id: str) -> bool:
    """Cancel an active job; chunks not yet started will not start. False if already final."""
    now = utcnow()
    changed = conn.execute(
        update(jobs)
        .where(and_(jobs.c.id == job_id, jobs.c.status.in_([s.value for s in ACTIVE_JOB_STATES])))
        .values(status=JobStatus.CANCELLED.value, finished_at=now)
    ).rowcount
    conn.execute(
        update(chunks)
        .where(and_(chunks.c.job_id == job_id, chunks.c.status == ChunkStatus.QUEUED.value))
        .values(status=ChunkStatus.CANCELLED.value, updated_at=now)
    )
    return bool(changed)


def delete_job(conn: Connection, job_id: str) -> bool:
    """Delete a job with its items, chunks and results; False if there was no such job.

    For a job that must not exist after all (its tasks could not be queued). The child rows
    are deleted explicitly rather than left to ``ON DELETE CASCADE``, which SQLite only
    honours with its foreign-key pragma on.
    """
    for table in (results, retry_items, chunks, items, training_runs):
        conn.execute(delete(table).where(table.c.job_id == job_id))
    return bool(conn.execute(delete(jobs).where(jobs.c.id == job_id)).rowcount)


def load_items(conn: Connection, job_id: str, start: int, stop: int) -> list[tuple[int, InputItem]]:
    """Items ``start <= index < stop`` of a job, with their indexes, in index order."""
    query = (
        select(items.c.index, items.c.item_id, items.c.text, items.c.data, items.c.error)
        .where(and_(items.c.job_id == job_id, items.c.index >= start, items.c.index < stop))
        .order_by(items.c.index)
    )
    # By position: a Row's .index is the tuple method to type checkers, not the column.
    return [
        (index, InputItem(item_id=item_id, text=text, data=data, error=error))
        for index, item_id, text, data, error in conn.execute(query)
    ]
