"""A job scored by a real ``bulkscore worker`` with the GPU stand-in (``backend = "standin"``).

PostgreSQL and Redis are real; the chunk tasks are sent by name, as the API sends them. The
stand-in's scores are fixed per text, so the worker's rows must equal what the runner gives
in this process, each row written once, and the simulated forward pass must have taken at
least the job's real tokens / ``standin_tokens_per_s`` seconds.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from models import write_models_file
from services import flushed_redis, fresh_postgres_database
from sqlalchemy import func, select
from worker_support import poll, producer, running_worker, worker_env

from core.config import get_settings
from core.db import get_engine
from core.inputs.items import InputItem
from core.jobs.lifecycle import create_job, get_job
from core.jobs.results import iter_results
from core.jobs.status import JobStatus
from core.migrate import upgrade
from core.models.registry import Registry
from core.queues import send_chunks
from core.tables import results
from engine.runners import build_runner
from engine.runners.standin import StandinTextRunner

MODEL = "plan"
TOKENS_PER_S = 4_000.0
JOB_TIMEOUT_S = 90.0


def _texts(count: int) -> list[str]:
    words = ["good", "bad", "film", "plot", "actor", "awful", "great", "boring", "dull"]
    # Distinct texts: dedup would otherwise send each repeated text to the model once, and
    # the stand-in's sleep would cover fewer tokens than the test counts.
    return [
        " ".join(words[(i + k) % len(words)] for k in range(1 + (i * 7) % 30)) + f" #{i}"
        for i in range(count)
    ]


def test_a_worker_scores_a_job_with_the_stand_in(tmp_path: Path, tiny_text_model: Path) -> None:
    models_file = write_models_file(
        tmp_path / "models.toml",
        {
            MODEL: {
                "task": "text-classification",
                "backend": "standin",
                "source": str(tiny_text_model),
                "standin_tokens_per_s": TOKENS_PER_S,
            }
        },
    )
    registry = Registry.load(models_file)
    texts = _texts(300)
    local = build_runner(registry.get(MODEL), get_settings())
    assert isinstance(local, StandinTextRunner)
    local.setup("cpu")
    local.sleep = lambda seconds: None  # this process only computes the expected rows
    expected = local.predict(texts)
    encoded = local.tokenizer(texts, truncation=True, max_length=local.max_length)
    tokens = sum(len(ids) for ids in encoded["input_ids"])

    with fresh_postgres_database() as pg_url, flushed_redis() as redis_url:
        upgrade(pg_url)
        engine = get_engine(pg_url)
        env = worker_env(pg_url, redis_url, models_file)
        app = producer(redis_url)
        with running_worker(["--models", MODEL], env, tmp_path / "worker.log") as worker:
            inputs = [InputItem(item_id=f"r{i}", text=t) for i, t in enumerate(texts)]
            with engine.begin() as conn:
                job = create_job(conn, registry.get(MODEL), inputs, chunk_size=100)
            started = time.monotonic()
            send_chunks(app, job.id, MODEL, range(3))

            def completed() -> bool:
                with engine.connect() as conn:
                    found = get_job(conn, job.id)
                return found is not None and found.status == JobStatus.COMPLETED

            poll(completed, JOB_TIMEOUT_S, f"job {job.id} to complete")
            elapsed = time.monotonic() - started
            assert worker.stop() == 0
        app.close()
        with engine.connect() as conn:
            served = list(iter_results(conn, job.id))
            written = conn.scalar(
                select(func.count()).select_from(results).where(results.c.job_id == job.id)
            )
        engine.dispose()

    assert written == len(texts), "each item written exactly once"
    assert [row["index"] for row in served] == list(range(len(texts)))
    for row, prediction in zip(served, expected, strict=True):
        assert row["error"] is None
        assert row["label"] == prediction.label
        assert row["score"] == pytest.approx(prediction.score, abs=1e-6)
    # A lower bound only: the worker slept for every real token (3 chunks, same texts).
    assert elapsed >= tokens / TOKENS_PER_S, (elapsed, tokens)
