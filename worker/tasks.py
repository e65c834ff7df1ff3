"""The chunk task: messaging, status and retries around :func:`engine.chunk_work.work_on_chunk`.

Only ids travel through Redis (``job_id``, ``chunk_index``); inputs and results live in SQL.
The task is safe to deliver more than once: the chunk's SQL lease decides who works, and the
results table's key makes a second write of an item a no-op.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from celery.signals import worker_init

from core.config import get_settings
from core.db import get_engine
from core.queues import SCORE_CHUNK_TASK, chunk_sender, send_chunks
from engine.chunk_work import work_on_chunk
from engine.delivery import ChunkAttemptError, ChunkOutcome, ChunkReport, Driver
from worker import warm
from worker.celery_app import app
from worker.health import HEARTBEAT
from worker.liveness import workers_serving
from worker.training_task import training_backbone

log = logging.getLogger(__name__)

# Errors before a chunk is claimed (the database unreachable, say) are retried with backoff
# this many times; after a claim, the chunk's attempt counter in SQL bounds retries instead.
INFRA_RETRIES = 10
MAX_BACKOFF_S = 60

# This process's warm models, its liveness heartbeat, its app for the split chunks, the
# backbones it trains heads on (training chunks of the bases it serves), and how many
# workers share each model's chunks.
DRIVER = Driver(
    runner_for=warm.get_runner,
    progress=lambda _count: HEARTBEAT.touch(),
    send=chunk_sender(app),
    backbone_for=lambda base: training_backbone(base, get_settings()),
    workers_for=workers_serving,
)


def backoff_s(retries: int) -> int:
    return int(min(2**retries, MAX_BACKOFF_S))


@app.task(name=SCORE_CHUNK_TASK, bind=True, max_retries=None, ignore_result=True)
def score_chunk(self: Task, job_id: str, chunk_index: int) -> None:
    """Score chunk ``chunk_index`` of job ``job_id`` with this process's warm model."""
    settings = get_settings()
    engine = get_engine(settings.database_url)
    try:
        report = work_on_chunk(engine, settings, job_id, chunk_index, DRIVER)
    except ChunkAttemptError as exc:
        if not exc.retry:
            log.error("chunk %d of job %s failed its last attempt: %s", chunk_index, job_id, exc)
            return
        countdown = backoff_s(exc.attempts)
        log.warning(
            "chunk %d of job %s attempt %d failed (%s); retrying in %ds",
            chunk_index,
            job_id,
            exc.attempts,
            exc,
            countdown,
        )
        raise self.retry(exc=exc, countdown=countdown) from exc
    except Exception as exc:
        # Not claimed yet, so no attempt was counted: retry a bounded number of times.
        countdown = backoff_s(self.request.retries)
        log.warning("chunk %d of job %s: %s; retrying in %ds", chunk_index, job_id, exc, countdown)
        raise self.retry(exc=exc, countdown=countdown, max_retries=INFRA_RETRIES) from exc
    _log_report(job_id, chunk_index, report, self.request.hostname)
    if report.outcome == ChunkOutcome.BUSY:
        # Another delivery holds a live lease. Come back when it would run out: the chunk is
        # then done (skipped) or its holder died (this delivery takes it over). Acking this
        # copy without a retry could lose the chunk if that holder dies later.
        countdown = max(1, min(int(report.retry_in_s) + 1, settings.chunk_lease_s))
        raise self.retry(countdown=countdown)
    if report.outcome == ChunkOutcome.WRONG_MODEL and report.model is not None:
        # Queues are per model, so this only happens to a message sent to the wrong queue.
        # Failing would drop the chunk; requeueing here would loop. Re-route it instead.
        send_chunks(app, job_id, report.model, [chunk_index])


def _log_report(job_id: str, chunk_index: int, report: ChunkReport, hostname: str | None) -> None:
    detail = f" ({report.reason})" if report.reason else ""
    if report.worked_on is not None:
        # Fair claiming: the message was a token; the log names the chunk that ran.
        detail += f" (for a message naming chunk {chunk_index} of job {job_id})"
        job_id, chunk_index = report.worked_on
    if report.batched:
        detail += f" (with {len(report.batched)} other jobs' chunks)"
    log.info(
        "chunk %d of job %s %s by %s: %d scored, %d already scored, attempt %d%s",
        chunk_index,
        job_id,
        report.outcome.value,
        hostname,
        report.scored,
        report.already_scored,
        report.attempts,
        detail,
    )
    # One line per chunk, in the same form, so every chunk's outcome is logged once by the
    # worker that scored it, whichever message carried it.
    for other in report.batched:
        log.info(
            "chunk %d of job %s %s by %s: %d scored, %d already scored, attempt %d "
            "(batched with chunk %d of job %s)",
            other.index,
            other.job_id,
            other.outcome.value,
            hostname,
            other.scored,
            other.already_scored,
            other.attempts,
            chunk_index,
            job_id,
        )


@worker_init.connect
def _refuse_without_models(sender: Any = None, **_kwargs: Any) -> None:
    """Stop a worker started without its models (``celery worker`` instead of ``bulkscore worker``).

    Such a worker would take chunk messages it cannot score; ``bulkscore worker`` loads the
    models first and only then starts consuming their queues.
    """
    if not warm.loaded_models():
        # SystemExit, not an exception: Celery logs and swallows exceptions from signal
        # handlers, and this worker must not go on to consume.
        raise SystemExit(
            "error: no models are loaded in this process: start workers with `bulkscore "
            "worker --models NAME[,NAME...]`, which loads them before consuming their queues"
        )
