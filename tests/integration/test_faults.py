"""Fault injection: the promise holds through worker crashes, broker and database restarts.

Real processes on servers this module owns (``fault_support``): a ``redis-server`` with AOF
on, a PostgreSQL cluster, two ``bulkscore worker`` processes kept alive by a supervisor
(as compose's restart policy does), and the API (in-process, with the real Celery producer).
Every job goes through the API and into the ledger; after each scenario the audit counts
lost jobs, duplicate rows, rows of refused requests and jobs stuck unfinished: all 0.

Leases, stall and resend timers are seconds here (they are minutes in production), so
each scenario runs in well under a minute.
"""

from __future__ import annotations

import itertools
import json
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from api_support import TEXT_MODEL, UnitApi, bearer, free_port, running_api, serve
from fault_support import PostgresCluster, RedisServer, own_postgres, own_redis
from ledger import Audit, Ledger, audit
from poison_worker import POISON
from sqlalchemy import Engine, and_, func, select, text, update
from supervisor import Supervisor
from worker_support import poll, worker_env

from core.config import Settings
from core.db import get_engine
from core.heartbeats import queue_depth, redis_client
from core.inputs.items import InputItem
from core.jobs.lifecycle import create_job
from core.jobs.status import FINAL_JOB_STATES, JobStatus
from core.migrate import upgrade
from core.models.registry import Registry
from core.queues import model_queue
from core.tables import chunks, jobs, results, retry_items

SETTLE_S = 60.0  # the most any scenario may take to reach final states
AUDITS: dict[str, Audit] = {}  # scenario -> audit, written to the report at the end


@dataclass
class Service:
    api: UnitApi
    engine: Engine
    ledger: Ledger
    workers: Supervisor
    redis: RedisServer
    postgres: PostgresCluster
    metrics_ports: dict[int, int]
    tmp: Path

    def submit(self, texts: list[str], chunk_size: int) -> str:
        self.api.client.app.state.settings = self.api.settings.model_copy(  # type: ignore[attr-defined]
            update={"chunk_size": chunk_size}
        )
        response = self.ledger.submit(self.api, texts)
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    def rows(self, job_id: str) -> int:
        with self.engine.connect() as conn:
            count = conn.scalar(select(func.count()).where(results.c.job_id == job_id))
        return int(count or 0)

    def job(self, job_id: str) -> dict[str, object]:
        with self.engine.connect() as conn:
            return dict(conn.execute(select(jobs).where(jobs.c.id == job_id)).one()._mapping)

    def chunk_rows(self, job_id: str) -> list[tuple[int, int, int, str, int]]:
        with self.engine.connect() as conn:
            query = select(
                chunks.c.index, chunks.c.start, chunks.c.stop, chunks.c.status, chunks.c.attempts
            ).where(chunks.c.job_id == job_id)
            return [tuple(row) for row in conn.execute(query.order_by(chunks.c.index))]

    def settle(self, job_ids: list[str], timeout: float = SETTLE_S) -> None:
        """Wait until every job is final (or the timeout: the audit then shows it stuck)."""
        final = {status.value for status in FINAL_JOB_STATES}

        def all_final() -> bool:
            try:
                with self.engine.connect() as conn:
                    states = conn.scalars(select(jobs.c.status).where(jobs.c.id.in_(job_ids)))
                    return all(state in final for state in states)
            except Exception:  # the database may be restarting
                return False

        deadline = time.monotonic() + timeout
        while not all_final() and time.monotonic() < deadline:
            time.sleep(0.25)

    def wait_quiet(self, timeout: float = SETTLE_S) -> None:
        """Until no chunk message is queued or held by a worker (being run, or waiting out a
        retry countdown). A job that finishes early leaves its other chunks' messages behind:
        each is a token that "a chunk of this model may wait", and one delivered later takes
        the fairest queued chunk of any job, with the runs after it (engine.chunk_work). A
        scenario that needs a chunk to wait for a particular rescue (a restart, the sweep)
        starts from here, or a leftover token may score the job first."""
        app = self.api.queue.app
        client = redis_client(self.redis.url)

        def quiet() -> bool:
            if queue_depth(client, model_queue(TEXT_MODEL)):
                return False
            inspect = app.control.inspect(timeout=2)
            held = [inspect.active(), inspect.reserved(), inspect.scheduled()]
            if any(len(replies or {}) < self.workers.count for replies in held):
                return False  # a worker did not answer: what it holds is not known
            return not any(tasks for replies in held for tasks in replies.values())

        try:
            poll(quiet, timeout, "no chunk message queued or held", interval=0.25)
        finally:
            client.close()

    def check(self, scenario: str, job_ids: list[str]) -> Audit:
        self.settle(job_ids)
        found = audit(self.engine, self.ledger, job_ids)
        AUDITS[scenario] = found
        assert found.problems() == {}, found
        return found


