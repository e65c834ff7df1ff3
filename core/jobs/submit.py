"""Creating a job and sending its work: the one path for the API, the schedules and the CLI.

Order matters, and it is the same for every caller:

1. the job, its items and its chunks are committed (a worker that gets a message finds the
   job; a process killed after this point leaves a queued job that the lost-message sweep
   sends later);
2. its tasks are sent; if that fails the job is deleted again, so no caller ever reports a
   job that will not run;
3. only then is its Idempotency-Key attached. A retry with the same key can therefore only
   ever replay a job whose tasks were sent: never one that step 2 may still delete
   (``docs/promise.md``). Two requests racing with one key both get as far as step 3; the
   unique key lets one win, and the other deletes its own job and replays the winner's.

An embedded job (``bulkscore score``) is created the same way with no sender: its chunk is
claimed by the process that made it (:mod:`engine.chunk_work`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import IntegrityError

from core.jobs.lifecycle import (
    Job,
    attach_idempotency_key,
    delete_job,
    find_by_idempotency_key,
    list_chunks,
)

log = logging.getLogger(__name__)

# Sends a committed job's tasks: (job, its chunk indexes). Raises if it could not.
SendJob = Callable[[Job, Sequence[int]], None]
CreateJob = Callable[[Connection], Job]
# Extra writes undone with a job whose tasks could not be sent (a schedule run's link).
Undo = Callable[[Connection], None]


@dataclass(frozen=True, slots=True)
class Idempotency:
    """A client's Idempotency-Key, scoped to its API key, and the request it stands for."""

    owner_key_id: int | None
    key: str
    request_hash: str


class IdempotencyConflict(Exception):
    """The key was used before for a different request."""

    def __init__(self, key: str, job_id: str) -> None:
        super().__init__(
            f"Idempotency-Key {key!r} was already used for job {job_id} with a different request"
        )
        self.job_id = job_id


@dataclass(frozen=True, slots=True)
class Submitted:
    job: Job
    created: bool  # False: an idempotent replay of an earlier submission


def find_replay(engine: Engine, idempotency: Idempotency) -> Job | None:
    """The sent job this key already made, or None.

    Raises:
        IdempotencyConflict: The key's job was made by a different request.
    """
    with engine.connect() as conn:
        existing = find_by_idempotency_key(conn, idempotency.owner_key_id, idempotency.key)
    if existing is None:
        return None
    if existing.request_hash != idempotency.request_hash:
        raise IdempotencyConflict(idempotency.key, existing.id)
    return existing


def submit_job(
    engine: Engine,
    create: CreateJob,
    send: SendJob | None,
    *,
    idempotency: Idempotency | None = None,
    undo: Undo | None = None,
) -> Submitted:
    """Create a job in one transaction, send its tasks, then attach its idempotency key.

    Args:
        create: Inserts the job (and anything that goes with it) in the given transaction.
        send: Sends the job's tasks; None for an embedded job, which is never sent.
        idempotency: The client's key: a replay of an earlier submission returns its job.
        undo: Run in the transaction that deletes a job whose tasks could not be sent.

    Raises:
        IdempotencyConflict: The key was used for a different request.
        Exception: Whatever ``send`` raised; the job no longer exists.
    """
    if idempotency is not None:
        replay = find_replay(engine, idempotency)
        if replay is not None:
            return Submitted(replay, created=False)
    with engine.begin() as conn:
        job = create(conn)
        indexes = [chunk.index for chunk in list_chunks(conn, job.id)]
    if send is not None:
        try:
            send(job, indexes)
        except Exception as exc:
            _forget(engine, job.id, exc, undo)
            raise
    if idempotency is None:
        return Submitted(job, created=True)
    try:
        with engine.begin() as conn:
            attach_idempotency_key(conn, job.id, idempotency.key)
    except IntegrityError:
        # A concurrent request with the same key got there first. This job was never
        # answered to anyone: remove it (its sent tasks find no job and do nothing).
        _forget(engine, job.id, None, undo)
        replay = find_replay(engine, idempotency)
        if replay is None:
            raise
        return Submitted(replay, created=False)
    return Submitted(replace(job, idempotency_key=idempotency.key), created=True)


def _forget(engine: Engine, job_id: str, cause: Exception | None, undo: Undo | None) -> None:
    if cause is not None:
        log.warning("could not send the tasks of job %s, deleting it: %s", job_id, cause)
    try:
        with engine.begin() as conn:
            if undo is not None:
                undo(conn)
            delete_job(conn, job_id)
    except Exception:
        log.exception("could not delete job %s", job_id)
