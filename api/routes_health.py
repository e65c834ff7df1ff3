"""``/healthz`` (the process answers) and ``/readyz`` (its database and broker answer)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.deps import EngineDep, JobQueueDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness: the process is up and serving requests."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "The database or the broker is down."}})
def readyz(engine: EngineDep, queue: JobQueueDep) -> JSONResponse:
    """Readiness: the database and the broker both answer (503 otherwise)."""
    checks: dict[str, str] = {}
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = _problem(exc)
    try:
        queue.ping()
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = _problem(exc)
    ready = all(value == "ok" for value in checks.values())
    body: dict[str, Any] = {"status": "ready" if ready else "not ready", "checks": checks}
    return JSONResponse(body, status_code=200 if ready else 503)


def _problem(exc: Exception) -> str:
    # First line only: driver messages name host and port but never the password.
    first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"error: {first_line[:200]}"
