"""What the database costs per million items, and what a purge costs the scoring (issue 20).

    .venv/bin/python bench/storage_cost.py [--texts 1000000] [--images 300]
        [--score-seconds 20] [--worker-rate 3000]

On a fresh PostgreSQL database (``tests/services.fresh_postgres_database``):

1. **Text storage**: one job of ``--texts`` review-length texts (``../shared/bench/
   gen_texts.py`` via ``bench_texts``: 20,000 records, repeated with a suffix to reach the
   count, so no two are equal) made by ``core.jobs.lifecycle.create_job`` (``COPY``), then
   its result rows written as a worker writes them (``core.jobs.results.write_job_results``,
   ``COPY``, a two-label top-k). Table, TOAST and index bytes of ``items``, ``results``,
   ``chunks`` from ``pg_total_relation_size`` / ``pg_relation_size`` / ``pg_indexes_size``
   after ``VACUUM ANALYZE``, scaled to 1,000,000 items.
2. **Image storage**: one job of ``--images`` photo-sized files (``gen_images.py``: JPEG and
   PNG, 320x240 to 1920x1440), bytes in ``items.data``, result rows with a five-label
   top-k; the growth of each table, scaled to 10,000 images.
3. **A year** of a million text items a night, kept forever and with retention (inputs 7
   days, results 30 days): steady state ~ the days kept (PostgreSQL reuses the space
   purged rows leave once autovacuum has seen it).
4. **Purging while scoring**: the text job is made old; a stand-in worker (``db_scaling.work``:
   the fair claim, a sleep of ``window / --worker-rate`` for the model, the real result
   write per window of 128) scores another job for ``--score-seconds`` alone, then again
   while ``core.jobs.purge.purge`` removes the old job's inputs and results (batches of
   5,000). Reported: the scoring job's rows/s both times, its longest write transaction,
   and the longest lock wait of any scoring backend, sampled every 20 ms from
   ``pg_stat_activity`` (``wait_event_type = 'Lock'``, ``now() - query_start``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from common import SHARED_BENCH, bench_texts, bench_workdir, claim_as_a_worker, machine_summary
from db_scaling import MODEL, _scored, percentile

GiB = 1024**3
MiB = 1024**2
RESULT_BATCH = 20_000
TABLES = ("items", "results", "chunks", "jobs")


def registry_spec() -> Any:
    from core.models.registry import Registry

    return Registry.from_mapping(
        {"models": {MODEL: {"task": "text-classification", "backend": "standin", "source": "./x"}}},
        base_dir=Path("."),
    ).get(MODEL)


def text_inputs(count: int) -> list[Any]:
    from core.inputs.items import InputItem

    records = bench_texts(count=20_000, total=20_000, workdir=bench_workdir("storage"))
    return [
        InputItem(
            item_id=f"t{i}",
            text=records[i % len(records)]["text"]
            + ("" if i < len(records) else f" #{i // len(records)}"),
        )
        for i in range(count)
    ]


def image_inputs(count: int) -> list[Any]:
    from core.inputs.items import InputItem

    folder = bench_workdir("storage") / f"images_{count}"
    if not folder.exists() or len(list(folder.iterdir())) < count:
        subprocess.run(
            [sys.executable, str(SHARED_BENCH / "gen_images.py"), str(count), "7", str(folder)],
            check=True,
        )
    files = sorted(folder.iterdir())[:count]
    return [InputItem(item_id=path.name, data=path.read_bytes()) for path in files]


def make_scored_job(engine: Any, inputs: list[Any], labels: int) -> str:
    """A job of ``inputs`` with every result row written as a worker writes them."""
    from core.jobs.lifecycle import create_job, mark_running
    from core.jobs.predictions import Prediction
    from core.jobs.results import ScoredItem, write_job_results

    spec = registry_spec()
    with engine.begin() as conn:
        job = create_job(conn, spec, inputs, chunk_size=512)
        mark_running(conn, job.id)
    names = [f"LABEL_{n}" for n in range(labels)]
    for start in range(0, len(inputs), RESULT_BATCH):
        scored = []
        for index in range(start, min(start + RESULT_BATCH, len(inputs))):
            score = 0.5 + (index % 500) / 1000
            top_k = [(names[(index + n) % labels], score / (n + 1)) for n in range(labels)]
            prediction = Prediction(top_k[0][0], score, top_k)
            scored.append(ScoredItem(index, inputs[index].item_id, prediction))
        with engine.begin() as conn:
            write_job_results(conn, MODEL, None, {job.id: scored})
    return str(job.id)


def sizes(engine: Any) -> dict[str, dict[str, int]]:
    """Per table: heap, TOAST (and free-space/visibility maps) and index bytes."""
    from sqlalchemy import text

    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
        found = {}
        for table in TABLES:
            heap, total, indexes = conn.execute(
                text(
                    "SELECT pg_relation_size(:t), pg_total_relation_size(:t), pg_indexes_size(:t)"
                ),
                {"t": table},
            ).one()
            found[table] = {
                "heap": int(heap),
                "toast": int(total) - int(heap) - int(indexes),
                "indexes": int(indexes),
                "total": int(total),
            }
    return found


def growth(after: dict[str, dict[str, int]], before: dict[str, dict[str, int]]) -> Any:
    return {
        table: {part: after[table][part] - before[table][part] for part in after[table]}
        for table in after
    }


def print_sizes(title: str, found: dict[str, dict[str, int]], scale: float, per: str) -> int:
    print(f"\n{title} (scaled to {per})")
    print("| table | heap | TOAST | indexes | total |")
    print("| --- | ---: | ---: | ---: | ---: |")
    whole = 0
    for table in ("items", "results", "chunks"):
        part = found[table]
        cells = [f"{part[k] * scale / MiB:,.0f} MiB" for k in ("heap", "toast", "indexes", "total")]
        whole += int(part["total"] * scale)
        print(f"| {table} | " + " | ".join(cells) + " |")
    print(f"| all | | | | {whole / MiB:,.0f} MiB |")
    return whole


def lock_sampler(url: str, stop: threading.Event, longest: list[float]) -> None:
    """The longest lock wait of a bulkscore backend (not this sampler), every 20 ms."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    query = text(
        "SELECT coalesce(max(extract(epoch FROM now() - query_start)), 0) "
        "FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
    )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        while not stop.is_set():
            longest[0] = max(longest[0], float(conn.execute(query).scalar_one()))
            time.sleep(0.02)
    engine.dispose()


