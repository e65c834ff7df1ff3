"""Passwords in the database and broker URLs never reach a log line or an error message.

The API, a worker and the CLI run as real processes, at DEBUG level, with passwords in both
URLs, against a database that is down (a closed port) and a Redis that needs the password
(its own ``redis-server --requirepass``), so that they log every failure they meet; then
everything they wrote and answered is searched for the password.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from api_support import BULKSCORE, free_port, running_api
from fault_support import RedisServer
from worker_support import start_worker, worker_env

PASSWORD = "Pw9f3e2cSecret"


@pytest.fixture()
def locked_redis(tmp_path: Path) -> Iterator[str]:
    """A Redis that requires ``PASSWORD``; its URL (with the password)."""
    server = RedisServer(tmp_path)
    process = subprocess.Popen(
        ["redis-server", "--port", str(server.port), "--bind", "127.0.0.1", "--save", "",
         "--requirepass", PASSWORD],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(0.3)
        yield f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0"
    finally:
        process.kill()
        process.wait(5)


@pytest.fixture()
def urls(locked_redis: str) -> dict[str, str]:
    closed = free_port()  # nothing listens there: the database is "down"
    return {
        "BULKSCORE_DATABASE_URL": f"postgresql+psycopg://bulkscore:{PASSWORD}@127.0.0.1:{closed}/db",
        "BULKSCORE_BROKER_URL": locked_redis,
        "BULKSCORE_LOG_LEVEL": "DEBUG",
    }


def test_the_api_never_shows_the_passwords(urls: dict[str, str], tmp_path: Path) -> None:
    env = {**urls, "BULKSCORE_MODELS": str(tmp_path / "models.toml")}
    (tmp_path / "models.toml").write_text(
        '[models.tiny]\ntask = "text-classification"\nbackend = "transformers"\nsource = "./x"\n'
    )
    answers = []
    with running_api(env, tmp_path / "api.log") as api:
        headers = {"Authorization": "Bearer bsk_somekeysomekeysomekeysomekey00"}
        for method, path in [
            ("GET", "/readyz"),
            ("GET", "/metrics"),
            ("GET", "/v1/jobs"),
            ("POST", "/v1/jobs"),
        ]:
            body = {"model": "tiny", "inputs": [{"text": "hi"}]}
            response = httpx.request(method, api.url + path, headers=headers, json=body, timeout=20)
            answers.append(f"{response.status_code} {response.text}")
        log = api.log()
    assert "503" in answers[0] and "database" in answers[0]
    assert answers[2].startswith("503")
    assert "database unavailable" in log, "the failure itself is logged"
    everything = log + "\n".join(answers)
    assert PASSWORD not in everything


def test_a_worker_never_shows_the_passwords(
    urls: dict[str, str], models_file: Path, tmp_path: Path
) -> None:
    env = worker_env(
        urls["BULKSCORE_DATABASE_URL"],
        urls["BULKSCORE_BROKER_URL"],
        models_file,
        BULKSCORE_CHUNK_LEASE_S="6",  # the reconciler meets the dead database every 3 s
    )
    env["BULKSCORE_LOG_LEVEL"] = "DEBUG"
    worker = start_worker(["--models", "tiny"], env, tmp_path / "worker.log")
    try:
        worker.wait_for(r"worker \S+ consuming")
        worker.wait_for(r"could not check for expired chunk leases", timeout=30)
        log = worker.log
    finally:
        worker.process.send_signal(signal.SIGTERM)
        worker.stop()
    assert "Connection refused" in log or "connection failed" in log, log[-2000:]
    assert "redis://:**@127.0.0.1" in log, "the broker URL is logged, masked"
    assert PASSWORD not in worker.log


@pytest.mark.parametrize(
    "args",
    [
        ["keys", "list"],
        ["keys", "create", "ci"],
        ["keys", "revoke", "ci"],
        ["db", "upgrade"],
        ["db", "downgrade", "base"],
    ],
    ids=lambda args: "-".join(args),
)
def test_the_cli_never_shows_the_passwords(urls: dict[str, str], args: list[str]) -> None:
    env = {**os.environ, **urls}
    done = subprocess.run([BULKSCORE, *args], env=env, capture_output=True, text=True, timeout=60)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "127.0.0.1" in output, "the error names the server"
    assert PASSWORD not in output
