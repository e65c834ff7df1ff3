"""Schedules: ``[schedules.NAME]`` entries of the models file, and when each is due.

A schedule names a registered model, a cron expression (read in the ``schedule_timezone``
setting, UTC by default) and a source of inputs::

    [schedules.nightly-reviews]
    cron = "0 2 * * *"
    model = "sentiment"
    source = "sql"                      # sql | files | jsonl | csv
    url = "postgresql+psycopg://reader@db/shop"
    query = "SELECT id, body AS text, updated_at FROM reviews WHERE updated_at > :since"
    watermark = "updated_at"
    owner_key = "nightly"               # optional: the API key that owns the jobs

Names and configuration only: nothing here reads a source or touches the database.
"""

from __future__ import annotations

import re
import tomllib
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from croniter import croniter
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from core.config import Settings, get_settings
from core.inputs.columns import ColumnChoiceError, InputColumns
from core.jobs.priority import SCHEDULE_PRIORITY, Priority
from core.models.registry import (
    NAME_PATTERN,
    InputKind,
    ModelSpec,
    Registry,
    RegistryError,
    UnknownModelError,
)
from core.models.trained import SqlTrainedModels

# ``:since`` as a bind parameter (not inside a longer name such as ``:since_day``).
SINCE_PARAMETER = re.compile(r"(?<!:):since\b")


class SourceKind(StrEnum):
    SQL = "sql"  # rows of a query on any SQLAlchemy URL, newer than a watermark
    FILES = "files"  # a glob of images, or of .txt/.jsonl/.csv/.parquet files (by suffix)
    JSONL = "jsonl"  # a glob of JSON Lines files, whatever their suffix
    CSV = "csv"  # a glob of CSV files, whatever their suffix
    PARQUET = "parquet"  # a glob of Parquet files, whatever their suffix

    @property
    def reads_files(self) -> bool:
        return self != SourceKind.SQL


SQL_ONLY_FIELDS = ("url", "query", "watermark")


class ScheduleConfigError(ValueError):
    """A ``[schedules.NAME]`` entry is malformed; the message says which and why."""


class Schedule(BaseModel):
    """One ``[schedules.NAME]`` entry, checked against the model registry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    cron: str
    model: str
    source: SourceKind
    url: str | None = None
    query: str | None = None
    watermark: str | None = None
    path: str | None = None
    owner_key: str | None = None
    # File sources: the columns of texts and ids (default text, id), and input columns
    # carried into every export (as with `bulkscore score --keep-columns`).
    text_column: str | None = None
    id_column: str | None = None
    keep_columns: list[str] | None = None
    # Unattended nightly work yields to people waiting on a result, unless told otherwise.
    priority: Priority = SCHEDULE_PRIORITY
    # Filled in by the loader from the registry (never written in the file).
    spec: ModelSpec

    @model_validator(mode="after")
    def _check(self) -> Schedule:
        if not croniter.is_valid(self.cron):
            raise ValueError(
                f"cron {self.cron!r} is not a valid cron expression "
                '(five fields: minute hour day-of-month month day-of-week, e.g. "0 2 * * *")'
            )
        if self.source == SourceKind.SQL:
            self._check_sql()
        else:
            self._check_files()
        return self

    def _check_sql(self) -> None:
        missing = [field for field in SQL_ONLY_FIELDS if not getattr(self, field)]
        if missing:
            raise ValueError(
                f"a sql source needs {', '.join(missing)} "
                "(url: a SQLAlchemy URL; query: a SELECT with a :since parameter; "
                "watermark: the column whose largest value the next run starts after)"
            )
        if self.path:
            raise ValueError("path is for files, jsonl, csv and parquet sources, not sql")
        if self.text_column or self.id_column or self.keep_columns:
            raise ValueError(
                "text_column, id_column and keep_columns are for file sources, not sql "
                "(name the columns text and id in the query)"
            )
        try:
            make_url(self.url or "")
        except ArgumentError:
            raise ValueError(
                "url is not a SQLAlchemy URL (dialect+driver://user@host/db)"
            ) from None
        if not SINCE_PARAMETER.search(self.query or ""):
            # Without :since every run would score the whole table again.
            raise ValueError(
                "query must use the :since parameter, e.g. "
                "WHERE updated_at > COALESCE(:since, TIMESTAMPTZ '1970-01-01')"
            )

    def _check_files(self) -> None:
        if not self.path:
            raise ValueError(
                f"a {self.source.value} source needs path (a glob such as /data/*.jsonl)"
            )
        extra = [field for field in SQL_ONLY_FIELDS if getattr(self, field)]
        if extra:
            raise ValueError(f"{', '.join(extra)} apply to sql sources only")
        try:
            self.columns  # noqa: B018 - checks the column choice now, not at the first run
        except ColumnChoiceError as exc:
            raise ValueError(str(exc)) from None
        if self.source != SourceKind.FILES and self.spec.input_kind == InputKind.IMAGE:
            raise ValueError(
                f"model {self.model!r} scores images; a {self.source.value} source holds texts "
                '(use source = "files" with a glob of images)'
            )

    @property
    def columns(self) -> InputColumns:
        """The text, id and kept columns of a file source's table-like files."""
        return InputColumns(
            self.text_column or "text", self.id_column or "id", tuple(self.keep_columns or ())
        )


