"""Every error answer is RFC 9457 problem details with a stable code, and the schema says so."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_support import TEXT_MODEL, UnitApi, bearer, unit_api

from api.problems import PROBLEM_MEDIA_TYPE


@pytest.fixture()
def api(tmp_path: Path) -> Iterator[UnitApi]:
    with unit_api(tmp_path) as api:
        yield api


def problem(response: Any, status: int, code: str) -> dict[str, Any]:
    """The answer's problem document, checked against the one error shape."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"] == f"/problems/{code}"
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    return body


def test_a_missing_and_a_wrong_key_are_unauthorized(api: UnitApi) -> None:
    missing = api.client.get("/v1/jobs")
    wrong = api.client.get("/v1/jobs", headers=bearer("bsk_nope"))
    assert "Authorization: Bearer" in problem(missing, 401, "unauthorized")["detail"]
    assert problem(wrong, 401, "unauthorized")["title"] == "Unauthorized"
    assert wrong.headers["www-authenticate"] == "Bearer"


def test_validation_errors_keep_each_field(api: UnitApi) -> None:
    response = api.client.post(
        "/v1/jobs",
        json={"model": TEXT_MODEL, "inputs": "nope", "extra": 1},
        headers=bearer(api.key),
    )
    body = problem(response, 422, "invalid_request")
    locations = {tuple(error["loc"]) for error in body["errors"]}
    assert {("inputs",), ("extra",)} <= locations
    assert all({"loc", "msg", "type"} == set(error) for error in body["errors"])
    assert "inputs" in body["detail"]

    query = api.get("/v1/jobs", params={"limit": 0})
    assert problem(query, 422, "invalid_request")["errors"][0]["loc"] == ["query", "limit"]


def test_each_refusal_has_its_code(tmp_path: Path) -> None:
    with unit_api(tmp_path, max_body_bytes=4096, max_items_per_job=3) as api:
        problem(api.get("/v1/jobs/" + "0" * 32), 404, "job_not_found")
        problem(api.get("/v1/nowhere"), 404, "not_found")
        problem(api.client.delete("/v1/jobs", headers=bearer(api.key)), 405, "method_not_allowed")
        problem(api.post_job(["a"], model="nope"), 422, "unknown_model")
        problem(api.post_job(["a"] * 4), 413, "too_many_inputs")
        problem(api.post_job(["x" * 5000]), 413, "payload_too_large")
        wrong_type = api.client.post(
            "/v1/jobs", content=b"hi", headers={**bearer(api.key), "Content-Type": "text/plain"}
        )
        problem(wrong_type, 415, "unsupported_media_type")
        again = {"Idempotency-Key": "k1"}
        assert api.post_job(["a"], headers=again).status_code == 202
        problem(api.post_job(["b"], headers=again), 409, "idempotency_conflict")
        api.queue.down = True
        down = problem(api.post_job(["a"]), 503, "broker_unavailable")
        assert "broker" in down["detail"]


def test_a_declared_oversize_body_is_refused_as_a_problem_before_it_is_read(
    tmp_path: Path,
) -> None:
    with unit_api(tmp_path, max_body_bytes=4096) as api:
        response = api.client.post(
            "/v1/jobs",
            content=b"x" * 5000,
            headers={**bearer(api.key), "Content-Type": "application/json"},
        )
        assert "4096 bytes" in problem(response, 413, "payload_too_large")["detail"]


def test_the_schema_documents_problems_and_401_everywhere(api: UnitApi) -> None:
    schema = api.client.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    assert {"type", "title", "status", "detail", "code"} <= set(components["Problem"]["required"])
    assert "HTTPValidationError" not in components
    ref = {"$ref": "#/components/schemas/Problem"}
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            if path.startswith("/v1"):
                assert {"401", "503"} <= set(responses), (method, path)
            if "requestBody" in operation:
                assert "413" in responses, (method, path)
            for status, response in responses.items():
                if int(status) < 400 or (path, status) == ("/readyz", "503"):
                    continue
                assert response["content"] == {PROBLEM_MEDIA_TYPE: {"schema": ref}}, (
                    method,
                    path,
                    status,
                )
    submit = schema["paths"]["/v1/jobs"]["post"]["responses"]
    assert {"401", "409", "413", "415", "422", "429", "503"} <= set(submit)
    assert "404" in schema["paths"]["/v1/jobs/{job_id}"]["get"]["responses"]


def test_operations_have_ids_named_like_the_api(api: UnitApi) -> None:
    schema = api.client.get("/openapi.json").json()
    ids = {
        (method, path): operation["operationId"]
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
    }
    assert ids == {
        ("get", "/healthz"): "healthz",
        ("get", "/readyz"): "readyz",
        ("post", "/v1/jobs"): "create_job",
        ("get", "/v1/jobs"): "list_jobs",
        ("get", "/v1/jobs/{job_id}"): "get_job",
        ("post", "/v1/jobs/{job_id}/cancel"): "cancel_job",
        ("delete", "/v1/jobs/{job_id}"): "delete_job",
        ("post", "/v1/jobs/{job_id}/retry"): "retry_job",
        ("post", "/v1/jobs/{job_id}/resume"): "resume_job",
        ("get", "/v1/jobs/{job_id}/results"): "get_results",
        ("get", "/v1/models"): "list_models",
        ("post", "/v1/models"): "train_model",
        ("get", "/v1/models/{name}"): "get_model",
    }
