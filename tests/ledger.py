"""The ledger of what the API accepted, and the audit that checks the promise against SQL.

The promise (docs/promise.md): every job accepted with a 2xx ends ``completed``, ``failed``
(with a reason) or ``cancelled``; every item of a completed job has exactly one result row;
duplicated execution is allowed and counted, duplicated rows are not. Every submission
carries a unique ``Idempotency-Key``, so a refused request is traceable too: it must have
left no job.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import Engine, and_, func, select

from core.jobs.status import FINAL_JOB_STATES, ChunkStatus, JobStatus
from core.tables import chunks, items, jobs, results, retry_items


@dataclass
class Ledger:
    """Job ids the API accepted (2xx), and the idempotency keys of refused requests."""

    accepted: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    def submit(self, api: Any, texts: list[str]) -> Any:
        """POST a job through ``api`` (a ``UnitApi``) and record the answer."""
        key = uuid.uuid4().hex
        response = api.post_job(texts, headers={"Idempotency-Key": key})
        if 200 <= response.status_code < 300:
            self.accepted.append(response.json()["id"])
        else:
            self.refused.append(key)
        return response


@dataclass(frozen=True)
class Audit:
    """What the ledger and the database say; every field but the last two must be 0."""

    lost: int  # accepted, but no such job
    stuck: int  # accepted, not final
    failed_without_reason: int
    duplicate_rows: int  # (job_id, index) with more than one result row
    items_without_one_row: int  # items of completed jobs with 0 (or >1) result rows
    orphan_rows: int  # result rows of no item
    counter_mismatches: int  # jobs whose succeeded + failed differs from their rows
    refused_with_rows: int  # refused requests that left a job anyway
    unknown_jobs: int  # jobs the ledger never saw accepted
    # Error rows still marked for a retry in a completed job: a retry left unfinished.
    retry_marks_left: int = 0
    # Allowed, and counted: attempts beyond the first, and chunks bisected.
    extra_attempts: int = 0
    split_chunks: int = 0

    def problems(self) -> dict[str, int]:
        counted = asdict(self)
        del counted["extra_attempts"], counted["split_chunks"]
        return {name: value for name, value in counted.items() if value}


def audit(engine: Engine, ledger: Ledger, scope: list[str] | None = None) -> Audit:
    """Check the promise for ``scope`` (default: every accepted job)."""
    ids = list(scope if scope is not None else ledger.accepted)
    with engine.connect() as conn:
        found = {row.id: row for row in conn.execute(select(jobs).where(jobs.c.id.in_(ids)))}
        final = {status.value for status in FINAL_JOB_STATES}
        completed = [
            job_id for job_id, row in found.items() if row.status == JobStatus.COMPLETED.value
        ]
        duplicates = conn.scalar(
            select(func.count()).select_from(
                select(results.c.job_id, results.c.index)
                .where(results.c.job_id.in_(ids))
                .group_by(results.c.job_id, results.c.index)
                .having(func.count() > 1)
                .subquery()
            )
        )
        per_item = (
            select(items.c.job_id, items.c.index, func.count(results.c.index).label("rows"))
            .select_from(
                items.outerjoin(
                    results,
                    and_(results.c.job_id == items.c.job_id, results.c.index == items.c.index),
                )
            )
            .where(items.c.job_id.in_(completed))
            .group_by(items.c.job_id, items.c.index)
            .subquery()
        )
        without_one = conn.scalar(
            select(func.count()).select_from(per_item).where(per_item.c.rows != 1)
        )
        orphans = conn.scalar(
            select(func.count())
            .select_from(
                results.outerjoin(
                    items,
                    and_(items.c.job_id == results.c.job_id, items.c.index == results.c.index),
                )
            )
            .where(and_(results.c.job_id.in_(ids), items.c.job_id.is_(None)))
        )
        rows_by_job: dict[str, int] = dict(
            conn.execute(
                select(results.c.job_id, func.count())
                .where(results.c.job_id.in_(ids))
                .group_by(results.c.job_id)
            ).all()
        )
        refused = (
            conn.scalar(select(func.count()).where(jobs.c.idempotency_key.in_(ledger.refused)))
            if ledger.refused
            else 0
        )
        marks_left = conn.scalar(select(func.count()).where(retry_items.c.job_id.in_(completed)))
        all_ids = set(conn.scalars(select(jobs.c.id)))
        attempts = conn.execute(
            select(
                func.coalesce(func.sum(chunks.c.attempts - 1), 0),
            ).where(and_(chunks.c.job_id.in_(ids), chunks.c.attempts > 1))
        ).scalar_one()
        splits = conn.scalar(
            select(func.count()).where(
                and_(chunks.c.job_id.in_(ids), chunks.c.status == ChunkStatus.SPLIT.value)
            )
        )
    return Audit(
        lost=sum(1 for job_id in ids if job_id not in found),
        stuck=sum(1 for row in found.values() if row.status not in final),
        failed_without_reason=sum(
            1 for row in found.values() if row.status == JobStatus.FAILED.value and not row.error
        ),
        duplicate_rows=int(duplicates or 0),
        items_without_one_row=int(without_one or 0),
        orphan_rows=int(orphans or 0),
        counter_mismatches=sum(
            1
            for row in found.values()
            if int(row.succeeded) + int(row.failed) != rows_by_job.get(row.id, 0)
        ),
        refused_with_rows=int(refused or 0),
        unknown_jobs=len(all_ids - set(ledger.accepted)),
        retry_marks_left=int(marks_left or 0),
        extra_attempts=int(attempts or 0),
        split_chunks=int(splits or 0),
    )
