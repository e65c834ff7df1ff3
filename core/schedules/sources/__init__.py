"""Where a schedule's inputs come from: the window of new inputs since the last success.

A source reads; it never writes. :func:`read_window` returns the items that are new since
the committed state, with the state to commit once their job completes (``Window.end``).
The run logic (``core.schedules.runner``) decides when that happens.
"""

from __future__ import annotations

from typing import Any

from core.config import Settings
from core.schedules.config import Schedule, SourceKind
from core.schedules.sources.base import KnownFile, SourceError, Window, scrub
from core.schedules.sources.files import read_files_window
from core.schedules.sources.sql import read_sql_window


def read_window(
    schedule: Schedule, state: Any, settings: Settings, known_files: dict[str, KnownFile]
) -> Window:
    """The new inputs of ``schedule`` since its committed state.

    Args:
        schedule: The schedule.
        state: The committed watermark of a sql source (JSON, see
            ``core.schedules.sources.sql``), or None before the first successful run.
        settings: Limits (text length, image size).
        known_files: For file sources, the files scored (``core.schedules.state.load_files``).

    Raises:
        SourceError: The source cannot be read; the message is safe to store and show.
    """
    if schedule.source == SourceKind.SQL:
        return read_sql_window(schedule, state, settings)
    return read_files_window(schedule, known_files, settings)


__all__ = ["KnownFile", "SourceError", "Window", "read_window", "scrub"]
