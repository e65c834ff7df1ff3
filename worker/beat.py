"""``bulkscore beat``: the process that runs the schedules of the models file.

The process model: one Celery worker process with an embedded beat (``-B``), consuming only
the ``bulkscore.control`` queue with the solo pool. Beat sends ``bulkscore.tick_schedules``
every ``schedule_tick_s`` seconds to that queue, and this same process runs it. Why this
shape rather than ``celery beat`` plus a separate control worker:

- one thing to deploy and supervise (the compose ``beat`` service), and a tick can never sit
  in a queue that no process consumes: whenever beat sends, its consumer is alive;
- the solo pool runs ticks one at a time in this process: never two ticks at once here,
  and no fork after a database engine exists;
- Celery advises against ``-B`` on ordinary workers because each one would send every
  periodic task again; this worker consumes nothing else, and a second beat process is
  harmless anyway, because each run is claimed in SQL (``core.schedules.runs.claim``).

On the same tick, at most every ``purge_every_s`` and only while a retention setting is on,
it runs the retention purge (:mod:`core.jobs.purge`): a bounded number of small delete
batches per tick, so the schedules' ticks never wait long behind it; a purge cut short
goes on at the next tick.

The tick only reads the schedules and SQL, creates each job as the API does
(:func:`core.jobs.submit.submit_job`) and publishes its chunk tasks by name through this
process's own app (:func:`core.queues.send_chunks`): it never loads a model.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence

from celery import Celery

from core.config import Settings, get_settings
from core.db import DbRole, get_engine, set_process_role
from core.jobs.lifecycle import Job
from core.jobs.purge import BEAT_MAX_BATCHES, Cutoffs, PurgeReport, purge_due, purge_with_settings
from core.jobs.submit import SendJob
from core.logs import configure
from core.queues import send_chunks
from core.schedules.config import ScheduleConfigError, load_schedules
from core.schedules.runner import RunOutcome, tick
from worker.celery_app import create_app

log = logging.getLogger(__name__)

TICK_TASK = "bulkscore.tick_schedules"
CONTROL_QUEUE = "bulkscore.control"
# In-memory beat schedule: nothing to persist, since which due times ran is in SQL, and a
# shelve file would only be one more thing to mount and lock.
BEAT_SCHEDULER = "celery.beat:Scheduler"


def job_sender(app: Celery) -> SendJob:
    """Sends a schedule's new job: one ``bulkscore.score_chunk`` task per chunk, by name."""

    def send(job: Job, chunk_indexes: Sequence[int]) -> None:
        send_chunks(app, job.id, job.runs_on, chunk_indexes)

    return send


def tick_schedules(app: Celery) -> int:
    """Run every schedule whose latest due time is not claimed yet; how many were triggered."""
    settings = get_settings()
    try:
        # Read at every tick, so an edited schedule applies without a restart.
        schedules = load_schedules(settings.models)
    except ScheduleConfigError as exc:
        log.error("no schedule runs until the models file is fixed: %s", exc)
        return 0
    if not schedules:
        return 0
    engine = get_engine(settings.database_url)
    outcomes = tick(engine, schedules, job_sender(app), settings=settings)
    for outcome in outcomes:
        _log_outcome(outcome)
    return len(outcomes)


class PurgeClock:
    """This beat's purge state: whether its last purge stopped with rows left."""

    def __init__(self) -> None:
        self.more_left = False


def purge_on_tick(settings: Settings, clock: PurgeClock) -> PurgeReport | None:
    """Run the retention purge if it is on and due (or its last run left rows); its report,
    or None when none ran. A failure is logged, never raised: the schedules still tick."""
    if not Cutoffs.from_settings(settings).on:
        return None
    engine = get_engine(settings.database_url)
    try:
        if not clock.more_left:
            with engine.connect() as conn:
                if not purge_due(conn, settings.purge_every_s):
                    return None
        report = purge_with_settings(engine, settings, max_batches=BEAT_MAX_BATCHES)
    except Exception as exc:
        log.error("retention purge failed (the next tick tries again): %s", exc)
        return None
    clock.more_left = not report.complete
    return report


def _log_outcome(outcome: RunOutcome) -> None:
    if outcome.status is None:
        log.info("schedule %r due %s: claimed by another process", outcome.schedule, outcome.due_at)
        return
    level = logging.WARNING if outcome.error and outcome.status.value == "failed" else logging.INFO
    log.log(
        level,
        "schedule %r due %s: %s, job %s, %d items%s",
        outcome.schedule,
        outcome.due_at.isoformat(),
        outcome.status.value,
        outcome.job_id or "-",
        outcome.items,
        f" ({outcome.error})" if outcome.error else "",
    )


def create_beat_app(settings: Settings | None = None) -> Celery:
    """The worker app plus the periodic tick, routed to the control queue."""
    settings = settings or get_settings()
    app = create_app(settings)
    interval = float(settings.schedule_tick_s)
    app.conf.beat_schedule = {
        "tick-schedules": {
            "task": TICK_TASK,
            "schedule": interval,
            # A tick not consumed within its interval is stale: the next one replaces it.
            "options": {"queue": CONTROL_QUEUE, "expires": interval},
        }
    }

    # Acked on receipt, unlike chunk tasks: a tick lost to a crash costs nothing, the next
    # one comes schedule_tick_s later, and every effect of a tick is idempotent in SQL.
    purge_clock = PurgeClock()

    @app.task(name=TICK_TASK, ignore_result=True, acks_late=False)
    def tick_task() -> int:
        triggered = tick_schedules(app)
        purge_on_tick(get_settings(), purge_clock)
        return triggered

    return app


def run_beat(loglevel: str | None = None) -> int:
    """Run the beat process until it is stopped; its exit code."""
    settings = get_settings()
    set_process_role(DbRole.BEAT, settings)
    level = (loglevel or settings.log_level).upper()
    # Text or JSON lines like every other process (core/logs.py); Celery's own loggers
    # reach the same handler (worker_hijack_root_logger is off).
    configure(level, settings.log_format)
    app = create_beat_app(settings)
    log.info(
        "beat: ticking every %ss on %s (schedules from %s)",
        settings.schedule_tick_s,
        CONTROL_QUEUE,
        settings.models,
    )
    beat_worker = app.Worker(
        hostname=f"bulkscore-beat-{os.getpid()}@{socket.gethostname()}",
        pool_cls="solo",
        concurrency=1,
        queues=[CONTROL_QUEUE],
        beat=True,
        scheduler=BEAT_SCHEDULER,
        loglevel=level,
        # JSON logs: no banner (its facts are in the log line above).
        quiet=settings.log_format == "json",
        without_mingle=True,
        without_gossip=True,
    )
    beat_worker.start()
    return int(beat_worker.exitcode or 0)
