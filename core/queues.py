"""Task and queue names, the Celery settings both sides use, and the one way to send work.

No Celery import: the settings are plain data, so the API can build a producer-only Celery
app from the same settings the workers consume with, and :func:`send_chunks` takes any
object shaped like a Celery app (:class:`TaskSender`), so the API, the beat, the chunk task
and the reconciler all send chunk tasks through the same few lines.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any, Protocol

from core.config import Settings

SCORE_CHUNK_TASK = "bulkscore.score_chunk"
# The training message before training jobs had a chunk: still consumed (worker.training_task)
# for queues that hold old ones, and never sent any more.
TRAIN_MODEL_TASK = "bulkscore.train_model"
DEFAULT_QUEUE = "bulkscore.default"
MODEL_QUEUE_PREFIX = "bulkscore.model."


def model_queue(model_name: str) -> str:
    """One queue per model, so a worker consumes only the models it has loaded."""
    return MODEL_QUEUE_PREFIX + model_name


def celery_settings(settings: Settings) -> dict[str, Any]:
    """Celery configuration; each reliability choice says why (see docs/promise.md)."""
    return {
        "broker_url": settings.broker_url,
        # JSON only: pickle in accept_content turns broker write access into code execution.
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        # Status lives in SQL; a result backend would only grow (celery#7801) and its PENDING
        # cannot tell "queued" from "unknown id" (celery#4450).
        "result_backend": None,
        "task_ignore_result": True,
        # Ack after the chunk's results are committed, not before it runs: a crash mid-chunk
        # leaves the message to be delivered again (at-least-once; SQL makes it idempotent).
        "task_acks_late": True,
        # Requeue instead of ack when a prefork child dies mid-task. Our workers use the solo
        # or threads pool (no children), where a killed worker is a killed process and its
        # unacked message comes back after visibility_timeout; kept for anyone who runs
        # prefork anyway. Either way a poison chunk cannot loop forever: core/chunks/claim.py
        # counts attempts in SQL and turns the chunk's items into errors after the last one.
        "task_reject_on_worker_lost": True,
        # Reserve as little as possible: the default multiplier (4) lets one worker hoard
        # chunks while others idle. With late acks, multiplier 1 still reserves one extra
        # message per process (celery#4537), which waits behind a long chunk;
        # worker_disable_prefetch (Celery >= 5.6, Redis only) fetches a message only when a
        # pool slot is free, so idle workers get the next chunk.
        "worker_prefetch_multiplier": 1,
        "worker_disable_prefetch": True,
        # Redis redelivers an unacked message after visibility_timeout counted from fetch;
        # it must exceed the worst-case time of a chunk, plus any retry countdown the worker
        # holds (at most chunk_lease_s), or chunks run twice (celery#5935). It is also how
        # long a kill -9'd worker's chunk waits before another worker gets it (celery#4984).
        # Producers and workers must use the same value: the restore runs in both.
        "broker_transport_options": {"visibility_timeout": settings.visibility_timeout_s},
        "broker_connection_retry_on_startup": True,
        # A late-acked task still running when the broker connection drops will be
        # redelivered anyway; cancel it rather than finish it twice.
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "task_default_queue": DEFAULT_QUEUE,
        "task_create_missing_queues": True,
        "worker_hijack_root_logger": False,
        "enable_utc": True,
    }


# Seconds. Generous for a broker on the same network, short enough for an HTTP request.
CONNECT_TIMEOUT_S = 1.0
SOCKET_TIMEOUT_S = 3.0
# One retry covers a pooled connection that went stale when Redis restarted; more would
# only delay the 503 when the broker is really down.
PUBLISH_RETRY_POLICY = {
    "max_retries": 1,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.2,
}


def producer_settings(settings: Settings) -> dict[str, Any]:
    """The shared Celery settings with fail-fast timeouts, for processes that only send.

    The API's callers are HTTP requests that must get a 503 in a second or two, not hang;
    the beat must not stall a tick on a dead broker either.
    """
    config = celery_settings(settings)
    transport = dict(config.get("broker_transport_options") or {})
    # Redis transport options: a dead host fails in CONNECT_TIMEOUT_S instead of the OS's
    # minutes-long TCP timeout; a hung server cannot hold a request past SOCKET_TIMEOUT_S.
    transport.update(socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=SOCKET_TIMEOUT_S)
    config["broker_transport_options"] = transport
    config["broker_connection_timeout"] = CONNECT_TIMEOUT_S
    config["broker_connection_max_retries"] = 1
    return config


class BrokerUnavailable(Exception):
    """The broker could not be reached or refused the message."""


class TaskSender(Protocol):
    """The part of a Celery app that sends tasks by name (a ``celery.Celery`` is one)."""

    def send_task(self, name: str, args: Any = None, **options: Any) -> Any: ...

    def producer_or_acquire(self, producer: Any = None) -> AbstractContextManager[Any]: ...


# Sends one chunk task: (job_id, chunk_index, model). What the sweeps and splits call.
ChunkSend = Callable[[str, int, str], None]


def send_chunks(
    sender: TaskSender, job_id: str, model: str, indexes: Iterable[int], **options: Any
) -> None:
    """Send one ``bulkscore.score_chunk`` task per chunk index to the model's queue.

    Only ids travel; everything else is in SQL. ``options`` go to ``send_task`` (a retry
    policy, say).

    Raises:
        BrokerUnavailable: A message could not be published. Chunks sent before the failure
            are harmless: their SQL claim decides whether they do anything.
    """
    queue = model_queue(model)
    try:
        # One pooled connection and producer for every chunk of the job.
        with sender.producer_or_acquire() as producer:
            for index in indexes:
                sender.send_task(
                    SCORE_CHUNK_TASK,
                    args=[job_id, index],
                    queue=queue,
                    producer=producer,
                    **options,
                )
    except Exception as exc:  # kombu raises OperationalError, redis-py its own errors
        raise BrokerUnavailable(str(exc)) from exc


def chunk_sender(sender: TaskSender) -> ChunkSend:
    """:func:`send_chunks` for one chunk at a time, through ``sender``."""

    def send(job_id: str, index: int, model: str) -> None:
        send_chunks(sender, job_id, model, [index])

    return send
