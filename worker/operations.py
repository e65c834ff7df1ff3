"""A consuming worker's add-ons, in one list (as dramatiq's ``default_middleware``).

Each is a Celery consumer bootstep that starts once the worker consumes:

- ``ConsumingStep`` (``worker.health``): the heartbeat file that means "consuming";
- ``ReconcileStep`` (``worker.reconciler``): re-send chunks whose worker died or whose
  message was lost, and split poison chunks;
- ``LivenessStep`` (``worker.liveness``): a stall watchdog and per-model heartbeats in Redis;
- ``MetricsStep`` (``worker.metrics``): Prometheus metrics.

Importing ``worker.log_context`` connects the signals that put job and chunk ids on every
log line of a chunk task. See docs/promise.md.
"""

from __future__ import annotations

from typing import Any

from worker import log_context  # noqa: F401  (importing it connects the task signals)
from worker.health import ConsumingStep
from worker.liveness import LivenessStep
from worker.metrics import MetricsStep
from worker.reconciler import ReconcileStep

CONSUMER_STEPS = (ConsumingStep, ReconcileStep, LivenessStep, MetricsStep)


def add_consumer_steps(app: Any) -> None:
    """Register every add-on of :data:`CONSUMER_STEPS` on ``app``'s consumer."""
    for step in CONSUMER_STEPS:
        app.steps["consumer"].add(step)
