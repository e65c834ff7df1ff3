"""The ``sql`` source: the rows of the user's query newer than the last committed watermark.

The query is the user's and runs read-only: on PostgreSQL inside a ``SET TRANSACTION READ
ONLY`` transaction that is rolled back, on SQLite on a connection opened with
``mode=ro`` (which also never creates a missing file); on other databases inside a
transaction that is rolled back (give such a schedule a read-only database user).

``:since`` is bound to the watermark: the largest value of the ``watermark`` column among
the rows of the last run whose job completed, with its Python type (a timestamp stays a
timestamp). Before the first success it is NULL, and ``col > NULL`` matches nothing, so
the query must say what the first run reads, e.g. on PostgreSQL::

    WHERE updated_at > COALESCE(:since, TIMESTAMPTZ '1970-01-01')

The rows must have the columns ``id``, ``text`` (``image``, bytes, for image models) and
the watermark column; alias yours (``body AS text``).
"""

from __future__ import annotations

import contextlib
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, pool, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import SQLAlchemyError

from core.config import Settings
from core.db import redact_url
from core.inputs.items import InputItem, checked_id, checked_text_item
from core.models.registry import InputKind
from core.schedules.config import Schedule
from core.schedules.sources.base import SourceError, Window, scrub

# An unreachable database fails the run in seconds instead of the OS's TCP timeout.
CONNECT_TIMEOUT_S = 10
# What PostgreSQL says about an untyped NULL parameter (:since on the first run).
FIRST_RUN_TYPE_ERRORS = ("could not determine data type", "operator does not exist")


def encode_watermark(value: Any) -> Any:
    """A watermark value as JSON that :func:`decode_watermark` turns back into its type."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        raise TypeError("a true/false column cannot be a watermark")
    if isinstance(value, int | float):
        return value
    if isinstance(value, datetime):
        return {"type": "datetime", "value": value.isoformat()}
    if isinstance(value, date):
        return {"type": "date", "value": value.isoformat()}
    if isinstance(value, Decimal):
        return {"type": "decimal", "value": str(value)}
    raise TypeError(
        f"a watermark must be a timestamp, date, number or string, not {type(value).__name__}"
    )


def decode_watermark(value: Any) -> Any:
    """The Python value of a stored watermark (None before the first success)."""
    if not isinstance(value, dict):
        return value
    kind, raw = value.get("type"), str(value.get("value"))
    if kind == "datetime":
        return datetime.fromisoformat(raw)
    if kind == "date":
        return date.fromisoformat(raw)
    if kind == "decimal":
        return Decimal(raw)
    raise ValueError(f"unknown stored watermark {value!r}")


def read_only_url(url: str) -> URL:
    """``url``, opened read-only where the URL can say so (SQLite files)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return parsed
    database = parsed.database or ""
    if not database or database == ":memory:":
        raise ValueError("a sqlite source needs a database file, not an in-memory database")
    if database.startswith("file:"):
        return parsed.update_query_dict({"mode": "ro", "uri": "true"})
    return parsed.set(database=f"file:{database}").update_query_dict({"mode": "ro", "uri": "true"})


def source_engine(url: str) -> Engine:
    """A throw-away engine for one run: no pool, short connect timeout, read-only URL."""
    parsed = read_only_url(url)
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "postgresql":
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
    return create_engine(parsed, poolclass=pool.NullPool, connect_args=connect_args)


def read_sql_window(schedule: Schedule, state: Any, settings: Settings) -> Window:
    """The rows of ``schedule.query`` with ``:since`` bound to the committed watermark."""
    assert schedule.url is not None and schedule.query is not None
    where = redact_url(schedule.url)
    since = decode_watermark(state)
    try:
        engine = source_engine(schedule.url)
    except Exception as exc:  # no driver installed, an in-memory SQLite, bad URL options
        raise _error(schedule, f"cannot use the database {where}: {_reason(exc)}") from None
    try:
        try:
            conn = engine.connect()
        except Exception as exc:
            raise _error(schedule, f"cannot connect to {where}: {_reason(exc)}") from None
        with conn:
            columns, rows = _run_query(conn, schedule, since)
    finally:
        engine.dispose()
    return _window(schedule, columns, rows, state, settings)


def _run_query(conn: Connection, schedule: Schedule, since: Any) -> tuple[list[str], list[Any]]:
    try:
        if conn.dialect.name == "postgresql":
            # Must be the transaction's first statement; the rollback below ends it.
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")
        result = conn.execute(text(schedule.query or ""), {"since": since})
        if not result.returns_rows:
            raise _error(schedule, "the query returned no rows at all: it must be a SELECT")
        columns = list(result.keys())
        rows = result.all()
    except SQLAlchemyError as exc:
        reason = _reason(exc)
        hint = ""
        if since is None and any(sign in reason for sign in FIRST_RUN_TYPE_ERRORS):
            hint = (
                " (this is the first run, so :since is NULL; give it a type and a start, e.g. "
                "updated_at > COALESCE(:since, TIMESTAMPTZ '1970-01-01') on PostgreSQL)"
            )
        raise _error(schedule, f"the query failed: {reason}{hint}") from None
    finally:
        # Nothing was written (read-only), and nothing may be: end the transaction. A
        # connection that broke mid-query has nothing left to roll back.
        with contextlib.suppress(SQLAlchemyError):
            conn.rollback()
    return columns, list(rows)


def _window(
    schedule: Schedule, columns: list[str], rows: list[Any], state: Any, settings: Settings
) -> Window:
    content = "image" if schedule.spec.input_kind == InputKind.IMAGE else "text"
    wanted = ["id", content, schedule.watermark or ""]
    missing = [column for column in wanted if column not in columns]
    if missing:
        raise _error(
            schedule,
            f"the query's rows have no column {', '.join(missing)} (they have "
            f"{', '.join(columns) or 'none'}); return id, {content} and the watermark column "
            f"{schedule.watermark!r}, aliasing yours (body AS {content})",
        )
    items = [_item(row, content, settings) for row in rows]
    values = [v for v in (row._mapping[schedule.watermark] for row in rows) if v is not None]
    try:
        end = encode_watermark(max(values)) if values else state
    except TypeError as exc:  # mixed or unorderable types, or a type we cannot store
        raise _error(schedule, f"column {schedule.watermark!r}: {exc}") from None
    return Window(items=items, start=state, end=end)


def _item(row: Any, content: str, settings: Settings) -> InputItem:
    mapping = row._mapping
    item_id = mapping["id"]
    if content == "text":
        return checked_text_item(item_id, mapping["text"], settings.max_text_chars)
    data = mapping["image"]
    if isinstance(data, memoryview):
        data = data.tobytes()
    if not isinstance(data, bytes):
        ident, problem = checked_id(item_id)
        return InputItem(item_id=ident, error=problem or "the image column must hold bytes")
    # Deferred: Pillow and numpy, for image inputs only.
    from core.inputs.images import checked_image_item

    return checked_image_item(item_id, data, settings.max_image_bytes)


def _reason(exc: BaseException) -> str:
    """The driver's own message (without SQLAlchemy's echo of the statement), first lines."""
    orig = getattr(exc, "orig", None) or exc
    lines = [line for line in str(orig).splitlines() if line.strip()]
    return " ".join(lines[:3]) or type(orig).__name__


def _error(schedule: Schedule, message: str) -> SourceError:
    return SourceError(scrub(f"schedule {schedule.name!r}: {message}", schedule.url))
