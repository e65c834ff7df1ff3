"""FastAPI dependencies: settings, database, job queue, and the caller's API key."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Path, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Connection, Engine

from api.dispatch import JobQueue
from api.problems import ApiError
from core.config import Settings
from core.jobs.lifecycle import JOB_ID_PATTERN, Job, get_job
from core.keys import authenticate, hash_key
from core.rate_limit import RateLimiter


def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_db_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def get_job_queue(request: Request) -> JobQueue:
    queue: JobQueue = request.app.state.job_queue
    return queue


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
EngineDep = Annotated[Engine, Depends(get_db_engine)]
JobQueueDep = Annotated[JobQueue, Depends(get_job_queue)]


def get_conn(engine: EngineDep) -> Iterator[Connection]:
    """A connection for the request's reads (rolled back, never committed)."""
    with engine.connect() as conn:
        yield conn


ConnDep = Annotated[Connection, Depends(get_conn)]

# auto_error=False: a missing header gets our own 401 (with WWW-Authenticate) instead of
# FastAPI's default answer; the scheme still documents bearer auth in /docs.
bearer_scheme = HTTPBearer(
    auto_error=False,
    description="An API key from `bulkscore keys create NAME`, as `Authorization: Bearer <key>`.",
)


def unauthorized(detail: str) -> ApiError:
    return ApiError(
        status.HTTP_401_UNAUTHORIZED, "unauthorized", detail, headers={"WWW-Authenticate": "Bearer"}
    )


def current_key(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    engine: EngineDep,
) -> int:
    """The id of the caller's active API key; 401 if it is missing, unknown or revoked."""
    if credentials is None:
        raise unauthorized("missing API key: send the header 'Authorization: Bearer <key>'")
    # A short connection of its own: the request's other work (a large upload, a long
    # export) must not hold a pooled connection open just for this lookup.
    with engine.connect() as conn:
        key_id = authenticate(conn, credentials.credentials)
    if key_id is None:
        raise unauthorized("invalid or revoked API key")
    return key_id


CurrentKey = Annotated[int, Depends(current_key)]


def submitting_key(
    key_id: CurrentKey,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    request: Request,
) -> int:
    """The caller's key id, once its submission rate allows one more (429 otherwise)."""
    limiter: RateLimiter | None = request.app.state.rate_limiter
    if limiter is None or credentials is None:
        return key_id
    # By the key's hash, not its row id: ids repeat across databases sharing one Redis.
    take_submission_token(limiter, hash_key(credentials.credentials))
    return key_id


def take_submission_token(limiter: RateLimiter, key_digest: str) -> None:
    """Take one submission from the bucket of the key whose hash is ``key_digest``, or
    refuse with 429 and ``Retry-After`` (API calls and web pages share the bucket)."""
    decision = limiter.take(key_digest[:32])
    if not decision.allowed:
        raise ApiError(
            status.HTTP_429_TOO_MANY_REQUESTS,
            "rate_limited",
            f"this API key may submit {limiter.per_minute} jobs a minute; "
            f"retry in {decision.retry_after_s} s",
            headers={"Retry-After": str(decision.retry_after_s)},
        )


SubmittingKey = Annotated[int, Depends(submitting_key)]


def job_not_found(job_id: str) -> ApiError:
    return ApiError(status.HTTP_404_NOT_FOUND, "job_not_found", f"job {job_id} not found")


# Path parameters are text from outside: one that cannot be an id (a NUL, a lone surrogate,
# any other form) is refused by its pattern with a 422 naming it, before it reaches SQL.
JobId = Annotated[
    str, Path(pattern=JOB_ID_PATTERN, description="A job's id, as `POST /v1/jobs` returned it.")
]


def owned_job(job_id: JobId, key_id: CurrentKey, conn: ConnDep) -> Job:
    """The job ``job_id`` if the caller's key owns it; 404 otherwise.

    Another key's job answers exactly like a job that does not exist, so ids of other
    keys' jobs cannot be probed.
    """
    job = get_job(conn, job_id, owner_key_id=key_id)
    if job is None:
        raise job_not_found(job_id)
    return job


OwnedJob = Annotated[Job, Depends(owned_job)]
