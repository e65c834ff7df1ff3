"""Schedules through the real processes: ``bulkscore beat`` (Celery beat), the worker, the CLI."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, create_engine, func, select, update
from typer.testing import CliRunner
from worker_support import BULKSCORE, WorkerProcess, poll, running_worker, worker_env

from cli.main import app as cli_app
from core.clock import utcnow
from core.config import reset_settings_cache
from core.db import dispose_engines
from core.inputs.items import InputItem
from core.jobs.lifecycle import create_job, mark_running
from core.jobs.predictions import Prediction
from core.jobs.results import ScoredItem, write_results
from core.migrate import upgrade
from core.models.registry import Registry
from core.queues import model_queue
from core.tables import jobs, purge_runs, results, schedule_files, schedule_runs

RUN_TIMEOUT_S = 90.0


def schedules_file(tmp_path: Path, models_file: Path, inbox: Path) -> Path:
    """The tiny model plus a files schedule due every minute (so it is due at once)."""
    path = tmp_path / "models-and-schedules.toml"
    path.write_text(
        models_file.read_text()
        + f'\n[schedules.drop]\ncron = "* * * * *"\nmodel = "tiny"\nsource = "files"\n'
        f'path = "{inbox}/*.txt"\n'
    )
    return path


@pytest.fixture()
def inbox(tmp_path: Path) -> Path:
    folder = tmp_path / "inbox"
    folder.mkdir()
    (folder / "a.txt").write_text("a lovely day\nthe worst service\n")
    return folder


def start_beat(env: dict[str, str], log_path: Path) -> WorkerProcess:
    with log_path.open("wb") as log:
        # Its own session: the embedded beat is a child process, and the whole group is
        # stopped at the end even if the parent does not stop it.
        process = subprocess.Popen(
            [BULKSCORE, "beat"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return WorkerProcess(process, log_path)


def stop_beat(beat: WorkerProcess) -> None:
    beat.stop()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(beat.process.pid, signal.SIGKILL)  # this beat's own group, if any is left


def test_two_beats_and_a_worker_score_a_due_schedule_exactly_once(
    tmp_path: Path, models_file: Path, inbox: Path, pg_url: str, redis_url: str
) -> None:
    upgrade(pg_url)
    env = worker_env(
        pg_url,
        redis_url,
        schedules_file(tmp_path, models_file, inbox),
        BULKSCORE_SCHEDULE_TICK_S="1",
    )
    engine = create_engine(pg_url)
    with ExitStack() as stack:
        beats = []
        for name in ("beat-1", "beat-2"):
            beat = start_beat(env, tmp_path / f"{name}.log")
            stack.callback(stop_beat, beat)
            beats.append(beat)
        stack.enter_context(running_worker(["--models", "tiny"], env, tmp_path / "worker.log"))

        completed = poll(
            lambda: _run_with_status(engine, "completed"), RUN_TIMEOUT_S, "a completed run"
        )
        # Both beats keep ticking after the run: none of their ticks creates a second job.
        for beat in beats:
            ticks = len(re.findall(r"Task bulkscore\.tick_schedules\[\S+\] succeeded", beat.log))
            beat.wait_for(r"Task bulkscore\.tick_schedules\[\S+\] succeeded", count=ticks + 2)

    with engine.connect() as conn:
        job_ids = list(conn.scalars(select(jobs.c.id).where(jobs.c.schedule == "drop")))
        scored = list(conn.scalars(select(results.c.item_id).where(results.c.job_id == job_ids[0])))
        seen = list(conn.scalars(select(schedule_files.c.path)))
    engine.dispose()
    assert job_ids == [completed.job_id]
    assert sorted(scored) == ["a.txt:1", "a.txt:2"]
    # The job completed, so a later tick committed the file as seen.
    assert seen == [str(inbox / "a.txt")]


def _run_with_status(engine: Engine, status: str) -> object:
    with engine.connect() as conn:
        return conn.execute(
            select(schedule_runs).where(
                schedule_runs.c.schedule == "drop", schedule_runs.c.status == status
            )
        ).first()


@pytest.fixture()
def cli_env(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    models_file: Path,
    inbox: Path,
    pg_url: str,
    redis_url: str,
) -> Iterator[str]:
    upgrade(pg_url)
    monkeypatch.setenv("BULKSCORE_DATABASE_URL", pg_url)
    monkeypatch.setenv("BULKSCORE_BROKER_URL", redis_url)
    monkeypatch.setenv("BULKSCORE_MODELS", str(schedules_file(tmp_path, models_file, inbox)))
    reset_settings_cache()
    yield redis_url
    reset_settings_cache()
    dispose_engines()


def test_schedules_run_queues_a_job_and_list_shows_it(cli_env: str) -> None:
    cli = CliRunner()
    result = cli.invoke(cli_app, ["schedules", "list"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert re.search(r"drop\s.*\* \* \* \* \*\s.*tiny\s.*never", result.output)

    result = cli.invoke(cli_app, ["schedules", "run", "drop"])
    assert result.exit_code == 0, result.output
    job_id = re.search(r"drop: running \(job (\w+), 2 items\)", result.output)
    assert job_id, result.output
    # One chunk task in the model's queue, where a worker would pick it up.
    broker = redis.Redis.from_url(cli_env)
    assert broker.llen(model_queue("tiny")) == 1
    broker.close()

    result = cli.invoke(cli_app, ["schedules", "list"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "running" in result.output and job_id.group(1) in result.output
    assert "queued: 0 ok, 0 failed" in result.output

    # Run again while that job is queued: skipped, no second job, and exit code 0.
    result = cli.invoke(cli_app, ["schedules", "run", "drop"])
    assert result.exit_code == 0, result.output
    assert "drop: skipped (no job)" in result.output and job_id.group(1) in result.output

    result = cli.invoke(cli_app, ["schedules", "run", "nightly"])
    assert result.exit_code == 2
    assert "no schedule named 'nightly'; schedules: drop" in result.output


def test_schedules_run_and_list_print_json(cli_env: str) -> None:
    cli = CliRunner()
    before = json.loads(cli.invoke(cli_app, ["schedules", "list", "--json"]).stdout)
    ran = json.loads(cli.invoke(cli_app, ["schedules", "run", "drop", "--json"]).stdout)
    after = json.loads(cli.invoke(cli_app, ["schedules", "list", "--json"]).stdout)

    assert [(s["name"], s["cron"], s["model"], s["last_run"]) for s in before] == [
        ("drop", "* * * * *", "tiny", None)
    ]
    assert before[0]["next_due"]
    assert (ran["schedule"], ran["status"], ran["items"]) == ("drop", "running", 2)
    last = after[0]["last_run"]
    assert (last["status"], last["job_id"], last["items"]) == ("running", ran["job_id"], 2)
    assert (last["job_status"], last["succeeded"], last["failed"]) == ("queued", 0, 0)


def test_the_beat_purges_past_retention_once_per_purge_interval(
    tmp_path: Path, models_file: Path, pg_url: str, redis_url: str
) -> None:
    upgrade(pg_url)
    engine = create_engine(pg_url)
    spec = Registry.load(models_file).get("tiny")
    inputs = [InputItem(item_id=f"r{i}", text=f"text {i}") for i in range(30)]
    made = []
    for age_days in (40, 5):  # one past the 30 days, one within them
        with engine.begin() as conn:
            job = create_job(conn, spec, inputs, chunk_size=10)
            mark_running(conn, job.id)
            scored = [
                ScoredItem(i, f"r{i}", Prediction("POSITIVE", 0.9, [("POSITIVE", 0.9)]))
                for i in range(30)
            ]
            write_results(conn, job.id, "tiny", None, scored)
            conn.execute(
                update(jobs)
                .where(jobs.c.id == job.id)
                .values(finished_at=utcnow() - timedelta(days=age_days))
            )
        made.append(job.id)
    old, recent = made
    env = worker_env(
        pg_url,
        redis_url,
        models_file,
        BULKSCORE_SCHEDULE_TICK_S="1",
        BULKSCORE_RETAIN_RESULTS_DAYS="30",
    )
    beat = start_beat(env, tmp_path / "beat.log")
    try:
        beat.wait_for(r"purge: 1 jobs, 30 input rows, 30 result rows", timeout=RUN_TIMEOUT_S)
        time.sleep(3)  # a few more ticks: purge_every_s (an hour) has not passed
    finally:
        stop_beat(beat)
    with engine.connect() as conn:
        kept = {
            job_id: conn.scalar(select(func.count()).where(results.c.job_id == job_id))
            for job_id in made
        }
        purged_at = conn.scalar(select(jobs.c.results_purged_at).where(jobs.c.id == old))
        runs = conn.scalar(select(func.count()).select_from(purge_runs))
    engine.dispose()
    assert kept == {old: 0, recent: 30}
    assert purged_at is not None
    assert runs == 1
