"""The ``schedule_runs`` table: claiming a due time, moving a run along, reading runs back.

A run's row is inserted before anything else happens; the unique ``(schedule, due_at)``
key makes that insert the claim, so whichever process inserts first does the run and
every other one (a second beat, a retried tick) gets nothing to do.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, Engine, and_, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from core.chunks.claim import as_utc
from core.clock import utcnow
from core.tables import jobs, schedule_runs


class RunStatus(StrEnum):
    CLAIMED = "claimed"  # the due time is taken; the source is being read
    RUNNING = "running"  # its job exists and was queued
    COMPLETED = "completed"  # its job completed; the window's state is committed
    FAILED = "failed"  # the source, the queue or the job failed; see ``error``
    CANCELLED = "cancelled"  # its job was cancelled; the next run reads the same window
    SKIPPED = "skipped"  # an earlier run of the schedule was still going
    EMPTY = "empty"  # nothing new: no job


@dataclass(frozen=True, slots=True)
class RunView:
    """A run as ``schedules list`` shows it, with its job's live status and counts."""

    id: int
    schedule: str
    due_at: datetime
    status: RunStatus
    job_id: str | None
    items: int
    error: str | None
    created_at: datetime
    finished_at: datetime | None
    job_status: str | None
    succeeded: int | None
    failed: int | None
    window_start: Any = None
    window_end: Any = None


def claim(engine: Engine, schedule: str, due_at: datetime) -> int | None:
    """Insert the run of ``schedule`` due at ``due_at``; its id, or None if already taken."""
    try:
        with engine.begin() as conn:
            return int(
                conn.execute(
                    insert(schedule_runs)
                    .values(
                        schedule=schedule,
                        due_at=due_at,
                        status=RunStatus.CLAIMED.value,
                        items=0,
                        created_at=utcnow(),
                    )
                    .returning(schedule_runs.c.id)
                ).scalar_one()
            )
    except IntegrityError:
        return None


def is_claimed(conn: Connection, schedule: str, due_at: datetime) -> bool:
    """Whether a run of ``schedule`` due at ``due_at`` exists (a cheap check before a claim)."""
    query = select(schedule_runs.c.id).where(
        and_(schedule_runs.c.schedule == schedule, schedule_runs.c.due_at == due_at)
    )
    return conn.execute(query).first() is not None


def set_run(
    conn: Connection, run_id: int, *, only_if: RunStatus | None = None, **values: Any
) -> bool:
    """Update run ``run_id`` (with ``only_if``: only while in that status); whether it changed.

    A final status stamps ``finished_at``.
    """
    if "status" in values:
        status = RunStatus(values["status"])
        values["status"] = status.value
        if status not in (RunStatus.CLAIMED, RunStatus.RUNNING):
            values.setdefault("finished_at", utcnow())
    condition = schedule_runs.c.id == run_id
    if only_if is not None:
        condition = and_(condition, schedule_runs.c.status == only_if.value)
    return bool(conn.execute(update(schedule_runs).where(condition).values(**values)).rowcount)


def _view_query() -> Any:
    return select(
        schedule_runs,
        jobs.c.status.label("job_status"),
        jobs.c.succeeded,
        jobs.c.failed,
    ).select_from(schedule_runs.outerjoin(jobs, schedule_runs.c.job_id == jobs.c.id))


def _view(row: Any) -> RunView:
    data = dict(row._mapping)
    data["status"] = RunStatus(data["status"])
    for key in ("due_at", "created_at", "finished_at"):
        if data[key] is not None:
            data[key] = as_utc(data[key])
    return RunView(**data)


def get_run(conn: Connection, run_id: int) -> RunView | None:
    row = conn.execute(_view_query().where(schedule_runs.c.id == run_id)).first()
    return _view(row) if row is not None else None


def latest_runs(conn: Connection, schedules: Iterable[str]) -> dict[str, RunView]:
    """The most recently claimed run of each schedule that has one."""
    names = list(schedules)
    newest = (
        select(func.max(schedule_runs.c.id))
        .where(schedule_runs.c.schedule.in_(names))
        .group_by(schedule_runs.c.schedule)
    )
    query = _view_query().where(schedule_runs.c.id.in_(newest))
    return {view.schedule: view for view in map(_view, conn.execute(query))}


def recent_runs(conn: Connection, schedule: str, limit: int = 10) -> list[RunView]:
    """The schedule's ``limit`` most recently claimed runs, newest first."""
    query = (
        _view_query()
        .where(schedule_runs.c.schedule == schedule)
        .order_by(schedule_runs.c.id.desc())
        .limit(limit)
    )
    return [_view(row) for row in conn.execute(query)]


def open_runs(conn: Connection, schedules: Iterable[str]) -> list[RunView]:
    """The runs still claimed or running, oldest first."""
    query = (
        _view_query()
        .where(
            and_(
                schedule_runs.c.schedule.in_(list(schedules)),
                schedule_runs.c.status.in_([RunStatus.CLAIMED.value, RunStatus.RUNNING.value]),
            )
        )
        .order_by(schedule_runs.c.id)
    )
    return [_view(row) for row in conn.execute(query)]