def load_schedules(path: Path | None = None, registry: Registry | None = None) -> list[Schedule]:
    """The schedules of the models file (the configured one by default), sorted by name.

    Raises:
        ScheduleConfigError: The file cannot be read, or an entry is malformed or names a
            model that is not registered.
    """
    path = Path(path or get_settings().models)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ScheduleConfigError(f"models file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ScheduleConfigError(f"models file {path} is not valid TOML: {exc}") from exc
    base_dir = path.resolve().parent
    if registry is None:
        try:
            registry = Registry.from_mapping(raw, base_dir=base_dir, path=path)
            # A schedule may name a trained model (bulkscore train): its latest version.
            registry = registry.with_trained(SqlTrainedModels(get_settings().database_url))
        except RegistryError as exc:
            raise ScheduleConfigError(str(exc)) from exc
    return parse_schedules(raw.get("schedules") or {}, registry, base_dir=base_dir, origin=path)


def parse_schedules(
    entries: dict[str, Any],
    registry: Registry,
    base_dir: Path = Path("."),
    origin: Path | None = None,
) -> list[Schedule]:
    """Check each ``NAME -> entry`` mapping and return the schedules, sorted by name.

    Args:
        entries: The ``schedules`` table of the TOML file.
        registry: The models a schedule may name.
        base_dir: The folder relative ``path`` globs are resolved against (the file's).
        origin: The file, for messages.
    """
    where = f" in {origin}" if origin else ""
    schedules = []
    for name, entry in sorted(entries.items()):
        prefix = f"schedule {name!r}{where}"
        if not NAME_PATTERN.fullmatch(name):
            raise ScheduleConfigError(
                f"{prefix}: use lower-case letters, digits, '.', '_' and '-' (at most 64)"
            )
        if not isinstance(entry, dict):
            raise ScheduleConfigError(f"{prefix}: expected a [schedules.{name}] table")
        if "model" not in entry:
            raise ScheduleConfigError(f"{prefix}: model is required (a name from [models])")
        try:
            spec = registry.get(entry["model"])
        except UnknownModelError as exc:
            raise ScheduleConfigError(f"{prefix}: {exc}") from exc
        values = dict(entry)
        reserved = sorted({"name", "spec"} & set(values))
        if reserved:
            raise ScheduleConfigError(f"{prefix}: unknown field {reserved[0]!r}")
        if values.get("path"):
            values["path"] = _resolve_glob(str(values["path"]), base_dir)
        try:
            schedules.append(Schedule(name=name, spec=spec, **values))
        except ValidationError as exc:
            raise ScheduleConfigError(f"{prefix}: {_describe(exc)}") from exc
    return schedules


def _resolve_glob(pattern: str, base_dir: Path) -> str:
    expanded = Path(pattern).expanduser()
    return str(expanded if expanded.is_absolute() else base_dir / expanded)


def _describe(error: ValidationError) -> str:
    """Pydantic's errors as one readable line (without echoing the input back)."""
    parts = []
    for detail in error.errors(include_url=False, include_input=False):
        field = ".".join(str(part) for part in detail["loc"])
        kind = detail["type"]
        if kind == "missing":
            parts.append(f"{field} is required")
        elif kind == "extra_forbidden":
            parts.append(f"unknown field {field!r}")
        else:
            message = str(detail["msg"]).removeprefix("Value error, ")
            parts.append(f"{field}: {message}" if field else message)
    return "; ".join(parts)


def schedule_zone(settings: Settings | None = None) -> ZoneInfo:
    """The timezone cron expressions are read in."""
    return ZoneInfo((settings or get_settings()).schedule_timezone)


def latest_due(cron: str, now: datetime, zone: ZoneInfo) -> datetime:
    """The latest due time at or before ``now``, in UTC.

    croniter's ``get_prev`` excludes its start, so it starts one second after ``now``
    (cron has at most second resolution): a due time equal to ``now`` counts as due.
    """
    start = now.astimezone(zone).replace(microsecond=0) + timedelta(seconds=1)
    due: datetime = croniter(cron, start).get_prev(datetime)
    return due.astimezone(UTC)


def next_due(cron: str, now: datetime, zone: ZoneInfo) -> datetime:
    """The first due time strictly after ``now``, in UTC."""
    due: datetime = croniter(cron, now.astimezone(zone)).get_next(datetime)
    return due.astimezone(UTC)
