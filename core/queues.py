"""Task and queue names, and the Celery settings both the API and the workers use.

Plain data only (no Celery import), so the API can build a producer-only Celery app from
the same settings the workers consume with.
"""

from __future__ import annotations

from typing import Any

from core.config import Settings

SCORE_CHUNK_TASK = "bulkscore.score_chunk"
# Trains a head on a base model; sent to the base model's queue (worker.training_task).
TRAIN_MODEL_TASK = "bulkscore.train_model"
DEFAULT_QUEUE = "bulkscore.default"
MODEL_QUEUE_PREFIX = "bulkscore.model."


def model_queue(model_name: str) -> str:
    """One queue per model, so a worker consumes only the models it has loaded."""
    return MODEL_QUEUE_PREFIX + model_name


def celery_settings(settings: Settings) -> dict[str, Any]:
    """Celery configuration; each reliability choice says why (see PITFALLS.md)."""
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
