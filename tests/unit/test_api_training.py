"""``POST /v1/models`` (training jobs), ``GET /v1/models[/{name}]`` and ``bulkscore models``.

The API with fake queues: "training" is the task body run in-process with a fake backbone,
as a worker would run it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from api_support import FakeJobQueue, UnitApi, bearer, serve
from sqlalchemy import select
from training_support import (
    WordBackbone,
    intent_rows,
    labelled_csv,
    stripes_and_dots,
    zip_label_folders,
)
from typer.testing import CliRunner

import cli.client
from cli.main import app
from core.config import Settings, reset_settings_cache
from core.db import get_engine
from core.tables import jobs, metadata, training_runs
from engine.chunk_work import work_on_chunk
from engine.delivery import Driver

MODELS = """
[models.encoder]
task = "feature-extraction"
backend = "transformers"
source = "./not-loaded-by-the-api"

[models.pictures]
task = "image-classification"
backend = "keras"
source = "keras:ResNet50/imagenet"
"""


@pytest.fixture()
def api(tmp_path: Path) -> Iterator[UnitApi]:
    (tmp_path / "models.toml").write_text(MODELS)
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'api.db'}", models=tmp_path / "models.toml"
    )
    metadata.create_all(get_engine(settings.database_url))
    with serve(settings, FakeJobQueue()) as api:
        yield api


def post_training(
    api: UnitApi, name: str, base: str, filename: str, data: bytes, key: str | None = None
) -> Any:
    return api.client.post(
        "/v1/models",
        data={"name": name, "base": base},
        files={"data": (filename, data, "application/octet-stream")},
        headers=bearer(key or api.key),
    )


def intents_csv(tmp_path: Path, per_label: int = 8) -> bytes:
    return labelled_csv(tmp_path / "intents.csv", intent_rows(per_label)).read_bytes()


@contextmanager
def fake_backbone(_base: Any) -> Iterator[WordBackbone]:
    yield WordBackbone(intent_rows(8))


def work(api: UnitApi) -> None:
    """Deliver every sent chunk (the trainings') as a worker serving the bases would."""
    driver = Driver(runner_for=lambda _model: WordBackbone([]), backbone_for=fake_backbone)
    for job_id, _model, indexes in api.queue.sent:
        for index in indexes:
            work_on_chunk(api.engine, api.settings, job_id, index, driver)


def test_training_answers_202_with_a_job_that_trains_on_the_bases_queue(
    api: UnitApi, tmp_path: Path
) -> None:
    raw = intents_csv(tmp_path)
    response = post_training(api, "intents", "encoder", "intents.csv", raw)
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert (job["model"], job["status"], job["counts"]["total"]) == ("intents", "queued", 24)
    # One chunk, sent to the base's queue like any job's.
    assert api.queue.sent == [(job["id"], "encoder", [0])]
    with api.engine.connect() as conn:
        run = conn.execute(select(training_runs)).one()
    assert (run.name, run.base, run.data_format, run.data) == ("intents", "encoder", "csv", raw)
    # Polled like any job, and only by its owner.
    assert api.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"
    assert api.get(f"/v1/jobs/{job['id']}", key=api.other_key).status_code == 404

    work(api)
    done = api.get(f"/v1/jobs/{job['id']}").json()
    assert done["status"] == "completed" and done["counts"]["succeeded"] == 24

    listed = {model["name"]: model for model in api.get("/v1/models").json()["data"]}
    assert listed["intents"]["version"] == "v1" and listed["intents"]["accuracy"] == 1.0
    assert listed["intents"]["base"] == "encoder" and listed["intents"]["input_kind"] == "text"
    assert "version" not in listed["encoder"]  # models-file models read as before

    detail = api.get("/v1/models/intents").json()
    assert detail["evaluation"]["labels"] == ["complaint", "praise", "question"]
    matrix = detail["evaluation"]["confusion_matrix"]
    assert sum(map(sum, matrix)) == detail["evaluation"]["holdout_size"] == 5
    assert all(count == 0 for i, row in enumerate(matrix) for j, count in enumerate(row) if i != j)
    assert detail["job_id"] == job["id"]
    assert [v["version"] for v in detail["versions"]] == ["v1"]

    # Jobs may name it at once; the job records the version.
    scoring = api.post_job(["broken refund", "how when"], model="intents")
    assert scoring.status_code == 202, scoring.text
    with api.engine.connect() as conn:
        revision = conn.scalar(
            select(jobs.c.model_revision).where(jobs.c.id == scoring.json()["id"])
        )
    assert revision == "v1"


def test_retraining_makes_a_new_version(api: UnitApi, tmp_path: Path) -> None:
    for _ in range(2):
        assert post_training(api, "intents", "encoder", "i.csv", intents_csv(tmp_path)).is_success
    work(api)
    detail = api.get("/v1/models/intents").json()
    assert detail["version"] == "v2"
    assert [v["version"] for v in detail["versions"]] == ["v2", "v1"]
    assert api.get("/v1/models/intents", params={"version": 1}).json()["version"] == "v1"
    assert api.get("/v1/models/intents", params={"version": 3}).status_code == 404
    assert api.get("/v1/models/nope").status_code == 404
    assert api.get("/v1/models/encoder").json()["name"] == "encoder"


@pytest.mark.parametrize(
    ("name", "base", "filename", "rows", "message"),
    [
        ("one", "encoder", "d.csv", [(f"text {i}", "a") for i in range(9)], "only one label"),
        (
            "few",
            "encoder",
            "d.csv",
            [(f"t {i}", "a") for i in range(6)] + [(f"u {i}", "b") for i in range(2)],
            "'b' has 2; each label needs at least 5",
        ),
        ("x", "nope", "d.csv", None, "unknown base model 'nope'"),
        ("encoder", "encoder", "d.csv", None, "'encoder' is a model of the models file"),
        ("Bad Name", "encoder", "d.csv", None, "use lower-case letters"),
        ("x", "encoder", "d.zip", None, "upload a .csv file with text,label columns"),
        ("x", "pictures", "d.csv", None, "upload a .zip of one folder per label"),
    ],
)
def test_unusable_requests_are_422_and_leave_no_job(
    api: UnitApi,
    tmp_path: Path,
    name: str,
    base: str,
    filename: str,
    rows: list[tuple[str, str]] | None,
    message: str,
) -> None:
    raw = labelled_csv(tmp_path / "d.csv", rows or intent_rows(5)).read_bytes()
    response = post_training(api, name, base, filename, raw)
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]
    assert api.queue.sent == []
    with api.engine.connect() as conn:
        assert conn.execute(select(jobs.c.id)).all() == []


