"""A worker's Prometheus metrics, served on ``BULKSCORE_WORKER_METRICS_PORT`` (0: off).

- ``bulkscore_worker_items_scored_total{model,outcome}``: inputs through the model, by
  ``ok`` or ``error`` (a per-item error);
- ``bulkscore_worker_batch_size{model}`` and ``bulkscore_worker_batch_seconds{model}``: one
  observation per forward batch (the runner's progress callback marks each batch);
- ``bulkscore_worker_queue_depth{queue}``: messages waiting, read from Redis at scrape time;
- ``bulkscore_worker_tasks_total{state}`` and ``bulkscore_worker_errors_total{kind}``:
  chunk tasks received, succeeded, retried, failed, and errors by exception type.

The runners are wrapped once, when the consumer starts, so no runner and no task knows
about metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

from celery import bootsteps
from celery.signals import task_failure, task_received, task_retry, task_success
from prometheus_client import Counter, Histogram, start_http_server
from prometheus_client.core import REGISTRY, GaugeMetricFamily
from prometheus_client.registry import Collector

from core.config import get_settings
from core.heartbeats import queue_depth, redis_client
from core.jobs.predictions import Prediction, as_columns
from engine.runners.base import Finish, Progress, start_predicting
from worker import warm

log = logging.getLogger(__name__)

SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)

ITEMS = Counter(
    "bulkscore_worker_items_scored", "Inputs scored by the model.", ["model", "outcome"]
)
BATCH_SIZE = Histogram(
    "bulkscore_worker_batch_size", "Inputs per forward batch.", ["model"], buckets=SIZE_BUCKETS
)
BATCH_SECONDS = Histogram("bulkscore_worker_batch_seconds", "Seconds per forward batch.", ["model"])
TASKS = Counter(
    "bulkscore_worker_tasks", "Chunk task deliveries by what became of them.", ["state"]
)
ERRORS = Counter("bulkscore_worker_errors", "Errors by kind (exception type).", ["kind"])


class InstrumentedRunner:
    """A runner that records what each ``predict`` call and forward batch did."""

    def __init__(self, runner: Any) -> None:
        self._runner = runner

    def __getattr__(self, name: str) -> Any:
        # Everything else (name, revision, embed, max_batch_size...) is the runner's own.
        return getattr(self._runner, name)

    def predict(self, batch: Sequence[Any], progress: Progress | None = None) -> list[Prediction]:
        return list(self.start_predict(batch, progress)())

    def start_predict(self, batch: Sequence[Any], progress: Progress | None = None) -> Finish:
        model = str(getattr(self._runner, "name", "?"))
        marked = [time.perf_counter(), 0]  # time of the last batch end, batches seen

        def timed_progress(count: int) -> None:
            now = time.perf_counter()
            BATCH_SIZE.labels(model).observe(count)
            BATCH_SECONDS.labels(model).observe(now - marked[0])
            marked[0], marked[1] = now, marked[1] + 1
            if progress is not None:
                progress(count)

        try:
            finish = start_predicting(self._runner, batch, timed_progress)
        except Exception as exc:
            ERRORS.labels(f"predict:{type(exc).__name__}").inc()
            raise

        def finished() -> Sequence[Prediction]:
            try:
                predictions = finish()
            except Exception as exc:
                ERRORS.labels(f"predict:{type(exc).__name__}").inc()
                raise
            if not marked[1] and batch:
                # A runner that reports no progress: the whole call was one batch.
                BATCH_SIZE.labels(model).observe(len(batch))
                BATCH_SECONDS.labels(model).observe(time.perf_counter() - marked[0])
            errors = as_columns(predictions).errors()  # by column: no Prediction made per row
            failed = len(errors) - errors.count(None)
            ITEMS.labels(model, "ok").inc(len(predictions) - failed)
            if failed:
                ITEMS.labels(model, "error").inc(failed)
            return predictions

        return finished


def instrument_loaded_runners() -> list[str]:
    """Wrap each warm runner's model in an :class:`InstrumentedRunner` (once)."""
    names = []
    for name in warm.loaded_models():
        serialized = warm.get_runner(name)
        inner = getattr(serialized, "runner", None)
        if inner is not None and not isinstance(inner, InstrumentedRunner):
            serialized.runner = InstrumentedRunner(inner)  # type: ignore[union-attr]
            names.append(name)
    return names


class QueueDepthCollector(Collector):
    """Reads each served queue's length from Redis when Prometheus scrapes."""

    def __init__(self, broker_url: str, queues: list[str]) -> None:
        self.client = redis_client(broker_url)
        self.queues = queues

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "bulkscore_worker_queue_depth", "Messages waiting in a served queue.", labels=["queue"]
        )
        for queue in self.queues:
            try:
                family.add_metric([queue], queue_depth(self.client, queue))
            except Exception:
                ERRORS.labels("redis_unavailable").inc()
        yield family


@task_received.connect
def _received(**_kwargs: Any) -> None:
    TASKS.labels("received").inc()


@task_success.connect
def _succeeded(**_kwargs: Any) -> None:
    TASKS.labels("succeeded").inc()


@task_retry.connect
def _retried(reason: Any = None, **_kwargs: Any) -> None:
    TASKS.labels("retried").inc()
    inner = getattr(reason, "exc", None) or reason
    if isinstance(inner, BaseException) and type(inner).__name__ != "Retry":
        ERRORS.labels(type(inner).__name__).inc()


@task_failure.connect
def _failed(exception: BaseException | None = None, **_kwargs: Any) -> None:
    TASKS.labels("failed").inc()
    ERRORS.labels(type(exception).__name__ if exception else "unknown").inc()


STARTED: list[int] = []


class MetricsStep(bootsteps.StartStopStep):
    """Wraps the runners and starts the metrics endpoint once the consumer runs."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, c: Any) -> None:
        if STARTED:
            return  # the consumer restarts its steps after a lost connection
        settings = get_settings()
        instrument_loaded_runners()
        STARTED.append(settings.worker_metrics_port)
        if not settings.worker_metrics_port:
            return
        queues = sorted(queue.name for queue in c.app.amqp.queues.consume_from.values())
        REGISTRY.register(QueueDepthCollector(settings.broker_url, queues))
        try:
            start_http_server(settings.worker_metrics_port, addr=settings.worker_metrics_host)
        except OSError as exc:
            # Metrics are not worth a crash loop: say so loudly and keep scoring.
            log.error(
                "cannot serve metrics on %s:%d: %s",
                settings.worker_metrics_host,
                settings.worker_metrics_port,
                exc,
            )
            return
        log.info(
            "metrics on http://%s:%d/metrics",
            settings.worker_metrics_host,
            settings.worker_metrics_port,
        )
