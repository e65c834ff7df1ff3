"""How many workers can one PostgreSQL feed? 8, 16, 32 and 64 stand-in workers against one.

    .venv/bin/python bench/db_scaling.py [--sizes 8,16,32,64] [--seconds 20]
        [--worker-rate 3060] [--jobs one,many]

Each worker is a process (forked, one connection each) that does, per chunk, the SQL a
``bulkscore worker`` does without Celery and without a model: the fair claim
(``core.chunks.fair.claim_fairest``, then ``mark_running``, one transaction), reading the
chunk's items, then per write window a sleep for the model (``window / --worker-rate``
seconds: the GPU stand-in's forward pass) and the real result write
(``core.jobs.results.write_job_results``: the job's row locked, ``COPY``, counters; one
transaction per window), and finally ``finish_chunks``. Chunks of ``chunk_size`` (512)
items, windows of ``write_batch_size`` (128; ``--window``), result rows with a two-label top-k as
DistilBERT-SST-2 writes them.

Every size runs on a fresh database (``tests/services.fresh_postgres_database``) holding
the queued work, for ``--seconds``; only what commits inside that window counts. Two shapes
of work: ``one`` (a single big job: every worker's writes take the same job row's lock)
and ``many`` (one job per worker: the same rows spread over as many job rows).

Reported per size: claims/s, rows written/s against what the workers would write with a
database that never waits (``demand``), claim and write-transaction latency (p50/p95).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

from common import claim_as_a_worker, load_summary, machine_summary

MODEL = "bench"
CHUNK_SIZE = 512
WINDOW = 128  # the default write_batch_size: rows per result transaction
LABELS = ("POSITIVE", "NEGATIVE")


@dataclass
class WorkerFigures:
    """What one worker did inside the measured window."""

    claims: int = 0
    rows: int = 0
    idle_claims: int = 0  # claims that found no queued chunk: the work ran out
    claim_s: list[float] = field(default_factory=list)
    write_s: list[float] = field(default_factory=list)


def prepare(url: str, jobs: int, items_per_job: int) -> None:
    """Migrate and queue ``jobs`` service jobs of ``items_per_job`` short texts each."""
    from sqlalchemy import create_engine

    from core.inputs.items import InputItem
    from core.jobs.lifecycle import create_job
    from core.migrate import upgrade
    from core.models.registry import Registry

    upgrade(url)
    spec = Registry.from_mapping(
        {"models": {MODEL: {"task": "text-classification", "backend": "standin", "source": "./x"}}},
        base_dir=Path("."),
    ).get(MODEL)
    engine = create_engine(url)
    inputs = [InputItem(item_id=f"r{i}", text=f"text number {i}") for i in range(items_per_job)]
    for _ in range(jobs):
        with engine.begin() as conn:
            create_job(conn, spec, inputs, chunk_size=CHUNK_SIZE)
    engine.dispose()


def _scored(items: list[tuple[int, Any]]) -> list[Any]:
    """Rows as a classifier writes them: label, score and a two-label top-k per item."""
    from core.jobs.predictions import Prediction
    from core.jobs.results import ScoredItem

    scored = []
    for index, item in items:
        score = 0.5 + (index % 500) / 1000
        label, other = LABELS[index % 2], LABELS[1 - index % 2]
        top_k = [(label, score), (other, 1 - score)]
        scored.append(ScoredItem(index, item.item_id, Prediction(label, score, top_k)))
    return scored


def work(
    url: str,
    worker_rate: float,
    window_size: int,
    start_at: float,
    stop_at: float,
    ready: Event,
    out: Any,
) -> None:
    """One worker: claim, read, sleep and write per window, finish; until ``stop_at``."""
    from core.chunks.batches import finish_chunks, load_chunk_items
    from core.config import get_settings
    from core.db import get_engine
    from core.jobs.results import write_job_results
    from core.jobs.status import ChunkStatus

    settings = get_settings()
    engine = get_engine(url)
    with engine.connect():
        pass  # connected before the clock starts, as a running worker is
    ready.set()
    time.sleep(max(0.0, start_at - time.monotonic()))
    figures = WorkerFigures()
    while time.monotonic() < stop_at:
        began = time.monotonic()
        claim = claim_as_a_worker(engine, MODEL, settings)
        claimed_at = time.monotonic()
        if claim is None or claim.chunk is None:
            figures.idle_claims += 1
            time.sleep(0.05)
            continue
        if claimed_at < stop_at:
            figures.claims += 1
            figures.claim_s.append(claimed_at - began)
        chunk = claim.chunk
        with engine.connect() as conn:
            loaded = load_chunk_items(conn, [chunk])[(chunk.job_id, chunk.index)]
        for start in range(0, len(loaded), window_size):
            window = loaded[start : start + window_size]
            if worker_rate > 0:
                time.sleep(len(window) / worker_rate)
            scored = _scored(window)
            began = time.monotonic()
            with engine.begin() as conn:
                outcome = write_job_results(conn, MODEL, None, {chunk.job_id: scored})
            written_at = time.monotonic()
            if written_at < stop_at:
                figures.rows += outcome[chunk.job_id].written
                figures.write_s.append(written_at - began)
        with engine.begin() as conn:
            finish_chunks(conn, [(chunk.job_id, chunk.index)], ChunkStatus.DONE)
    engine.dispose()
    out.put(figures)


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


@dataclass
class SizeResult:
    workers: int
    shape: str
    seconds: float
    claims: int
    rows: int
    idle_claims: int
    claim_s: list[float]
    write_s: list[float]
    demand: float  # rows/s the workers would write if the database never made them wait
    # CPU cores busy during the window: this database's PostgreSQL backends, and the worker
    # processes themselves (which on this machine share its two cores with PostgreSQL).
    database_cores: float = 0.0
    client_cores: float = 0.0

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds

    def cells(self) -> list[str]:
        ms = 1000
        return [
            str(self.workers),
            self.shape,
            f"{self.claims / self.seconds:,.1f}",
            f"{self.rows_per_s:,.0f}",
            f"{self.demand:,.0f}",
            f"{self.rows_per_s / self.demand:.2f}" if self.demand else "-",
            f"{percentile(self.claim_s, 0.5) * ms:.1f} / {percentile(self.claim_s, 0.95) * ms:.1f}",
            f"{percentile(self.write_s, 0.5) * ms:.1f} / {percentile(self.write_s, 0.95) * ms:.1f}",
            f"{self.database_cores:.2f}",
            f"{self.client_cores:.2f}",
            "yes" if self.idle_claims else "no",
        ]


def run_size(
    workers: int,
    shape: str,
    seconds: float,
    worker_rate: float,
    window_size: int,
    most_queued: int,
) -> SizeResult:
    from services import fresh_postgres_database

    from core.db import dispose_engines

    # Enough queued work that no worker runs dry: what the workers would write with a
    # database that never waits, plus half again, at most ``most_queued`` (queueing costs
    # time too); "ran out" in the table says if the work ran out.
    demand = workers * worker_rate if worker_rate > 0 else workers * 20_000.0
    total = min(int(demand * seconds * 1.5), most_queued)
    jobs = 1 if shape == "one" else workers
    per_job = max(CHUNK_SIZE, -(-total // jobs // CHUNK_SIZE) * CHUNK_SIZE)
    with fresh_postgres_database() as url:
        started = time.monotonic()
        prepare(url, jobs, per_job)
        print(
            f"  {workers} workers, {shape}: {jobs} job(s) x {per_job:,} items queued in "
            f"{time.monotonic() - started:.0f} s",
            flush=True,
        )
        dispose_engines()  # no open connection may cross the fork
        context = multiprocessing.get_context("fork")
        out = context.Queue()
        processes, start_at = _start_all(
            context, workers, url, worker_rate, window_size, seconds, out
        )
        database = url.rsplit("/", 1)[1]
        time.sleep(max(0.0, start_at - time.monotonic()))
        clients = [process.pid for process in processes]
        before = (cpu_seconds(backend_pids(database)), cpu_seconds(clients))
        time.sleep(max(0.0, start_at + seconds - time.monotonic()))
        after = (cpu_seconds(backend_pids(database)), cpu_seconds(clients))
        figures = [out.get(timeout=seconds + 300) for _ in processes]
        for process in processes:
            process.join(timeout=60)
    return SizeResult(
        workers=workers,
        shape=shape,
        seconds=seconds,
        claims=sum(f.claims for f in figures),
        rows=sum(f.rows for f in figures),
        idle_claims=sum(f.idle_claims for f in figures),
        claim_s=[s for f in figures for s in f.claim_s],
        write_s=[s for f in figures for s in f.write_s],
        demand=workers * worker_rate,
        database_cores=(after[0] - before[0]) / seconds,
        client_cores=(after[1] - before[1]) / seconds,
    )


def backend_pids(database: str) -> list[int]:
    """The PostgreSQL backend processes serving ``database`` (one per worker connection)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if title.startswith("postgres:") and f" {database} " in title:
            pids.append(int(entry.name))
    return pids


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU seconds of ``pids`` so far (those still alive)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def _start_all(
    context: Any,
    workers: int,
    url: str,
    worker_rate: float,
    window_size: int,
    seconds: float,
    out: Any,
) -> tuple[list[Any], float]:
    """Fork the workers with a common start, a little after the last can have connected."""
    # Forked children share this process's monotonic clock (CLOCK_MONOTONIC is system-wide).
    start_at = time.monotonic() + 5.0 + workers * 0.1
    stop_at = start_at + seconds
    readies = [context.Event() for _ in range(workers)]
    processes = [
        context.Process(
            target=work, args=(url, worker_rate, window_size, start_at, stop_at, ready, out)
        )
        for ready in readies
    ]
    for process in processes:
        process.start()
    for ready in readies:
        if not ready.wait(timeout=max(1.0, start_at - time.monotonic())):
            print("  warning: a worker connected after the start; its first claim is late")
            break
    return processes, start_at


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="8,16,32,64")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument(
        "--worker-rate",
        type=float,
        default=3060.0,
        help="Texts/s of one worker's model (its sleep); 0: no sleep. Default: the H200's "
        "measured end-to-end rate per worker (bench/README.md).",
    )
    parser.add_argument("--jobs", default="many,one", help="Work shapes: many, one, or both.")
    parser.add_argument(
        "--window", type=int, default=WINDOW, help="Rows per result transaction (128)."
    )
    parser.add_argument(
        "--most-queued", type=int, default=600_000, help="Most items queued per size."
    )
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    shapes = [shape.strip() for shape in args.jobs.split(",")]
    print(f"{machine_summary()}; load {load_summary()}", flush=True)
    results = []
    for shape in shapes:
        for workers in sizes:
            result = run_size(
                workers, shape, args.seconds, args.worker_rate, args.window, args.most_queued
            )
            print(
                f"  -> {result.rows_per_s:,.0f} rows/s, {result.claims / args.seconds:,.1f} "
                f"claims/s; load {load_summary()}",
                flush=True,
            )
            results.append(result)
    print(
        f"\n### One PostgreSQL, N stand-in workers ({args.seconds:.0f} s each, model "
        f"{args.worker_rate:,.0f} texts/s per worker, chunks of {CHUNK_SIZE}, windows of "
        f"{args.window})\n"
    )
    print(f"machine: {machine_summary()}; load at the end: {load_summary()}\n")
    header = [
        "workers",
        "jobs",
        "claims/s",
        "rows/s",
        "demand rows/s",
        "x demand",
        "claim ms p50 / p95",
        "write ms p50 / p95",
        "PostgreSQL cores",
        "worker cores",
        "ran out",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for result in results:
        print("| " + " | ".join(result.cells()) + " |")
    for shape in shapes:
        rows = [r for r in results if r.shape == shape]
        best = max(rows, key=lambda r: r.rows_per_s)
        median_write = statistics.median(best.write_s) * 1000 if best.write_s else float("nan")
        print(
            f"\n{shape}: most rows/s at {best.workers} workers ({best.rows_per_s:,.0f}); "
            f"median write transaction {median_write:.1f} ms there."
        )


if __name__ == "__main__":
    main()
