"""``bulkscore schedules list|run`` and ``bulkscore beat``: scheduled scoring.

Schedules are ``[schedules.NAME]`` entries of the models file (BULKSCORE_MODELS); see
``examples/schedules.toml``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from cli.console import EXIT_FAILURE, EXIT_USAGE, JSON_HELP, fail, out_console, print_json
from cli.service_logs import prepare_service_output

if TYPE_CHECKING:
    from sqlalchemy.exc import SQLAlchemyError

    from core.schedules.config import Schedule
    from core.schedules.runs import RunView

TIME_FORMAT = "%Y-%m-%d %H:%M"

schedules_app = typer.Typer(
    help="Scheduled scoring: the schedules of the models file (BULKSCORE_MODELS).",
    no_args_is_help=True,
)


def _load() -> list[Schedule]:
    # Deferred: the settings (pydantic) and the schedules' parser are not needed by
    # `bulkscore --help`.
    from core.config import get_settings
    from core.schedules.config import ScheduleConfigError, load_schedules

    try:
        return load_schedules(get_settings().models)
    except ScheduleConfigError as exc:
        fail(str(exc), EXIT_USAGE)


def _database_error(exc: SQLAlchemyError) -> str:
    # Deferred: as in _load.
    from core.config import get_settings
    from core.db import redact_url

    url = get_settings().database_url
    reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
    return (
        f"cannot read the schedule runs from {redact_url(url)}: {reason} "
        "(is the database migrated? run `bulkscore db upgrade`)"
    )


def _job_cell(run: RunView | None) -> str:
    if run is None or run.job_id is None:
        return "-"
    if run.succeeded is None:  # the job was deleted
        return run.job_id
    return f"{run.job_id}\n{run.job_status}: {run.succeeded} ok, {run.failed} failed"


@schedules_app.command("list")
def list_schedules(as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Each schedule with its next due time, its last run and that run's job and counts."""
    # Deferred: SQL, the settings and the cron parser are not needed by `bulkscore --help`.
    from sqlalchemy.exc import SQLAlchemyError

    from core.clock import utcnow
    from core.config import get_settings
    from core.db import get_engine
    from core.schedules.config import next_due, schedule_zone
    from core.schedules.runs import latest_runs

    settings = get_settings()
    schedules = _load()
    if not schedules and not as_json:
        out_console.print(f"no schedules in {settings.models}", markup=False)
        return
    try:
        with get_engine(settings.database_url).connect() as conn:
            runs = latest_runs(conn, [schedule.name for schedule in schedules])
    except SQLAlchemyError as exc:
        fail(_database_error(exc))
    zone = schedule_zone(settings)
    now = utcnow()
    if as_json:
        print_json(
            [
                _schedule_json(
                    schedule, next_due(schedule.cron, now, zone), runs.get(schedule.name)
                )
                for schedule in schedules
            ]
        )
        return
    table = Table(title=f"schedules (times in {zone.key})", title_justify="left")
    for column in ("name", "cron", "model", "next due", "last run", "status", "items", "job"):
        table.add_column(column, no_wrap=column != "job", overflow="fold")
    for schedule in schedules:
        run = runs.get(schedule.name)
        table.add_row(
            schedule.name,
            schedule.cron,
            schedule.model,
            next_due(schedule.cron, now, zone).astimezone(zone).strftime(TIME_FORMAT),
            run.due_at.astimezone(zone).strftime(TIME_FORMAT) if run else "never",
            run.status.value if run else "-",
            str(run.items) if run else "-",
            _job_cell(run),
        )
    out_console.print(table)
    # Errors below the table: a database error message does not fit in a cell.
    for schedule in schedules:
        run = runs.get(schedule.name)
        if run is not None and run.error:
            out_console.print(f"{schedule.name} ({run.status.value}): {run.error}", markup=False)


@schedules_app.command("run")
def run_now(
    name: str = typer.Argument(..., help="The schedule's NAME."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Run schedule NAME now (due time: now), under the same rules as the beat.

    Its job is queued for the workers (BULKSCORE_BROKER_URL); an earlier run still going
    makes this one a skip, and an empty window creates no job.
    """
    # Deferred: SQL and the settings are not needed by `bulkscore --help`.
    from sqlalchemy.exc import SQLAlchemyError

    from core.clock import utcnow
    from core.config import get_settings
    from core.db import get_engine
    from core.schedules.runner import run_schedule
    from core.schedules.runs import RunStatus

    settings = get_settings()
    schedules = {schedule.name: schedule for schedule in _load()}
    schedule = schedules.get(name)
    if schedule is None:
        fail(
            f"no schedule named {name!r}; schedules: {', '.join(sorted(schedules)) or '(none)'}",
            EXIT_USAGE,
        )
    # Deferred: Celery is imported for this command only; the others start without it.
    from worker.beat import job_sender
    from worker.celery_app import create_app

    app = create_app(settings)
    try:
        outcome = run_schedule(
            get_engine(settings.database_url),
            schedule,
            utcnow(),
            job_sender(app),
            settings=settings,
        )
    except SQLAlchemyError as exc:
        fail(_database_error(exc))
    if as_json:
        print_json(
            {
                "schedule": name,
                "status": outcome.status.value if outcome.status else None,
                "job_id": outcome.job_id,
                "items": outcome.items,
                "error": outcome.error,
            }
        )
        if outcome.status == RunStatus.FAILED:
            raise typer.Exit(EXIT_FAILURE)
        return
    if outcome.status is None:
        out_console.print(f"schedule {name}: this due time was already claimed; nothing to do")
        return
    detail = f"job {outcome.job_id}, {outcome.items} items" if outcome.job_id else "no job"
    out_console.print(f"schedule {name}: {outcome.status.value} ({detail})", markup=False)
    if outcome.status == RunStatus.FAILED:
        fail(outcome.error or "the run failed", EXIT_FAILURE)
    if outcome.error:
        out_console.print(outcome.error, markup=False)


def beat(
    loglevel: str | None = typer.Option(
        None, "--loglevel", "-l", help="Log level (default BULKSCORE_LOG_LEVEL)."
    ),
) -> None:
    """Run the schedules: check every BULKSCORE_SCHEDULE_TICK_S seconds for due ones.

    Each due time creates at most one job, even with two beats running (the run is claimed
    in SQL). Reads BULKSCORE_DATABASE_URL, BULKSCORE_BROKER_URL and BULKSCORE_MODELS.
    """
    prepare_service_output()
    # Deferred: Celery is imported for this command only; the others start without it.
    from worker.beat import run_beat

    raise typer.Exit(run_beat(loglevel))


def _schedule_json(schedule: Schedule, due: Any, run: RunView | None) -> dict[str, Any]:
    """A schedule, its next due time and its last run (times in UTC, ISO 8601)."""
    return {
        "name": schedule.name,
        "cron": schedule.cron,
        "model": schedule.model,
        "next_due": due,
        "last_run": None
        if run is None
        else {
            "due_at": run.due_at,
            "status": run.status.value,
            "items": run.items,
            "job_id": run.job_id,
            "job_status": run.job_status,
            "succeeded": run.succeeded,
            "failed": run.failed,
            "error": run.error,
        },
    }
