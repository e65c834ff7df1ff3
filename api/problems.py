"""One error shape for every 4xx and 5xx: RFC 9457 problem details.

Every error answer is ``application/problem+json`` with ``type``, ``title``, ``status``,
``detail`` and a stable ``code`` a script can branch on (``job_not_found``,
``rate_limited``...); a validation error adds ``errors``, one entry per refused field.

Routes raise :class:`ApiError` (an ``HTTPException`` carrying a code); a plain
``HTTPException`` (FastAPI's own, Starlette's 404/405) gets the code of its status. The
handlers are installed on the app by :func:`install_problem_handlers`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
# ``type`` is a URI naming the kind of problem; ours are relative references under one
# prefix (RFC 9457 section 3.1.1 allows relative URIs), one per ``code``.
TYPE_PREFIX = "/problems/"

# The code of an error raised without one, by status.
CODES_BY_STATUS: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    410: "gone",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
    500: "internal_error",
    503: "service_unavailable",
}


class FieldError(BaseModel):
    """One refused field of a request."""

    loc: list[str | int] = Field(description="Where: `body`, `query` or `path`, then the names.")
    msg: str = Field(description="What is wrong with it.")
    type: str = Field(description="pydantic's error type, e.g. `missing`, `string_too_long`.")


class Problem(BaseModel):
    """An error answer (RFC 9457 problem details), `application/problem+json`."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="A URI naming the kind of problem: `/problems/<code>`.")
    title: str = Field(description="The HTTP status' phrase, e.g. `Not Found`.")
    status: int = Field(description="The HTTP status code.")
    detail: str = Field(description="What went wrong, for a person to read.")
    code: str = Field(
        description="A stable code for scripts: `invalid_request`, `unauthorized`, "
        "`job_not_found`, `idempotency_conflict`, `payload_too_large`, `rate_limited`, "
        "`broker_unavailable`, `database_unavailable`...",
        examples=["job_not_found"],
    )
    errors: list[FieldError] | None = Field(
        default=None, description="With `invalid_request` from validation: each refused field."
    )


class ApiError(StarletteHTTPException):
    """An error answer with its stable ``code``."""

    def __init__(
        self,
        status_code: int,
        code: str,
        detail: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(status_code=status_code, detail=detail, headers=dict(headers or {}))
        self.code = code


def problem_body(
    status: int, code: str, detail: str, errors: Sequence[Mapping[str, Any]] | None = None
) -> dict[str, Any]:
    """The problem document of an error answer."""
    body: dict[str, Any] = {
        "type": TYPE_PREFIX + code,
        "title": _title(status),
        "status": status,
        "detail": detail,
        "code": code,
    }
    if errors is not None:
        body["errors"] = list(errors)
    return body


def problem_bytes(status: int, code: str, detail: str) -> bytes:
    """:func:`problem_body` encoded, for answers sent outside FastAPI (ASGI middleware)."""
    return json.dumps(problem_body(status, code, detail)).encode()


def problem_response(
    status: int,
    code: str,
    detail: str,
    headers: Mapping[str, str] | None = None,
    errors: Sequence[Mapping[str, Any]] | None = None,
) -> JSONResponse:
    return JSONResponse(
        problem_body(status, code, detail, errors),
        status_code=status,
        headers=dict(headers or {}),
        media_type=PROBLEM_MEDIA_TYPE,
    )


def code_for_status(status: int) -> str:
    return CODES_BY_STATUS.get(status, "error" if status >= 500 else "bad_request")


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


async def _http_exception(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = exc.code if isinstance(exc, ApiError) else code_for_status(exc.status_code)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    return problem_response(exc.status_code, code, detail, exc.headers)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {
            "loc": [part if isinstance(part, int) else str(part) for part in error.get("loc", ())],
            "msg": str(error.get("msg", "")),
            "type": str(error.get("type", "")),
        }
        for error in exc.errors()
    ]
    # The input itself is not echoed: a refused body may be megabytes, or a secret.
    summary = "; ".join(_describe(error) for error in errors[:5])
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return problem_response(
        422, "invalid_request", f"the request is invalid: {summary}{more}", errors=errors
    )


def _describe(error: Mapping[str, Any]) -> str:
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}" if where else str(error["msg"])


def install_problem_handlers(app: FastAPI) -> None:
    """Answer every ``HTTPException`` and validation error as problem details."""
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # A bug: logged with its traceback here, answered in the one error shape (Starlette's
    # own answer would be a bare text body).
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(500, "internal_error", "internal error")
