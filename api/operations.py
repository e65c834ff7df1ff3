"""The API's operational parts, installed on an app in one call: ``/metrics`` and log context.

Installed last, so the request-metrics middleware is the outermost one and counts every
answer, the body limit's 413s included. See ``api.metrics`` and docs/promise.md.
"""

from __future__ import annotations

from fastapi import FastAPI

from api import metrics
from api.dispatch import JobQueue
from api.log_context import JobLogContextMiddleware
from core.config import Settings


def install_operations(app: FastAPI, settings: Settings, queue: JobQueue) -> None:
    """Add ``/metrics``, request metrics and job ids on log lines to ``app``."""
    app.state.metrics = metrics.ApiMetrics()
    app.state.metrics.registry.register(metrics.ServiceCollector(app.state.engine, settings, queue))
    app.add_middleware(JobLogContextMiddleware)
    app.add_middleware(metrics.RequestMetricsMiddleware, metrics=app.state.metrics)
    app.include_router(metrics.router)
