"""``/healthz`` (the process answers) and ``/readyz`` (the service can score jobs).

``/readyz`` is ready when the database answers, the broker answers, and a worker has a live
heartbeat (``core.heartbeats``): for the model named by ``?model=NAME``, or, without it,
for at least one registered model. The body lists the live workers of every registered
model, so an operator sees which models have none.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.deps import EngineDep, JobQueueDep, SettingsDep
from core.models.registry import NAME_PATTERN, Registry, RegistryError

router = APIRouter(tags=["health"])


@router.get("/healthz", operation_id="healthz")
def healthz() -> dict[str, str]:
    """Liveness: the process is up and serving requests."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    operation_id="readyz",
    responses={503: {"description": "The database or the broker is down, or no worker is."}},
)
def readyz(
    engine: EngineDep,
    queue: JobQueueDep,
    settings: SettingsDep,
    model: str | None = Query(
        default=None,
        pattern=NAME_PATTERN.pattern,
        description="Ready only if this model has a live worker.",
    ),
) -> JSONResponse:
    """Readiness: database, broker, and a worker with a live heartbeat (503 otherwise)."""
    checks: dict[str, str] = {}
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = _problem(exc)
    workers: dict[str, int] = {}
    try:
        queue.ping()
        checks["broker"] = "ok"
        live = queue.workers()
        workers = {name: int(live.get(name, 0)) for name in _models(settings)}
        if model is not None:
            workers.setdefault(model, int(live.get(model, 0)))
            wanted = [model]
        else:
            wanted = list(workers)
        has_worker = any(workers.get(name, 0) > 0 for name in wanted)
        checks["workers"] = (
            "ok"
            if has_worker
            else "error: no worker has a live heartbeat"
            + (f" for model {model!r}" if model is not None else "")
        )
    except Exception as exc:
        checks.setdefault("broker", _problem(exc))
        checks["workers"] = "unknown: the broker cannot be read"
    ready = all(value == "ok" for value in checks.values())
    body: dict[str, Any] = {
        "status": "ready" if ready else "not ready",
        "checks": checks,
        "workers": workers,
    }
    return JSONResponse(body, status_code=200 if ready else 503)


def _models(settings: Any) -> list[str]:
    try:
        return Registry.load(settings.models).names
    except RegistryError:
        return []


def _problem(exc: Exception) -> str:
    # First line only: driver messages name host and port but never the password.
    first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"error: {first_line[:200]}"
