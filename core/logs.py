"""Log records that carry the job and chunk they concern, as text or as JSON lines.

The job and chunk ids live in context variables set around a chunk task (``worker.tasks``
deliveries, via Celery's task signals) or a request on a job (the API's middleware); a
filter copies them onto every record emitted meanwhile, from any module, so a grep for a
job id finds every line about it. ``BULKSCORE_LOG_FORMAT=json`` writes one JSON object per
line (``time``, ``level``, ``logger``, ``pid``, ``message``, ``job_id``, ``chunk``,
``exc``) for log collectors.

In JSON mode a service process (API, worker, beat) also calls :func:`capture_stray_output`
first: whatever is written to its stdout or stderr outside ``logging`` (Celery's banner and
shutdown notices, ``print``, a native library's messages) becomes a JSON line too, so a log
collector never meets a line it cannot parse.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TextIO

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


# One lock for every write to the real stderr: log records and relayed lines never interleave.
_WRITE_LOCK = threading.RLock()
# The process's real stderr once capture_stray_output has put pipes on fds 1 and 2.
_real_stderr: TextIO | None = None


class LogStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to the real stderr, beside (not through) the capture of stray output."""

    def __init__(self) -> None:
        super().__init__(_real_stderr or sys.stderr)
        self.lock = _WRITE_LOCK  # shared with the relay's writes of lines already JSON


def _relay(read_fd: int, name: str, level: int) -> None:
    """Turn each line read from ``read_fd`` into a JSON log line (JSON lines pass as they are)."""
    logger = logging.getLogger(name)
    pending = b""
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        while chunk := pipe.read(65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                _relay_line(logger, level, raw.decode("utf-8", errors="replace").rstrip())
        if pending:
            _relay_line(logger, level, pending.decode("utf-8", errors="replace").rstrip())


def _relay_line(logger: logging.Logger, level: int, line: str) -> None:
    if not line.strip():
        return
    if line.startswith("{"):
        try:
            already = isinstance(json.loads(line), dict)
        except ValueError:
            already = False
        if already and _real_stderr is not None:
            with _WRITE_LOCK:
                _real_stderr.write(line + "\n")
            return
    # The relay must keep draining whatever happens, or every writer blocks on a full pipe.
    with suppress(Exception):
        logger.log(level, line)


def capture_stray_output() -> None:
    """Make every line this process writes to fds 1 and 2 a JSON log line (JSON mode).

    Each fd gets a pipe read by a thread that logs its lines (logger ``stdout`` at INFO,
    ``stderr`` at WARNING); the log handler writes to a copy of the real stderr. At exit
    the real fds come back and the threads drain what is left. Idempotent.
    """
    global _real_stderr
    if _real_stderr is not None:
        return
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    _real_stderr = os.fdopen(os.dup(saved[2]), "w", buffering=1, encoding="utf-8")
    relays = []
    for fd, name, level in ((1, "stdout", logging.INFO), (2, "stderr", logging.WARNING)):
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, fd)
        os.close(write_fd)
        relay = threading.Thread(
            target=_relay, args=(read_fd, name, level), name=f"{name}-relay", daemon=True
        )
        relay.start()
        relays.append(relay)

    def restore() -> None:
        for stream in (sys.stdout, sys.stderr):
            with suppress(OSError, ValueError):
                stream.flush()
        for fd, original in saved.items():
            os.dup2(original, fd)  # closes the pipe's last write end: the relay sees EOF
        for relay in relays:
            relay.join(timeout=2)

    atexit.register(restore)


def configure(level: str, fmt: str = "text") -> None:
    """Send every record to stderr in ``fmt`` (``text`` or ``json``), with job context.

    Python warnings become log records too (logger ``py.warnings``).
    """
    handler = LogStreamHandler()
    handler.setFormatter(formatter(fmt))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_bulkscore", False)]:
        root.removeHandler(old)
    handler._bulkscore = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.captureWarnings(True)


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
                "()": f"{__name__}.LogStreamHandler",
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
