"""Log records that carry the job and chunk they concern, as text or as JSON lines.

The job and chunk ids live in context variables set around a chunk task (``worker.tasks``
deliveries, via Celery's task signals) or a request on a job (the API's middleware); a
filter copies them onto every record emitted meanwhile, from any module, so a grep for a
job id finds every line about it. ``BULKSCORE_LOG_FORMAT=json`` writes one JSON object per
line (``time``, ``level``, ``logger``, ``pid``, ``message``, ``job_id``, ``chunk``,
``exc``) for log collectors.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime

JOB_ID: ContextVar[str | None] = ContextVar("bulkscore_job_id", default=None)
CHUNK: ContextVar[int | None] = ContextVar("bulkscore_chunk", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"


@contextmanager
def job_context(job_id: str | None, chunk: int | None = None) -> Iterator[None]:
    """Records emitted inside the block carry ``job_id`` (and ``chunk``)."""
    job_token = JOB_ID.set(job_id)
    chunk_token = CHUNK.set(chunk)
    try:
        yield
    finally:
        CHUNK.reset(chunk_token)
        JOB_ID.reset(job_token)


class ContextFilter(logging.Filter):
    """Copies the current job and chunk ids onto each record (None when there are none)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "job_id"):
            record.job_id = JOB_ID.get()
        if not hasattr(record, "chunk"):
            record.chunk = CHUNK.get()
        return True


class TextFormatter(logging.Formatter):
    """The usual line, with `` job=<id> chunk=<n>`` appended when the record has them."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        job_id, chunk = getattr(record, "job_id", None), getattr(record, "chunk", None)
        if job_id is None:
            return line
        suffix = f" job={job_id}" + (f" chunk={chunk}" if chunk is not None else "")
        first, newline, rest = line.partition("\n")  # after the message, before a traceback
        return first + suffix + newline + rest


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        for key in ("job_id", "chunk"):
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def formatter(fmt: str) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else TextFormatter()


def configure(level: str, fmt: str = "text") -> None:
    """Send every record to stderr in ``fmt`` (``text`` or ``json``), with job context."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(fmt))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_bulkscore", False)]:
        root.removeHandler(old)
    handler._bulkscore = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())


def uvicorn_log_config(level: str, fmt: str = "text") -> dict[str, object]:
    """uvicorn's ``log_config``: its own loggers and ours through the same handler."""
    factory = f"{__name__}.{'JsonFormatter' if fmt == 'json' else 'TextFormatter'}"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": f"{__name__}.ContextFilter"}},
        "formatters": {"default": {"()": factory}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "default",
                "filters": ["context"],
            }
        },
        "root": {"handlers": ["default"], "level": level.upper()},
        "loggers": {
            "uvicorn": {"level": level.upper()},
            "uvicorn.error": {"level": level.upper()},
            "uvicorn.access": {"level": level.upper()},
        },
    }
