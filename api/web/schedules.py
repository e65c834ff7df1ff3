"""The schedules page's rows: the schedules whose jobs the signed-in key owns.

A schedule's jobs belong to the key its ``owner_key`` names, so a key sees the schedules
that make its jobs, and no other: the pages show what the key sees through the API.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection

from core.clock import utcnow
from core.config import Settings
from core.keys import key_name_of
from core.models.registry import Registry, RegistryError
from core.models.trained import SqlTrainedModels
from core.schedules.config import (
    Schedule,
    ScheduleConfigError,
    load_schedules,
    next_due,
    schedule_zone,
)
from core.schedules.runs import RunView, recent_runs

RUNS_SHOWN = 10


@dataclass(frozen=True, slots=True)
class ScheduleRow:
    schedule: Schedule
    next_due: datetime
    runs: list[RunView]


def owned_schedules(
    conn: Connection, settings: Settings, key_id: int
) -> tuple[list[ScheduleRow], str | None]:
    """The key's schedules with their next due time and last runs, and a configuration
    error to show instead (None when the models file reads well)."""
    try:
        registry = Registry.load(settings.models).with_trained(
            SqlTrainedModels(settings.database_url)
        )
        schedules = load_schedules(settings.models, registry)
    except (RegistryError, ScheduleConfigError) as exc:
        return [], str(exc)
    name = key_name_of(conn, key_id)
    zone = schedule_zone(settings)
    now = utcnow()
    rows = [
        ScheduleRow(
            schedule,
            next_due(schedule.cron, now, zone).astimezone(zone),
            recent_runs(conn, schedule.name, RUNS_SHOWN),
        )
        for schedule in schedules
        if name is not None and schedule.owner_key == name
    ]
    return rows, None
