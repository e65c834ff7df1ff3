"""BULKSCORE_LOG_FORMAT=json: every line a worker, a beat and the API write is one JSON object.

Celery's own loggers, its start-up banner, Python warnings and the task trace lines all
go through core/logs.py's formatter, so a log collector never meets a line it cannot parse.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

import httpx
from api_support import running_api, write_api_models_file
from sqlalchemy import Engine, create_engine, select
from test_schedule_beat import inbox, schedules_file, start_beat, stop_beat  # noqa: F401
from worker_support import poll, running_worker, worker_env

from core.migrate import upgrade
from core.tables import schedule_runs

RUN_TIMEOUT_S = 90.0


def _completed_run(engine: Engine) -> object:
    with engine.connect() as conn:
        return conn.execute(
            select(schedule_runs.c.id).where(schedule_runs.c.status == "completed")
        ).first()


def _not_json(log: str) -> list[str]:
    bad = []
    for line in log.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            bad.append(line)
            continue
        if not isinstance(entry, dict) or not {"time", "level", "logger", "message"} <= set(entry):
            bad.append(line)
    return bad


def test_a_worker_and_a_beat_write_only_json_lines(
    tmp_path: Path,
    models_file: Path,
    inbox: Path,  # noqa: F811
    pg_url: str,
    redis_url: str,
) -> None:
    upgrade(pg_url)
    env = worker_env(
        pg_url,
        redis_url,
        schedules_file(tmp_path, models_file, inbox),
        BULKSCORE_SCHEDULE_TICK_S="1",
        BULKSCORE_LOG_FORMAT="json",
        # A Python warning goes through logging too, not straight to stderr.
        PYTHONWARNINGS="always",
    )
    engine = create_engine(pg_url)
    with ExitStack() as stack:
        beat = start_beat(env, tmp_path / "beat.log")
        stack.callback(stop_beat, beat)
        worker = stack.enter_context(
            running_worker(["--models", "tiny"], env, tmp_path / "worker.log")
        )
        # A due run scored to the end: the worker logged a whole chunk task.
        poll(lambda: _completed_run(engine), RUN_TIMEOUT_S, "a completed schedule run")
        beat.wait_for(r"tick_schedules\S* succeeded", count=2)
    engine.dispose()

    worker_log, beat_log = worker.log, beat.log
    assert len(worker_log.splitlines()) > 5 and len(beat_log.splitlines()) > 5
    assert _not_json(worker_log) == [], worker_log[-3000:]
    assert _not_json(beat_log) == [], beat_log[-3000:]
    messages = [json.loads(line)["message"] for line in worker_log.splitlines()]
    assert any("consuming" in message for message in messages)
    assert any("succeeded" in message for message in messages)  # Celery's task trace
    assert any("Warm shutdown" in message for message in messages)  # written to the fd


def test_the_api_writes_only_json_lines(
    tmp_path: Path, models_file: Path, pg_url: str, redis_url: str
) -> None:
    upgrade(pg_url)
    env = worker_env(
        pg_url,
        redis_url,
        write_api_models_file(tmp_path / "models.toml"),
        BULKSCORE_LOG_FORMAT="json",
        PYTHONWARNINGS="always",
    )
    with running_api(env, tmp_path / "api.log") as server:
        assert httpx.get(f"{server.url}/v1/jobs").status_code == 401
        assert httpx.get(f"{server.url}/healthz").status_code == 200
    log = server.log()
    assert _not_json(log) == [], log[-3000:]
    loggers = {json.loads(line)["logger"] for line in log.splitlines()}
    assert {"uvicorn.error", "uvicorn.access"} <= loggers, loggers
    assert "GET /v1/jobs" in log  # the access log line, as JSON
