"""Helpers for the API tests: a models file, a fake job queue, keys, a fake worker, a server.

The API never loads a model, so its tests use a models file whose sources do not exist and
never import torch.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from api.app import create_app
from api.dispatch import JobQueue
from core.config import Settings
from core.db import dispose_engines, get_engine
from core.jobs.lifecycle import load_items, mark_running
from core.jobs.predictions import Prediction
from core.jobs.results import ScoredItem, WriteOutcome, write_results
from core.keys import create_key
from core.queues import BrokerUnavailable
from core.tables import metadata

TEXT_MODEL = "tiny"
IMAGE_MODEL = "pictures"
BULKSCORE = str(Path(sys.executable).with_name("bulkscore"))


def write_api_models_file(path: Path) -> Path:
    """A models file with one text and one image model (never loaded by the API)."""
    path.write_text(
        f"""
[models.{TEXT_MODEL}]
task = "text-classification"
backend = "transformers"
source = "./not-loaded-by-the-api"
description = "a tiny test model"

[models.{IMAGE_MODEL}]
task = "image-classification"
backend = "keras"
source = "keras:ResNet50/imagenet"
""",
        encoding="utf-8",
    )
    return path


@dataclass
class FakeJobQueue:
    """Records what would be sent to the broker; ``down`` makes it fail like a dead Redis."""

    down: bool = False
    sent: list[tuple[str, str, list[int]]] = field(default_factory=list)
    closed: bool = False
    # Live worker heartbeats by model (what /readyz and /metrics read from Redis).
    live_workers: dict[str, int] = field(default_factory=lambda: {TEXT_MODEL: 1})

    def enqueue_chunks(self, job_id: str, model: str, chunk_indexes: Iterable[int]) -> None:
        if self.down:
            raise BrokerUnavailable("Error 111 connecting to 127.0.0.1:1. Connection refused.")
        self.sent.append((job_id, model, list(chunk_indexes)))

    def ping(self) -> None:
        if self.down:
            raise BrokerUnavailable("Error 111 connecting to 127.0.0.1:1. Connection refused.")

    def workers(self) -> dict[str, int]:
        self.ping()
        return dict(self.live_workers)

    def queue_depths(self, models: Iterable[str]) -> dict[str, int]:
        self.ping()
        waiting: dict[str, int] = {}
        for _job_id, model, indexes in self.sent:
            waiting[model] = waiting.get(model, 0) + len(indexes)
        return {model: waiting.get(model, 0) for model in models}

    def close(self) -> None:
        self.closed = True


def new_key(engine: Engine, name: str) -> str:
    with engine.begin() as conn:
        return create_key(conn, name)[1]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def fake_scores(
    engine: Engine, job_id: str, indexes: Iterable[int], model: str = TEXT_MODEL
) -> WriteOutcome:
    """Score like a worker would: mark the job running, write rows (odd indexes fail)."""
    wanted = sorted(set(indexes))
    with engine.begin() as conn:
        stored = dict(load_items(conn, job_id, wanted[0], wanted[-1] + 1)) if wanted else {}
        scored = [
            ScoredItem(
                index=index,
                item_id=stored[index].item_id,
                prediction=(
                    Prediction.failure(f"bad item {index}")
                    if index % 2
                    else Prediction(
                        label="POSITIVE",
                        score=0.75,
                        top_k=[("POSITIVE", 0.75), ("NEGATIVE", 0.25)],
                    )
                ),
            )
            for index in wanted
        ]
        mark_running(conn, job_id)
        return write_results(conn, job_id, model, None, scored)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.05) -> None:
    """Poll ``predicate()`` until it is truthy; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


@dataclass
class ApiServer:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


@contextmanager
def running_api(env: dict[str, str], log_path: Path, timeout: float = 20.0) -> Iterator[ApiServer]:
    """``bulkscore api`` on a free port as a real process; stopped on exit."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [BULKSCORE, "api", "--host", "127.0.0.1", "--port", str(port)],
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = ApiServer(url, process, log_path)
    try:

        def answers() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"bulkscore api exited early:\n{server.log()}")
            try:
                return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(answers, timeout)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class UnitApi:
    """The app, its TestClient, its job queue, and two keys."""

    client: TestClient
    engine: Engine
    queue: Any  # a FakeJobQueue in unit tests, the real CeleryJobQueue in integration tests
    settings: Settings
    key: str
    other_key: str

    def post_job(
        self,
        texts: Iterable[str],
        model: str = TEXT_MODEL,
        key: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:  # the TestClient's response (httpx2 here, not httpx)
        body = {"model": model, "inputs": [{"id": f"r{i}", "text": t} for i, t in enumerate(texts)]}
        return self.client.post(
            "/v1/jobs", json=body, headers={**bearer(key or self.key), **(headers or {})}
        )

    def get(self, path: str, key: str | None = None, **kwargs: Any) -> Any:
        return self.client.get(path, headers=bearer(key or self.key), **kwargs)


@contextmanager
def serve(settings: Settings, queue: JobQueue | None = None) -> Iterator[UnitApi]:
    """The app on ``settings`` (whose database already has the schema) with two keys."""
    engine = get_engine(settings.database_url)
    app = create_app(settings, queue)
    try:
        with TestClient(app) as client:
            yield UnitApi(
                client=client,
                engine=engine,
                queue=app.state.job_queue,
                settings=settings,
                key=new_key(engine, "owner"),
                other_key=new_key(engine, "stranger"),
            )
    finally:
        dispose_engines()


@contextmanager
def unit_api(
    tmp_path: Path, queue: FakeJobQueue | None = None, **overrides: Any
) -> Iterator[UnitApi]:
    """The API on a fresh SQLite file and a fake queue; ``overrides`` are Settings fields."""
    # No submission rate limit unless a test asks for one: its buckets live in the broker's
    # Redis, which unit tests otherwise never touch (tests/integration/test_rate_limit.py).
    overrides.setdefault("rate_limit_per_min", 0)
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'api.db'}",
        models=write_api_models_file(tmp_path / "models.toml"),
        **overrides,
    )
    metadata.create_all(get_engine(settings.database_url))
    with serve(settings, queue if queue is not None else FakeJobQueue()) as api:
        yield api