class Scorer(threading.Thread):
    """A stand-in worker (as in ``db_scaling.work``): the fair claim, the chunk's items, and
    per window of 128 a sleep for the model then the real result write, until stopped.
    Records each write's end time, rows and duration."""

    def __init__(self, url: str, rate: float) -> None:
        super().__init__()
        self.url, self.rate = url, rate
        self.stop = threading.Event()
        self.writes: list[tuple[float, int, float]] = []

    def run(self) -> None:
        from core.chunks.batches import finish_chunks, load_chunk_items
        from core.config import get_settings
        from core.db import get_engine
        from core.jobs.results import write_job_results
        from core.jobs.status import ChunkStatus

        settings = get_settings()
        engine = get_engine(self.url)
        while not self.stop.is_set():
            claim = claim_as_a_worker(engine, MODEL, settings)
            if claim is None or claim.chunk is None:
                raise RuntimeError("the scoring job ran out of chunks: make it bigger")
            chunk = claim.chunk
            with engine.connect() as conn:
                loaded = load_chunk_items(conn, [chunk])[(chunk.job_id, chunk.index)]
            for start in range(0, len(loaded), 128):
                window = loaded[start : start + 128]
                time.sleep(len(window) / self.rate)
                scored = _scored(window)
                began = time.monotonic()
                with engine.begin() as conn:
                    outcome = write_job_results(conn, MODEL, None, {chunk.job_id: scored})
                ended = time.monotonic()
                self.writes.append((ended, outcome[chunk.job_id].written, ended - began))
            with engine.begin() as conn:
                finish_chunks(conn, [(chunk.job_id, chunk.index)], ChunkStatus.DONE)

    def between(self, began: float, ended: float) -> tuple[float, list[float]]:
        """Rows/s written in ``[began, ended]``, and those writes' durations."""
        inside = [(rows, took) for at, rows, took in self.writes if began <= at <= ended]
        return sum(rows for rows, _ in inside) / (ended - began), [took for _, took in inside]


