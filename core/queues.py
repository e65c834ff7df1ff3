"""Task and queue names, and the Celery settings both the API and the workers use.

Plain data only (no Celery import), so the API can build a producer-only Celery app from
the same settings the workers consume with.
"""

from __future__ import annotations

from typing import Any

from core.config import Settings

SCORE_CHUNK_TASK = "bulkscore.score_chunk"
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
        # A worker killed by a signal or the OOM killer gets its message requeued instead of
        # acked; the chunk's attempt counter in SQL bounds a poison message.
        "task_reject_on_worker_lost": True,
        # One message per process at a time: prefetching more starves other workers.
        "worker_prefetch_multiplier": 1,
        # Redis redelivers an unacked message after visibility_timeout counted from fetch;
        # it must exceed the worst-case time of a chunk or chunks run twice (celery#5935).
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
