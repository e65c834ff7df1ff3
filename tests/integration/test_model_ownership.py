"""A trained model's name belongs to the key that trained it: the API, a real worker, PostgreSQL.

The attack: alice trains ``alice-model``; bob POSTs the same name to register his own labels
as its next version (which alice's jobs would then score with), and reads her evaluation.
Bob must get 409 for the POST and, everywhere else, exactly what a name that does not exist
gets: 404, no listing, 422 for a job naming it. Two keys racing for a new name (both POSTs
accepted before either version exists) end with one version, the first registrant's; the
other training job fails and registers nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from api_support import UnitApi, bearer, serve
from sqlalchemy import select, text
from training_support import feature_base_models, intent_rows, labelled_csv
from worker_support import poll, running_worker, worker_env

from core.config import Settings
from core.migrate import upgrade
from core.models.trained import get_trained, list_trained
from core.tables import trained_models

BASE = "tinybase"
TIMEOUT_S = 90.0


@dataclass
class Stack:
    api: UnitApi
    env: dict[str, str]
    tmp: Path
    csv: bytes

    def train(self, name: str, key: str, rows: list[tuple[str, str]] | None = None) -> Any:
        data = self.csv
        if rows is not None:
            data = labelled_csv(self.tmp / "other.csv", rows).read_bytes()
        return self.api.client.post(
            "/v1/models",
            data={"name": name, "base": BASE},
            files={"data": ("intents.csv", data, "text/csv")},
            headers=bearer(key),
        )

    def wait(self, job_id: str, key: str) -> dict[str, Any]:
        def final() -> dict[str, Any] | None:
            job = self.api.get(f"/v1/jobs/{job_id}", key=key).json()
            return job if job["status"] in ("completed", "failed", "cancelled") else None

        return poll(final, TIMEOUT_S, f"job {job_id} to end")

    def listed(self, key: str) -> set[str]:
        return {model["name"] for model in self.api.get("/v1/models", key=key).json()["data"]}


@pytest.fixture()
def stack(pg_url: str, redis_url: str, tmp_path: Path, tiny_text_model: Path) -> Iterator[Stack]:
    models = feature_base_models(tmp_path / "models.toml", tiny_text_model, BASE)
    upgrade(pg_url)
    settings = Settings(database_url=pg_url, broker_url=redis_url, models=models)
    csv = labelled_csv(tmp_path / "intents.csv", intent_rows(8)).read_bytes()
    with serve(settings) as api:
        yield Stack(api, worker_env(pg_url, redis_url, models), tmp_path, csv)


# Bob's labels: were they ever registered under alice's name, her jobs would return them.
BOBS_ROWS = [(text, "bob-" + label) for text, label in intent_rows(8)]


def test_another_key_gets_409_404_and_422_for_a_trained_name_and_its_owner_retrains(
    stack: Stack,
) -> None:
    alice, bob = stack.api.key, stack.api.other_key
    with running_worker(["--models", BASE], stack.env, stack.tmp / "worker.log"):
        created = stack.train("alice-model", alice)
        assert created.status_code == 202, created.text
        assert stack.wait(created.json()["id"], alice)["status"] == "completed"

        refused = stack.train("alice-model", bob, BOBS_ROWS)
        assert refused.status_code == 409, refused.text
        assert "belongs to another API key" in refused.json()["detail"]

        # To bob the name does not exist: its evaluation, versions and training job stay hidden.
        for path in ("/v1/models/alice-model", "/v1/models/alice-model?version=1"):
            hidden = stack.api.get(path, key=bob)
            assert hidden.status_code == 404, hidden.text
            assert hidden.json()["code"] == "model_not_found"
            assert (
                hidden.json()["detail"]
                == f"model 'alice-model'{' version 1' if '?' in path else ''} not found"
            )
        assert "alice-model" not in stack.listed(bob)
        job = stack.api.post_job(["broken refund"], model="alice-model", key=bob)
        assert job.status_code == 422, job.text
        assert "unknown model 'alice-model'" in job.json()["detail"]
        assert "alice-model" not in job.json()["detail"].split("known models:", 1)[-1]

        # Alice sees it, names it, and trains its next version.
        assert "alice-model" in stack.listed(alice)
        assert stack.api.post_job(["broken refund"], model="alice-model").status_code == 202
        again = stack.train("alice-model", alice)
        assert again.status_code == 202, again.text
        assert stack.wait(again.json()["id"], alice)["status"] == "completed"
    detail = stack.api.get("/v1/models/alice-model", key=alice).json()
    assert [v["version"] for v in detail["versions"]] == ["v2", "v1"]
    with stack.api.engine.connect() as conn:
        rows = conn.execute(
            select(trained_models.c.version, trained_models.c.labels, trained_models.c.owner_key_id)
            .where(trained_models.c.name == "alice-model")
            .order_by(trained_models.c.version)
        ).all()
        alice_id = conn.scalar(text("SELECT id FROM api_keys WHERE name = 'owner'"))
        # The operator (unscoped) sees every key's models.
        assert get_trained(conn, "alice-model", with_head=False) is not None
        assert [m.name for m in list_trained(conn)] == ["alice-model"]
    assert [(r.version, r.owner_key_id) for r in rows] == [(1, alice_id), (2, alice_id)]
    assert all(not any(label.startswith("bob-") for label in r.labels) for r in rows)


def test_two_keys_racing_for_a_new_name_register_one_version_for_the_first(stack: Stack) -> None:
    alice, bob = stack.api.key, stack.api.other_key
    # Both accepted: neither name has a version yet when the API checks it.
    first = stack.train("shared", alice)
    second = stack.train("shared", bob, BOBS_ROWS)
    assert (first.status_code, second.status_code) == (202, 202), second.text
    # One worker, one slot: alice's job (sent first) registers v1, then bob's meets it.
    with running_worker(["--models", BASE], stack.env, stack.tmp / "worker.log"):
        assert stack.wait(first.json()["id"], alice)["status"] == "completed"
        lost = stack.wait(second.json()["id"], bob)
    assert lost["status"] == "failed"
    assert "belongs to another API key" in lost["error"]
    with stack.api.engine.connect() as conn:
        versions = conn.execute(
            select(trained_models.c.version, trained_models.c.labels).where(
                trained_models.c.name == "shared"
            )
        ).all()
    assert len(versions) == 1 and versions[0].version == 1
    assert not any(label.startswith("bob-") for label in versions[0].labels)
    assert stack.api.get("/v1/models/shared", key=bob).status_code == 404
    assert stack.api.get("/v1/models/shared", key=alice).status_code == 200