_CALLS = itertools.count()


def texts(count: int, prefix: str = "") -> list[str]:
    """``count`` texts, each distinct from every other text of the module: the faults hit
    chunks while their model runs, so no item may be saved by dedup or the result cache."""
    words = ["good", "bad", "film", "plot", "great", "dull", "moving", "awful", "superb"]
    call = next(_CALLS)
    return [
        f"{prefix}{call}.{i} {' '.join(words[(i + k) % len(words)] for k in range(3 + i % 25))}"
        for i in range(count)
    ]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, models_file: Path) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("faults")
    with own_redis(tmp) as redis_server, own_postgres() as postgres:
        pg_url = postgres.create_database("bulkscore")
        upgrade(pg_url)
        metrics_ports = {slot: free_port() for slot in range(2)}
        base = worker_env(
            pg_url,
            redis_server.url,
            models_file,
            BULKSCORE_CHUNK_LEASE_S="5",
            BULKSCORE_CHUNK_MAX_ATTEMPTS="2",
            BULKSCORE_WORKER_STALL_S="8",
            BULKSCORE_WORKER_HEARTBEAT_TTL_S="6",
            BULKSCORE_CHUNK_RESEND_AFTER_S="8",
            BULKSCORE_WRITE_BATCH_SIZE="40",
            BULKSCORE_CROSS_JOB_WAIT_MS="0",
            # A frozen worker's session is ended 3 s after it stops talking (60 s in
            # production); a live worker waits up to 20 s for a lock, longer than that.
            BULKSCORE_DB_IDLE_IN_TRANSACTION_TIMEOUT_S="3",
            BULKSCORE_WORKER_DB_LOCK_TIMEOUT_S="20",
        )

        def env_for(slot: int) -> dict[str, str]:
            return {**base, "BULKSCORE_WORKER_METRICS_PORT": str(metrics_ports[slot])}

        supervisor = Supervisor(["--models", TEXT_MODEL, "--threads", "1"], env_for, tmp)
        settings = Settings(
            database_url=pg_url, broker_url=redis_server.url, models=models_file, chunk_size=100
        )
        supervisor.start()
        try:
            supervisor.wait_consuming()
            with serve(settings) as api:
                yield Service(
                    api=api,
                    engine=get_engine(pg_url),
                    ledger=Ledger(),
                    workers=supervisor,
                    redis=redis_server,
                    postgres=postgres,
                    metrics_ports=metrics_ports,
                    tmp=tmp,
                )
        finally:
            supervisor.stop()
            report = {name: vars(found) for name, found in AUDITS.items()}
            report["worker_exits"] = supervisor.exits  # type: ignore[assignment]
            (tmp / "audits.json").write_text(json.dumps(report, indent=2, default=str))
            print("\nfault audits:", json.dumps(report, default=str))


def mid_job(service: Service, job_id: str, total: int) -> int:
    """Wait until the job has some rows but not all; how many."""
    return poll(
        lambda: (n := service.rows(job_id)) and n < total and n,
        SETTLE_S,
        f"job {job_id} to be part-way",
        interval=0.02,
    )


# -- 1, 2: worker crash and deploy ------------------------------------------------------------


def test_1_a_killed_worker_s_chunk_is_finished_by_another(service: Service) -> None:
    job = service.submit(texts(1200), chunk_size=300)
    mid_job(service, job, 1200)
    service.workers.signal(signal.SIGKILL)  # both: no warm shutdown, no ack
    found = service.check("1 kill -9", [job])
    assert service.job(job)["status"] == JobStatus.COMPLETED.value
    assert found.extra_attempts >= 1, "a chunk must have been taken over after the crash"
    assert sum(1 for _slot, code in service.workers.exits if code == -9) >= 2


