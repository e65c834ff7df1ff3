"""The operational parts of a consuming worker, added to Celery's consumer in one call.

Liveness (a stall watchdog and per-model heartbeats in Redis), Prometheus metrics, and job
and chunk ids on every log line of a chunk task. See docs/promise.md.
"""

from __future__ import annotations

from typing import Any

from worker import log_context  # noqa: F401  (importing it connects the task signals)
from worker.liveness import LivenessStep
from worker.metrics import MetricsStep


def add_consumer_steps(app: Any) -> None:
    """Register the liveness and metrics bootsteps and the log-context signals on ``app``."""

    app.steps["consumer"].add(LivenessStep)
    app.steps["consumer"].add(MetricsStep)
