"""The API's broker: a producer-only Celery app that sends chunk tasks (training jobs too).

The API sends tasks by name (:func:`core.queues.send_chunks`) and never imports the
worker, so it starts without any ML framework. Publishing fails fast when the broker is
down (:func:`core.queues.producer_settings`), because the caller is an HTTP request that
must answer 503 in a second or two, not hang.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

from celery import Celery

from core.config import Settings
from core.heartbeats import queue_depth, redis_client, workers_by_model
from core.queues import (
    CONNECT_TIMEOUT_S,
    PUBLISH_RETRY_POLICY,
    BrokerUnavailable,
    model_queue,
    producer_settings,
    send_chunks,
)


class JobQueue(Protocol):
    """What the API needs from the broker (a fake replaces it in unit tests)."""

    def enqueue_chunks(self, job_id: str, model: str, chunk_indexes: Iterable[int]) -> None:
        """Send one task per chunk to ``model``'s queue (the job's ``runs_on``); raise
        :class:`BrokerUnavailable` if that fails."""

    def ping(self) -> None:
        """Return if the broker answers; raise :class:`BrokerUnavailable` otherwise."""

    def workers(self) -> Mapping[str, int]:
        """Workers with a live heartbeat, by model (``core.heartbeats``)."""

    def queue_depths(self, models: Iterable[str]) -> dict[str, int]:
        """Chunk messages waiting in each model's queue."""

    def close(self) -> None:
        """Release pooled broker connections."""


def producer_app(settings: Settings, name: str = "bulkscore-producer") -> Celery:
    """A Celery app that only sends, with the fail-fast producer settings."""
    # set_as_current=False: this app must not become the process default that task
    # decorators elsewhere (a worker in the same test process) would bind to.
    app = Celery(name, set_as_current=False)
    app.conf.update(producer_settings(settings))
    return app


class CeleryJobQueue:
    """Publishes ``bulkscore.score_chunk`` tasks by name."""

    def __init__(self, settings: Settings) -> None:
        self.app = producer_app(settings, "bulkscore-api")
        # Heartbeats and queue lengths are plain Redis reads, with the same short timeouts.
        self.redis = redis_client(settings.broker_url)

    def enqueue_chunks(self, job_id: str, model: str, chunk_indexes: Iterable[int]) -> None:
        send_chunks(
            self.app, job_id, model, chunk_indexes, retry=True, retry_policy=PUBLISH_RETRY_POLICY
        )

    def ping(self) -> None:
        try:
            with self.app.connection_for_write() as conn:
                conn.ensure_connection(
                    max_retries=1, interval_start=0, interval_step=0.2, timeout=CONNECT_TIMEOUT_S
                )
        except Exception as exc:
            raise BrokerUnavailable(str(exc)) from exc

    def workers(self) -> Mapping[str, int]:
        try:
            return workers_by_model(self.redis)
        except Exception as exc:
            raise BrokerUnavailable(str(exc)) from exc

    def queue_depths(self, models: Iterable[str]) -> dict[str, int]:
        try:
            return {model: queue_depth(self.redis, model_queue(model)) for model in models}
        except Exception as exc:
            raise BrokerUnavailable(str(exc)) from exc

    def close(self) -> None:
        self.app.close()
        self.redis.close()
