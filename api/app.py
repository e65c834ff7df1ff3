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
from api.openapi_doc import install_openapi
from api.operations import install_operations
from api.problems import install_problem_handlers, problem_response
from api.routes.jobs import JOB_UPLOAD_SCHEMA
from api.schemas import JobRequest
from api.web import install_web
from core.config import Settings, get_settings
from core.db import DbRole, get_engine, is_lock_timeout, is_session_ended, set_process_role
from core.rate_limit import RateLimiter

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
    limiter = (
        RateLimiter(settings.broker_url, settings.rate_limit_per_min)
        if settings.rate_limit_per_min > 0
        else None
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        queue.close()
        if limiter is not None:
            limiter.close()

    app = FastAPI(
        title="bulkscore",
        version=_version(),
        description=(
            "Score large batches of texts with pretrained models. Submit a job, poll its "
            "status, page or download its results. Every `/v1` call needs "
            "`Authorization: Bearer <key>` (keys come from `bulkscore keys create NAME`). "
            "Every error is `application/problem+json` (RFC 9457): `type`, `title`, "
            "`status`, `detail`, and a stable `code`."
        ),
        # /docs is served from the service's own copy of Swagger UI (api.web.docs), not a
        # CDN; ReDoc has no offline copy, so it is not served.
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.settings = settings
    # Every session this process opens waits briefly for locks (core/db.py).
    set_process_role(DbRole.API, settings)
    app.state.engine = get_engine(settings.database_url)
    app.state.job_queue = queue
    app.state.rate_limiter = limiter
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    install_problem_handlers(app)
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
    install_web(app)  # the pages: /, /signin, /jobs, ... and /static
    install_operations(app, settings, queue)  # /metrics, request metrics, log context
    install_openapi(app, (JobRequest,), {"JobUpload": JOB_UPLOAD_SCHEMA})
    return app


async def _session_ended(request: Request, exc: Exception) -> JSONResponse:
    if not is_session_ended(exc):
        log.error("database error on %s %s", request.method, request.url.path, exc_info=exc)
        return problem_response(
            status.HTTP_500_INTERNAL_SERVER_ERROR, "internal_error", "internal error"
        )
    # This process stalled inside a transaction (frozen, swapped out) long enough for the
    # server to end its session and free its rows: nothing it did there was committed.
    log.warning("the database ended this request's session: %s", exc)
    return problem_response(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        "database_session_ended",
        "this request's database session was ended after it stalled inside a transaction; "
        "nothing was changed; try again",
        headers={"Retry-After": "1"},
    )


async def _database_unavailable(_request: Request, exc: Exception) -> JSONResponse:
    if is_lock_timeout(exc):
        # A row this request needs is held by a write in progress, or by a frozen process
        # the server has not ended yet: try again shortly, rather than hold the request.
        log.warning("lock wait timed out: %s", exc)
        return problem_response(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "database_busy",
            "a row this request needs is locked by another process (a write in progress); "
            "try again shortly",
            headers={"Retry-After": "1"},
        )
    # A database that does not answer is an outage (503, try later), not a bug (500).
    log.error("database unavailable: %s", exc)
    return problem_response(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        "database_unavailable",
        "the database is unavailable; try again later",
    )
