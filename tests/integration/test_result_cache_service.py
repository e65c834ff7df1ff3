"""The result cache through a real ``bulkscore worker`` on PostgreSQL and Redis.

A job submitted twice: the second job's rows all come from the cache (``cached``) and equal
the first's; a job with ``use_cache`` off scores afresh. Eviction on PostgreSQL skips rows a
writer holds instead of waiting for them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from services import flushed_redis, fresh_postgres_database
from sqlalchemy import Engine, func, select, update
from worker_support import poll, producer, running_worker, worker_env

from core.cache.store import input_sha256, store_many
from core.cache.upkeep import cache_stats, evict
from core.clock import utcnow
from core.db import get_engine
from core.inputs.items import InputItem
from core.jobs.lifecycle import Job, create_job, get_job
from core.jobs.predictions import Prediction
from core.jobs.results import iter_results
from core.jobs.status import JobStatus
from core.migrate import upgrade
from core.models.registry import Registry
from core.queues import send_chunks
from core.tables import result_cache

MODEL = "tiny"
TIMEOUT_S = 60.0


class Service:
    def __init__(self, engine: Engine, app: Celery, registry: Registry) -> None:
        self.engine, self.app, self.registry = engine, app, registry

    def run(self, texts: list[str], chunk_size: int, use_cache: bool = True) -> Job:
        inputs = [InputItem(item_id=f"r{i}", text=t) for i, t in enumerate(texts)]
        with self.engine.begin() as conn:
            job = create_job(
                conn,
                self.registry.get(MODEL),
                inputs,
                chunk_size=chunk_size,
                use_cache=use_cache,
            )
        chunk_count = -(-len(texts) // chunk_size)
        send_chunks(self.app, job.id, MODEL, range(chunk_count))

        def completed() -> Job | None:
            with self.engine.connect() as conn:
                found = get_job(conn, job.id)
            return found if found is not None and found.status == JobStatus.COMPLETED else None

        return poll(completed, TIMEOUT_S, f"job {job.id} to complete")

    def rows(self, job_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return list(iter_results(conn, job_id))


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, models_file: Path) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("cache-service")
    with fresh_postgres_database() as pg_url, flushed_redis() as redis_url:
        upgrade(pg_url)
        env = worker_env(pg_url, redis_url, models_file)
        app = producer(redis_url)
        with running_worker(["--models", MODEL], env, tmp / "worker.log"):
            yield Service(get_engine(pg_url), app, Registry.load(models_file))
        app.close()


def repeated_texts(count: int) -> list[str]:
    """``count`` review-like texts, about half of them repeats of earlier ones."""
    words = ["good", "bad", "film", "plot", "actor", "awful", "great", "dull", "superb"]
    distinct = [
        " ".join(words[(i + k) % len(words)] for k in range(1 + (i * 5) % 23)) + f" ({i})"
        for i in range(count // 2)
    ]
    return [distinct[(i * 7) % len(distinct)] if i % 2 else distinct[i // 2] for i in range(count)]


def test_a_job_submitted_twice_is_served_from_the_cache(service: Service) -> None:
    texts = repeated_texts(300)
    first = service.run(texts, chunk_size=100)
    second = service.run(texts, chunk_size=100)
    fresh = service.run(texts, chunk_size=100, use_cache=False)
    assert first.succeeded == second.succeeded == fresh.succeeded == 300

    old, new, again = service.rows(first.id), service.rows(second.id), service.rows(fresh.id)
    # Within the first job, a chunk may already find a text an earlier chunk stored; every
    # text was still scored by a forward pass once, and a text of one chunk only never hits.
    assert {texts[row["index"]] for row in old if not row["cached"]} == set(texts)
    chunk_of: dict[str, set[int]] = {}
    for index, text in enumerate(texts):
        chunk_of.setdefault(text, set()).add(index // 100)
    assert all(len(chunk_of[texts[row["index"]]]) > 1 for row in old if row["cached"])
    assert all(row["cached"] for row in new)
    assert not any(row["cached"] for row in again)
    for a, b, c in zip(old, new, again, strict=True):
        assert a["index"] == b["index"] and a["id"] == b["id"]
        assert a["label"] == b["label"] == c["label"]
        assert b["score"] == pytest.approx(a["score"], abs=1e-6)
        assert c["score"] == pytest.approx(b["score"], abs=1e-6)  # cached equals fresh
        assert [label for label, _ in b["top_k"]] == [label for label, _ in a["top_k"]]
    # One cache row per distinct text: the repeats were scored once and stored once.
    stats = cache_stats(service.engine)
    assert [(m.model, m.rows) for m in stats.models] == [(MODEL, len(set(texts)))]


def test_eviction_on_postgresql_skips_rows_a_writer_holds(service: Service) -> None:
    engine = service.engine
    with engine.begin() as conn:
        store_many(
            conn,
            "evict-me",
            "",
            {input_sha256(f"e{i}"): Prediction(label="l", score=0.5) for i in range(20)},
        )
        conn.execute(
            update(result_cache)
            .where(result_cache.c.model == "evict-me")
            .values(created_at=utcnow() - timedelta(days=2))
        )
    held = input_sha256("e0")
    locked, release = threading.Event(), threading.Event()

    def hold_one_row() -> None:
        with engine.begin() as conn:
            conn.execute(
                select(result_cache.c.input_sha256)
                .where(result_cache.c.model == "evict-me", result_cache.c.input_sha256 == held)
                .with_for_update()
            ).all()
            locked.set()
            release.wait(TIMEOUT_S)

    holder = threading.Thread(target=hold_one_row)
    holder.start()
    try:
        assert locked.wait(TIMEOUT_S)
        # Returns at once, without the held row: it is left for a later round.
        assert evict(engine, max_rows=0, max_age_s=3600, batch=7) == 19
    finally:
        release.set()
        holder.join()
    with engine.connect() as conn:
        left = conn.scalars(
            select(result_cache.c.input_sha256).where(result_cache.c.model == "evict-me")
        ).all()
        assert left == [held]
        assert conn.scalar(select(func.count()).select_from(result_cache)) >= 1
    assert evict(engine, max_rows=0, max_age_s=3600) == 1
