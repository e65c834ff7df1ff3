"""The web job page of a 100,000-item job: time to its first page (issue 19; target < 1 s).

    .venv/bin/python bench/web_job_page.py [--items 100000] [--repeat 7]

A fresh PostgreSQL database gets one completed text job of ``--items`` items (1% of them
per-item errors, the rest labelled among 5 labels, each row with its top-k), written with
COPY as a worker's results would be. ``bulkscore api`` serves it; a client signs in through
the sign-in form, then times whole HTTP requests (server render plus transfer) of:

- the job page's first page (50 rows, with the label chart counted over every row),
- the same page filtered (errors only; one label; score below 0.3) and a deep page,
- the jobs page and the polling script's progress call.

Each figure is the median of ``--repeat`` requests after one warm-up request. It is not a
test: nothing asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from api_support import running_api
from common import bench_workdir, load_summary, machine_summary
from services import flushed_redis, fresh_postgres_database
from sqlalchemy import create_engine, insert

from core.clock import utcnow
from core.jobs.bulk_copy import copy_rows
from core.jobs.results import RESULT_ROW_COLUMNS
from core.keys import create_key
from core.migrate import upgrade
from core.tables import items, jobs, results

LABELS = ("alpha", "beta", "gamma", "delta", "epsilon")
JOB_ID = "b" * 32


def _fill(database_url: str, count: int) -> str:
    """A completed ``count``-item job of a fresh key; return the key."""
    engine = create_engine(database_url)
    now = utcnow()
    with engine.begin() as conn:
        key_id, key = create_key(conn, "bench")
        failed = count // 100
        conn.execute(
            insert(jobs).values(
                id=JOB_ID,
                model="bench-model",
                input_kind="text",
                status="completed",
                total=count,
                succeeded=count - failed,
                failed=failed,
                owner_key_id=key_id,
                created_at=now - timedelta(minutes=5),
                started_at=now - timedelta(minutes=4),
                finished_at=now,
                runs_on="bench-model",
            )
        )
        copy_rows(
            conn,
            items,
            ["job_id", "index", "item_id", "text"],
            (
                (JOB_ID, i, f"row-{i}", f"review {i}: " + "quite a fine product " * 6)
                for i in range(count)
            ),
        )

        def row(i: int) -> tuple[object, ...]:
            if i % 100 == 99:
                return (
                    JOB_ID,
                    i,
                    f"row-{i}",
                    None,
                    None,
                    None,
                    "text too long",
                    "bench-model",
                    None,
                    now,
                    False,
                )
            label = LABELS[i % len(LABELS)]
            score = (i % 1000) / 1000
            top_k = json.dumps(
                [[label, score], [LABELS[(i + 1) % 5], 1 - score]], separators=(",", ":")
            )
            return (
                JOB_ID,
                i,
                f"row-{i}",
                label,
                score,
                top_k,
                None,
                "bench-model",
                None,
                now,
                False,
            )

        copy_rows(
            conn,
            results,
            RESULT_ROW_COLUMNS,
            (row(i) for i in range(count)),
        )
    engine.dispose()
    return key


def _median_ms(client: httpx.Client, path: str, repeat: int) -> tuple[float, int]:
    client.get(path).raise_for_status()  # warm-up: connection pool, template compile
    times = []
    size = 0
    for _ in range(repeat):
        started = time.perf_counter()
        answer = client.get(path)
        times.append(time.perf_counter() - started)
        answer.raise_for_status()
        size = len(answer.content)
    return statistics.median(times) * 1000, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    workdir = bench_workdir("web")
    print(machine_summary())
    with fresh_postgres_database() as database_url, flushed_redis() as broker_url:
        upgrade(database_url)
        started = time.perf_counter()
        key = _fill(database_url, args.items)
        print(f"filled {args.items:,} items and results in {time.perf_counter() - started:.1f} s")
        env = {
            "BULKSCORE_DATABASE_URL": database_url,
            "BULKSCORE_BROKER_URL": broker_url,
            "BULKSCORE_MODELS": str(
                Path(__file__).resolve().parent.parent / "core/models/models.toml"
            ),
        }
        with (
            running_api(env, Path(workdir) / "api.log") as api,
            httpx.Client(base_url=api.url, timeout=60) as client,
        ):
            signed_in = client.post("/signin", data={"api_key": key})
            assert signed_in.status_code == 303, signed_in.text
            pages = [
                ("job page, first 50 rows + label chart", f"/jobs/{JOB_ID}"),
                ("job page, errors only", f"/jobs/{JOB_ID}?errors=1"),
                ("job page, label = gamma", f"/jobs/{JOB_ID}?label=gamma"),
                ("job page, score below 0.3", f"/jobs/{JOB_ID}?score_below=0.3"),
                ("job page, rows after 90,000", f"/jobs/{JOB_ID}?after=90000"),
                ("jobs page", "/jobs"),
                ("progress (polling script)", f"/jobs/{JOB_ID}/progress"),
            ]
            load = load_summary()
            print(f"\n{args.items:,}-item job, median of {args.repeat} requests; load {load}\n")
            print("| request | median ms | bytes |")
            print("|---|---:|---:|")
            for name, path in pages:
                ms, size = _median_ms(client, path, args.repeat)
                print(f"| {name} | {ms:.0f} | {size:,} |")


if __name__ == "__main__":
    main()
