"""``docker-compose.yml`` checked by a real compose parser, and the Dockerfile's torch pin.

Debian's ``docker-compose`` (apt package ``docker-compose``, Compose 1.29) validates a file
against the compose schema and resolves it with ``config`` without any Docker engine; the
tests point ``DOCKER_HOST`` at a socket that does not exist to make sure of that.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"


def compose_config(path: Path, password: str | None = "s3cret") -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail("docker-compose is not installed: `apt-get install docker-compose` (Debian)")
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    env.pop("BULKSCORE_DB_PASSWORD", None)
    if password is not None:
        env["BULKSCORE_DB_PASSWORD"] = password
    return subprocess.run(
        [binary, "-f", str(path), "config"],
        cwd=path.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    done = compose_config(COMPOSE_FILE)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def test_the_parser_rejects_an_invalid_file(tmp_path: Path) -> None:
    # The same parser must fail on a broken file, or the test above proves nothing.
    broken = tmp_path / "docker-compose.yml"
    text = COMPOSE_FILE.read_text().replace("condition: service_healthy", "condition: healthy", 1)
    broken.write_text(text)
    done = compose_config(broken)
    assert done.returncode != 0
    assert "condition" in done.stderr


def test_without_a_database_password_compose_refuses_to_start(tmp_path: Path) -> None:
    copy = tmp_path / "docker-compose.yml"
    copy.write_text(COMPOSE_FILE.read_text())  # no .env beside it
    done = compose_config(copy, password=None)
    assert done.returncode != 0
    assert "set BULKSCORE_DB_PASSWORD" in done.stderr


def test_the_password_reaches_postgres_and_every_client(config: dict[str, Any]) -> None:
    services = config["services"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == "s3cret"
    for name in ("migrate", "api", "worker", "beat"):
        url = services[name]["environment"]["BULKSCORE_DATABASE_URL"]
        assert url.startswith("postgresql+psycopg://bulkscore:s3cret@postgres:5432/"), name


def test_services_and_their_start_order(config: dict[str, Any]) -> None:
    services = config["services"]
    assert set(services) >= {"redis", "postgres", "migrate", "api", "worker", "beat"}
    conditions = {
        name: {dep: spec["condition"] for dep, spec in service.get("depends_on", {}).items()}
        for name, service in services.items()
    }
    assert conditions["migrate"] == {"postgres": "service_healthy"}
    for name in ("api", "worker", "beat"):
        assert conditions[name]["migrate"] == "service_completed_successfully"
        assert conditions[name]["redis"] == "service_healthy"
        assert conditions[name]["postgres"] == "service_healthy"
    assert services["migrate"]["command"] == ["bulkscore", "db", "upgrade"]
    assert services["migrate"]["restart"] == "no"
    assert services["beat"]["command"] == ["bulkscore", "beat"]
    assert services["beat"]["restart"] == "unless-stopped"


def test_every_long_running_service_has_a_healthcheck(config: dict[str, Any]) -> None:
    services = config["services"]
    for name in ("redis", "postgres", "api", "worker"):
        assert services[name]["healthcheck"]["test"][0] == "CMD", name
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]
    assert any("/healthz" in part for part in services["api"]["healthcheck"]["test"])
    assert services["api"]["ports"][0]["target"] == 8000


def test_redis_keeps_queued_messages_across_restarts(config: dict[str, Any]) -> None:
    redis = config["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "everysec"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert any(volume["target"] == "/data" for volume in _volumes(redis))
    assert any(
        volume["target"] == "/var/lib/postgresql/data"
        for volume in _volumes(config["services"]["postgres"])
    )
    assert {"pg-data", "redis-data"} <= set(config["volumes"])


def test_workers_are_watched_and_frozen_sessions_end(config: dict[str, Any]) -> None:
    worker = config["services"]["worker"]
    assert worker["restart"] == "unless-stopped", "a stalled worker exits to be restarted"
    assert int(worker["environment"]["BULKSCORE_WORKER_STALL_S"]) <= 60
    assert worker["environment"]["BULKSCORE_WORKER_METRICS_PORT"] == "9100"
    postgres = " ".join(config["services"]["postgres"]["command"])
    assert "idle_in_transaction_session_timeout=" in postgres


def test_the_worker_owns_gpu_0(config: dict[str, Any]) -> None:
    worker = config["services"]["worker"]
    assert worker["command"][:4] == ["bulkscore", "worker", "--gpu", "0"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert device["device_ids"] == ["0"]
    assert device["capabilities"] == ["gpu"]
    assert worker["environment"]["BULKSCORE_WORKER_HEARTBEAT_FILE"] in " ".join(
        worker["healthcheck"]["test"]
    )
    assert "worker-gpu1:" in COMPOSE_FILE.read_text(), "the commented GPU 1 example"


def test_application_config_is_only_bulkscore_variables(config: dict[str, Any]) -> None:
    for name in ("migrate", "api", "worker", "beat"):
        env = config["services"][name]["environment"]
        assert env and all(key.startswith("BULKSCORE_") for key in env), name
        assert env["BULKSCORE_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert env["BULKSCORE_BROKER_URL"] == "redis://redis:6379/0"


def test_the_dockerfile_installs_the_pinned_torch() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.startswith("#") and "FROM python:3.11-slim" in dockerfile
    assert 'pip install -e ".[worker,keras]"' in dockerfile
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    worker = pyproject["project"]["optional-dependencies"]["worker"]
    (pin,) = [dep for dep in worker if dep.startswith("torch")]
    assert f'"{pin}"' in dockerfile, f"Dockerfile must install {pin} like pyproject.toml"
    for source in re.findall(r"^COPY (.+) \./\S*$", dockerfile, flags=re.MULTILINE):
        for name in source.split():
            assert (ROOT / name).exists(), f"Dockerfile copies {name}, which does not exist"


def _volumes(service: dict[str, Any]) -> list[dict[str, Any]]:
    volumes = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):  # Compose 1.x prints short syntax: "name:/target:rw"
            source, target, *_ = volume.split(":")
            volumes.append({"source": source, "target": target})
        else:
            volumes.append(volume)
    return volumes
