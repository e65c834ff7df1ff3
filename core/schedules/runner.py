"""Running a schedule: claim the due time, read the window, create and queue one job.

The rules, and where each is kept:

- **One job per schedule and due time.** The run's row is inserted first; its unique
  ``(schedule, due_at)`` key is the claim (:func:`core.schedules.runs.claim`). A process
  that loses the insert does nothing, so two beats, or a tick delivered twice, are harmless.
- **Overlap.** If an earlier run of the schedule is still going (its job queued or
  running, or an earlier due time still being read), the new run is recorded ``skipped``.
- **Watermark.** A run reads from the committed state and stores where it got to on its
  row (``window_end``). The state moves only when the run's job completes
  (:func:`reconcile`, at every tick); a failed or cancelled job leaves it, so the next run
  reads the same window again (plus anything newer).
- **Empty window.** No job; the run is recorded ``empty`` with zero items.
- **Errors.** A source error (bad query, missing folder, unreachable database) fails that
  run with a message that holds no password, and never stops the other schedules.

No Celery here: the caller passes ``send(job, chunk_indexes)``, which sends the job's chunk
tasks (the beat passes its publisher; tests may score in-process); the job is created and
sent by :func:`core.jobs.submit.submit_job`, as the API's are.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, select

from core.clock import utcnow
from core.config import Settings, get_settings
from core.jobs.lifecycle import Job, create_job
from core.jobs.status import ACTIVE_JOB_STATES, JobStatus
from core.jobs.submit import SendJob, submit_job
from core.schedules.config import Schedule, SourceKind, latest_due, schedule_zone
from core.schedules.runs import RunStatus, RunView, claim, is_claimed, open_runs, set_run
from core.schedules.sources import SourceError, read_window, scrub
from core.schedules.state import commit_window, load_files, load_watermark
from core.tables import api_keys

log = logging.getLogger(__name__)

# A run still "claimed" this long after its claim belongs to a process that died between
# the claim and the job; it is failed so that it stops holding later runs back. Reading a
# source takes seconds to minutes, far less than this.
CLAIM_STALE_AFTER = timedelta(hours=1)

_JOB_TO_RUN = {
    JobStatus.COMPLETED: RunStatus.COMPLETED,
    JobStatus.FAILED: RunStatus.FAILED,
    JobStatus.CANCELLED: RunStatus.CANCELLED,
    # Past its deadline: the window was not all scored, so the next run reads it again.
    JobStatus.EXPIRED: RunStatus.FAILED,
}


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """What one trigger of a schedule did.

    ``status`` is None when another process had already claimed this due time.
    """

    schedule: str
    due_at: datetime
    status: RunStatus | None
    run_id: int | None = None
    job_id: str | None = None
    items: int = 0
    error: str | None = None


def run_schedule(
    engine: Engine,
    schedule: Schedule,
    due_at: datetime,
    send: SendJob,
    *,
    settings: Settings | None = None,
) -> RunOutcome:
    """Run ``schedule`` for ``due_at`` under the rules above; never raises for a bad source.

    Args:
        engine: The results database.
        schedule: The schedule.
        due_at: The due time this run is for (timezone-aware); the claim's key.
        send: Sends a created job's chunk tasks; an exception fails the run and deletes
            the job.
        settings: Limits and chunk size (the process settings by default).
    """
    settings = settings or get_settings()
    if due_at.tzinfo is None:
        raise ValueError("due_at must be timezone-aware (UTC)")
    due_at = due_at.astimezone(UTC)
    reconcile(engine, {schedule.name: schedule})
    run_id = claim(engine, schedule.name, due_at)
    if run_id is None:
        return RunOutcome(schedule.name, due_at, None)
    try:
        return _run_claimed(engine, schedule, due_at, run_id, send, settings)
    except Exception as exc:
        # Whatever went wrong, the run must not stay "claimed" without saying why.
        log.exception("schedule %r: run %d failed unexpectedly", schedule.name, run_id)
        message = scrub(
            f"schedule {schedule.name!r}: unexpected error: {type(exc).__name__}: {exc}",
            schedule.url,
            settings.broker_url,
            settings.database_url,
        )
        with engine.begin() as conn:
            set_run(conn, run_id, status=RunStatus.FAILED, error=message)
        return RunOutcome(schedule.name, due_at, RunStatus.FAILED, run_id, error=message)


def _run_claimed(
    engine: Engine,
    schedule: Schedule,
    due_at: datetime,
    run_id: int,
    send: SendJob,
    settings: Settings,
) -> RunOutcome:
    name = schedule.name
    with engine.connect() as conn:
        blocker = _earlier_run_in_progress(conn, name, run_id, due_at)
        watermark = load_watermark(conn, name) if schedule.source == SourceKind.SQL else None
        known = load_files(conn, name) if schedule.source.reads_files else {}

    def finish(status: RunStatus, error: str | None = None, **values: Any) -> RunOutcome:
        with engine.begin() as conn:
            set_run(conn, run_id, status=status, error=error, **values)
        return RunOutcome(name, due_at, status, run_id, error=error)

    if blocker is not None:
        what = (
            f"its job {blocker.job_id} is {blocker.job_status}"
            if blocker.job_id
            else "it is still reading its source"
        )
        return finish(
            RunStatus.SKIPPED,
            f"the run due {blocker.due_at.isoformat()} is still going ({what})",
        )
    try:
        window = read_window(schedule, watermark, settings, known)
    except SourceError as exc:
        log.warning("%s", exc)
        return finish(RunStatus.FAILED, str(exc), window_start=watermark)

    if not window.items:
        with engine.begin() as conn:
            # Nothing to score, so nothing to wait for: files that held no inputs (empty
            # files) are committed now, or they would be read again every run.
            commit_window(conn, schedule, window.end)
            set_run(
                conn,
                run_id,
                status=RunStatus.EMPTY,
                items=0,
                window_start=window.start,
                window_end=window.end,
            )
        return RunOutcome(name, due_at, RunStatus.EMPTY, run_id)

    def create(conn: Connection) -> Job:
        job = create_job(
            conn,
            schedule.spec,
            window.items,
            chunk_size=settings.chunk_size,
            owner_key_id=_owner_key_id(conn, schedule),
            schedule=name,
            priority=schedule.priority,
        )
        set_run(
            conn,
            run_id,
            status=RunStatus.RUNNING,
            job_id=job.id,
            items=len(window.items),
            window_start=window.start,
            window_end=window.end,
        )
        return job

    def unlink(conn: Connection) -> None:
        set_run(conn, run_id, job_id=None)

    try:
        # A job whose tasks never reached the broker is deleted again (it would stay queued
        # for ever and hold every later run back as "still going"); the run fails instead.
        job = submit_job(engine, create, send, undo=unlink).job
    except Exception as exc:
        message = scrub(
            f"schedule {name!r}: could not queue job: {type(exc).__name__}: {exc}",
            settings.broker_url,
        )
        log.warning("%s", message)
        with engine.begin() as conn:
            set_run(conn, run_id, status=RunStatus.FAILED, job_id=None, error=message)
        return RunOutcome(
            name, due_at, RunStatus.FAILED, run_id, items=len(window.items), error=message
        )
    log.info("schedule %r: job %s queued with %d items", name, job.id, len(window.items))
    return RunOutcome(name, due_at, RunStatus.RUNNING, run_id, job.id, len(window.items))


def _earlier_run_in_progress(
    conn: Connection, name: str, run_id: int, due_at: datetime
) -> RunView | None:
    """The run that makes this one a skip: a queued or running job, or an earlier claim."""
    for run in open_runs(conn, [name]):
        if run.id == run_id:
            continue
        if run.status == RunStatus.RUNNING and run.job_status in ACTIVE_JOB_STATES:
            return run
        # Two claims of different due times racing: the later due time yields, so exactly
        # one of them goes on whichever order they commit in.
        if run.status == RunStatus.CLAIMED and run.due_at < due_at:
            return run
    return None


def _owner_key_id(conn: Connection, schedule: Schedule) -> int | None:
    """The id of the active API key named ``owner_key`` (None: no owner configured/found)."""
    if not schedule.owner_key:
        return None
    key_id = conn.scalar(
        select(api_keys.c.id)
        .where(and_(api_keys.c.name == schedule.owner_key, api_keys.c.revoked_at.is_(None)))
        .order_by(api_keys.c.id.desc())
        .limit(1)
    )
    if key_id is None:
        log.warning(
            "schedule %r: owner_key %r names no active API key; the job has no owner",
            schedule.name,
            schedule.owner_key,
        )
    return int(key_id) if key_id is not None else None


def reconcile(
    engine: Engine, schedules: Mapping[str, Schedule], now: datetime | None = None
) -> int:
    """Finish the open runs whose jobs are final, committing the windows of completed ones.

    Safe to run concurrently: each run is finished by one conditional update, and only the
    process whose update took it commits the window. Returns how many runs it finished.
    """
    if not schedules:
        return 0
    now = now or utcnow()
    with engine.connect() as conn:
        runs = open_runs(conn, schedules)
    finished = 0
    for run in runs:
        ending = _ending(run, now)
        if ending is None:
            continue
        status, error = ending
        with engine.begin() as conn:
            if not set_run(conn, run.id, only_if=run.status, status=status, error=error):
                continue  # another process finished it first
            if status == RunStatus.COMPLETED:
                commit_window(conn, schedules[run.schedule], run.window_end)
        finished += 1
        log.info("schedule %r: run due %s %s", run.schedule, run.due_at.isoformat(), status.value)
    return finished


def _ending(run: RunView, now: datetime) -> tuple[RunStatus, str | None] | None:
    """How an open run ends now, or None if it is still going."""
    if run.status == RunStatus.CLAIMED:
        if now - run.created_at < CLAIM_STALE_AFTER:
            return None
        return RunStatus.FAILED, (
            "abandoned: the process that claimed this run stopped before creating its job"
        )
    if run.job_status is None:
        return RunStatus.FAILED, "its job was deleted before it finished"
    job_status = JobStatus(run.job_status)
    if job_status in ACTIVE_JOB_STATES:
        return None
    status = _JOB_TO_RUN[job_status]
    if status == RunStatus.FAILED:
        return status, (
            f"job {run.job_id} {job_status.value}; the next run reads the same window again"
        )
    if status == RunStatus.CANCELLED:
        return status, f"job {run.job_id} was cancelled; the next run reads the same window again"
    return status, None


def tick(
    engine: Engine,
    schedules: Sequence[Schedule],
    send: SendJob,
    *,
    now: datetime | None = None,
    settings: Settings | None = None,
) -> list[RunOutcome]:
    """One beat: finish open runs, then run each schedule whose latest due time is unclaimed.

    A due time missed while no beat ran (a restart at 02:05 for 02:00) runs at the next
    tick; older missed due times are not replayed. One schedule's failure, even an
    unexpected one, is logged and the others still run.
    """
    settings = settings or get_settings()
    now = now or utcnow()
    zone = schedule_zone(settings)
    try:
        reconcile(engine, {schedule.name: schedule for schedule in schedules}, now)
    except Exception:
        log.exception("could not reconcile the open schedule runs")
    outcomes = []
    for schedule in schedules:
        try:
            due_at = latest_due(schedule.cron, now, zone)
            with engine.connect() as conn:
                if is_claimed(conn, schedule.name, due_at):
                    continue
            outcomes.append(run_schedule(engine, schedule, due_at, send, settings=settings))
        except Exception:
            log.exception("schedule %r: tick failed", schedule.name)
    return outcomes
