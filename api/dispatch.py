"""Sending chunk tasks to the broker, from a producer-only Celery app.

The API sends tasks by name (``send_task``) and never imports the worker, so it starts
without any ML framework. Publishing fails fast when the broker is down, with short
connect timeouts and a single quick retry, because the caller is an HTTP request that
must answer 503 in a second or two, not hang.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from celery import Celery

from core.config import Settings
from core.heartbeats import queue_depth, redis_client, workers_by_model
from core.queues import SCORE_CHUNK_TASK, celery_settings, model_queue

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


class BrokerUnavailable(Exception):
    """The broker could not be reached or refused the message."""


class JobQueue(Protocol):
    """What the API needs from the broker (a fake replaces it in unit tests)."""

    def enqueue_chunks(self, job_id: str, model: str, chunk_indexes: Iterable[int]) -> None:
        """Send one task per chunk; raise :class:`BrokerUnavailable` if that fails."""

    def ping(self) -> None:
        """Return if the broker answers; raise :class:`BrokerUnavailable` otherwise."""

    def workers(self) -> Mapping[str, int]:
        """Workers with a live heartbeat, by model (``core.heartbeats``)."""

    def queue_depths(self, models: Iterable[str]) -> dict[str, int]:
        """Chunk messages waiting in each model's queue."""

    def close(self) -> None:
        """Release pooled broker connections."""


def producer_settings(settings: Settings) -> dict[str, Any]:
    """The shared Celery settings with the producer's fail-fast timeouts on top."""
    config = celery_settings(settings)
    transport = dict(config.get("broker_transport_options") or {})
    # Redis transport options: a dead host fails in CONNECT_TIMEOUT_S instead of the OS's
    # minutes-long TCP timeout; a hung server cannot hold a request past SOCKET_TIMEOUT_S.
    transport.update(socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=SOCKET_TIMEOUT_S)
    config["broker_transport_options"] = transport
    config["broker_connection_timeout"] = CONNECT_TIMEOUT_S
    config["broker_connection_max_retries"] = 1
    return config


class CeleryJobQueue:
    """Publishes ``bulkscore.score_chunk`` tasks to each model's queue."""

    def __init__(self, settings: Settings) -> None:
        # set_as_current=False: this app must not become the process default that task
        # decorators elsewhere (a worker in the same test process) would bind to.
        self.app = Celery("bulkscore-api", set_as_current=False)
        self.app.conf.update(producer_settings(settings))
        # Heartbeats and queue lengths are plain Redis reads, with the same short timeouts.
        self.redis = redis_client(settings.broker_url)

    def enqueue_chunks(self, job_id: str, model: str, chunk_indexes: Iterable[int]) -> None:
        queue = model_queue(model)
        try:
            # One pooled connection and producer for every chunk of the job.
            with self.app.producer_or_acquire() as producer:
                for index in chunk_indexes:
                    self.app.send_task(
                        SCORE_CHUNK_TASK,
                        args=[job_id, index],
                        queue=queue,
                        producer=producer,
                        retry=True,
                        retry_policy=PUBLISH_RETRY_POLICY,
                    )
        except Exception as exc:  # kombu raises OperationalError, redis-py its own errors
            raise BrokerUnavailable(str(exc)) from exc

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
