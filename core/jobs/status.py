"""Job and chunk states. Lower-case values are the same in the database, JSON and logs."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"  # every item has a result row (a label or a per-item error)
    FAILED = "failed"  # the job itself could not run; see the job's ``error``
    CANCELLED = "cancelled"
    # Not finished by its ``expires_after_s`` deadline: results so far are kept, the chunks
    # not yet run never run (``core.jobs.expiry``).
    EXPIRED = "expired"

    @property
    def is_final(self) -> bool:
        return self in FINAL_JOB_STATES


FINAL_JOB_STATES = frozenset(
    {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.EXPIRED}
)
ACTIVE_JOB_STATES = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})


class JobDriver(StrEnum):
    """Who claims a job's chunks. Each driver claims only its own jobs' chunks."""

    # The service: chunk messages, workers, and the lease, split and lost-message sweeps.
    SERVICE = "service"
    # One `bulkscore score` (or `compare`) process, in-process: no messages are sent, and
    # no worker, sweep or split ever claims or re-sends its chunk, even past its lease.
    EMBEDDED = "embedded"


class ChunkStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"
    # Out of attempts with more than one item unscored: its items moved to two new chunks
    # (core.chunks.split), so a poison item is found by bisection instead of failing the chunk.
    SPLIT = "split"
    # Taken with the chunks around it by one claim of a fast model: its items moved to the
    # new chunk that holds them all (core.chunks.runs).
    MERGED = "merged"
