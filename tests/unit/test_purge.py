"""Retention (core.jobs.purge): what a purge removes, what it never touches, and what the
API says of a purged job. SQLite, a fake queue."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from api_support import UnitApi, bearer, fake_scores, unit_api
from click.testing import Result
from sqlalchemy import Engine, func, insert, select, update
from typer.testing import CliRunner

import worker.beat
from cli.main import app
from core.clock import utcnow
from core.config import Settings, reset_settings_cache
from core.jobs.lifecycle import cancel_job, get_job
from core.jobs.purge import Cutoffs, parse_age, purge, purge_with_settings, purged_totals
from core.tables import items, jobs, purge_runs, result_cache, results, retry_items

DAY = timedelta(days=1)


@pytest.fixture()
def api(tmp_path: Path) -> Iterator[UnitApi]:
    with unit_api(tmp_path, chunk_size=2) as api:
        yield api


def finished(api: UnitApi, days_ago: float, count: int = 5) -> str:
    """A completed job (odd indexes are error rows) that finished ``days_ago``."""
    job_id = api.post_job([f"text {i}" for i in range(count)]).json()["id"]
    fake_scores(api.engine, job_id, range(count))
    with api.engine.begin() as conn:
        conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id)
            .values(finished_at=utcnow() - timedelta(days=days_ago))
        )
    return str(job_id)


def count(engine: Engine, table: object, job_id: str) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).where(table.c.job_id == job_id)) or 0)  # type: ignore[attr-defined]


def test_parse_age() -> None:
    assert parse_age("30d") == timedelta(days=30)
    assert parse_age(" 12H ") == timedelta(hours=12)
    for bad in ("30", "d", "1.5d", "3w", "0d", "-1d"):
        with pytest.raises(ValueError):
            parse_age(bad)


def test_results_purge_removes_old_jobs_rows_only(api: UnitApi) -> None:
    old, recent = finished(api, 40), finished(api, 1)
    # Active, though created long ago: never touched, whatever its age.
    active = api.post_job(["a", "b", "c"]).json()["id"]
    fake_scores(api.engine, active, [0])
    with api.engine.begin() as conn:
        conn.execute(update(jobs).where(jobs.c.id == active).values(created_at=utcnow() - 90 * DAY))

    report = purge(api.engine, Cutoffs.older_than(30 * DAY), batch=2)

    assert (report.jobs, report.input_rows, report.result_rows) == (1, 5, 5)
    assert report.complete and report.job_ids == [old]
    assert count(api.engine, items, old) == 0 and count(api.engine, results, old) == 0
    assert (count(api.engine, items, recent), count(api.engine, results, recent)) == (5, 5)
    assert (count(api.engine, items, active), count(api.engine, results, active)) == (3, 1)
    with api.engine.connect() as conn:
        purged_old, kept, running = (get_job(conn, j) for j in (old, recent, active))
        assert purged_old is not None and kept is not None and running is not None
        # The job row stays with its status and counts, and says what is gone.
        assert purged_old.status == "completed" and purged_old.total == 5
        assert purged_old.results_purged_at is not None
        assert purged_old.inputs_purged_at is not None
        assert kept.results_purged_at is None and kept.inputs_purged_at is None
        assert running.status == "running" and running.inputs_purged_at is None
        run = conn.execute(select(purge_runs)).one()
        assert (run.jobs, run.input_rows, run.result_rows, run.dry_run) == (1, 5, 5, False)
        assert run.finished_at is not None
        assert purged_totals(conn).result_rows == 5

    # A second purge finds nothing more to do.
    again = purge(api.engine, Cutoffs.older_than(30 * DAY))
    assert (again.jobs, again.input_rows, again.result_rows) == (0, 0, 0)


def test_inputs_purge_keeps_results_and_refuses_retry_and_resume(api: UnitApi) -> None:
    old = finished(api, 10)
    cancelled = api.post_job(["x", "y", "z"]).json()["id"]
    with api.engine.begin() as conn:
        cancel_job(conn, cancelled)
        conn.execute(
            update(jobs).where(jobs.c.id == cancelled).values(finished_at=utcnow() - 10 * DAY)
        )
        # A retry cancelled midway left a mark: it goes with the inputs.
        conn.execute(insert(retry_items).values(job_id=cancelled, index=1))

    report = purge(api.engine, Cutoffs.older_than(7 * DAY, inputs_only=True))

    assert (report.jobs, report.input_rows, report.result_rows) == (2, 8, 0)
    assert count(api.engine, results, old) == 5 and count(api.engine, items, old) == 0
    assert count(api.engine, retry_items, cancelled) == 0

    shown = api.get(f"/v1/jobs/{old}").json()
    assert shown["purged"]["inputs"] is not None and shown["purged"]["results"] is None
    # Still exported in full.
    page = api.get(f"/v1/jobs/{old}/results").json()
    assert [row["index"] for row in page["data"]] == [0, 1, 2, 3, 4]
    assert api.get(f"/v1/jobs/{old}/results", params={"format": "csv"}).text.count("\n") == 6

    retried = api.client.post(f"/v1/jobs/{old}/retry", headers=bearer(api.key))
    resumed = api.client.post(f"/v1/jobs/{cancelled}/resume", headers=bearer(api.key))
    for refused, verb in ((retried, "retried"), (resumed, "resumed")):
        assert refused.status_code == 409
        assert refused.json()["code"] == "inputs_purged"
        assert "inputs were purged" in refused.json()["detail"] and verb in refused.json()["detail"]


def test_results_purged_job_answers_410(api: UnitApi) -> None:
    old = finished(api, 40)
    purge(api.engine, Cutoffs.older_than(30 * DAY))
    shown = api.get(f"/v1/jobs/{old}").json()
    assert shown["purged"]["results"] is not None and shown["purged"]["inputs"] is not None
    assert shown["status"] == "completed" and shown["counts"]["total"] == 5
    for params in ({}, {"format": "csv"}, {"format": "jsonl"}):
        gone = api.get(f"/v1/jobs/{old}/results", params=params)
        assert gone.status_code == 410
        assert gone.json()["code"] == "results_purged"
        assert "were purged" in gone.json()["detail"]
    # A job never purged shows nothing gone.
    fresh = api.post_job(["a"]).json()
    assert fresh["purged"] == {"inputs": None, "results": None}


def test_dry_run_counts_and_deletes_nothing(api: UnitApi) -> None:
    inputs_only, both = finished(api, 10), finished(api, 40, count=3)
    cutoffs = Cutoffs(inputs_before=utcnow() - 7 * DAY, results_before=utcnow() - 30 * DAY)

    report = purge(api.engine, cutoffs, dry_run=True)

    # ``both`` counts its items once, though both limits cover it.
    assert (report.jobs, report.input_rows, report.result_rows) == (2, 8, 3)
    assert count(api.engine, items, inputs_only) == 5 and count(api.engine, results, both) == 3
    with api.engine.connect() as conn:
        job = get_job(conn, both)
        assert job is not None and job.inputs_purged_at is None
        assert conn.execute(select(purge_runs.c.dry_run)).scalar_one() is True
        assert purged_totals(conn).input_rows == 0  # a dry run removed nothing

    real = purge(api.engine, cutoffs)
    assert (real.jobs, real.input_rows, real.result_rows) == (2, 8, 3)


def test_a_purge_cut_short_by_its_budget_is_finished_by_the_next(api: UnitApi) -> None:
    old = finished(api, 40, count=6)
    first = purge(api.engine, Cutoffs.older_than(30 * DAY), batch=2, max_batches=2)
    assert not first.complete and first.result_rows == 4 and first.input_rows == 0
    # Stamped before any row went: its results already answer 410, retry is refused.
    assert api.get(f"/v1/jobs/{old}/results").status_code == 410

    rest = purge(api.engine, Cutoffs.older_than(30 * DAY), batch=2)
    assert rest.complete and (rest.result_rows, rest.input_rows) == (2, 6)
    with api.engine.connect() as conn:
        totals = purged_totals(conn)
    assert (totals.result_rows, totals.input_rows, totals.jobs) == (6, 6, 2)


def test_settings_drive_the_purge_and_the_cache_limits(api: UnitApi) -> None:
    inputs_gone, results_gone, kept = finished(api, 15), finished(api, 25), finished(api, 5)
    now = utcnow()
    with api.engine.begin() as conn:
        conn.execute(
            insert(result_cache),
            [
                {
                    "model": "tiny",
                    "model_revision": "",
                    "input_sha256": f"{i:064x}",
                    "label": "POSITIVE",
                    "score": 0.5,
                    "created_at": now - timedelta(seconds=i),
                }
                for i in range(5)
            ],
        )
    settings = Settings(
        database_url=api.settings.database_url,
        retain_inputs_days=10,
        retain_results_days=20,
        cache_max_rows=2,
        cache_max_age_s=0,
    )
    assert not Cutoffs.from_settings(Settings(database_url="sqlite://")).on

    report = purge_with_settings(api.engine, settings)

    assert report.cache_rows == 3
    assert (count(api.engine, items, inputs_gone), count(api.engine, results, inputs_gone)) == (
        0,
        5,
    )
    assert (count(api.engine, items, results_gone), count(api.engine, results, results_gone)) == (
        0,
        0,
    )
    assert (count(api.engine, items, kept), count(api.engine, results, kept)) == (5, 5)


def test_metrics_total_what_purges_removed(api: UnitApi) -> None:
    finished(api, 40)
    finished(api, 10, count=3)
    purge(api.engine, Cutoffs.older_than(30 * DAY), dry_run=True)  # not counted
    purge(api.engine, Cutoffs.older_than(30 * DAY))
    purge(api.engine, Cutoffs.older_than(7 * DAY, inputs_only=True))

    text = api.client.get("/metrics").text

    assert 'bulkscore_purged_rows_total{kind="inputs"} 8.0' in text
    assert 'bulkscore_purged_rows_total{kind="results"} 5.0' in text
    assert "bulkscore_purged_jobs_total 2.0" in text


def run_cli(*args: str) -> Result:
    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def test_purge_command(api: UnitApi, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BULKSCORE_DATABASE_URL", api.settings.database_url)
    monkeypatch.setenv("BULKSCORE_RETAIN_INPUTS_DAYS", "0")
    monkeypatch.setenv("BULKSCORE_RETAIN_RESULTS_DAYS", "0")
    reset_settings_cache()
    try:
        old, recent = finished(api, 40), finished(api, 10, count=3)
        dry = run_cli("purge", "--older-than", "30d", "--dry-run", "--json")
        kept_after_dry = count(api.engine, results, old)
        shown = run_cli("purge", "--older-than", "7d", "--inputs-only")
        real = run_cli("purge", "--older-than", "720h", "--json")
        bad_age = run_cli("purge", "--older-than", "soon")
        no_limit = run_cli("purge")
        monkeypatch.setenv("BULKSCORE_RETAIN_RESULTS_DAYS", "5")
        reset_settings_cache()
        by_settings = run_cli("purge", "--json")
    finally:
        reset_settings_cache()

    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.stdout) == {
        "dry_run": True,
        "jobs": 1,
        "input_rows": 5,
        "result_rows": 5,
        "cache_rows": 0,
        "job_ids": [old],
    }
    assert kept_after_dry == 5
    assert shown.exit_code == 0, shown.output
    assert "purged 2 job(s): 8 input rows, 0 result rows" in shown.stdout
    assert json.loads(real.stdout)["result_rows"] == 5  # the old job's results, only
    assert bad_age.exit_code == 2 and "not an age" in bad_age.stderr
    assert no_limit.exit_code == 2 and "retention is off" in no_limit.stderr
    # The recent job's results outlived every purge above, and go by the settings' 5 days.
    assert json.loads(by_settings.stdout)["result_rows"] == 3
    assert count(api.engine, results, recent) == 0


def test_the_beat_purges_when_due_and_goes_on_when_cut_short(
    api: UnitApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    finished(api, 40)
    finished(api, 50)
    off = Settings(database_url=api.settings.database_url)
    on = Settings(database_url=api.settings.database_url, retain_results_days=30)
    clock = worker.beat.PurgeClock()
    assert worker.beat.purge_on_tick(off, clock) is None  # retention off: no purge

    # One delete batch per tick: the first job's results, then a stop with rows left.
    monkeypatch.setattr(worker.beat, "BEAT_MAX_BATCHES", 1)
    first = worker.beat.purge_on_tick(on, clock)
    assert first is not None and not first.complete and first.result_rows == 5
    # Cut short: the next tick goes on though purge_every_s has not passed.
    monkeypatch.setattr(worker.beat, "BEAT_MAX_BATCHES", 100)
    second = worker.beat.purge_on_tick(on, clock)
    assert second is not None and second.complete
    assert second.result_rows == 5 and second.input_rows == 10
    # Done, and purged within purge_every_s: the next tick does nothing.
    assert worker.beat.purge_on_tick(on, clock) is None