def test_2_sigterm_finishes_the_chunk_in_hand_and_the_rest_completes(service: Service) -> None:
    service.workers.wait_consuming()
    exits_before = len(service.workers.exits)
    job = service.submit(texts(1200), chunk_size=300)
    mid_job(service, job, 1200)
    signalled = service.workers.signal(signal.SIGTERM)
    found = service.check("2 SIGTERM", [job])
    assert service.job(job)["status"] == JobStatus.COMPLETED.value
    # A worker holding a run of chunks may finish the whole job before it exits.
    new_exits = service.workers.wait_exits(exits_before, len(signalled))
    assert new_exits and all(code == 0 for _slot, code in new_exits), new_exits
    # A warm shutdown finishes (and acks) the chunk in hand: nothing had to be taken over.
    assert found.extra_attempts == 0


# -- 3, 4: broker restart and outage ------------------------------------------------------------


def test_3_workers_resume_after_a_redis_crash_and_restart(service: Service) -> None:
    service.workers.wait_consuming()
    job = service.submit(texts(1500), chunk_size=100)
    mid_job(service, job, 1500)
    service.redis.restart(hard=True, down_s=2.0)  # a crash: AOF keeps what is a second old
    restarted = time.monotonic()
    service.settle([job])
    assert time.monotonic() - restarted < 60, "workers must resume within a minute"
    service.check("3 redis restart", [job])
    assert service.job(job)["status"] == JobStatus.COMPLETED.value


def test_3b_a_connected_worker_that_stops_consuming_is_restarted(service: Service) -> None:
    # celery#9054's symptom, made on purpose: the worker stays connected, its event loop
    # runs, and it consumes nothing. Its liveness watchdog must notice and exit.
    service.workers.wait_consuming()
    exits_before = len(service.workers.exits)
    app = service.api.queue.app
    # A message an earlier scenario left (held for a retry countdown, say) would run after
    # the cancel, take this job's chunks and score them before any stall is seen.
    service.wait_quiet()
    # Wait for every worker to confirm: a broadcast that reaches a worker only after the
    # job is queued lets it consume normally, and nothing would stall.
    cancelled: set[str] = set()
    deadline = time.monotonic() + 30
    while len(cancelled) < service.workers.count and time.monotonic() < deadline:
        replies = app.control.cancel_consumer(
            f"bulkscore.model.{TEXT_MODEL}", reply=True, timeout=2
        )
        for reply in replies or []:
            cancelled.update(reply)
    assert len(cancelled) >= service.workers.count, cancelled
    job = service.submit(texts(200), chunk_size=50)
    found = service.check("3b stalled consumer", [job])
    stalled = [code for _slot, code in service.workers.exits[exits_before:]]
    assert 75 in stalled, stalled
    assert "is connected but not consuming" in service.workers.log_text()
    assert found.stuck == 0


def test_4_redis_down_at_submit_answers_503_fast_and_leaves_no_job(service: Service) -> None:
    service.redis.stop(hard=True)
    try:
        started = time.monotonic()
        response = service.ledger.submit(service.api, texts(10))
        elapsed = time.monotonic() - started
        ready = service.api.client.get("/readyz")
    finally:
        service.redis.start()
    assert response.status_code == 503, response.text
    assert elapsed < 5, f"503 took {elapsed:.1f}s"
    assert ready.status_code == 503
    with service.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(jobs)) == len(service.ledger.accepted)
    # The broker is back: the next job runs (workers reconnect by themselves).
    job = service.submit(texts(50), chunk_size=25)
    found = service.check("4 redis down at submit", [job])
    assert found.refused_with_rows == 0 and service.ledger.refused


