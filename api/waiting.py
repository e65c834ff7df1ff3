"""No silent waits: a job as the API shows it, with what it waits for while it is active.

An active job shows its place in its model's queue and whether a worker serving that model
is alive; a job whose model no live worker serves carries a warning that says how to start
one, in the 202 of its submission and in every read while it stays active.
"""

from __future__ import annotations

import logging

from sqlalchemy import Connection

from api.dispatch import JobQueue
from api.schemas import JobOut, QueueInfo
from core.chunks.fair import Fairness, chunks_ahead
from core.config import Settings
from core.jobs.lifecycle import Job
from core.queues import BrokerUnavailable

log = logging.getLogger(__name__)


def unserved_warning(model: str) -> str:
    return (
        f"no live worker serves model {model!r}: the job stays queued until one starts "
        f"(`bulkscore worker --models {model}`), or until its expires_after_s deadline"
    )


def live_worker(queue: JobQueue, model: str) -> bool | None:
    """Whether a worker serving ``model`` has a live heartbeat; None if Redis cannot say."""
    try:
        return queue.workers().get(model, 0) > 0
    except BrokerUnavailable as exc:
        # The job's state is in SQL: a read must still answer without the broker.
        log.warning("cannot read worker heartbeats: %s", exc)
        return None


def job_view(conn: Connection, queue: JobQueue, job: Job, settings: Settings) -> JobOut:
    """``job`` as the API shows it; an active one with its queue information."""
    if job.status.is_final:
        return JobOut.from_job(job)
    live = live_worker(queue, job.runs_on)
    ahead = chunks_ahead(conn, job.id, job.runs_on, Fairness.of(settings))
    info = QueueInfo(runs_on=job.runs_on, chunks_ahead=ahead, worker_live=live)
    warnings = [unserved_warning(job.runs_on)] if live is False else []
    return JobOut.from_job(job, info, warnings)
