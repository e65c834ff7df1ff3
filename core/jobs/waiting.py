"""What a queued job is waiting for: the chunks ahead of it for its model.

Chunks are taken first in, first out per model, so the work ahead of a job is the queued
chunks of the service's other active jobs on the same model (``jobs.runs_on``) created
before it. Read by ``GET /v1/jobs/{id}`` so that no job waits in silence.
"""

from __future__ import annotations

from sqlalchemy import Connection, and_, func, select

from core.jobs.lifecycle import Job
from core.jobs.status import ACTIVE_JOB_STATES, ChunkStatus, JobDriver
from core.tables import chunks, jobs


def chunks_ahead(conn: Connection, job: Job) -> int:
    """Queued chunks of other active service jobs on ``job.runs_on`` created before it."""
    count = conn.scalar(
        select(func.count())
        .select_from(chunks.join(jobs, jobs.c.id == chunks.c.job_id))
        .where(
            and_(
                chunks.c.status == ChunkStatus.QUEUED.value,
                jobs.c.runs_on == job.runs_on,
                jobs.c.id != job.id,
                jobs.c.created_at < job.created_at,
                jobs.c.status.in_([s.value for s in ACTIVE_JOB_STATES]),
                jobs.c.driver == JobDriver.SERVICE.value,
            )
        )
    )
    return int(count or 0)