def test_4b_a_frozen_broker_never_answers_2xx_for_a_job_that_is_then_deleted(
    service: Service,
) -> None:
    # A real API process; Redis frozen (SIGSTOP): connections open, nothing answers. Clients
    # give up after 1 s and retry with the same Idempotency-Key while the first request is
    # still failing its send. Before the fix a retry replayed the committed job (200) that
    # the failing request deleted seconds later. Now the key is attached only after a send
    # succeeded, so every answer during the freeze is a 503 or a client time-out.
    settings = service.api.settings
    env = {
        "BULKSCORE_DATABASE_URL": settings.database_url,
        "BULKSCORE_BROKER_URL": settings.broker_url,
        "BULKSCORE_MODELS": str(settings.models),
        "BULKSCORE_CHUNK_SIZE": "25",
    }
    key = "frozen-broker-retry"
    body = {
        "model": TEXT_MODEL,
        "inputs": [{"id": f"i{i}", "text": t} for i, t in enumerate(texts(50))],
    }
    headers = {**bearer(service.api.key), "Idempotency-Key": key}
    answers: list[tuple[int, str | None]] = []
    with running_api(env, service.tmp / "api-4b.log") as server:
        redis_process = service.redis.process
        assert redis_process is not None
        redis_process.send_signal(signal.SIGSTOP)
        try:
            for _ in range(6):
                try:
                    response = httpx.post(
                        f"{server.url}/v1/jobs", json=body, headers=headers, timeout=1.0
                    )
                except httpx.TimeoutException:
                    answers.append((0, None))  # the client gave up; the API carries on
                    continue
                ident = response.json().get("id") if response.status_code < 300 else None
                answers.append((response.status_code, ident))
            time.sleep(8)  # every send in flight fails (socket time-outs) and is cleaned up
        finally:
            redis_process.send_signal(signal.SIGCONT)
        assert all(status in (0, 503) for status, _ in answers), answers
        with service.engine.connect() as conn:
            leftover = conn.scalar(select(func.count()).where(jobs.c.idempotency_key == key))
        assert leftover == 0, "no job may hold the key of requests that all failed"
        # The broker is back: the same key now makes one job, and replays it.
        first = httpx.post(f"{server.url}/v1/jobs", json=body, headers=headers, timeout=30)
        again = httpx.post(f"{server.url}/v1/jobs", json=body, headers=headers, timeout=30)
    assert first.status_code == 202, first.text
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    service.ledger.accepted.append(first.json()["id"])
    found = service.check("4b frozen broker", [first.json()["id"]])
    assert found.lost == 0


# -- 5: database restart ------------------------------------------------------------------------


def test_5_a_postgresql_restart_while_writing_retries_the_batch(service: Service) -> None:
    service.workers.wait_consuming()
    job = service.submit(texts(2000), chunk_size=500)
    mid_job(service, job, 2000)
    service.postgres.restart("fast", down_s=1.0)  # ends every session, mid-transaction
    service.check("5 postgres restart", [job])
    assert service.job(job)["status"] == JobStatus.COMPLETED.value


# -- 6: poison item -----------------------------------------------------------------------------


def test_6_a_poison_item_is_found_by_bisection_and_fails_alone(service: Service) -> None:
    service.workers.wait_consuming()
    exits_before = len(service.workers.exits)
    items = texts(20)
    items[6] = POISON  # chunk 1 holds items 4..7
    job = service.submit(items, chunk_size=4)
    found = service.check("6 poison item", [job])
    final = service.job(job)
    assert final["status"] == JobStatus.COMPLETED.value
    assert (final["succeeded"], final["failed"]) == (19, 1)
    with service.engine.connect() as conn:
        errors = dict(
            conn.execute(
                select(results.c.index, results.c.error).where(results.c.job_id == job)
            ).all()
        )
    assert errors[6] is not None and "stopped the worker on every attempt" in errors[6]
    assert all(errors[i] is None for i in range(20) if i != 6)
    kills = [code for _slot, code in service.workers.exits[exits_before:] if code == -9]
    # 2 attempts of the chunk holding item 6, then one per level of its bisection: for the
    # chunk of 4, the half [6, 8) and the item 6. A worker that knows its model's pace
    # claims chunk 1 in a run with the chunks around it (core.chunks.runs): one more level
    # per doubling of the run.
    assert len(kills) == 2 + found.split_chunks, service.workers.exits[exits_before:]
    assert found.split_chunks >= 2
    rows = service.chunk_rows(job)
    assert any(row[3] == "split" and row[1] <= 6 < row[2] and row[2] - row[1] >= 4 for row in rows)


# -- 7: hung worker -----------------------------------------------------------------------------


RECEIVED = re.compile(r"score_chunk\[[^\]]+\] received")


