"""The service as the benchmarks run it: PostgreSQL, Redis, ``bulkscore api`` and workers.

Everything is real and local: a fresh PostgreSQL database (dropped afterwards), Redis
database ``BENCH_REDIS_DB`` (flushed before and after; 14 unless
``BULKSCORE_TEST_REDIS_DB`` says otherwise), the API and the workers as subprocesses. A
benchmark times only what a client sees: HTTP submit until every result is readable.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from api_support import running_api
from models import write_models_file
from services import flushed_redis, fresh_postgres_database
from worker_support import WorkerProcess, running_worker

BENCH_REDIS_DB = int(os.environ.get("BULKSCORE_TEST_REDIS_DB", "14"))
MODEL = "bench"
POLL_S = 0.1  # a client polling ten times a second: at most 0.1 s late


@dataclass
class Service:
    """A running API (and its workers) with a key; helpers for what a client does."""

    url: str
    key: str
    database_url: str
    env: dict[str, str]
    workdir: Path
    workers: list[WorkerProcess] = field(default_factory=list)
    api_pid: int = 0  # the `bulkscore api` process (bench/parquet_export.py samples its RSS)
    tag: str = field(default_factory=lambda: time.strftime("%H%M%S"))

    def client(self, timeout: float = 120.0) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.key}"},
            timeout=timeout,
        )

    def submit(
        self, client: httpx.Client, records: Sequence[dict[str, str]], cache: bool = False
    ) -> str:
        # Without the result cache by default: a bench repeats the same texts, and the
        # second run would be answered from the first (bench/dedup_cache.py measures that).
        body = {
            "model": MODEL,
            "inputs": [{"id": r["id"], "text": r["text"]} for r in records],
            "cache": cache,
        }
        answer = client.post("/v1/jobs", json=body)
        answer.raise_for_status()
        return str(answer.json()["id"])

    def wait_completed(self, client: httpx.Client, job_id: str, timeout: float = 900) -> None:
        deadline = time.monotonic() + timeout
        while True:
            status = client.get(f"/v1/jobs/{job_id}").json()["status"]
            if status == "completed":
                return
            if status in ("failed", "cancelled") or time.monotonic() > deadline:
                raise RuntimeError(f"job {job_id} ended {status!r}")
            time.sleep(POLL_S)

    def read_all(self, client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        after = -1
        while True:
            page = client.get(
                f"/v1/jobs/{job_id}/results", params={"limit": 5000, "after": after}
            ).json()
            rows.extend(page["data"])
            if page["next_after"] is None:
                return rows
            after = page["next_after"]

    def start_workers(self, count: int, args: Sequence[str] = (), **env: str) -> None:
        """``count`` workers of the bench model, consuming before this returns."""
        for _ in range(count):
            # A name per worker and service, so that a later run does not overwrite its log.
            log = self.workdir / f"worker-{self.tag}-{len(self.workers)}.log"
            stack = self._stack
            # INFO: the worker says "consuming" at that level, which start-up waits for.
            worker_env = {**self.env, "BULKSCORE_LOG_LEVEL": "INFO", **env}
            worker = stack.enter_context(
                running_worker(["--models", MODEL, *args], worker_env, log)
            )
            self.workers.append(worker)

    def stop_workers(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.workers.clear()

    _stack: ExitStack = field(default_factory=ExitStack)


def bench_models_file(folder: Path, model_dir: Path, **entry: object) -> Path:
    return write_models_file(
        folder / "bench-models.toml",
        {
            MODEL: {
                "task": "text-classification",
                "backend": "transformers",
                "source": str(model_dir),
                **entry,
            }
        },
    )


@contextmanager
def running_service(workdir: Path, models_file: Path, **settings: str) -> Iterator[Service]:
    """PostgreSQL + Redis + ``bulkscore api``, no workers yet (``start_workers``)."""
    from sqlalchemy import create_engine

    from core.keys import create_key
    from core.migrate import upgrade

    with fresh_postgres_database() as pg_url, flushed_redis(BENCH_REDIS_DB) as redis_url:
        upgrade(pg_url)
        engine = create_engine(pg_url)
        with engine.begin() as conn:
            key = create_key(conn, "bench")[1]
        engine.dispose()
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("BULKSCORE_", "CUDA_"))
        }
        env.update(
            BULKSCORE_DATABASE_URL=pg_url,
            BULKSCORE_BROKER_URL=redis_url,
            BULKSCORE_MODELS=str(models_file),
            BULKSCORE_LOG_LEVEL="WARNING",
            # The benches measure the service, not the per-key submission limit.
            BULKSCORE_RATE_LIMIT_PER_MIN="0",
            **{f"BULKSCORE_{name.upper()}": value for name, value in settings.items()},
        )
        with running_api(env, workdir / "api.log") as api:
            service = Service(api.url, key, pg_url, env, workdir, api_pid=api.process.pid)
            with service._stack:
                yield service
