"""The FastAPI application: ``create_app()`` wires settings, database, broker and routes.

``bulkscore api`` runs it with uvicorn as a factory (``api.app:create_app``), so settings
are read when the server starts, not when the module is imported.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InternalError, OperationalError

from api import routes
from api.dispatch import CeleryJobQueue, JobQueue
from api.limits import BodySizeLimitMiddleware
from api.operations import install_operations
from core.config import Settings, get_settings
from core.db import DbRole, get_engine, is_lock_timeout, is_session_ended, set_process_role

log = logging.getLogger(__name__)


def _version() -> str:
    try:
        return version("bulkscore")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "0.0.0"


def create_app(
    settings: Settings | None = None,
    job_queue: JobQueue | None = None,
) -> FastAPI:
    """Build the API.

    Args:
        settings: Defaults to the process settings (``BULKSCORE_*`` variables).
        job_queue: Where chunk and training tasks go; defaults to Celery on
            ``settings.broker_url``. Unit tests pass a fake.
    """
    settings = settings or get_settings()
    queue = job_queue if job_queue is not None else CeleryJobQueue(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        queue.close()

    app = FastAPI(
        title="bulkscore",
        version=_version(),
        description=(
            "Score large batches of texts with pretrained models. Submit a job, poll its "
            "status, page or download its results. Every `/v1` call needs "
            "`Authorization: Bearer <key>` (keys come from `bulkscore keys create NAME`)."
        ),
        docs_url="/docs",
        lifespan=lifespan,
    )
    app.state.settings = settings
    # Every session this process opens waits briefly for locks (core/db.py).
    set_process_role(DbRole.API, settings)
    app.state.engine = get_engine(settings.database_url)
    app.state.job_queue = queue
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_exception_handler(OperationalError, _database_unavailable)
    # psycopg reports a session the server ended (idle in transaction) as an InternalError.
    app.add_exception_handler(InternalError, _session_ended)
    for module in (
        routes.health,
        routes.jobs,
        routes.results,
        routes.models,
        routes.training,
    ):
        app.include_router(module.router)
    install_operations(app, settings, queue)  # /metrics, request metrics, log context
    return app


async def _session_ended(request: Request, exc: Exception) -> JSONResponse:
    if not is_session_ended(exc):
        log.error("database error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(
            {"detail": "internal error"}, status_code=status.HTTP_500_INTERNAL_SERVER_ERROR
        )
    # This process stalled inside a transaction (frozen, swapped out) long enough for the
    # server to end its session and free its rows: nothing it did there was committed.
    log.warning("the database ended this request's session: %s", exc)
    return JSONResponse(
        {
            "detail": "this request's database session was ended after it stalled inside a "
            "transaction; nothing was changed; try again"
        },
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": "1"},
    )


async def _database_unavailable(_request: Request, exc: Exception) -> JSONResponse:
    if is_lock_timeout(exc):
        # A row this request needs is held by a write in progress, or by a frozen process
        # the server has not ended yet: try again shortly, rather than hold the request.
        log.warning("lock wait timed out: %s", exc)
        return JSONResponse(
            {
                "detail": "a row this request needs is locked by another process (a write in "
                "progress); try again shortly"
            },
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "1"},
        )
    # A database that does not answer is an outage (503, try later), not a bug (500).
    log.error("database unavailable: %s", exc)
    return JSONResponse(
        {"detail": "the database is unavailable; try again later"},
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
    )