def _received(service: Service) -> list[int]:
    """How many chunk messages each worker slot's current process has received so far."""
    return [len(RECEIVED.findall(worker.log)) for worker in service.workers.workers]


def _receiver(service: Service, before: list[int]) -> int:
    """The one slot that received a chunk message since ``before`` (no other job runs)."""

    def grown() -> list[int]:
        now = _received(service)
        return [slot for slot, (was, is_) in enumerate(zip(before, now, strict=True)) if is_ > was]

    slots = poll(grown, SETTLE_S, "a worker to receive the chunk", interval=0.02)
    assert len(slots) == 1, f"both workers received a chunk message: {slots}"
    return slots[0]


def test_7_a_hung_worker_s_chunk_is_requeued_and_its_late_writes_are_no_ops(
    service: Service,
) -> None:
    service.workers.wait_consuming()
    # Long enough that the chunk is far from done when its worker is stopped, on a fast CPU
    # too: the worker is found from its log (not by sampling CPU, which raced the chunk's end).
    total = 6000
    before = _received(service)
    job = service.submit(texts(total), chunk_size=total)
    slot = _receiver(service, before)
    hung_pid = service.workers.pids()[slot]
    mid_job(service, job, total)
    service.workers.signal(signal.SIGSTOP, slot)
    try:
        assert service.rows(job) < total, "the chunk ended before its worker could be stopped"
        service.settle([job])
        assert service.job(job)["status"] == JobStatus.COMPLETED.value
    finally:
        service.workers.signal(signal.SIGCONT, slot)

    # The hung worker wakes up and carries on with its copy of the chunk: it stops at its next
    # write, the job being completed. Had it been stopped inside a write transaction (likely:
    # its writes run beside its scoring, engine/window_writer.py), the server ended that
    # session (idle_in_transaction_session_timeout): the attempt fails, and the retry of its
    # message, taken by whichever worker, finds the chunk done. Either way it writes nothing.
    def stale_run_end() -> str | None:
        log = service.workers.log_text()
        own = re.search(rf"chunk 0 of job {job} \w+ by bulkscore-cpu-{hung_pid}@.*", log)
        if own:
            return own.group(0)
        failed = re.search(rf"\[{hung_pid}\] worker\.tasks: chunk 0 of job {job} attempt", log)
        retried = re.search(rf"chunk 0 of job {job} skipped by .*chunk already done.*", log)
        return retried.group(0) if failed and retried else None

    line = poll(stale_run_end, SETTLE_S, "the woken worker to finish its stale run")
    assert " skipped by " in line, line
    reasons = ("job completed by another delivery during the chunk", "chunk already done")
    assert any(reason in line for reason in reasons), line
    found = service.check("7 hung worker", [job])
    assert found.extra_attempts == 1
    assert service.job(job)["succeeded"] == total


def _sessions(service: Service, name: str) -> list[tuple[str, str | None]]:
    """``(state, wait_event_type)`` of each PostgreSQL session named ``name``."""
    query = text(
        "SELECT state, wait_event_type FROM pg_stat_activity WHERE application_name = :name"
    )
    with service.engine.connect() as conn:
        return [(state, wait) for state, wait in conn.execute(query, {"name": name})]