def test_an_image_base_takes_a_zip_of_label_folders(api: UnitApi) -> None:
    raw = zip_label_folders(stripes_and_dots(5))
    response = post_training(api, "patterns", "pictures", "photos.zip", raw)
    assert response.status_code == 202, response.text
    assert response.json()["counts"]["total"] == 10
    assert api.queue.sent == [(response.json()["id"], "pictures", [0])]


def test_form_and_broker_failures(api: UnitApi, tmp_path: Path) -> None:
    json_body = api.client.post("/v1/models", json={"name": "x"}, headers=bearer(api.key))
    assert json_body.status_code == 415
    no_file = api.client.post(
        "/v1/models", data={"name": "x", "base": "encoder"}, headers=bearer(api.key)
    )
    assert no_file.status_code in (415, 422)
    assert api.client.post("/v1/models", data={"name": "x"}).status_code == 401
    api.queue.down = True
    down = post_training(api, "intents", "encoder", "i.csv", intents_csv(tmp_path))
    assert down.status_code == 503 and down.headers["Retry-After"] == "5"
    with api.engine.connect() as conn:
        assert conn.execute(select(jobs.c.id)).all() == []
        assert conn.execute(select(training_runs.c.job_id)).all() == []


def test_bulkscore_models_lists_trained_models_with_version_and_accuracy(
    api: UnitApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert post_training(api, "intents", "encoder", "i.csv", intents_csv(tmp_path)).is_success
    work(api)

    def in_process_client(base_url: str, headers: dict[str, str], **_: Any) -> Any:
        from fastapi.testclient import TestClient

        return TestClient(api.client.app, base_url=base_url, headers=headers)

    monkeypatch.setattr(cli.client.httpx, "Client", in_process_client)
    monkeypatch.setenv("BULKSCORE_API_URL", "http://testserver")
    monkeypatch.setenv("BULKSCORE_API_KEY", api.key)
    reset_settings_cache()
    try:
        result = CliRunner().invoke(app, ["models"])
    finally:
        reset_settings_cache()
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if "intents" in line)
    assert "v1 (1.000)" in line and "text-classification" in line and "encoder" in line
