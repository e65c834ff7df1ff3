"""Job priorities: which level of work a worker takes first.

Three levels, claimed highest first (:mod:`core.chunks.fair`); within a level, work is
shared round-robin across owner keys and their jobs. A waiting job's level rises with age
(one level per ``priority_aging_s``), so a ``low`` job still advances behind a steady
stream of ``normal`` ones: nothing starves.
"""

from __future__ import annotations

from enum import StrEnum


class Priority(StrEnum):
    """A job's priority; ``normal`` unless the submitter says otherwise."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def level(self) -> int:
        """0 for the highest level: rank order, smaller first."""
        return _LEVELS[self]


_LEVELS = {Priority.HIGH: 0, Priority.NORMAL: 1, Priority.LOW: 2}

# Schedules run unattended at night: people waiting on a result come first.
SCHEDULE_PRIORITY = Priority.LOW
