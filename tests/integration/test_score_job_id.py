"""``bulkscore score --job-id``: a reused id with other inputs is refused; --retry-errors."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner

import cli.in_process
from cli.main import app
from core.clock import utcnow
from core.config import get_settings
from core.db import get_engine
from core.jobs.purge import Cutoffs, purge
from core.tables import jobs, results

runner = CliRunner()


def score(*args: str) -> Any:
    return runner.invoke(app, ["score", *args, "--model", "tiny"])


def test_a_reused_job_id_with_other_inputs_exits_2_naming_the_job(
    tmp_path: Path, settings_env: dict[str, str]
) -> None:
    a, b, c = tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "c.txt"
    a.write_text("a fine film\nawful\n")
    b.write_text("one\ntwo\nthree\n")
    c.write_text("a fine film\nawful!\n")
    first = score(str(a), "--job-id", "J1", "--out", str(tmp_path / "a.csv"))
    assert first.exit_code == 0, first.output

    other_count = score(str(b), "--job-id", "J1", "--out", str(tmp_path / "b.csv"))
    assert other_count.exit_code == 2
    assert "job J1 was made from other inputs" in other_count.output
    assert "the job has 2 item(s)" in other_count.output and "has 3" in other_count.output
    assert not (tmp_path / "b.csv").exists(), "no results may be exported under b's name"

    same_count = score(str(c), "--job-id", "J1")
    assert same_count.exit_code == 2
    assert "job J1" in same_count.output
    assert "same count (2 items), different content" in " ".join(same_count.output.split())

    again = score(str(a), "--job-id", "J1")
    assert again.exit_code == 0, again.output
    assert "already scored" in again.output


def test_a_job_made_before_the_hash_was_stored_is_checked_against_its_items(
    tmp_path: Path, settings_env: dict[str, str]
) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("first\nsecond\n")
    b.write_text("first\nsecond!\n")
    assert score(str(a), "--job-id", "old").exit_code == 0
    engine = get_engine(get_settings().database_url)
    with engine.begin() as conn:
        conn.execute(update(jobs).where(jobs.c.id == "old").values(inputs_hash=None))
    assert score(str(b), "--job-id", "old").exit_code == 2
    assert score(str(a), "--job-id", "old").exit_code == 0


class CountingRunner:
    """Wraps a runner and records every input that reaches its forward pass."""

    def __init__(self, inner: Any, seen: list[object]) -> None:
        self._inner = inner
        self._seen = seen

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def predict(self, batch: Sequence[object], progress: Any = None) -> Any:
        self._seen.extend(batch)
        return self._inner.predict(batch, progress=progress)


def test_retry_errors_rescores_only_the_error_rows(
    tmp_path: Path, settings_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "in.txt"
    texts = [f"review number {i} was {'great' if i % 2 else 'bad'}" for i in range(12)]
    source.write_text("\n".join(texts) + "\n")
    # Without the result cache: it would (rightly) answer the retried inputs from their
    # first, successful scoring, which this test rewrites into errors by hand; a real
    # transient failure never reaches the cache (errors are not stored).
    first = score(str(source), "--job-id", "J2", "--no-cache", "--out", str(tmp_path / "first.csv"))
    assert first.exit_code == 0, first.output
    fresh = {row["id"]: row for row in csv.DictReader((tmp_path / "first.csv").open())}

    # Two items failed for a transient reason (an OOM): their rows are errors.
    engine = get_engine(get_settings().database_url)
    with engine.begin() as conn:
        conn.execute(
            update(results)
            .where(results.c.job_id == "J2", results.c.index.in_([3, 8]))
            .values(label=None, score=None, top_k=None, error="RuntimeError: CUDA out of memory")
        )
        conn.execute(
            update(jobs)
            .where(jobs.c.id == "J2")
            .values(succeeded=jobs.c.succeeded - 2, failed=jobs.c.failed + 2)
        )

    seen: list[object] = []
    build = cli.in_process.build_runner
    monkeypatch.setattr(
        cli.in_process, "build_runner", lambda *a, **k: CountingRunner(build(*a, **k), seen)
    )
    retried = score(
        str(source), "--job-id", "J2", "--retry-errors", "--out", str(tmp_path / "retried.csv")
    )
    assert retried.exit_code == 0, retried.output
    assert "retrying 2 error row(s)" in retried.output
    assert sorted(seen) == sorted([texts[3], texts[8]]), "only the failed items reach the model"
    rows = {row["id"]: row for row in csv.DictReader((tmp_path / "retried.csv").open())}
    assert rows == fresh, "the replaced rows hold what a fresh run wrote"
    with engine.connect() as conn:
        job = conn.execute(select(jobs).where(jobs.c.id == "J2")).one()
        count = len(conn.execute(select(results.c.index).where(results.c.job_id == "J2")).all())
    assert (job.status, job.succeeded, job.failed, count) == ("completed", 12, 0, 12)

    nothing = score(str(source), "--job-id", "J2", "--retry-errors")
    assert nothing.exit_code == 0, nothing.output
    assert "nothing to retry" in nothing.output


def test_retry_errors_needs_an_existing_job(tmp_path: Path, settings_env: dict[str, str]) -> None:
    source = tmp_path / "in.txt"
    source.write_text("fine\n")
    result = score(str(source), "--job-id", "never-made", "--retry-errors")
    assert result.exit_code == 2
    assert "--retry-errors needs the --job-id of an existing job" in result.output


def test_a_job_whose_inputs_were_purged_is_not_resumed(
    tmp_path: Path, settings_env: dict[str, str]
) -> None:
    texts = tmp_path / "a.txt"
    texts.write_text("a fine film\nawful\n")
    assert score(str(texts), "--job-id", "P1").exit_code == 0
    engine = get_engine(get_settings().database_url)
    # Every final job finished before a minute from now is past this inputs limit.
    purge(engine, Cutoffs(inputs_before=utcnow() + timedelta(minutes=1), results_before=None))

    again = score(str(texts), "--job-id", "P1")
    assert again.exit_code == 2
    message = " ".join(again.output.split())
    assert "job P1's inputs were purged" in message and "choose another --job-id" in message
    with engine.connect() as conn:  # its results are still there
        assert len(conn.execute(select(results.c.index).where(results.c.job_id == "P1")).all()) == 2