def test_7b_a_worker_frozen_inside_its_write_transaction_does_not_halt_the_model(
    service: Service,
) -> None:
    service.workers.wait_consuming()
    total = 3000
    before = _received(service)
    job = service.submit(texts(total), chunk_size=total)
    slot = _receiver(service, before)
    frozen_pid = service.workers.pids()[slot]
    session = f"bulkscore-worker-{frozen_pid}"
    mid_job(service, job, total)
    # Freeze the worker inside its write transaction, holding the job's row: hold the row
    # first, so that its next write waits for it; freeze it while it waits; let go. Its
    # session then takes the row and sits "idle in transaction", with nobody to finish it.
    with service.engine.connect() as trap, trap.begin():
        trap.execute(select(jobs.c.id).where(jobs.c.id == job).with_for_update())
        poll(
            lambda: ("active", "Lock") in _sessions(service, session),
            SETTLE_S,
            "the worker's write to wait for the job's row",
            interval=0.01,
        )
        service.workers.signal(signal.SIGSTOP, slot)
    try:
        poll(
            lambda: "idle in transaction" in {state for state, _ in _sessions(service, session)},
            10,
            "the frozen worker's session to hold the row, idle in its transaction",
        )
        assert service.rows(job) < total, "the chunk ended before its worker could be frozen"
        # Without a limit the session would hold the row until the process wakes: the other
        # worker, taking the chunk over, would wait on it, and so would every job behind.
        poll(
            lambda: "idle in transaction" not in {s for s, _ in _sessions(service, session)},
            15,
            "the server to end the frozen session (idle_in_transaction_session_timeout)",
        )
        other = service.submit(texts(60), chunk_size=30)  # the model still serves new jobs
        service.settle([job, other])
        assert service.job(job)["status"] == JobStatus.COMPLETED.value
        assert service.job(other)["status"] == JobStatus.COMPLETED.value
    finally:
        service.workers.signal(signal.SIGCONT, slot)
    # It wakes to find its session ended: that write never committed, its attempt fails,
    # and the retry (taken by either worker) finds the chunk done by the other one.
    frozen = service.workers.workers[slot]
    assert frozen.process.pid == frozen_pid
    frozen.wait_for(rf"chunk 0 of job {job} attempt 1 failed \(OperationalError", SETTLE_S)
    poll(
        lambda: re.search(
            rf"chunk 0 of job {job} skipped by \S+: .*\(chunk already done\)",
            service.workers.log_text(),
        ),
        SETTLE_S,
        "the retry of the frozen worker's attempt to find the chunk done",
    )
    found = service.check("7b frozen writer", [job, other])
    assert found.extra_attempts >= 1
    assert service.job(job)["succeeded"] == total


# -- 8: cancel -----------------------------------------------------------------------------------


def test_8_cancel_while_chunks_are_in_flight(service: Service) -> None:
    service.workers.wait_consuming()
    job = service.submit(texts(2400), chunk_size=200)
    mid_job(service, job, 2400)
    cancelled = service.api.client.post(f"/v1/jobs/{job}/cancel", headers=bearer(service.api.key))
    assert cancelled.status_code == 200
    # Queued when the cancel committed: no claim takes them (nor a run, core.chunks.runs).
    untouched = [row[0] for row in service.chunk_rows(job) if row[3] == "queued"]
    time.sleep(3)  # chunks in flight stop at their next write window
    service.check("8 cancel", [job])
    rows = service.chunk_rows(job)
    final = service.job(job)
    assert final["status"] == JobStatus.CANCELLED.value
    # A final status means final numbers: the windows the workers were scoring when the
    # cancel committed were refused, so the counts are those the cancel answered with.
    reported = cancelled.json()["counts"]
    assert (final["succeeded"], final["failed"]) == (reported["succeeded"], reported["failed"])
    assert service.rows(job) == reported["succeeded"] + reported["failed"]
    # Part-way: items were left unscored, and they stay so. (Chunks still queued at the
    # cancel may be none: a worker that knows its model's pace claims runs of them.)
    assert reported["succeeded"] + reported["failed"] < 2400, "the cancel must land part-way"
    assert all(row[3] == "cancelled" and row[4] == 0 for row in rows if row[0] in untouched)
    # Chunks a run took (merged) moved their items to the run's chunk, done or cancelled
    # like any other: every item lies in a chunk that ended.
    assert all(row[3] in ("done", "cancelled", "merged") for row in rows)
    ended = [(row[1], row[2]) for row in rows if row[3] in ("done", "cancelled")]
    assert all(any(lo <= i < hi for lo, hi in ended) for i in range(2400))


# -- 10, 11, 12: retry and resume under kill -9 ---------------------------------------------------


def _use_chunk_size(service: Service, chunk_size: int) -> None:
    """The chunk size the API cuts retry and resume chunks with (as submit does)."""
    service.api.client.app.state.settings = service.api.settings.model_copy(  # type: ignore[attr-defined]
        update={"chunk_size": chunk_size}
    )


def _fail_rows(service: Service, job_id: str, indexes: list[int], error: str) -> None:
    """Turn rows into error rows, counters included: what a transient failure leaves."""
    with service.engine.begin() as conn:
        conn.execute(
            update(results)
            .where(and_(results.c.job_id == job_id, results.c.index.in_(indexes)))
            .values(label=None, score=None, top_k=None, error=error)
        )
        conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id)
            .values(succeeded=jobs.c.succeeded - len(indexes), failed=jobs.c.failed + len(indexes))
        )


