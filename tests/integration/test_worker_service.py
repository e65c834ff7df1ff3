"""Real ``bulkscore worker`` processes on PostgreSQL and Redis, fed chunk tasks by name.

Jobs are created directly in SQL (``core.jobs.lifecycle.create_job``) and their chunk tasks
sent with a producer Celery app, as the API does. One worker serves the whole module (starting one
costs seconds of torch import on a small machine); the two-worker test adds a second.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from models import paced_text_model, write_models_file
from services import flushed_redis, fresh_postgres_database
from sqlalchemy import Engine, func, select
from typer.testing import CliRunner
from worker_support import (
    WorkerProcess,
    poll,
    producer,
    running_worker,
    start_worker,
    worker_env,
)

from cli.main import app as cli_app
from core.config import reset_settings_cache
from core.db import get_engine
from core.inputs.items import InputItem
from core.inputs.text_files import read_text_file
from core.jobs.lifecycle import Job, cancel_job, create_job, get_job
from core.jobs.results import iter_results
from core.jobs.status import JobStatus
from core.migrate import upgrade
from core.models.registry import Registry
from core.queues import send_chunks
from core.tables import chunks, results

MODEL = "tiny"
JOB_TIMEOUT_S = 60.0


@dataclass
class Service:
    engine: Engine
    env: dict[str, str]
    producer: Celery
    registry: Registry
    worker: WorkerProcess
    heartbeat: Path
    tmp: Path

    def create(self, texts: list[str], chunk_size: int) -> Job:
        inputs = [InputItem(item_id=f"r{i}", text=text) for i, text in enumerate(texts)]
        with self.engine.begin() as conn:
            return create_job(conn, self.registry.get(MODEL), inputs, chunk_size=chunk_size)

    def job(self, job_id: str) -> Job:
        with self.engine.connect() as conn:
            job = get_job(conn, job_id)
        assert job is not None
        return job

    def wait_status(self, job_id: str, status: JobStatus) -> Job:
        return poll(
            lambda: (job := self.job(job_id)).status == status and job,
            JOB_TIMEOUT_S,
            f"job {job_id} to be {status.value}",
        )

    def chunk_rows(self, job_id: str) -> list[Any]:
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    select(chunks).where(chunks.c.job_id == job_id).order_by(chunks.c.index)
                )
            )

    def result_count(self, job_id: str) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.scalar(
                    select(func.count()).select_from(results).where(results.c.job_id == job_id)
                )
            )


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, models_file: Path) -> Iterator[Service]:
    """PostgreSQL + Redis (fresh for this module) and one consuming worker."""
    tmp = tmp_path_factory.mktemp("worker-service")
    heartbeat = tmp / "worker.alive"
    with fresh_postgres_database() as pg_url, flushed_redis() as redis_url:
        upgrade(pg_url)
        # One chunk per claim: these tests follow each chunk a message names (its row, its
        # log line); claims of runs of chunks have a test of their own, with their own worker.
        env = worker_env(
            pg_url,
            redis_url,
            models_file,
            BULKSCORE_WORKER_HEARTBEAT_FILE=str(heartbeat),
            BULKSCORE_CHUNK_CLAIM_S="0",
        )
        app = producer(redis_url)
        with running_worker(["--models", MODEL], env, tmp / "worker-a.log") as worker:
            yield Service(
                engine=get_engine(pg_url),
                env=env,
                producer=app,
                registry=Registry.load(models_file),
                worker=worker,
                heartbeat=heartbeat,
                tmp=tmp,
            )
        app.close()


def sample_texts(count: int) -> list[str]:
    words = [
        "good",
        "bad",
        "film",
        "plot",
        "actor",
        "awful",
        "great",
        "boring",
        "moving",
        "dull",
        "superb",
    ]
    texts = []
    for i in range(count):
        length = 1 + (i * 7) % 40  # lengths vary, so batching and padding matter
        texts.append(" ".join(words[(i + k) % len(words)] for k in range(length)))
    return texts


def embedded_results(
    tmp: Path, source: Path, models_file: Path, monkeypatch: pytest.MonkeyPatch
) -> list[dict[str, Any]]:
    """``bulkscore score`` in this process, on its own SQLite file; rows in index order."""
    out = tmp / "embedded.jsonl"
    monkeypatch.setenv("BULKSCORE_DATABASE_URL", f"sqlite:///{tmp / 'embedded.db'}")
    monkeypatch.setenv("BULKSCORE_MODELS", str(models_file))
    reset_settings_cache()
    try:
        result = CliRunner().invoke(
            cli_app, ["score", str(source), "--model", MODEL, "--out", str(out)]
        )
    finally:
        reset_settings_cache()
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in out.read_text().splitlines()]


def assert_same_result(service_row: dict[str, Any], embedded: dict[str, Any]) -> None:
    assert service_row["id"] == embedded["id"]
    assert service_row["label"] == embedded["label"]
    assert service_row["error"] == embedded["error"]
    if embedded["score"] is None:
        assert service_row["score"] is None
        return
    # Batches differ (a chunk vs the whole file), so padding can move the last float bits.
    assert math.isclose(service_row["score"], embedded["score"], abs_tol=1e-5)
    assert [label for label, _ in service_row["top_k"]] == [label for label, _ in embedded["top_k"]]


def done_chunks(log: str, job_id: str) -> list[int]:
    return [int(n) for n in re.findall(rf"chunk (\d+) of job {job_id} done by ", log)]


def logged_done_chunks(workers: list[Any], job_id: str, count: int) -> list[list[int]]:
    """Each worker's logged done chunks, once ``count`` are logged in all.

    A worker logs a chunk after the transaction that finished it commits, so a job can
    already read as completed while its last chunk's line is still being written.
    """
    poll(
        lambda: sum(len(done_chunks(w.log, job_id)) for w in workers) >= count or None,
        JOB_TIMEOUT_S,
        f"{count} done chunks of job {job_id} in the logs",
    )
    return [done_chunks(w.log, job_id) for w in workers]


# -- tests ----------------------------------------------------------------------------------


def test_a_job_scored_by_the_worker_equals_bulkscore_score(
    service: Service, models_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = sample_texts(1000)
    texts[10] = "   "  # refused at intake: a per-item error on both paths
    source = tmp_path / "in.jsonl"
    source.write_text(
        "".join(json.dumps({"id": f"r{i}", "text": t}) + "\n" for i, t in enumerate(texts))
    )
    inputs = read_text_file(source, 20_000)
    with service.engine.begin() as conn:
        job = create_job(conn, service.registry.get(MODEL), inputs, chunk_size=100)
    send_chunks(service.producer, job.id, MODEL, range(10))

    final = service.wait_status(job.id, JobStatus.COMPLETED)
    assert (final.total, final.succeeded, final.failed) == (1000, 999, 1)
    # The job completes in the transaction of its last rows; that chunk is marked done
    # just after (a few milliseconds), so wait for it rather than race it.
    poll(
        lambda: [(r.status, r.attempts) for r in service.chunk_rows(job.id)] == [("done", 1)] * 10,
        JOB_TIMEOUT_S,
        "every chunk to be done, each in one attempt",
    )
    with service.engine.connect() as conn:
        served = list(iter_results(conn, job.id))
    embedded = embedded_results(tmp_path, source, models_file, monkeypatch)
    assert len(served) == len(embedded) == 1000
    assert [row["index"] for row in served] == list(range(1000))
    for service_row, embedded_row in zip(served, embedded, strict=True):
        assert_same_result(service_row, embedded_row)
    assert served[10]["error"] == "empty text"


def test_the_heartbeat_is_fresh_while_the_worker_consumes(service: Service) -> None:
    assert service.heartbeat.exists()
    assert time.time() - service.heartbeat.stat().st_mtime < 30


def test_two_workers_share_one_job(service: Service) -> None:
    job = service.create(sample_texts(480), chunk_size=40)
    # The second worker runs two chunks at a time on the threads pool, sharing one model.
    args = ["--models", MODEL, "--concurrency", "2"]
    with running_worker(args, service.env, service.tmp / "worker-b.log") as second:
        send_chunks(service.producer, job.id, MODEL, range(12))
        service.wait_status(job.id, JobStatus.COMPLETED)
        first_done, second_done = logged_done_chunks([service.worker, second], job.id, 12)
        assert second.stop() == 0, "SIGTERM must be a clean (warm) shutdown"
    assert "with the threads pool" in second.log
    assert first_done and second_done, (first_done, second_done)
    assert sorted(first_done + second_done) == list(range(12)), "each chunk scored exactly once"
    assert service.result_count(job.id) == 480


def test_a_worker_that_knows_its_pace_claims_runs_of_chunks_and_scores_each_item_once(
    service: Service, tiny_text_model: Path
) -> None:
    # Its own model name (and so its own queue), so the module's worker cannot take it.
    models = write_models_file(
        service.tmp / "runs-models.toml",
        {
            "tiny-runs": {
                "task": "text-classification",
                "backend": "transformers",
                "source": str(tiny_text_model),
                "max_batch_size": 8,
            }
        },
    )
    # Runs of up to 30 s of work (and turns as long: with fair claiming a run holds a turn).
    env = {
        **service.env,
        "BULKSCORE_MODELS": str(models),
        "BULKSCORE_CHUNK_CLAIM_S": "30",
        "BULKSCORE_FAIR_TIME_SLICE_S": "30",
    }
    spec = Registry.load(models).get("tiny-runs")

    def create(count: int, chunk_size: int) -> Job:
        inputs = [InputItem(item_id=f"r{i}", text=t) for i, t in enumerate(sample_texts(count))]
        with service.engine.begin() as conn:
            return create_job(conn, spec, inputs, chunk_size=chunk_size)

    warm_up, job = create(64, 64), create(800, 50)  # the job: 16 chunks
    with running_worker(["--models", "tiny-runs"], env, service.tmp / "worker-runs.log") as worker:
        # Its first claim measures the model's pace; the job's claims then take runs.
        send_chunks(service.producer, warm_up.id, "tiny-runs", [0])
        service.wait_status(warm_up.id, JobStatus.COMPLETED)
        send_chunks(service.producer, job.id, "tiny-runs", range(16))
        service.wait_status(job.id, JobStatus.COMPLETED)
        # Messages of merged chunks find them finished.
        worker.wait_for(rf"chunk \d+ of job {job.id} skipped by .*chunk already done")
    rows = [row._mapping for row in service.chunk_rows(job.id)]
    runs = [row for row in rows if row["index"] >= 16]
    merged = [row for row in rows if row["status"] == "merged"]
    # Chunk 0 and its share of the 15 after it are one run: all of them once the worker has
    # counted itself the model's one worker (its liveness check), half (8) before.
    assert runs and (runs[0]["start"], runs[0]["stop"]) in ((0, 800), (0, 450)), rows
    assert all((row["status"], row["attempts"]) == ("done", 1) for row in runs), rows
    assert len(merged) == sum((row["stop"] - row["start"]) // 50 for row in runs), rows
    assert service.result_count(job.id) == 800
    final = service.job(job.id)
    assert (final.succeeded, final.failed) == (800, 0), "counters must not count a row twice"


def test_a_cancelled_job_scores_no_further_chunks(service: Service) -> None:
    job = service.create(sample_texts(50), chunk_size=10)
    send_chunks(service.producer, job.id, MODEL, [0])
    poll(lambda: service.chunk_rows(job.id)[0].status == "done", JOB_TIMEOUT_S, "chunk 0")
    with service.engine.begin() as conn:
        assert cancel_job(conn, job.id)
    send_chunks(service.producer, job.id, MODEL, range(1, 5))
    service.worker.wait_for(rf"chunk \d+ of job {job.id} cancelled by ", JOB_TIMEOUT_S, count=4)

    assert service.result_count(job.id) == 10
    rows = service.chunk_rows(job.id)
    assert [(r.status, r.attempts) for r in rows] == [("done", 1)] + [("cancelled", 0)] * 4
    final = service.job(job.id)
    assert (final.status, final.succeeded + final.failed) == (JobStatus.CANCELLED, 10)


def test_a_chunk_delivered_twice_is_scored_once(service: Service) -> None:
    job = service.create(sample_texts(30), chunk_size=15)
    send_chunks(service.producer, job.id, MODEL, [0, 0, 1, 1])
    service.wait_status(job.id, JobStatus.COMPLETED)
    service.worker.wait_for(rf"chunk \d of job {job.id} skipped by .*chunk already done", count=2)

    assert service.result_count(job.id) == 30
    final = service.job(job.id)
    assert (final.succeeded, final.failed) == (30, 0), "counters must not count a row twice"
    assert [(r.status, r.attempts) for r in service.chunk_rows(job.id)] == [("done", 1)] * 2
    assert sorted(done_chunks(service.worker.log, job.id)) == [0, 1]


def test_many_small_jobs_are_batched_across_jobs(service: Service) -> None:
    texts = sample_texts(40)
    # Stored first, then sent: the first delivery finds the other jobs' chunks queued.
    made = [service.create([text], chunk_size=1) for text in texts]
    for job in made:
        send_chunks(service.producer, job.id, MODEL, [0])
    for job in made:
        final = service.wait_status(job.id, JobStatus.COMPLETED)
        assert (final.total, final.succeeded, final.failed) == (1, 1, 0)
        assert service.result_count(job.id) == 1
        # A job completes with the write of its last row; its chunk is finished with the
        # batch's other chunks, after the batch's last window is written.
        poll(
            lambda job=job: (
                [(r.status, r.attempts) for r in service.chunk_rows(job.id)] == [("done", 1)]
                or None
            ),
            JOB_TIMEOUT_S,
            f"job {job.id}'s chunk done, once",
        )
    for job in made:
        [logged] = logged_done_chunks([service.worker], job.id, 1)
        assert logged == [0], "each chunk scored (and logged) exactly once"
    log = service.worker.log
    batched = [job for job in made if re.search(rf"job {job.id} done by .*batched with", log)]
    # Jobs stored before any message arrives: the first delivery gathers most of them.
    assert len(batched) >= len(made) // 2, "small jobs must share forward passes"
    for job in batched:
        service.worker.wait_for(rf"chunk 0 of job {job.id} skipped by .*chunk already done")


def test_a_chunk_of_a_killed_worker_is_re_sent_and_finished(
    service: Service, tiny_text_model: Path
) -> None:
    # Its own model name (and so its own queue), so the module's worker cannot take it.
    models = write_models_file(
        service.tmp / "kill-models.toml",
        {
            # The chunk must outlast the poll that kills its worker: about 75,000 tokens,
            # at least 3.8 s.
            "tiny-kill": paced_text_model(tiny_text_model, 20_000, max_batch_size=8)
        },
    )
    env = {
        **service.env,
        "BULKSCORE_MODELS": str(models),
        "BULKSCORE_CHUNK_LEASE_S": "6",
        "BULKSCORE_WRITE_BATCH_SIZE": "100",
    }
    registry = Registry.load(models)
    # Distinct texts (sample_texts repeats 440): the model sees each repeated text once.
    texts = [f"{t} #{i}" for i, t in enumerate(sample_texts(3000))]
    inputs = [InputItem(item_id=f"r{i}", text=t) for i, t in enumerate(texts)]
    with service.engine.begin() as conn:
        job = create_job(conn, registry.get("tiny-kill"), inputs, chunk_size=3000)

    doomed = start_worker(["--models", "tiny-kill"], env, service.tmp / "worker-killed.log")
    try:
        doomed.wait_for(r"worker \S+ consuming")
        send_chunks(service.producer, job.id, "tiny-kill", [0])
        poll(lambda: service.result_count(job.id) > 0, JOB_TIMEOUT_S, "the first results")
        doomed.process.kill()  # SIGKILL mid-chunk: no warm shutdown, no ack
        doomed.process.wait(10)
    finally:
        doomed.stop()
    written = service.result_count(job.id)
    assert 0 < written < 3000, "the worker must die mid-chunk for this test to mean anything"
    assert service.chunk_rows(job.id)[0].status == "running"

    log = service.tmp / "worker-rescuer.log"
    with running_worker(["--models", "tiny-kill"], env, log) as rescuer:
        final = service.wait_status(job.id, JobStatus.COMPLETED)
        rescuer.wait_for(rf"chunk 0 of job {job.id}: its worker stopped renewing the lease")
        # The task logs its outcome after the commit that completed the job: wait for it.
        rescuer.wait_for(rf"chunk 0 of job {job.id} done by ")
        rescued = done_chunks(rescuer.log, job.id)
    assert rescued == [0]
    assert (final.succeeded + final.failed, service.result_count(job.id)) == (3000, 3000)
    assert [(r.status, r.attempts) for r in service.chunk_rows(job.id)] == [("done", 2)]
    assert re.search(rf"chunk 0 of job {job.id} done by .*, {written} already scored", rescuer.log)
