"""The API on the real PostgreSQL and Redis, through TestClient and the real Celery producer."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from api_support import TEXT_MODEL, UnitApi, bearer, fake_scores, serve, write_api_models_file
from sqlalchemy import func, select

from core.config import Settings
from core.heartbeats import redis_client, write_heartbeats
from core.migrate import upgrade
from core.queues import SCORE_CHUNK_TASK, model_queue
from core.tables import chunks, items, jobs, results

CLOSED_BROKER = "redis://127.0.0.1:1/0"  # nothing listens on port 1


def settings_for(pg_url: str, broker_url: str, tmp_path: Path, **overrides: object) -> Settings:
    upgrade(pg_url)
    return Settings(
        database_url=pg_url,
        broker_url=broker_url,
        models=write_api_models_file(tmp_path / "models.toml"),
        **overrides,  # type: ignore[arg-type]
    )


@pytest.fixture()
def api(pg_url: str, redis_url: str, tmp_path: Path) -> Iterator[UnitApi]:
    with serve(settings_for(pg_url, redis_url, tmp_path, chunk_size=100)) as api:
        yield api


def row_counts(api: UnitApi) -> dict[str, int]:
    with api.engine.connect() as conn:
        return {
            table.name: conn.execute(select(func.count()).select_from(table)).scalar_one()
            for table in (jobs, items, chunks, results)
        }


def queued_messages(redis_url: str, queue: str) -> list[dict[str, object]]:
    # kombu's Redis transport keeps a queue as a list named after it, one JSON message each.
    client = redis.Redis.from_url(redis_url)
    try:
        return [json.loads(raw) for raw in client.lrange(queue, 0, -1)]
    finally:
        client.close()


def test_each_chunk_becomes_one_task_in_the_models_redis_queue(
    api: UnitApi, redis_url: str
) -> None:
    response = api.post_job([f"text {i}" for i in range(250)])
    assert response.status_code == 202
    job_id = response.json()["id"]

    messages = queued_messages(redis_url, model_queue(TEXT_MODEL))

    assert len(messages) == 3  # 250 items in chunks of 100
    tasks = []
    for message in messages:
        assert message["content-type"] == "application/json"  # never pickle
        headers = message["headers"]
        assert isinstance(headers, dict) and headers["task"] == SCORE_CHUNK_TASK
        args, kwargs, _ = json.loads(base64.b64decode(message["body"]))  # type: ignore[arg-type]
        assert kwargs == {}
        tasks.append(args)
    assert sorted(tasks) == [[job_id, 0], [job_id, 1], [job_id, 2]]
    assert row_counts(api) == {"jobs": 1, "items": 250, "chunks": 3, "results": 0}


def test_the_service_flow_on_postgresql(api: UnitApi) -> None:
    job_id = api.post_job([f"text {i}" for i in range(150)]).json()["id"]
    upload = api.client.post(
        "/v1/jobs",
        data={"model": TEXT_MODEL},
        files={"file": ("in.csv", b"id,text\na,one\nb,\n", "text/csv")},
        headers=bearer(api.key),
    )
    assert upload.status_code == 202

    fake_scores(api.engine, job_id, range(100))
    running = api.get(f"/v1/jobs/{job_id}").json()
    fake_scores(api.engine, job_id, range(95, 150))  # overlaps: rows are never written twice
    done = api.get(f"/v1/jobs/{job_id}").json()
    page = api.get(f"/v1/jobs/{job_id}/results", params={"after": 97, "limit": 2}).json()
    csv_text = api.get(f"/v1/jobs/{job_id}/results", params={"format": "csv"}).text
    cancelled = api.client.post(f"/v1/jobs/{upload.json()['id']}/cancel", headers=bearer(api.key))
    listed = api.get("/v1/jobs", params={"status": "cancelled"}).json()["data"]

    assert (running["status"], running["counts"]["succeeded"] + running["counts"]["failed"]) == (
        "running",
        100,
    )
    assert done["status"] == "completed"
    assert done["counts"] == {"total": 150, "succeeded": 75, "failed": 75}
    assert [row["index"] for row in page["data"]] == [98, 99]
    assert page["next_after"] == 99
    assert page["data"][0]["top_k"] == [["POSITIVE", 0.75], ["NEGATIVE", 0.25]]
    assert len(csv_text.splitlines()) == 151
    assert cancelled.json()["status"] == "cancelled"
    assert [job["id"] for job in listed] == [upload.json()["id"]]
    with api.engine.connect() as conn:
        empty_text_error = conn.execute(
            select(items.c.error).where(items.c.item_id == "b")
        ).scalar_one()
    assert empty_text_error == "empty text"


def test_a_job_is_refused_fast_and_not_kept_when_redis_is_down(
    pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    with serve(settings_for(pg_url, CLOSED_BROKER, tmp_path)) as api:
        started = time.monotonic()
        response = api.post_job(["a", "b"], headers={"Idempotency-Key": "k"})
        elapsed = time.monotonic() - started
        ready = api.client.get("/readyz")

        assert response.status_code == 503
        assert "broker" in response.json()["detail"]
        assert elapsed < 3.0
        assert row_counts(api) == {"jobs": 0, "items": 0, "chunks": 0, "results": 0}
        assert ready.status_code == 503
        assert ready.json()["checks"]["database"] == "ok"
        assert ready.json()["checks"]["broker"].startswith("error:")


def test_readyz_answers_200_when_postgresql_redis_and_a_worker_answer(
    api: UnitApi, redis_url: str
) -> None:
    no_worker = api.client.get("/readyz")
    assert no_worker.status_code == 503
    assert no_worker.json()["checks"]["workers"] == "error: no worker has a live heartbeat"
    # What a consuming worker writes (worker.liveness), with its TTL.
    client = redis_client(redis_url)
    write_heartbeats(client, [TEXT_MODEL], "w1@test", ttl_s=30, detail={})
    client.close()
    response = api.client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"] == {"database": "ok", "broker": "ok", "workers": "ok"}
    assert response.json()["workers"][TEXT_MODEL] == 1


def test_a_10k_text_job_is_accepted_quickly(api: UnitApi, redis_url: str) -> None:
    texts = [f"review {i}: the plot was thin but the acting carried it well" for i in range(10_000)]
    started = time.perf_counter()
    response = api.post_job(texts)
    elapsed = time.perf_counter() - started

    assert response.status_code == 202
    assert row_counts(api)["items"] == 10_000
    assert len(queued_messages(redis_url, model_queue(TEXT_MODEL))) == 100
    print(f"\n10,000-text job accepted in {elapsed:.3f} s ({10_000 / elapsed:,.0f} items/s)")
    # A generous bound: the machine is shared; bench/ measures the real rate.
    assert elapsed < 10
