"""Soak: many clients submit jobs for minutes against one API and two workers; nothing is lost.

Not a test (not collected by pytest): run it by hand.

    .venv/bin/python bench/soak.py --duration 600 --clients 50

Everything runs on 127.0.0.1 and is started and stopped here: a private ``redis-server`` (AOF
on) and PostgreSQL cluster (tests/fault_support.py), ``bulkscore api`` and two ``bulkscore
worker`` processes on a tiny random-weight model built locally. Each client submits a job of
1 to 500 texts, waits ``--think-s``, and again, until ``--duration`` ends or ``--max-jobs``
were sent; then the jobs are given ``--drain-s`` to finish. Bounded in count and in time.

The report: jobs accepted and refused, errors by kind, how the accepted jobs ended,
p50/p99 submit latency, and the ledger audit (tests/ledger.py): lost jobs, jobs stuck
unfinished, duplicate rows, items without exactly one row (all must be 0).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from api_support import running_api
from fault_support import own_postgres, own_redis
from ledger import Ledger, audit
from models import build_tiny_distilbert, write_models_file
from sqlalchemy import create_engine, func, select
from worker_support import running_worker, worker_env

from core.jobs.status import FINAL_JOB_STATES
from core.keys import create_key
from core.migrate import upgrade
from core.tables import jobs

WORDS = [
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
    "thin",
    "long",
]


@dataclass
class Tally:
    """What the clients saw, shared by their threads."""

    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    items: int = 0
    sent: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def client_loop(
    url: str,
    key: str,
    ledger: Ledger,
    tally: Tally,
    deadline: float,
    max_jobs: int,
    think_s: float,
    seed: int,
) -> None:
    rng = random.Random(seed)
    with httpx.Client(base_url=url, timeout=30) as http:
        while time.monotonic() < deadline:
            with tally.lock:
                if tally.sent >= max_jobs:
                    return
                tally.sent += 1
            count = rng.randint(1, 500)
            texts = [" ".join(rng.choices(WORDS, k=rng.randint(3, 40))) for _ in range(count)]
            body = {"model": "tiny", "inputs": [{"text": text} for text in texts]}
            idempotency = uuid.uuid4().hex
            headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": idempotency}
            started = time.perf_counter()
            try:
                response = http.post("/v1/jobs", json=body, headers=headers)
                status: int | str = response.status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            elapsed = time.perf_counter() - started
            with tally.lock:
                tally.latencies.append(elapsed)
                if status == 202:
                    ledger.accepted.append(response.json()["id"])
                    tally.items += count
                else:
                    ledger.refused.append(idempotency)
                    tally.errors[str(status)] += 1
            pause = rng.uniform(0.5, 1.5) * think_s
            time.sleep(max(0.0, min(pause, deadline - time.monotonic())))


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run(args: argparse.Namespace) -> dict[str, object]:
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(TemporaryDirectory(prefix="bulkscore-soak-")))
        redis_server = stack.enter_context(own_redis(tmp))
        postgres = stack.enter_context(own_postgres())
        pg_url = postgres.create_database("soak")
        upgrade(pg_url)
        engine = create_engine(pg_url)
        stack.callback(engine.dispose)
        with engine.begin() as conn:
            key = create_key(conn, "soak")[1]
        model = build_tiny_distilbert(tmp / "tiny")
        models = write_models_file(
            tmp / "models.toml",
            {"tiny": {"task": "text-classification", "backend": "transformers",
                      "source": str(model), "max_batch_size": 32, "max_batch_tokens": 2048}},
        )  # fmt: skip
        env = worker_env(pg_url, redis_server.url, models)
        for number in range(args.workers):
            stack.enter_context(
                running_worker(
                    ["--models", "tiny", "--threads", "1"], env, tmp / f"worker-{number}.log"
                )
            )
        # 50 clients share one key: the soak measures the service, not the per-key limit.
        api_env = {
            **env,
            "BULKSCORE_CHUNK_SIZE": str(args.chunk_size),
            "BULKSCORE_RATE_LIMIT_PER_MIN": "0",
        }
        api = stack.enter_context(running_api(api_env, tmp / "api.log"))
        print(f"api {api.url}, {args.workers} workers, {args.clients} clients", flush=True)

        ledger, tally = Ledger(), Tally()
        started = time.monotonic()
        deadline = started + args.duration
        threads = [
            threading.Thread(
                target=client_loop,
                args=(api.url, key, ledger, tally, deadline, args.max_jobs, args.think_s, n),
                daemon=True,
            )
            for n in range(args.clients)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(args.duration + 60)
        submitted_s = time.monotonic() - started
        print(f"submitting done after {submitted_s:.0f}s; draining", flush=True)

        final = [status.value for status in FINAL_JOB_STATES]
        drain_deadline = time.monotonic() + args.drain_s
        while time.monotonic() < drain_deadline:
            with engine.connect() as conn:
                open_jobs = conn.scalar(
                    select(func.count()).where(
                        jobs.c.id.in_(ledger.accepted), jobs.c.status.not_in(final)
                    )
                )
            if not open_jobs:
                break
            time.sleep(1)
        drained_s = time.monotonic() - started
        found = audit(engine, ledger)
        with engine.connect() as conn:
            states: dict[str, int] = dict(
                conn.execute(
                    select(jobs.c.status, func.count())
                    .where(jobs.c.id.in_(ledger.accepted))
                    .group_by(jobs.c.status)
                ).all()
            )
        return {
            "duration_s": args.duration,
            "clients": args.clients,
            "workers": args.workers,
            "jobs_sent": tally.sent,
            "accepted": len(ledger.accepted),
            "refused": len(ledger.refused),
            "errors": dict(tally.errors),
            "items_accepted": tally.items,
            "jobs_by_status": states,
            "completed": states.get("completed", 0),
            "submit_latency_p50_ms": round(percentile(tally.latencies, 0.50) * 1000, 1),
            "submit_latency_p99_ms": round(percentile(tally.latencies, 0.99) * 1000, 1),
            "submit_latency_mean_ms": round(statistics.fmean(tally.latencies) * 1000, 1)
            if tally.latencies
            else None,
            "all_final_after_s": round(drained_s, 1),
            # Items accepted over the whole run (submitting and draining).
            "items_per_s_overall": round(tally.items / drained_s, 1) if drained_s else None,
            "lost": found.lost,
            "stuck": found.stuck,
            "audit_problems": found.problems(),
            "extra_attempts": found.extra_attempts,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600, help="seconds of submitting")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--think-s", type=float, default=10.0, help="mean pause per client")
    parser.add_argument("--max-jobs", type=int, default=20_000, help="jobs sent at most")
    parser.add_argument("--drain-s", type=float, default=600, help="time for jobs to finish")
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--out", type=Path, help="also write the report here (JSON)")
    args = parser.parse_args()
    report = run(args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    sys.exit(0 if not report["audit_problems"] else 1)


if __name__ == "__main__":
    main()
