"""Training jobs under worker crashes and lost messages: real workers, PostgreSQL and Redis.

A training job is one chunk, sent to its base's queue and claimed under the chunk lease, so
the recovery that keeps scoring jobs moving keeps it moving too: ``kill -9`` of the worker
a few seconds into a training is taken over once the lease runs out (not after Redis's
hours-long ``visibility_timeout``) and registers exactly one version; a training message
lost from Redis is re-sent by the lost-message sweep; an old ``bulkscore.train_model``
message still left in a queue is handed to the same chunk path.

Not in ``test_faults.py``: its ledger audits scoring jobs item by item (a completed job's
counters equal its result rows), while a training job counts examples and writes a model
version, which these tests audit instead (exactly one version per training job).
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from api_support import UnitApi, bearer, serve
from sqlalchemy import func, select
from training_support import feature_base_models, intent_rows, labelled_csv
from worker_support import poll, producer, running_worker, start_worker, worker_env

from core.config import Settings
from core.migrate import upgrade
from core.models.registry import Registry
from core.queues import TRAIN_MODEL_TASK, model_queue
from core.tables import chunks, jobs, trained_models
from core.training.data import DataFormat
from core.training.jobs import create_training_job

BASE = "tinybase"
LEASE_S = 5
RESEND_AFTER_S = 5
TIMEOUT_S = 120.0


@dataclass
class Stack:
    api: UnitApi
    env: dict[str, str]
    tmp: Path
    csv: bytes

    def job(self, job_id: str) -> Any:
        with self.api.engine.connect() as conn:
            return conn.execute(select(jobs).where(jobs.c.id == job_id)).one()

    def chunk(self, job_id: str) -> Any:
        with self.api.engine.connect() as conn:
            return conn.execute(select(chunks).where(chunks.c.job_id == job_id)).one()

    def versions(self, name: str) -> int:
        with self.api.engine.connect() as conn:
            return int(conn.scalar(select(func.count()).where(trained_models.c.name == name)) or 0)

    def wait_final(self, job_id: str, timeout: float = TIMEOUT_S) -> Any:
        return poll(
            lambda: (
                (row := self.job(job_id)).status in ("completed", "failed", "cancelled") and row
            ),
            timeout,
            f"training job {job_id} to end",
            interval=0.2,
        )

    def stored_job(self, name: str) -> str:
        """A training job committed but never sent (the API died in between)."""
        base = Registry.load(self.api.settings.models).get(BASE)
        with self.api.engine.begin() as conn:
            job = create_training_job(
                conn,
                name=name,
                base=base,
                total=24,
                data_format=DataFormat.CSV,
                data=labelled_csv(self.tmp / "small.csv", intent_rows(8)).read_bytes(),
            )
        return job.id


@pytest.fixture()
def stack(pg_url: str, redis_url: str, tmp_path: Path, tiny_text_model: Path) -> Iterator[Stack]:
    models = feature_base_models(tmp_path / "models.toml", tiny_text_model, BASE)
    upgrade(pg_url)
    settings = Settings(database_url=pg_url, broker_url=redis_url, models=models)
    # 3,000 examples: a training that takes the tiny backbone several seconds of features.
    # Big enough that the training is still running a second after it starts, on any load.
    csv = labelled_csv(tmp_path / "big.csv", intent_rows(3000)).read_bytes()
    env = worker_env(
        pg_url,
        redis_url,
        models,
        BULKSCORE_CHUNK_LEASE_S=str(LEASE_S),
        BULKSCORE_CHUNK_RESEND_AFTER_S=str(RESEND_AFTER_S),
    )
    with serve(settings) as api:
        yield Stack(api, env, tmp_path, csv)


def test_kill_9_of_the_training_worker_is_taken_over_after_the_lease(stack: Stack) -> None:
    first = start_worker(["--models", BASE], stack.env, stack.tmp / "first.log")
    try:
        first.wait_for(r"worker \S+ consuming")
        created = stack.api.client.post(
            "/v1/models",
            data={"name": "intents", "base": BASE},
            files={"data": ("intents.csv", stack.csv, "text/csv")},
            headers=bearer(stack.api.key),
        )
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        poll(lambda: stack.chunk(job_id).status == "running", 60, "the training to start")
        time.sleep(1.0)  # a second into the features
        assert stack.job(job_id).status == "running", "the training ended before the kill"
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(10)
        killed = time.monotonic()
    finally:
        first.stop()
    assert stack.chunk(job_id).attempts == 1
    with running_worker(["--models", BASE], stack.env, stack.tmp / "second.log") as second:
        started = time.monotonic()
        done = stack.wait_final(job_id)
        finished = time.monotonic()
        assert done.status == "completed", done.error
        second.wait_for(rf"chunk 0 of job {job_id}: its worker stopped renewing the lease")
    chunk = stack.chunk(job_id)
    assert (chunk.status, chunk.attempts) == ("done", 2)
    assert stack.versions("intents") == 1 and done.model_revision == "v1"
    # Taken over within about two leases of the second worker consuming (plus the training).
    print(
        f"\ntraining taken over: {finished - killed:.1f}s after the kill, "
        f"{finished - started:.1f}s after the second worker consumed"
    )


def test_a_lost_training_message_is_resent_by_the_sweep(stack: Stack) -> None:
    with running_worker(["--models", BASE], stack.env, stack.tmp / "worker.log") as worker:
        job_id = stack.stored_job("never-sent")
        done = stack.wait_final(job_id, timeout=60)
        assert done.status == "completed", done.error
        assert re.search(
            rf"chunk 0 of job {job_id} was queued for over {RESEND_AFTER_S}s", worker.log
        )
    assert stack.versions("never-sent") == 1
    assert stack.chunk(job_id).status == "done"


def test_an_old_train_model_message_is_handed_to_the_chunk_path(stack: Stack) -> None:
    job_id = stack.stored_job("old-message")
    app = producer(stack.env["BULKSCORE_BROKER_URL"])
    try:
        app.send_task(TRAIN_MODEL_TASK, args=[job_id], queue=model_queue(BASE))
    finally:
        app.close()
    with running_worker(["--models", BASE], stack.env, stack.tmp / "worker.log") as worker:
        done = stack.wait_final(job_id, timeout=60)
        assert done.status == "completed", done.error
        worker.wait_for(rf"old training message for {job_id} handed to chunk 0")
    assert stack.versions("old-message") == 1
