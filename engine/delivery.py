"""What a delivery of a chunk is given and what it reports: the driver, the outcome, leases.

Shared by :mod:`engine.chunk_work` (scoring chunks) and :mod:`engine.training_chunk` (a
training job's one chunk); see the former for the delivery itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from time import monotonic

from sqlalchemy import Engine

from core.chunks.batches import ChunkKey, renew_leases
from core.config import Settings
from core.jobs.status import JobDriver
from core.models.trained import TrainedModel
from core.queues import ChunkSend
from engine.runners.base import Progress, Runner
from engine.trainer import BackboneFor, ExamplesFor

RunnerLookup = Callable[[str], Runner | None]


@dataclass(frozen=True, slots=True)
class Driver:
    """Who is working on a chunk, and what that driver may do besides scoring it."""

    # The runner of a model this process has loaded, or None.
    runner_for: RunnerLookup
    kind: JobDriver = JobDriver.SERVICE
    # Called with a count as items are scored (a worker's liveness heartbeat, a progress
    # bar), including items found already scored.
    progress: Progress | None = None
    # Sends the new chunks of a split; None: the lost-message sweep sends them later.
    send: ChunkSend | None = None
    # None: settings.chunk_max_attempts. An embedded run is retried by hand, never split.
    max_attempts: int | None = None
    # Claim other jobs' queued chunks to score with a small one (the service only).
    cross_job: bool = True
    # How many workers serve a model (live heartbeats): a claim of a run of chunks leaves
    # each of the others its share of the job (core.chunks.runs); None: unknown.
    workers_for: Callable[[str], int | None] | None = None
    # The feature extractor a training job's base is trained on; None: this driver trains
    # nothing (it leaves training chunks to one that does).
    backbone_for: BackboneFor | None = None
    # A training run's examples; None: its stored upload (bulkscore train: local files).
    training_examples: ExamplesFor | None = None

    @classmethod
    def embedded(cls, runner: Runner, progress: Progress | None = None) -> Driver:
        """The in-process driver of ``bulkscore score``: its own job, its own runner."""
        return cls(
            runner_for=lambda _model: runner,
            kind=JobDriver.EMBEDDED,
            progress=progress,
            max_attempts=EMBEDDED_MAX_ATTEMPTS,
            cross_job=False,
        )


# A person re-runs `bulkscore score --job-id` after a crash; no attempt limit applies, and
# the column is a 32-bit integer.
EMBEDDED_MAX_ATTEMPTS = 2**31 - 1


class ChunkOutcome(StrEnum):
    """What one delivery did."""

    DONE = "done"  # scored (items already scored by an earlier attempt were skipped)
    # The job was cancelled or expired: stopped before or during the chunk.
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # nothing to do: the chunk is done, or the job is final or gone
    BUSY = "busy"  # another delivery holds the chunk: deliver again after retry_in_s
    WRONG_MODEL = "wrong_model"  # this process has not loaded the job's model
    FAILED = "failed"  # a training job that cannot succeed: failed with the reason
    # Part-scored, then its unscored rest was handed back as a new chunk so that a job
    # ranked before it (fair claiming) runs first.
    YIELDED = "yielded"


@dataclass(frozen=True, slots=True)
class BatchedChunk:
    """Another job's chunk this delivery claimed and scored with its own (cross-job)."""

    job_id: str
    index: int
    outcome: ChunkOutcome
    scored: int
    already_scored: int
    attempts: int


@dataclass(frozen=True, slots=True)
class ChunkReport:
    outcome: ChunkOutcome
    reason: str = ""
    model: str | None = None
    scored: int = 0
    already_scored: int = 0
    attempts: int = 0
    retry_in_s: float = 0.0
    batched: tuple[BatchedChunk, ...] = ()
    trained: TrainedModel | None = None  # the version a training chunk registered
    # Fair claiming: the chunk this delivery worked on, when not the one its message named.
    worked_on: tuple[str, int] | None = None


class ChunkAttemptError(RuntimeError):
    """A claimed attempt failed; ``retry`` says whether another attempt may follow."""

    def __init__(self, message: str, *, attempts: int, retry: bool) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.retry = retry


def lease_keeper(
    engine: Engine, settings: Settings, keys: list[ChunkKey], on_progress: Progress | None
) -> Progress:
    """A progress callback that also renews the leases of ``keys`` every third of a lease.

    Chunks that make progress keep their leases, so only a stalled or dead worker's chunks
    are taken over by a later delivery.
    """
    renew_every = settings.chunk_lease_s / 3
    last_renewal = monotonic()

    def progress(count: int) -> None:
        nonlocal last_renewal
        if on_progress is not None:
            on_progress(count)
        if monotonic() - last_renewal >= renew_every:
            with engine.begin() as conn:
                renew_leases(conn, keys, settings.chunk_lease_s)
            last_renewal = monotonic()

    return progress
