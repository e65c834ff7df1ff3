"""The service's own throughput, side by side in one run: database, API, small jobs, threads.

    .venv/bin/python bench/service_throughput.py [--skip-slow]

Needs PostgreSQL and Redis on 127.0.0.1 (a fresh database per table, Redis database 14).
Four tables:

1. Results database and API: PostgreSQL result writes (the previous multi-row INSERT
   against COPY, both with the job's counters, one transaction per 512 rows), the CSV
   export streamed over HTTP, and the API accepting one 10,000-text JSON job.
2. Many small jobs: one worker scoring one 1,000-text job, against 1,000 one-text jobs
   submitted at once (cross-job batching on, and off with ``--skip-slow`` not given).
3. Threads: one worker with 2 threads, two workers splitting the 2 cores, and two workers
   with 2 threads each (oversubscribed), on the same 500 texts.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from common import Row, bench_texts, bench_workdir, build_distilbert_base, print_table, timed
from service_support import Service, bench_models_file, running_service

WRITE_ROWS = 50_000
WRITE_BATCH = 512
EXPORT_ROWS = 100_000
SUBMIT_TEXTS = 10_000
SMALL_JOBS = 1_000


# -- 1. database and API -------------------------------------------------------------------


def _old_write(conn: Any, job_id: str, scored: list[Any]) -> int:
    """The results write before COPY: one multi-row INSERT ... ON CONFLICT DO NOTHING."""
    from sqlalchemy import update
    from sqlalchemy.dialects import postgresql

    from core.clock import utcnow
    from core.tables import jobs, results

    now = utcnow()
    rows = [
        {
            "job_id": job_id,
            "index": item.index,
            "item_id": item.item_id,
            "label": item.prediction.label,
            "score": item.prediction.score,
            "top_k": [list(pair) for pair in item.prediction.top_k] or None,
            "error": item.prediction.error,
            "model": "bench",
            "model_revision": None,
            "created_at": now,
        }
        for item in scored
    ]
    statement = (
        postgresql.insert(results)
        .on_conflict_do_nothing(index_elements=["job_id", "index"])
        .returning(results.c.error)
    )
    inserted = conn.execute(statement, rows).all()
    conn.execute(
        update(jobs).where(jobs.c.id == job_id).values(succeeded=jobs.c.succeeded + len(inserted))
    )
    return len(inserted)


def _scored_batches(count: int) -> list[list[Any]]:
    from core.jobs.predictions import Prediction
    from core.jobs.results import ScoredItem

    prediction = Prediction(
        label="POSITIVE", score=0.731, top_k=[("POSITIVE", 0.731), ("NEGATIVE", 0.269)]
    )
    items = [ScoredItem(i, f"r{i}", prediction) for i in range(count)]
    return [items[start : start + WRITE_BATCH] for start in range(0, count, WRITE_BATCH)]


def _new_job(engine: Any, count: int) -> str:
    from core.inputs.items import InputItem
    from core.jobs.lifecycle import create_job
    from core.models.registry import Backend, ModelSpec, Task

    spec = ModelSpec(
        name="bench", task=Task.TEXT_CLASSIFICATION, backend=Backend.TRANSFORMERS, source="/"
    )
    with engine.begin() as conn:
        inputs = [InputItem(item_id=f"r{i}", text="t") for i in range(count)]
        return create_job(conn, spec, inputs, chunk_size=256).id


def database_rows(service: Service, texts: list[str]) -> list[Row]:
    from sqlalchemy import create_engine

    from core.jobs.results import write_results

    engine = create_engine(service.database_url)
    batches = _scored_batches(WRITE_ROWS)
    rows = []
    old_job, new_job = _new_job(engine, WRITE_ROWS), _new_job(engine, WRITE_ROWS)

    def write(job_id: str, writer: Callable[[Any, str, list[Any]], Any]) -> None:
        for batch in batches:
            with engine.begin() as conn:
                writer(conn, job_id, batch)

    rows.append(
        timed(
            "results writes: multi-row INSERT (before)",
            WRITE_ROWS,
            lambda: write(old_job, _old_write),
        )
    )
    rows.append(
        timed(
            "results writes: COPY via temp table (write_results)",
            WRITE_ROWS,
            lambda: write(new_job, lambda c, j, b: write_results(c, j, "bench", None, b)),
        )
    )
    rows[0].note = f"{WRITE_BATCH} rows + the job's counters per transaction"
    rows[1].note = f"same batches; {rows[1].rate / rows[0].rate:.1f}x the multi-row INSERT"

    export_job = _new_job(engine, EXPORT_ROWS)
    from core.keys import authenticate
    from core.tables import jobs

    with engine.begin() as conn:
        key_id = authenticate(conn, service.key)
        conn.execute(jobs.update().where(jobs.c.id == export_job).values(owner_key_id=key_id))
        for batch in _scored_batches(EXPORT_ROWS):
            write_results(conn, export_job, "bench", None, batch)
    engine.dispose()

    def export() -> None:
        lines = 0
        with service.client() as client:
            path = f"/v1/jobs/{export_job}/results"
            with client.stream("GET", path, params={"format": "csv"}) as answer:
                answer.raise_for_status()
                for piece in answer.iter_bytes():
                    lines += piece.count(b"\n")
        assert lines == EXPORT_ROWS + 1, lines  # and the header

    rows.append(timed("results export ?format=csv over HTTP (streamed)", EXPORT_ROWS, export))
    rows[-1].note = f"{EXPORT_ROWS:,} rows"

    body = [{"id": f"r{i}", "text": texts[i % len(texts)]} for i in range(SUBMIT_TEXTS)]

    def submit() -> None:
        with service.client() as client:
            answer = client.post("/v1/jobs", json={"model": "bench", "inputs": body})
            assert answer.status_code == 202, answer.text

    submit()  # warm-up: the first request imports and connects
    rows.append(timed(f"API accepts a {SUBMIT_TEXTS:,}-text JSON job", SUBMIT_TEXTS, submit))
    rows[-1].note = "POST until 202 (stored, chunks queued)"
    return rows


# -- 2. many small jobs ----------------------------------------------------------------------


def _warm_up(service: Service, client: Any, records: list[dict[str, str]], chunks: int = 1) -> None:
    """One untimed job (a chunk per worker), as a long-running service has seen before."""
    size = int(service.env.get("BULKSCORE_CHUNK_SIZE", "512"))
    job_id = service.submit(client, records[: min(len(records), size * chunks, 128 * chunks)])
    service.wait_completed(client, job_id)


def _completed_jobs(service: Service) -> Callable[[], int]:
    from sqlalchemy import create_engine, func, select

    from core.tables import jobs

    engine = create_engine(service.database_url)

    def count() -> int:
        with engine.connect() as conn:
            query = select(func.count()).select_from(jobs).where(jobs.c.status == "completed")
            return int(conn.scalar(query) or 0)

    return count


def _wait_for(count: Callable[[], int], target: int, timeout: float = 1800) -> None:
    deadline = time.monotonic() + timeout
    while count() < target:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {count()} of {target} jobs completed")
        time.sleep(0.1)


def small_jobs_rows(workdir: Path, models: Path, records: list[dict[str, str]], slow: bool):
    """One 1,000-text job vs 1,000 one-text jobs, each on a fresh service with one worker."""
    rows = []
    variants = [("on", "true")] + ([("off", "false")] if slow else [])
    one_job = f"one {len(records):,}-text job, 1 worker"
    for label, batching in variants:
        with running_service(workdir, models, cross_job_batching=batching) as service:
            service.start_workers(1)
            with service.client() as client:
                _warm_up(service, client, records)
                completed = _completed_jobs(service)
                if label == "on":

                    def big(completed: Callable[[], int] = completed) -> None:
                        job_id = service.submit(client, records)
                        _wait_for(completed, 2)
                        assert len(service.read_all(client, job_id)) == len(records)

                    rows.append(timed(one_job, len(records), big))

                # Completed before the small jobs: the warm-up job, and the big one.
                before = 2 if label == "on" else 1

                submitted: list[float] = []

                def many(
                    completed: Callable[[], int] = completed,
                    before: int = before,
                    submitted: list[float] = submitted,
                ) -> None:
                    # "At once": eight connections submit as fast as the API accepts.
                    started = time.perf_counter()
                    with ThreadPoolExecutor(8) as pool:
                        ids = list(pool.map(lambda r: service.submit(client, [r]), records))
                    submitted.append(time.perf_counter() - started)
                    _wait_for(completed, len(ids) + before)
                    for job_id in ids[:: len(ids) // 10]:
                        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "completed"

                name = f"{len(records):,} one-text jobs at once, cross-job batching {label}"
                rows.append(timed(name, len(records), many))
                rows[-1].note = f"all submitted after {submitted[0]:.1f} s"
    return rows, one_job


# -- 3. threads ------------------------------------------------------------------------------


def threads_rows(workdir: Path, models: Path, records: list[dict[str, str]]) -> list[Row]:
    """The same job on 2 cores: 1x2 threads, 2x1 (split automatically), 2x2 (oversubscribed)."""
    setups = [
        ("1 worker x 2 threads", 1, {}),
        ("2 workers x 1 thread (BULKSCORE_WORKER_PROCESSES=2)", 2, {"worker_processes": "2"}),
        ("2 workers x 2 threads (oversubscribed)", 2, {"torch_threads": "2"}),
    ]
    rows = []
    for name, count, extra in setups:
        # Chunks of 64 so that two workers share the 500 texts evenly.
        with running_service(workdir, models, chunk_size="64", **extra) as service:
            service.start_workers(count)
            with service.client() as client:
                _warm_up(service, client, records, chunks=count)

                def run() -> None:
                    job_id = service.submit(client, records)
                    service.wait_completed(client, job_id)
                    assert len(service.read_all(client, job_id)) == len(records)

                rows.append(timed(name, len(records), run))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--skip-slow", action="store_true", help="Leave out small jobs without batching."
    )
    parser.add_argument("--only", choices=["db", "small", "threads"], default=None)
    args = parser.parse_args()

    workdir = bench_workdir("service")
    records = bench_texts(SMALL_JOBS, workdir=workdir)
    texts = [r["text"] for r in records]
    model_dir = build_distilbert_base(workdir / "distilbert-base")
    models = bench_models_file(workdir, model_dir)

    if args.only in (None, "db"):
        with running_service(workdir, models) as service:
            db = database_rows(service, texts)
        print_table("Results database and API (PostgreSQL)", db, {}, "rows (items)/s")
    if args.only in (None, "small"):
        small, one_job = small_jobs_rows(workdir, models, records, slow=not args.skip_slow)
        print_table("Many small jobs (service, DistilBERT-base shape)", small, {"one job": one_job})
    if args.only in (None, "threads"):
        threads = threads_rows(workdir, models, records[:500])
        print_table(
            "Threads: workers sharing 2 cores (service, 500 texts)",
            threads,
            {"1x2": threads[0].name},
        )


if __name__ == "__main__":
    main()
