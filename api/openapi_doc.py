"""The OpenAPI document, finished: every error answer is a ``Problem``, 401 where a key is
needed, and the named request bodies the routes read by hand.

FastAPI documents an error answer as ``application/json`` with whatever model a route names
(or its own ``HTTPValidationError`` for 422), and knows nothing of the 401 the bearer key
dependency raises. This rewrites the generated document once, so that a client generated
from it (``openapi-python-client``) reads every error as one ``Problem`` type.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from api.problems import PROBLEM_MEDIA_TYPE, Problem

REF_TEMPLATE = "#/components/schemas/{model}"
PROBLEM_REF = {"$ref": REF_TEMPLATE.format(model="Problem")}
UNAUTHORIZED = "Missing, unknown or revoked API key (`Authorization: Bearer <key>`)."
# Answers any route with a body or a database may give, whatever the route itself does.
BODY_TOO_LARGE = "The body is over `BULKSCORE_MAX_BODY_BYTES` (refused before it is read)."
DATABASE_DOWN = (
    "The database is unavailable, or a row is locked by a write in progress (`Retry-After`); "
    "nothing was changed."
)
# Answers that are reports, not errors: /readyz's 503 lists what is not ready.
NOT_PROBLEMS = {("/readyz", "get", "503")}
# FastAPI's own validation-error schemas, replaced by Problem.
FASTAPI_ERROR_SCHEMAS = ("HTTPValidationError", "ValidationError")


def component_ref(name: str) -> dict[str, str]:
    """A reference to the schema ``name``, added to the document by :func:`install_openapi`."""
    return {"$ref": REF_TEMPLATE.format(model=name)}


def install_openapi(
    app: FastAPI,
    extra_models: tuple[type[BaseModel], ...],
    extra_schemas: dict[str, dict[str, Any]],
) -> None:
    """Serve the finished document as ``/openapi.json``.

    Args:
        extra_models: Models routes refer to with :func:`component_ref` (bodies read by
            hand, which FastAPI cannot see).
        extra_schemas: Hand-written schemas by name, referred to the same way.
    """

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            finish(schema, (Problem, *extra_models), extra_schemas)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def finish(
    schema: dict[str, Any],
    models: tuple[type[BaseModel], ...],
    extra_schemas: dict[str, dict[str, Any]],
) -> None:
    """Rewrite ``schema`` in place (see the module's docstring)."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(extra_schemas)
    for name in FASTAPI_ERROR_SCHEMAS:
        components.pop(name, None)
    for model in models:
        body = model.model_json_schema(ref_template=REF_TEMPLATE)
        for name, definition in body.pop("$defs", {}).items():
            components.setdefault(name, definition)
        components[model.__name__] = body
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            if "security" in operation:
                responses.setdefault("401", {"description": UNAUTHORIZED})
                responses.setdefault("503", {"description": DATABASE_DOWN})
            if "requestBody" in operation:
                responses.setdefault("413", {"description": BODY_TOO_LARGE})
            for status, response in responses.items():
                if (path, method, status) in NOT_PROBLEMS:
                    continue
                if status.isdigit() and int(status) >= 400:
                    response["content"] = {PROBLEM_MEDIA_TYPE: {"schema": PROBLEM_REF}}
                    if response.get("description") == "Validation Error":
                        response["description"] = "The request is invalid (see `errors`)."
