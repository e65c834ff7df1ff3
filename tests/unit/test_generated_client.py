"""A client generated from ``/openapi.json`` with openapi-python-client reads like the API.

The client is generated from the running app's schema (not a checked-in copy), so a route
without an operation id, an anonymous request body or an error answer that is not a
``Problem`` shows up here as a wrong name or an unparsed answer.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from api_support import TEXT_MODEL, UnitApi, bearer, fake_scores, unit_api
from fastapi.testclient import TestClient

PACKAGE = "bulkscore_client"
GENERATOR = str(Path(sys.executable).with_name("openapi-python-client"))


@pytest.fixture()
def api(tmp_path: Path) -> Iterator[UnitApi]:
    with unit_api(tmp_path) as api:
        yield api


def generate_client(schema: dict[str, Any], folder: Path) -> None:
    spec = folder / "openapi.json"
    spec.write_text(json.dumps(schema), encoding="utf-8")
    # The generator formats its output with ruff, which lives beside this interpreter.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    command = [GENERATOR, "generate", "--path", str(spec), "--meta", "none"]
    done = subprocess.run(
        [*command, "--output-path", str(folder / PACKAGE)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # Every part of the schema was understood: nothing skipped or omitted.
    assert "WARNING" not in done.stdout + done.stderr, done.stdout + done.stderr


@pytest.fixture()
def generated(api: UnitApi, tmp_path: Path) -> Iterator[ModuleType]:
    generate_client(api.client.get("/openapi.json").json(), tmp_path)
    sys.path.insert(0, str(tmp_path))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(tmp_path))
        for name in [name for name in sys.modules if name.split(".")[0] == PACKAGE]:
            del sys.modules[name]


def operations(tag: str, *names: str) -> Any:
    """The generated modules of ``names`` (``create_job``...) under the tag ``tag``."""
    return [importlib.import_module(f"{PACKAGE}.api.{tag}.{name}") for name in names]


def client_for(package: ModuleType, api: UnitApi, key: str) -> Any:
    client = package.AuthenticatedClient(base_url="http://testserver", token=key)
    # The generated client speaks to the app in-process: the TestClient is an httpx client.
    client.set_httpx_client(
        TestClient(api.client.app, base_url="http://testserver", headers=bearer(key))
    )
    return client


def test_generated_client_submits_polls_pages_and_cancels(
    api: UnitApi, generated: ModuleType
) -> None:
    create_job, get_job, list_jobs, cancel_job = operations(
        "jobs", "create_job", "get_job", "list_jobs", "cancel_job"
    )
    (get_results,) = operations("results", "get_results")
    models = importlib.import_module(f"{PACKAGE}.models")
    client = client_for(generated, api, api.key)

    request = models.JobRequest(
        model=TEXT_MODEL,
        inputs=[models.InputRecord(id=f"r{i}", text=f"text {i}") for i in range(3)],
        metadata=models.JobRequestMetadataType0.from_dict({"team": "search"}),
        unique_ids=True,
    )
    first = create_job.sync(client=client, body=request)
    assert isinstance(first, models.JobOut), first
    second = create_job.sync(client=client, body=request)
    assert isinstance(second, models.JobOut) and second.id != first.id

    polled = get_job.sync(first.id, client=client)
    assert polled.status == models.JobStatus.QUEUED
    assert polled.metadata.to_dict() == {"team": "search"}

    fake_scores(api.engine, first.id, [0, 1])
    page = get_results.sync(first.id, client=client, limit=1)
    assert [row.id for row in page.data] == ["r0"] and page.next_after == 0
    rest = get_results.sync(first.id, client=client, limit=10, after=page.next_after)
    assert [row.id for row in rest.data] == ["r1"]

    newest = list_jobs.sync(client=client, limit=1)
    older = list_jobs.sync(client=client, limit=1, after=newest.next_after)
    assert [newest.data[0].id, older.data[0].id] == [second.id, first.id]
    assert older.next_after is None

    cancelled = cancel_job.sync(first.id, client=client)
    assert cancelled.status == models.JobStatus.CANCELLED


def test_generated_client_reads_errors_as_problems(api: UnitApi, generated: ModuleType) -> None:
    create_job, get_job, list_jobs = operations("jobs", "create_job", "get_job", "list_jobs")
    models = importlib.import_module(f"{PACKAGE}.models")

    missing = get_job.sync("0" * 32, client=client_for(generated, api, api.key))
    assert isinstance(missing, models.Problem)
    assert (missing.status, missing.code) == (404, "job_not_found")

    refused = list_jobs.sync(client=client_for(generated, api, "bsk_wrong"))
    assert isinstance(refused, models.Problem) and refused.code == "unauthorized"

    duplicate = models.JobRequest(
        model=TEXT_MODEL,
        inputs=[models.InputRecord(id="same", text="a"), models.InputRecord(id="same", text="b")],
        unique_ids=True,
    )
    invalid = create_job.sync(client=client_for(generated, api, api.key), body=duplicate)
    assert isinstance(invalid, models.Problem) and invalid.code == "duplicate_ids"
