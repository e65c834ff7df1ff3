"""``GET /metrics``: the API's Prometheus metrics.

- ``bulkscore_api_requests_total{method,route,status}`` and
  ``bulkscore_api_request_seconds{route}``: every HTTP request, by route template (never the
  raw path, so job ids do not explode the label space);
- ``bulkscore_api_errors_total{kind}``: answers of 400 and above, by kind;
- read when scraped: ``bulkscore_jobs{status}`` (from SQL), what the retention purges
  removed in all (``bulkscore_purged_rows_total{kind}``, ``bulkscore_purged_jobs_total``,
  from ``purge_runs``), and per registered model
  ``bulkscore_queue_depth{model}`` and ``bulkscore_workers{model}`` (from Redis).

Each app has its own registry (tests build many apps in one process). With ``bulkscore api
--workers N`` each server process counts its own requests; the scrape-time gauges are the
same from any of them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.chunks.fair import QueueStats, queue_stats
from core.config import Settings
from core.jobs.purge import PurgedTotals, purged_totals
from core.jobs.status import JobStatus
from core.models.registry import Registry, RegistryError
from core.tables import jobs

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])

ERROR_KINDS = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    503: "unavailable",
}


def error_kind(status: int) -> str | None:
    if status < 400:
        return None
    return ERROR_KINDS.get(status, "internal" if status >= 500 else "client_error")


class ApiMetrics:
    """The registry and the request metrics of one app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "bulkscore_api_requests",
            "HTTP requests by route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.seconds = Histogram(
            "bulkscore_api_request_seconds",
            "Seconds to answer, by route template.",
            ["route"],
            registry=self.registry,
        )
        self.errors = Counter(
            "bulkscore_api_errors",
            "Answers of 400 and above, by kind.",
            ["kind"],
            registry=self.registry,
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.seconds.labels(route).observe(seconds)
        kind = error_kind(status)
        if kind is not None:
            self.errors.labels(kind).inc()


class RequestMetricsMiddleware:
    """Counts and times every HTTP request (pure ASGI: it never touches the body)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.observe(
                scope.get("method", "?"), template, status[0], time.perf_counter() - started
            )


class ServiceCollector(Collector):
    """Jobs by status (SQL) and, per registered model, queue depth and live workers."""

    def __init__(self, engine: Engine, settings: Settings, queue: Any) -> None:
        self.engine = engine
        self.settings = settings
        self.queue = queue

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        by_status = GaugeMetricFamily("bulkscore_jobs", "Jobs by status.", labels=["status"])
        try:
            with self.engine.connect() as conn:
                counts: dict[str, int] = dict(
                    conn.execute(select(jobs.c.status, func.count()).group_by(jobs.c.status)).all()
                )
                stats = queue_stats(conn)
                purged = purged_totals(conn)
            for status in JobStatus:
                by_status.add_metric([status.value], counts.get(status.value, 0))
            yield by_status
            yield from _fairness_metrics(stats)
            yield from _purge_metrics(purged)
        except Exception as exc:
            log.warning("metrics: cannot count jobs: %s", str(exc).splitlines()[0][:200])
        try:
            models = Registry.load(self.settings.models).names
        except RegistryError:
            return
        depth = GaugeMetricFamily(
            "bulkscore_queue_depth", "Chunk messages waiting, by model.", labels=["model"]
        )
        workers = GaugeMetricFamily(
            "bulkscore_workers", "Workers with a live heartbeat, by model.", labels=["model"]
        )
        try:
            live = self.queue.workers()
            depths = self.queue.queue_depths(models)
        except Exception as exc:
            log.warning("metrics: cannot read the broker: %s", str(exc).splitlines()[0][:200])
            return
        for model in models:
            depth.add_metric([model], depths.get(model, 0))
            workers.add_metric([model], live.get(model, 0))
        yield depth
        yield workers


def _fairness_metrics(stats: QueueStats) -> Iterator[GaugeMetricFamily]:
    """Fair claiming, visible: queued work per priority, and per model how long the
    longest-waiting job has gone without a worker."""
    depth = GaugeMetricFamily(
        "bulkscore_queued_chunks",
        "Queued chunks of active jobs, by job priority.",
        labels=["priority"],
    )
    for level, count in stats.queued_by_priority.items():
        depth.add_metric([level], count)
    yield depth
    oldest = GaugeMetricFamily(
        "bulkscore_oldest_waiting_seconds",
        "Per model: seconds the longest-waiting job with queued chunks has gone since its "
        "last chunk was claimed (or since it was created).",
        labels=["model"],
    )
    for model, seconds in sorted(stats.oldest_wait_s.items()):
        oldest.add_metric([model], seconds)
    yield oldest


def _purge_metrics(totals: PurgedTotals) -> Iterator[CounterMetricFamily]:
    """What the retention purges removed so far (``purge_runs``, dry runs excluded)."""
    rows = CounterMetricFamily(
        "bulkscore_purged_rows",
        "Rows removed by retention purges, by kind (inputs: items, results: results).",
        labels=["kind"],
    )
    rows.add_metric(["inputs"], totals.input_rows)
    rows.add_metric(["results"], totals.result_rows)
    yield rows
    jobs_purged = CounterMetricFamily(
        "bulkscore_purged_jobs",
        "Jobs a retention purge removed rows of (a job counts once per purge that did).",
    )
    jobs_purged.add_metric([], totals.jobs)
    yield jobs_purged


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    """Prometheus text format."""
    registry: CollectorRegistry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