def _marks(service: Service, job_id: str) -> int:
    with service.engine.connect() as conn:
        return int(conn.scalar(select(func.count()).where(retry_items.c.job_id == job_id)) or 0)


def _labels(service: Service, job_id: str) -> dict[int, tuple[str | None, float | None]]:
    with service.engine.connect() as conn:
        rows = conn.execute(
            select(results.c.index, results.c.label, results.c.score).where(
                results.c.job_id == job_id
            )
        ).all()
    return {index: (label, score) for index, label, score in rows}


def test_10_a_retry_killed_mid_chunk_replaces_each_error_row_once(service: Service) -> None:
    service.workers.wait_consuming()
    job = service.submit(texts(1200), chunk_size=300)
    service.settle([job])
    assert service.job(job)["status"] == JobStatus.COMPLETED.value
    fresh = _labels(service, job)
    failed = list(range(0, 1200, 2))
    _fail_rows(service, job, failed, "RuntimeError: CUDA out of memory")
    _use_chunk_size(service, 300)
    response = service.api.client.post(f"/v1/jobs/{job}/retry", headers=bearer(service.api.key))
    assert response.status_code == 202, response.text
    assert response.json()["requeued"] == 600
    # Some error rows replaced, not all: the workers are inside the retry chunks.
    poll(
        lambda: 0 < _marks(service, job) < 600,
        SETTLE_S,
        "the retry to be part-way",
        interval=0.02,
    )
    service.workers.signal(signal.SIGKILL)
    found = service.check("10 retry kill -9", [job])
    final = service.job(job)
    assert final["status"] == JobStatus.COMPLETED.value
    assert (final["succeeded"], final["failed"]) == (1200, 0)
    assert found.extra_attempts >= 1, "a retry chunk must have been taken over after the crash"
    after = _labels(service, job)
    assert {i: after[i][0] for i in after} == {i: fresh[i][0] for i in fresh}
    assert all(abs(after[i][1] - fresh[i][1]) < 1e-6 for i in after)  # type: ignore[operator]


def test_11_a_retried_item_that_kills_again_is_bisected_to_one_new_error(
    service: Service,
) -> None:
    service.workers.wait_consuming()
    items = texts(20)
    items[6] = POISON
    job = service.submit(items, chunk_size=4)
    service.settle([job])
    _fail_rows(service, job, [5, 9], "RuntimeError: CUDA out of memory")
    exits_before = len(service.workers.exits)
    _use_chunk_size(service, 4)
    response = service.api.client.post(f"/v1/jobs/{job}/retry", headers=bearer(service.api.key))
    assert response.status_code == 202 and response.json()["requeued"] == 3, response.text
    service.check("11 retried poison", [job])
    final = service.job(job)
    assert final["status"] == JobStatus.COMPLETED.value
    assert (final["succeeded"], final["failed"]) == (19, 1)
    with service.engine.connect() as conn:
        errors = dict(
            conn.execute(
                select(results.c.index, results.c.error).where(results.c.job_id == job)
            ).all()
        )
    assert errors[6] is not None and "stopped the worker on every attempt" in errors[6]
    assert errors[5] is None and errors[9] is None
    kills = [code for _slot, code in service.workers.exits[exits_before:] if code == -9]
    # 2 attempts of the retry chunk [5, 7), then one for its half [6, 7).
    assert len(kills) == 3, service.workers.exits[exits_before:]


