"""Retention: dropping the inputs and results of jobs that finished long ago.

Two limits, each counted from a job's ``finished_at`` and each off unless set
(``retain_inputs_days``, ``retain_results_days``, or ``bulkscore purge --older-than``):

- past the **inputs** limit a job's ``items`` rows (and any ``retry_items`` marks, and a
  training job's upload) go and ``inputs_purged_at`` is stamped: the job can still be read
  and exported, but no longer retried or resumed (:mod:`core.jobs.requeue` refuses);
- past the **results** limit its ``results`` rows go too and ``results_purged_at`` is
  stamped: results pages and exports answer that they are gone.

The job row stays, so its status says what is gone. Only final jobs are touched, never an
active one. Each job is first stamped, in a short transaction that takes its row and
checks it is still final and old enough (so a retry or resume racing the purge either
runs first, and the job is no longer final, or is refused after, by the stamp); then its
rows go in batches of :data:`~core.jobs.deletion.DELETE_BATCH`, each its own transaction,
on rows no scoring transaction holds (scoring writes only active jobs' rows). A purge cut
short (a crash, or the beat's batch budget) is finished by the next one: a stamped job
that still has rows is picked again.

Every purge records a ``purge_runs`` row (what it removed; a dry run's counts what would
go), which ``/metrics`` sums. The purge also trims the result cache to its own limits
(:func:`core.cache.upkeep.evict`).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    Engine,
    Select,
    Table,
    and_,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)

from core.cache.upkeep import evict
from core.clock import utcnow
from core.config import Settings
from core.jobs.deletion import DELETE_BATCH, delete_batch
from core.jobs.status import FINAL_JOB_STATES
from core.tables import items, jobs, purge_runs, results, retry_items, training_runs

log = logging.getLogger(__name__)

# Batches the beat's purge deletes per tick (2,500,000 rows at 5,000 a batch): its solo
# pool also runs the schedules' ticks, which must not wait long; the next tick goes on.
BEAT_MAX_BATCHES = 500
# After each delete batch the purge pauses this many times the batch's duration: at 1.0 it
# keeps the database busy at most half the time, at half the unthrottled speed.
PAUSE_RATIO = 1.0

_AGE = re.compile(r"^\s*(\d+)\s*([dh])\s*$", re.IGNORECASE)


def parse_age(text: str) -> timedelta:
    """``30d`` or ``12h`` as a duration.

    Raises:
        ValueError: Not a whole number of days or hours, or zero.
    """
    match = _AGE.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not an age: use a whole number of days or hours (30d, 12h)")
    amount = int(match.group(1))
    if amount == 0:
        raise ValueError(f"{text!r}: the age must be more than zero")
    unit = match.group(2).lower()
    return timedelta(days=amount) if unit == "d" else timedelta(hours=amount)


@dataclass(frozen=True, slots=True)
class Cutoffs:
    """Final jobs that finished before ``inputs_before`` lose their inputs; before
    ``results_before``, their results too. None: that limit is off."""

    inputs_before: datetime | None
    results_before: datetime | None

    @property
    def on(self) -> bool:
        return self.inputs_before is not None or self.results_before is not None

    @classmethod
    def from_settings(cls, settings: Settings, now: datetime | None = None) -> Cutoffs:
        now = now or utcnow()
        return cls(
            inputs_before=_before(now, settings.retain_inputs_days),
            results_before=_before(now, settings.retain_results_days),
        )

    @classmethod
    def older_than(
        cls, age: timedelta, *, inputs_only: bool = False, now: datetime | None = None
    ) -> Cutoffs:
        cutoff = (now or utcnow()) - age
        return cls(inputs_before=cutoff, results_before=None if inputs_only else cutoff)


def _before(now: datetime, days: int) -> datetime | None:
    return now - timedelta(days=days) if days else None


@dataclass(slots=True)
class PurgeReport:
    """What one purge removed (a dry run: what it would have removed)."""

    dry_run: bool
    jobs: int = 0
    input_rows: int = 0
    result_rows: int = 0
    # Result cache rows evicted to keep it within its limits (never in a dry run).
    cache_rows: int = 0
    # False: the batch budget ran out with rows left; the next purge goes on.
    complete: bool = True
    job_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class PurgedTotals:
    """What every purge so far removed (dry runs excluded): ``/metrics``."""

    jobs: int
    input_rows: int
    result_rows: int


class _Budget:
    def __init__(self, batches: int | None) -> None:
        self.left = batches

    def take(self) -> bool:
        if self.left is None:
            return True
        if self.left <= 0:
            return False
        self.left -= 1
        return True


def purge(
    engine: Engine,
    cutoffs: Cutoffs,
    *,
    dry_run: bool = False,
    batch: int = DELETE_BATCH,
    max_batches: int | None = None,
    cache_max_rows: int = 0,
    cache_max_age_s: int = 0,
    pause_ratio: float = PAUSE_RATIO,
) -> PurgeReport:
    """Purge what ``cutoffs`` say, record the run in ``purge_runs``; what went.

    ``max_batches``: the most delete transactions this call runs (None: no limit); past
    it the report is not ``complete`` and the next purge goes on where this one stopped.
    ``cache_max_rows`` / ``cache_max_age_s``: the result cache's limits (0: none).
    ``pause_ratio``: after each delete batch, a pause of this many times its duration.
    """
    report = PurgeReport(dry_run=dry_run)
    started = utcnow()
    with engine.begin() as conn:
        run_id = conn.execute(
            insert(purge_runs)
            .values(started_at=started, dry_run=dry_run)
            .returning(purge_runs.c.id)
        ).scalar_one()
    budget = _Budget(max_batches)
    touched: set[str] = set()
    if cutoffs.results_before is not None:
        _purge_pass(
            engine, report, touched, cutoffs.results_before, True, batch, budget, pause_ratio
        )
    if cutoffs.inputs_before is not None and report.complete:
        _purge_pass(
            engine, report, touched, cutoffs.inputs_before, False, batch, budget, pause_ratio
        )
    report.jobs = len(touched)
    report.job_ids = sorted(touched)
    if not dry_run and (cache_max_rows or cache_max_age_s):
        report.cache_rows = evict(engine, max_rows=cache_max_rows, max_age_s=cache_max_age_s)
    with engine.begin() as conn:
        conn.execute(
            update(purge_runs)
            .where(purge_runs.c.id == run_id)
            .values(
                finished_at=utcnow(),
                jobs=report.jobs,
                input_rows=report.input_rows,
                result_rows=report.result_rows,
            )
        )
    # Counts only: never an input or a result.
    log.info(
        "purge%s: %d jobs, %d input rows, %d result rows, %d cache rows%s",
        " (dry run)" if dry_run else "",
        report.jobs,
        report.input_rows,
        report.result_rows,
        report.cache_rows,
        "" if report.complete else " (batch budget spent: the next purge goes on)",
    )
    return report


def purge_with_settings(
    engine: Engine, settings: Settings, *, max_batches: int | None = None
) -> PurgeReport:
    """The purge the settings ask for (``retain_*_days`` and the cache's limits)."""
    return purge(
        engine,
        Cutoffs.from_settings(settings),
        max_batches=max_batches,
        cache_max_rows=settings.cache_max_rows,
        cache_max_age_s=settings.cache_max_age_s,
    )


def _purge_pass(
    engine: Engine,
    report: PurgeReport,
    touched: set[str],
    before: datetime,
    with_results: bool,
    batch: int,
    budget: _Budget,
    pause_ratio: float,
) -> None:
    """One limit: stamp each due job, then delete its rows (results first, then inputs)."""
    stamp = jobs.c.results_purged_at if with_results else jobs.c.inputs_purged_at
    tables: Sequence[Table] = (
        (results, retry_items, items) if with_results else (retry_items, items)
    )
    with engine.connect() as conn:
        due: list[str] = list(conn.scalars(_due_jobs(stamp, before, tables)))
    for job_id in due:
        if job_id in touched:  # a dry run's results pass counted its inputs already
            continue
        if report.dry_run:
            with engine.connect() as conn:
                report.result_rows += _count(conn, results, job_id) if with_results else 0
                report.input_rows += _count(conn, items, job_id)
            touched.add(job_id)
            continue
        with engine.begin() as conn:
            if not _stamp(conn, job_id, before, with_results):
                continue  # requeued (or deleted) since it was listed
        touched.add(job_id)
        for table in tables:
            while True:
                if not budget.take():
                    report.complete = False
                    return
                began = time.monotonic()
                with engine.begin() as conn:
                    gone = delete_batch(conn, table, job_id, batch)
                # Yield the database as long again as the batch took: a purge is never
                # urgent, and on a small server its deletes otherwise take the CPU the
                # scoring writes need (bench/storage_cost.py).
                time.sleep((time.monotonic() - began) * pause_ratio)
                if table is results:
                    report.result_rows += gone
                elif table is items:
                    report.input_rows += gone
                if gone < batch:
                    break


def _due_jobs(stamp: Column[datetime], before: datetime, tables: Sequence[Table]) -> Select[Any]:
    """Final jobs finished before ``before`` not yet stamped, or stamped with rows left
    (a purge cut short), oldest first."""
    rows_left = [exists(select(t.c.index).where(t.c.job_id == jobs.c.id)) for t in tables]
    return (
        select(jobs.c.id)
        .where(and_(_final_before(before), or_(stamp.is_(None), *rows_left)))
        .order_by(jobs.c.finished_at, jobs.c.id)
    )


def _final_before(before: datetime) -> ColumnElement[bool]:
    return and_(
        jobs.c.status.in_([state.value for state in FINAL_JOB_STATES]),
        jobs.c.finished_at.is_not(None),
        jobs.c.finished_at < before,
    )


def _stamp(conn: Connection, job_id: str, before: datetime, with_results: bool) -> bool:
    """Mark the job's inputs (and results) purged if it is still final and old enough;
    True if it is. The UPDATE takes the job's row, as a retry or resume does, so the two
    follow one another; on PostgreSQL the condition is read again after any wait."""
    now = utcnow()
    values: dict[str, Any] = {"inputs_purged_at": func.coalesce(jobs.c.inputs_purged_at, now)}
    if with_results:
        values["results_purged_at"] = func.coalesce(jobs.c.results_purged_at, now)
    changed = conn.execute(
        update(jobs).where(and_(jobs.c.id == job_id, _final_before(before))).values(**values)
    ).rowcount
    if changed:
        # A training job's upload is its input too.
        conn.execute(
            update(training_runs).where(training_runs.c.job_id == job_id).values(data=None)
        )
    return bool(changed)


def _count(conn: Connection, table: Table, job_id: str) -> int:
    return int(conn.scalar(select(func.count()).where(table.c.job_id == job_id)) or 0)


def purge_due(conn: Connection, every_s: int, now: datetime | None = None) -> bool:
    """Whether no purge (dry runs aside) started in the last ``every_s`` seconds: the
    beat's clock, kept in SQL so a restarted beat (or a second one) does not purge again
    at once."""
    last = conn.scalar(
        select(func.max(purge_runs.c.started_at)).where(purge_runs.c.dry_run.is_(False))
    )
    if last is None:
        return True
    if last.tzinfo is None:  # SQLite returns naive datetimes (stored as UTC)
        last = last.replace(tzinfo=UTC)
    return last <= (now or utcnow()) - timedelta(seconds=every_s)


def purged_totals(conn: Connection) -> PurgedTotals:
    """What every purge so far removed (dry runs excluded)."""
    row = conn.execute(
        select(
            func.coalesce(func.sum(purge_runs.c.jobs), 0),
            func.coalesce(func.sum(purge_runs.c.input_rows), 0),
            func.coalesce(func.sum(purge_runs.c.result_rows), 0),
        ).where(purge_runs.c.dry_run.is_(False))
    ).one()
    return PurgedTotals(jobs=int(row[0]), input_rows=int(row[1]), result_rows=int(row[2]))
