"""Models, health, readiness, OpenAPI docs, and a database outage."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from api_support import IMAGE_MODEL, TEXT_MODEL, FakeJobQueue, UnitApi, bearer, unit_api
from fastapi.testclient import TestClient

from api.app import create_app
from core.config import Settings
from core.db import dispose_engines


@pytest.fixture()
def api(tmp_path: Path) -> Iterator[UnitApi]:
    with unit_api(tmp_path) as api:
        yield api


def test_models_lists_the_registry(api: UnitApi) -> None:
    models = api.get("/v1/models").json()["data"]
    assert [model["name"] for model in models] == [IMAGE_MODEL, TEXT_MODEL]
    assert models[1] == {
        "name": TEXT_MODEL,
        "task": "text-classification",
        "backend": "transformers",
        "source": "./not-loaded-by-the-api",
        "revision": None,
        "input_kind": "text",
        "description": "a tiny test model",
    }
    assert models[0]["input_kind"] == "image"


def test_healthz_and_readyz(api: UnitApi) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok"}
    ready = api.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "checks": {"database": "ok", "broker": "ok", "workers": "ok"},
        "workers": {IMAGE_MODEL: 0, TEXT_MODEL: 1},
    }


def test_readyz_is_503_without_a_worker_heartbeat(api: UnitApi) -> None:
    assert api.client.get("/readyz", params={"model": TEXT_MODEL}).status_code == 200
    # The image model has no worker: ready for texts, not for images.
    image = api.client.get("/readyz", params={"model": IMAGE_MODEL})
    assert image.status_code == 503
    assert image.json()["checks"]["workers"] == (
        f"error: no worker has a live heartbeat for model {IMAGE_MODEL!r}"
    )
    api.queue.live_workers.clear()
    nothing = api.client.get("/readyz")
    assert nothing.status_code == 503
    assert nothing.json()["checks"] == {
        "database": "ok",
        "broker": "ok",
        "workers": "error: no worker has a live heartbeat",
    }


def test_readyz_is_503_while_the_broker_is_down(api: UnitApi) -> None:
    api.queue.down = True
    response = api.client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["database"] == "ok"
    assert response.json()["checks"]["broker"].startswith("error: Error 111")
    assert api.client.get("/healthz").status_code == 200


def test_a_database_outage_answers_503_not_500(tmp_path: Path) -> None:
    # A SQLite file in a folder that does not exist cannot be opened: like a database down.
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'missing' / 'api.db'}", models=tmp_path / "m.toml"
    )
    try:
        with TestClient(create_app(settings, FakeJobQueue())) as client:
            ready = client.get("/readyz")
            jobs = client.get("/v1/jobs", headers=bearer("bsk_whatever"))
    finally:
        dispose_engines()
    assert ready.status_code == 503
    assert ready.json()["checks"]["database"].startswith("error: ")
    assert jobs.status_code == 503
    assert jobs.headers["content-type"] == "application/problem+json"
    assert jobs.json() == {
        "type": "/problems/database_unavailable",
        "title": "Service Unavailable",
        "status": 503,
        "detail": "the database is unavailable; try again later",
        "code": "database_unavailable",
    }


def test_openapi_documents_both_submit_forms_and_bearer_auth(api: UnitApi) -> None:
    schema = api.client.get("/openapi.json").json()
    submit = schema["paths"]["/v1/jobs"]["post"]
    content = submit["requestBody"]["content"]
    assert set(content) == {"application/json", "multipart/form-data"}
    # Named schemas in the document's components, not dangling "#/$defs/..." references.
    assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/JobRequest"}
    assert content["multipart/form-data"]["schema"] == {"$ref": "#/components/schemas/JobUpload"}
    components = schema["components"]["schemas"]
    item = components["JobRequest"]["properties"]["inputs"]["items"]
    assert item == {"$ref": "#/components/schemas/InputRecord"}
    assert {"id", "text", "image_base64"} <= set(components["InputRecord"]["properties"])
    assert {"file", "images", "metadata"} <= set(components["JobUpload"]["properties"])
    assert "$defs" not in str(schema)
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert {"202", "200", "401", "409", "413", "422", "429", "503"} <= set(submit["responses"])
    assert api.client.get("/docs").status_code == 200


def test_shutdown_closes_the_job_queue(tmp_path: Path) -> None:
    queue = FakeJobQueue()
    with unit_api(tmp_path, queue=queue):
        assert not queue.closed
    assert queue.closed