def test_12_a_cancelled_job_resumed_and_killed_mid_chunk_completes(service: Service) -> None:
    service.workers.wait_consuming()
    job = service.submit(texts(2400), chunk_size=200)
    mid_job(service, job, 2400)
    cancelled = service.api.client.post(f"/v1/jobs/{job}/cancel", headers=bearer(service.api.key))
    assert cancelled.json()["status"] == JobStatus.CANCELLED.value
    time.sleep(2)  # chunks in flight stop at their next write window
    before = service.rows(job)
    _use_chunk_size(service, 200)
    response = service.api.client.post(f"/v1/jobs/{job}/resume", headers=bearer(service.api.key))
    assert response.status_code == 202, response.text
    # A cancel refuses every later write, so the rows stayed as they were.
    assert response.json()["requeued"] == 2400 - before == 2400 - service.rows(job)
    poll(
        lambda: (n := service.rows(job)) > before + 50 and n < 2400 and n,
        SETTLE_S,
        "the resumed job to be part-way",
        interval=0.02,
    )
    service.workers.signal(signal.SIGKILL)
    service.check("12 resume kill -9", [job])
    final = service.job(job)
    assert final["status"] == JobStatus.COMPLETED.value
    assert (final["succeeded"], final["failed"]) == (2400, 0)


# -- lost messages, serialization, operations ------------------------------------------------------


def test_9_a_job_whose_messages_were_never_sent_still_runs(service: Service) -> None:
    # The API committed the job and died before sending its chunks (or Redis lost them):
    # stored, queued, and no message anywhere. The workers' lost-message sweep finds it.
    service.workers.wait_consuming()
    service.wait_quiet()  # "no message anywhere": none left by the scenarios before
    inputs = [InputItem(item_id=f"r{i}", text=text) for i, text in enumerate(texts(60))]
    with service.engine.begin() as conn:
        job = create_job(
            conn,
            Registry.load(service.api.settings.models).get(TEXT_MODEL),
            inputs,
            chunk_size=20,
            owner_key_id=None,
        ).id
    service.ledger.accepted.append(job)
    service.check("9 lost messages", [job])
    assert service.job(job)["status"] == JobStatus.COMPLETED.value
    assert re.search(rf"chunk \d of job {job} was queued for over 8s", service.workers.log_text())


def test_pickled_messages_are_refused_not_run(service: Service, tmp_path: Path) -> None:
    from kombu import Connection

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (Path.touch, (str(marker),))  # type: ignore[return-value]

    queue = f"bulkscore.model.{TEXT_MODEL}"
    with Connection(service.redis.url) as conn:
        conn.Producer(serializer="pickle").publish(
            [[Exploit()], {}, {}],
            routing_key=queue,
            headers={"task": "bulkscore.score_chunk", "id": "pickle-test", "lang": "py"},
            declare=[],
        )
    poll(
        lambda: "untrusted content of type pickle" in service.workers.log_text(),
        20,
        "a worker to refuse the pickled message",
    )
    time.sleep(0.5)
    assert not marker.exists(), "the pickled payload ran"


def test_metrics_heartbeats_and_readiness(service: Service) -> None:
    service.workers.wait_consuming()
    job = service.submit(texts(40), chunk_size=20)
    service.check("metrics", [job])
    ready = service.api.client.get("/readyz", params={"model": TEXT_MODEL})
    assert ready.status_code == 200, ready.text
    assert ready.json()["workers"][TEXT_MODEL] == 2
    api_metrics = service.api.client.get("/metrics").text
    assert 'bulkscore_jobs{status="completed"}' in api_metrics
    assert f'bulkscore_workers{{model="{TEXT_MODEL}"}} 2.0' in api_metrics
    assert (
        'bulkscore_api_requests_total{method="POST",route="/v1/jobs",status="202"}' in api_metrics
    )
    scraped = ""
    for port in service.metrics_ports.values():
        scraped += httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    scored = re.findall(
        rf'bulkscore_worker_items_scored_total{{model="{TEXT_MODEL}",outcome="ok"}} (\S+)', scraped
    )
    assert scored and sum(float(value) for value in scored) > 0
    assert "bulkscore_worker_batch_size_bucket" in scraped
    assert "bulkscore_worker_batch_seconds_count" in scraped
    assert f'bulkscore_worker_queue_depth{{queue="bulkscore.model.{TEXT_MODEL}"}}' in scraped
    # Every chunk outcome line carries the job and chunk ids (core/logs.py).
    assert re.search(
        rf"chunk \d+ of job {job} done by .* job={job} chunk=\d+", service.workers.log_text()
    )


def test_the_whole_ledger(service: Service) -> None:
    """Every job accepted in this module, audited together at the end."""
    found = audit(service.engine, service.ledger)
    AUDITS["whole ledger"] = found
    assert found.problems() == {}, found
    assert found.unknown_jobs == 0
