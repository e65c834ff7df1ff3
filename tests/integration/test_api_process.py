"""``bulkscore api`` as a real process on PostgreSQL and Redis, and the CLI client against it."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from api_support import (
    BULKSCORE,
    TEXT_MODEL,
    ApiServer,
    bearer,
    fake_scores,
    running_api,
    write_api_models_file,
)
from sqlalchemy import Engine, func, select

from core.db import get_engine
from core.heartbeats import redis_client, write_heartbeats
from core.migrate import upgrade
from core.queues import model_queue
from core.tables import jobs


@dataclass
class Live:
    server: ApiServer
    env: dict[str, str]
    key: str
    engine: Engine
    redis_url: str

    def cli(self, *args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **self.env, "BULKSCORE_API_URL": self.server.url}
        env["BULKSCORE_API_KEY"] = self.key if key is None else key
        return subprocess.run(
            [BULKSCORE, *args], env=env, capture_output=True, text=True, timeout=60
        )


def base_env(pg_url: str, broker_url: str, tmp_path: Path) -> dict[str, str]:
    return {
        "BULKSCORE_DATABASE_URL": pg_url,
        "BULKSCORE_BROKER_URL": broker_url,
        "BULKSCORE_MODELS": str(write_api_models_file(tmp_path / "models.toml")),
        "BULKSCORE_CHUNK_SIZE": "2",
        "BULKSCORE_MAX_BODY_BYTES": "100000",
        "BULKSCORE_LOG_LEVEL": "WARNING",
    }


def create_key_with_cli(env: dict[str, str], name: str) -> str:
    created = subprocess.run(
        [BULKSCORE, "keys", "create", name],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return created.stdout.strip()


@pytest.fixture()
def live(pg_url: str, redis_url: str, tmp_path: Path) -> Iterator[Live]:
    upgrade(pg_url)
    env = base_env(pg_url, redis_url, tmp_path)
    key = create_key_with_cli(env, "cli-user")
    with running_api(env, tmp_path / "api.log") as server:
        yield Live(server, env, key, get_engine(pg_url), redis_url)


def test_the_api_process_serves_jobs_over_http(live: Live) -> None:
    url, headers = live.server.url, bearer(live.key)
    body = {"model": TEXT_MODEL, "inputs": [{"id": f"r{i}", "text": f"text {i}"} for i in range(5)]}

    # No worker yet: database and broker answer, but nothing would score the job.
    waiting = httpx.get(f"{url}/readyz").json()
    assert waiting["checks"]["database"] == waiting["checks"]["broker"] == "ok"
    assert waiting["status"] == "not ready"
    client = redis_client(live.redis_url)
    write_heartbeats(client, [TEXT_MODEL], "w1@test", ttl_s=30, detail={})  # a worker's
    client.close()
    assert httpx.get(f"{url}/readyz").json()["status"] == "ready"
    assert httpx.get(f"{url}/v1/jobs").status_code == 401
    created = httpx.post(f"{url}/v1/jobs", json=body, headers=headers)
    assert created.status_code == 202, live.server.log()
    job_id = created.json()["id"]
    queue_length = redis.Redis.from_url(live.redis_url).llen(model_queue(TEXT_MODEL))
    assert queue_length == 3  # chunks of 2

    fake_scores(live.engine, job_id, range(5))
    status = httpx.get(f"{url}/v1/jobs/{job_id}", headers=headers).json()
    page = httpx.get(f"{url}/v1/jobs/{job_id}/results?limit=4", headers=headers).json()
    with httpx.stream(
        "GET", f"{url}/v1/jobs/{job_id}/results?format=jsonl", headers=headers
    ) as streamed:
        lines = [line for line in streamed.iter_lines() if line]

    assert status["status"] == "completed"
    assert ([row["index"] for row in page["data"]], page["next_after"]) == ([0, 1, 2, 3], 3)
    assert len(lines) == 5
    assert httpx.get(f"{url}/docs").status_code == 200


def test_an_oversize_body_is_refused_before_it_is_sent(live: Live) -> None:
    # Only the headers go out: the 413 must come back without the server waiting for a body.
    port = int(live.server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + live.key.encode() + b"\r\n"
            b"Content-Length: 1000000000\r\n\r\n"
        )
        # The server closes the connection after its answer; headers and body may come in
        # separate packets, so read until it does.
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"the limit is 100000 bytes" in answer


def test_the_cli_client_against_the_running_api(live: Live, tmp_path: Path) -> None:
    source = tmp_path / "reviews.txt"
    source.write_text("great\nawful\n\nfine\n")

    submitted = live.cli("submit", str(source), "--model", TEXT_MODEL)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    models = live.cli("models")
    queued = live.cli("status", job_id)
    fake_scores(live.engine, job_id, range(3))
    watched = live.cli("status", job_id, "--watch", "--interval", "0.2")
    exported = live.cli("results", job_id, "--out", str(tmp_path / "out.csv"))
    to_stdout = live.cli("results", job_id, "--format", "jsonl")
    cancelled = live.cli("cancel", job_id)

    assert TEXT_MODEL in models.stdout
    assert "queued" in queued.stdout
    assert watched.returncode == 0 and "completed" in watched.stdout
    assert exported.returncode == 0, exported.stderr
    csv_lines = (tmp_path / "out.csv").read_text().splitlines()
    assert csv_lines[0] == "index,id,label,score,top_k,error,cached"
    assert [line.split(",")[1] for line in csv_lines[1:]] == ["1", "2", "4"]  # txt line numbers
    assert len(to_stdout.stdout.splitlines()) == 3
    assert cancelled.stdout.strip() == f"job {job_id} was already completed; nothing to cancel"


def test_cli_client_errors_against_the_running_api(live: Live, tmp_path: Path) -> None:
    wrong_key = live.cli("status", "x", key="bsk_wrong")
    other_key = create_key_with_cli(live.env, "someone-else")
    source = tmp_path / "in.txt"
    source.write_text("hello\n")
    job_id = live.cli("submit", str(source), "--model", TEXT_MODEL).stdout.strip()
    not_yours = live.cli("status", job_id, key=other_key)
    unknown_model = live.cli("submit", str(source), "--model", "nope")
    revoke = subprocess.run(
        [BULKSCORE, "keys", "revoke", "cli-user"],
        env={**os.environ, **live.env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    revoked = live.cli("models")

    for result in (wrong_key, not_yours, unknown_model, revoked):
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
    assert "refused the key" in wrong_key.stderr
    assert f"job {job_id} not found (HTTP 404)" in " ".join(not_yours.stderr.split())
    assert "unknown model 'nope'" in unknown_model.stderr
    assert revoke.returncode == 0
    assert "invalid or revoked API key" in " ".join(revoked.stderr.split())


def test_broker_down_the_api_process_answers_503_fast_and_keeps_no_job(
    pg_url: str, tmp_path: Path
) -> None:
    upgrade(pg_url)
    env = base_env(pg_url, "redis://127.0.0.1:1/0", tmp_path)
    key = create_key_with_cli(env, "k")
    body = {"model": TEXT_MODEL, "inputs": [{"text": "a"}, {"text": "b"}, {"text": "c"}]}
    with running_api(env, tmp_path / "api.log") as server:
        started = time.monotonic()
        response = httpx.post(f"{server.url}/v1/jobs", json=body, headers=bearer(key), timeout=30)
        elapsed = time.monotonic() - started
        ready = httpx.get(f"{server.url}/readyz", timeout=30)

    assert response.status_code == 503
    assert elapsed < 3.0
    assert ready.status_code == 503
    with get_engine(pg_url).connect() as conn:
        assert conn.execute(select(func.count()).select_from(jobs)).scalar_one() == 0