def score_while(url: str, rate: float, seconds: float, during: Any = None) -> Any:
    """Rows/s, write durations and the longest sampled lock wait of a stand-in worker over
    ``seconds`` (after a 2 s warm-up), or over ``during()`` if given."""
    stop = threading.Event()
    longest = [0.0]
    sampler = threading.Thread(target=lock_sampler, args=(url, stop, longest))
    scorer = Scorer(url, rate)
    sampler.start()
    scorer.start()
    time.sleep(2.0)
    longest[0] = 0.0
    began = time.monotonic()
    if during is None:
        time.sleep(seconds)
    else:
        during()
    ended = time.monotonic()
    wait = longest[0]
    scorer.stop.set()
    stop.set()
    scorer.join()
    sampler.join()
    rows_per_s, writes = scorer.between(began, ended)
    return rows_per_s, writes, wait, ended - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=1_000_000)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--score-seconds", type=float, default=20.0)
    parser.add_argument("--worker-rate", type=float, default=3000.0)
    args = parser.parse_args()

    from datetime import timedelta

    from services import fresh_postgres_database
    from sqlalchemy import create_engine, update

    from core.clock import utcnow
    from core.jobs.lifecycle import create_job
    from core.jobs.purge import Cutoffs, purge
    from core.migrate import upgrade
    from core.tables import jobs

    print(machine_summary())
    with fresh_postgres_database() as url:
        upgrade(url)
        engine = create_engine(url)
        empty = sizes(engine)

        began = time.monotonic()
        inputs = text_inputs(args.texts)
        chars = sum(len(item.text) for item in inputs) / len(inputs)
        old_job = make_scored_job(engine, inputs, labels=2)
        del inputs
        print(
            f"\n{args.texts:,} texts (mean {chars:.0f} chars) stored and scored in "
            f"{time.monotonic() - began:.0f} s"
        )
        with_texts = sizes(engine)
        text_bytes = growth(with_texts, empty)
        per_million = print_sizes("Text job", text_bytes, 1_000_000 / args.texts, "1,000,000 items")
        inputs_part = text_bytes["items"]["total"] * 1_000_000 / args.texts
        results_part = per_million - inputs_part

        images = image_inputs(args.images)
        mean_kib = sum(len(item.data) for item in images) / len(images) / 1024
        make_scored_job(engine, images, labels=5)
        del images
        image_bytes = growth(sizes(engine), with_texts)
        print(f"\n{args.images} images, mean file {mean_kib:.0f} KiB")
        print_sizes("Image job", image_bytes, 10_000 / args.images, "10,000 images")

        year = 365 * per_million
        kept = 7 * inputs_part + 30 * results_part
        print("\nA year of 1,000,000 text items a night")
        print(
            f"- kept forever: {year / GiB:,.0f} GiB after a year (+{per_million / GiB:.2f} "
            "GiB a night)"
        )
        print(f"- inputs 7 days, results 30 days: {kept / GiB:,.1f} GiB steady state")

        # Purging the old text job while another job is scoring.
        with engine.begin() as conn:
            conn.execute(
                update(jobs)
                .where(jobs.c.id == old_job)
                .values(finished_at=utcnow() - timedelta(days=60))
            )
        from core.inputs.items import InputItem

        short = [InputItem(item_id=f"s{i}", text=f"text number {i}") for i in range(600_000)]
        with engine.begin() as conn:
            create_job(conn, registry_spec(), short, chunk_size=512)

        alone = score_while(url, args.worker_rate, args.score_seconds)
        report: list[Any] = []

        def do_purge() -> None:
            report.append(purge(engine, Cutoffs.older_than(timedelta(days=30))))

        during = score_while(url, args.worker_rate, 0, during=do_purge)
        purged = report[0]
        print(
            f"\nPurge of {purged.result_rows:,} result rows and {purged.input_rows:,} input "
            f"rows: {during[3]:.1f} s (batches of 5,000), while a stand-in worker scored "
            f"({args.worker_rate:,.0f} items/s model, windows of 128)"
        )
        print("| | rows/s | write txn p50 / p95 / max (ms) | longest lock wait (s) |")
        print("| --- | ---: | ---: | ---: |")
        for name, (rows_per_s, writes, wait, _) in (("alone", alone), ("during purge", during)):
            print(
                f"| {name} | {rows_per_s:,.0f} | "
                f"{percentile(writes, 0.5) * 1000:.1f} / {percentile(writes, 0.95) * 1000:.1f}"
                f" / {max(writes, default=0) * 1000:.1f} | {wait:.3f} |"
            )
        print(f"drop: {(1 - during[0] / alone[0]) * 100:.1f}%")
        engine.dispose()


if __name__ == "__main__":
    main()
