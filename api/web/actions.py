"""Cancel, retry and resume from the job page: the JSON API's operations, answered as notices.

A page shows a notice by its code (from :data:`NOTICES`), never text taken from the URL, so a
crafted link cannot put words on the page.
"""

from __future__ import annotations

from sqlalchemy import Engine

from api.dispatch import JobQueue
from core.config import Settings
from core.jobs.lifecycle import Job, cancel_job
from core.jobs.requeue import RequeueRefused, resume_job, retry_errors
from core.queues import BrokerUnavailable

NOTICES = {
    "cancelled": "Cancel asked: chunks not yet started will not start.",
    "requeued": "Queued again: the job runs until the requeued items are scored.",
    "nothing": "Nothing to do: the job is not in a state this applies to.",
    "broker": "Recorded; the job queue is unreachable, so the work starts once it is back.",
    "gone": "The job no longer exists.",
}


def run_action(engine: Engine, queue: JobQueue, settings: Settings, job: Job, action: str) -> str:
    """Do ``action`` (cancel, retry or resume) to ``job``; return the notice code to show."""
    if action == "cancel":
        with engine.begin() as conn:
            cancel_job(conn, job.id)
        return "cancelled"
    try:
        with engine.begin() as conn:
            if action == "retry":
                done = retry_errors(conn, job.id, chunk_size=settings.chunk_size)
            else:
                done = resume_job(conn, job.id, chunk_size=settings.chunk_size)
    except LookupError:
        return "gone"
    except RequeueRefused:
        return "nothing"
    try:
        queue.enqueue_chunks(done.job.id, done.job.runs_on, done.chunk_indexes)
    except BrokerUnavailable:
        # Committed: the workers' lost-message sweep sends the chunks once the broker is back.
        return "broker"
    return "requeued"
