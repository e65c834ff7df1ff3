"""Worker heartbeats and queue depths, read and written in the broker's Redis.

A worker that consumes writes ``bulkscore:heartbeat:<model>:<hostname>`` for each model it
serves, with a TTL (``worker_heartbeat_ttl_s``), and refreshes it while it is alive and not
stalled (``worker.liveness``). ``/readyz`` and ``/metrics`` read them: a model with no live
key has no worker. Plain redis-py (no Celery), shared by the API and the workers.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import redis

HEARTBEAT_PREFIX = "bulkscore:heartbeat:"
# kombu's Redis transport keeps a queue's messages of priority p > 0 in "<queue>\x06\x16<p>";
# messages without a priority (all of ours) go to "<queue>" itself.
PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_STEPS = (3, 6, 9)
# Seconds: a Redis that does not answer must not hold a readiness probe or a scrape.
REDIS_TIMEOUT_S = 2.0


def redis_client(broker_url: str) -> redis.Redis:
    """A client for the broker's Redis that fails in seconds, not minutes."""
    return redis.Redis.from_url(
        broker_url,
        socket_connect_timeout=REDIS_TIMEOUT_S,
        socket_timeout=REDIS_TIMEOUT_S,
        retry_on_timeout=False,
    )


def heartbeat_key(model: str, hostname: str) -> str:
    return f"{HEARTBEAT_PREFIX}{model}:{hostname}"


def write_heartbeats(
    client: redis.Redis, models: list[str], hostname: str, ttl_s: int, detail: dict[str, Any]
) -> None:
    """Set (or refresh) this worker's heartbeat for each of ``models``."""
    value = json.dumps({"at": time.time(), **detail})
    with client.pipeline(transaction=False) as pipe:
        for model in models:
            pipe.set(heartbeat_key(model, hostname), value, ex=ttl_s)
        pipe.execute()


def clear_heartbeats(client: redis.Redis, models: list[str], hostname: str) -> None:
    """Remove this worker's heartbeats at once (it is stopping), rather than wait for the TTL."""
    client.delete(*[heartbeat_key(model, hostname) for model in models])


def workers_by_model(client: redis.Redis) -> Counter[str]:
    """How many workers have a live heartbeat for each model."""
    counts: Counter[str] = Counter()
    for raw in client.scan_iter(match=HEARTBEAT_PREFIX + "*", count=500):
        key = raw.decode() if isinstance(raw, bytes) else str(raw)
        model, _, _hostname = key[len(HEARTBEAT_PREFIX) :].partition(":")
        counts[model] += 1
    return counts


def queue_depth(client: redis.Redis, queue: str) -> int:
    """Messages waiting in ``queue`` (every priority), not counting ones already delivered."""
    with client.pipeline(transaction=False) as pipe:
        pipe.llen(queue)
        for step in PRIORITY_STEPS:
            pipe.llen(f"{queue}{PRIORITY_SEPARATOR}{step}")
        return int(sum(pipe.execute()))
