"""An embedded job (``bulkscore score``) on the service's own PostgreSQL is never taken over.

A paused ``bulkscore score`` leaves its chunk ``running`` past its lease, or ``queued`` for
long with no message; the same states of a service job are exactly what a worker's sweeps
repair. Here a real worker runs its sweeps next to both kinds: it repairs and scores the
service jobs (so the sweeps demonstrably ran), and never claims, re-sends or scores the
embedded ones, not even for a stray message naming them. The embedded process then takes
its own job back and finishes it.
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import Engine, func, select, update
from worker_support import poll, running_worker, worker_env

from api.dispatch import producer_app
from core.chunks.claim import claim_chunk
from core.clock import utcnow
from core.config import Settings
from core.db import get_engine
from core.inputs.items import InputItem
from core.jobs.lifecycle import Job, create_job, get_job
from core.jobs.status import ChunkStatus, JobDriver, JobStatus
from core.migrate import upgrade
from core.models.registry import Registry
from core.queues import send_chunks
from core.tables import chunks, results
from engine.in_process import create_embedded_job, score_in_process
from engine.runners import build_runner

MODEL = "tiny"
LONG_AGO = timedelta(hours=1)


def inputs(prefix: str, count: int = 12) -> list[InputItem]:
    return [InputItem(item_id=f"{prefix}{i}", text=f"{prefix} text {i}") for i in range(count)]


def chunk_state(engine: Engine, job_id: str) -> tuple[str, int]:
    with engine.connect() as conn:
        row = conn.execute(
            select(chunks.c.status, chunks.c.attempts).where(chunks.c.job_id == job_id)
        ).one()
    return str(row.status), int(row.attempts)


def rows(engine: Engine, job_id: str) -> int:
    with engine.connect() as conn:
        query = select(func.count()).select_from(results).where(results.c.job_id == job_id)
        return int(conn.scalar(query) or 0)


def status(engine: Engine, job_id: str) -> JobStatus:
    with engine.connect() as conn:
        job = get_job(conn, job_id)
    assert job is not None
    return job.status


def backdate(engine: Engine, job_id: str, **values: object) -> None:
    """Make a job's chunk look abandoned long ago: what the sweeps look for."""
    with engine.begin() as conn:
        conn.execute(
            update(chunks)
            .where(chunks.c.job_id == job_id)
            .values(updated_at=utcnow() - LONG_AGO, **values)
        )


def service_job(engine: Engine, registry: Registry, prefix: str) -> Job:
    with engine.begin() as conn:
        return create_job(conn, registry.get(MODEL), inputs(prefix), chunk_size=100)


def test_the_service_never_takes_over_an_embedded_job(
    pg_url: str, redis_url: str, models_file: Path, tmp_path: Path
) -> None:
    upgrade(pg_url)
    engine = get_engine(pg_url)
    registry = Registry.load(models_file)
    spec = registry.get(MODEL)

    # A `bulkscore score` paused mid-chunk: claimed by its process, its lease long run out.
    paused = create_embedded_job(engine, spec, inputs("paused"))
    with engine.begin() as conn:
        claim = claim_chunk(
            conn, paused.id, 0, lease_s=5, max_attempts=10, driver=JobDriver.EMBEDDED
        )
    assert claim.claimed
    backdate(engine, paused.id, leased_until=utcnow() - LONG_AGO)
    # One that never started: queued, with no message, for an hour.
    idle = create_embedded_job(engine, spec, inputs("idle"))
    backdate(engine, idle.id)
    # The same two states for service jobs: a lost message, and a worker that died.
    lost = service_job(engine, registry, "lost")
    backdate(engine, lost.id)
    died = service_job(engine, registry, "died")
    backdate(engine, died.id, status="running", attempts=1, leased_until=utcnow() - LONG_AGO)

    env = worker_env(
        pg_url,
        redis_url,
        models_file,
        BULKSCORE_CHUNK_LEASE_S="5",
        BULKSCORE_CHUNK_RESEND_AFTER_S="5",
    )
    with running_worker(["--models", MODEL], env, tmp_path / "worker.log") as worker:
        for job in (lost, died):
            poll(
                lambda job=job: status(engine, job.id) == JobStatus.COMPLETED,
                60,
                f"the sweeps to repair service job {job.id}",
            )
        # A stray message naming the embedded chunks: the worker must decline them too.
        app = producer_app(Settings(broker_url=redis_url))
        try:
            for job in (paused, idle):
                send_chunks(app, job.id, MODEL, [0])
        finally:
            app.close()
        for job in (paused, idle):
            worker.wait_for(rf"chunk 0 of job {job.id} skipped .*\(no such chunk\)")
        # Several more sweep ticks (every 2.5 s) with the embedded chunks still eligible.
        time.sleep(8)
        log = worker.log

    assert chunk_state(engine, paused.id) == (ChunkStatus.RUNNING.value, 1)
    assert chunk_state(engine, idle.id) == (ChunkStatus.QUEUED.value, 0)
    assert rows(engine, paused.id) == rows(engine, idle.id) == 0
    for job in (paused, idle):
        mentions = [line for line in log.splitlines() if job.id in line]
        outcomes = [line for line in mentions if f"chunk 0 of job {job.id} " in line]
        assert len(outcomes) == 1 and "skipped" in outcomes[0], outcomes
        assert "no such chunk" in outcomes[0], outcomes
        assert not [line for line in mentions if "re-sent" in line or "split" in line], mentions
    assert rows(engine, lost.id) == rows(engine, died.id) == 12

    # The paused process wakes up: its own lease ran out, so it claims its chunk again.
    runner = build_runner(spec, Settings())
    runner.setup("cpu")
    settings = Settings(database_url=pg_url)
    for job in (paused, idle):
        run = score_in_process(engine, settings, job.id, runner)
        assert (run.scored, run.busy) == (12, None)
        assert status(engine, job.id) == JobStatus.COMPLETED
        assert chunk_state(engine, job.id)[0] == ChunkStatus.DONE.value
