"""The window a source returns, its error, and keeping secrets out of error messages."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from sqlalchemy.engine import make_url

from core.db import redact_url
from core.inputs.items import InputItem

# Error messages are stored on the run and shown by ``schedules list``: keep them readable.
MAX_ERROR_CHARS = 2000


class SourceError(Exception):
    """A source cannot be read (bad query, missing folder, unreachable database)."""


class KnownFile(NamedTuple):
    """A file as a files source last scored it (a ``schedule_files`` row)."""

    size: int  # bytes read
    mtime_ns: int
    # SHA-256 of those bytes and how many inputs they held; None for an image, a file that
    # could not be read, or a row committed before they were recorded.
    sha256: str | None = None
    rows: int | None = None


@dataclass(slots=True)
class Window:
    """New inputs of one run.

    Attributes:
        items: The inputs, in source order.
        start: What the run started from (the watermark it bound to ``:since``), as JSON.
        end: The state to commit when the run's job completes, as JSON: the new watermark
            of a sql source, or ``[[path, size, mtime_ns, sha256, rows], ...]`` of the
            files read (:class:`KnownFile`).
    """

    items: list[InputItem] = field(default_factory=list)
    start: Any = None
    end: Any = None


def scrub(message: str, *urls: str | None) -> str:
    """``message`` without the passwords of ``urls``, each URL shown redacted, shortened.

    Drivers sometimes echo the connection string (or its password) in their errors; a
    message that leaves this function holds neither.
    """
    for url in urls:
        if not url:
            continue
        message = message.replace(url, redact_url(url))
        try:
            password = make_url(url).password
        except Exception:  # an unparseable URL has no password we could find
            password = None
        if password:
            message = message.replace(str(password), "***")
    message = message.strip()
    if len(message) > MAX_ERROR_CHARS:
        message = message[: MAX_ERROR_CHARS - 3] + "..."
    return message
