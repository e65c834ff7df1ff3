"""Training end to end: the API, real ``bulkscore worker`` processes, PostgreSQL and Redis.

Train through ``POST /v1/models`` and poll the job; a worker that serves the base trains it.
A worker started with the trained name serves its latest version; results record the
version that scored them, so a worker started before a retraining keeps writing the old
version until it is restarted.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from api_support import UnitApi, bearer, serve
from sqlalchemy import select
from training_support import feature_base_models, intent_rows, labelled_csv
from typer.testing import CliRunner
from worker_support import poll, running_worker, worker_env

from cli.main import app as cli_app
from core.config import Settings, reset_settings_cache
from core.migrate import upgrade
from core.tables import jobs, results

BASE = "tinybase"
TIMEOUT_S = 90.0


@dataclass
class Stack:
    api: UnitApi
    env: dict[str, str]
    tmp: Path
    csv: bytes

    def train(self, name: str, data: bytes | None = None) -> Any:
        return self.api.client.post(
            "/v1/models",
            data={"name": name, "base": BASE},
            files={"data": ("intents.csv", data or self.csv, "text/csv")},
            headers=bearer(self.api.key),
        )

    def wait(self, job_id: str) -> dict[str, Any]:
        def final() -> dict[str, Any] | None:
            job = self.api.get(f"/v1/jobs/{job_id}").json()
            return job if job["status"] in ("completed", "failed", "cancelled") else None

        return poll(final, TIMEOUT_S, f"job {job_id} to end")

    def score(self, texts: list[str], model: str) -> str:
        response = self.api.post_job(texts, model=model)
        assert response.status_code == 202, response.text
        job_id = str(response.json()["id"])
        assert self.wait(job_id)["status"] == "completed"
        return job_id

    def revisions(self, job_id: str) -> tuple[str | None, set[str | None]]:
        """The job's model_revision, and the set of its results' model_revision."""
        with self.api.engine.connect() as conn:
            job = conn.scalar(select(jobs.c.model_revision).where(jobs.c.id == job_id))
            rows = set(
                conn.scalars(select(results.c.model_revision).where(results.c.job_id == job_id))
            )
        return job, rows


@pytest.fixture()
def stack(pg_url: str, redis_url: str, tmp_path: Path, tiny_text_model: Path) -> Iterator[Stack]:
    models = feature_base_models(tmp_path / "models.toml", tiny_text_model, BASE)
    upgrade(pg_url)
    settings = Settings(database_url=pg_url, broker_url=redis_url, models=models)
    csv = labelled_csv(tmp_path / "intents.csv", intent_rows(8)).read_bytes()
    with serve(settings) as api:
        yield Stack(api, worker_env(pg_url, redis_url, models), tmp_path, csv)


def test_train_poll_score_retrain_and_compare(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = intent_rows(3)
    texts = [text for text, _ in rows]
    refused = stack.train(
        "intents", labelled_csv(stack.tmp / "one.csv", [("x y", "a")] * 6).read_bytes()
    )
    assert refused.status_code == 422 and "only one label" in refused.json()["detail"]

    with running_worker(["--models", BASE], stack.env, stack.tmp / "base.log") as worker:
        created = stack.train("intents")
        assert created.status_code == 202, created.text
        job = stack.wait(created.json()["id"])
        assert job["status"] == "completed", job
        assert job["counts"] == {"total": 24, "succeeded": 24, "failed": 0}
        worker.wait_for(rf"chunk 0 of job {job['id']} done by \S+: .*\(trained intents v1,")
    detail = stack.api.get("/v1/models/intents").json()
    assert detail["version"] == "v1" and detail["evaluation"]["accuracy"] == 1.0

    with running_worker(
        ["--models", f"{BASE},intents"], stack.env, stack.tmp / "both.log"
    ) as worker:
        first = stack.score(texts, "intents")
        assert stack.revisions(first) == ("v1", {"v1"})
        with stack.api.engine.connect() as conn:
            labels = list(
                conn.scalars(
                    select(results.c.label)
                    .where(results.c.job_id == first)
                    .order_by(results.c.index)
                )
            )
        assert labels == [label for _, label in rows]

        # Retraining runs on this worker too (it serves the base) and makes v2 ...
        again = stack.wait(stack.train("intents").json()["id"])
        assert again["status"] == "completed"
        versions = stack.api.get("/v1/models/intents").json()["versions"]
        assert [v["version"] for v in versions] == ["v2", "v1"]
        # ... which new jobs name, while this worker still holds v1 until restarted.
        stale = stack.score(texts, "intents")
        assert stack.revisions(stale) == ("v2", {"v1"})
        worker.wait_for(r"trained model intents v1")

    with running_worker(["--models", "intents"], stack.env, stack.tmp / "restarted.log"):
        fresh = stack.score(texts, "intents")
        assert stack.revisions(fresh) == ("v2", {"v2"})

    for key, value in stack.env.items():
        if key.startswith("BULKSCORE_"):
            monkeypatch.setenv(key, value)
    reset_settings_cache()
    try:
        compared = CliRunner().invoke(cli_app, ["compare", first, "--model", "intents"])
    finally:
        reset_settings_cache()
    assert compared.exit_code == 0, compared.output
    assert "agreement" in compared.output and "(9 of 9)" in compared.output
