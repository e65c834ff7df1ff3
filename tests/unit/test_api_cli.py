"""The CLI client (submit, status, results, cancel, models) against the in-process API."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from api_support import TEXT_MODEL, FakeJobQueue, UnitApi, fake_scores, free_port, unit_api
from click.testing import Result
from fastapi.testclient import TestClient
from sqlalchemy import Engine, update
from typer.testing import CliRunner

import cli.client
from cli.main import app
from core.clock import utcnow
from core.config import reset_settings_cache
from core.jobs.expiry import expire_overdue
from core.jobs.export import export_lines
from core.jobs.lifecycle import get_job, mark_failed
from core.jobs.results import iter_results
from core.tables import jobs


class ScoringQueue(FakeJobQueue):
    """A queue whose 'worker' scores a job the moment it is queued."""

    engine: Engine | None = None

    def enqueue_chunks(self, job_id: str, model: str, chunk_indexes: Iterable[int]) -> None:
        super().enqueue_chunks(job_id, model, chunk_indexes)
        if self.engine is not None:
            with self.engine.connect() as conn:
                job = get_job(conn, job_id)
            assert job is not None
            fake_scores(self.engine, job_id, range(job.total))


@pytest.fixture()
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[UnitApi]:
    with unit_api(tmp_path, queue=ScoringQueue()) as api:
        # The CLI's HTTP client talks to the app in-process instead of over a socket.
        def in_process_client(base_url: str, headers: dict[str, str], **_: Any) -> TestClient:
            return TestClient(api.client.app, base_url=base_url, headers=headers)

        monkeypatch.setattr(cli.client.httpx, "Client", in_process_client)
        use_key(monkeypatch, api.key)
        yield api
    reset_settings_cache()


def use_key(monkeypatch: pytest.MonkeyPatch, key: str, url: str = "http://testserver") -> None:
    monkeypatch.setenv("BULKSCORE_API_URL", url)
    monkeypatch.setenv("BULKSCORE_API_KEY", key)
    reset_settings_cache()


def run(*args: str) -> Result:
    result = CliRunner().invoke(app, list(args))
    # Failures end through typer.Exit (SystemExit), never an uncaught exception.
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


@pytest.fixture()
def texts(tmp_path: Path) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(f'{{"id": "r{i}", "text": "text {i}"}}\n' for i in range(5)))
    return path


def test_submit_prints_the_job_id(api: UnitApi, texts: Path) -> None:
    result = run("submit", str(texts), "--model", TEXT_MODEL)
    assert result.exit_code == 0, result.output
    job_id = result.stdout.strip()
    assert api.queue.sent[0][0] == job_id
    assert "5 inputs for model tiny" in result.stderr


def test_submit_sends_the_priority(api: UnitApi, texts: Path) -> None:
    result = run("submit", str(texts), "--model", TEXT_MODEL, "--priority", "high")
    assert result.exit_code == 0, result.output
    job = api.get(f"/v1/jobs/{result.stdout.strip()}").json()
    assert job["priority"] == "high"
    refused = run("submit", str(texts), "--model", TEXT_MODEL, "--priority", "soon")
    assert refused.exit_code == 2 and "soon" in refused.output


def test_submit_wait_follows_the_job_to_its_end(api: UnitApi, texts: Path) -> None:
    api.queue.engine = api.engine  # type: ignore[attr-defined]
    result = run("submit", str(texts), "--model", TEXT_MODEL, "--wait", "--interval", "0.1")
    assert result.exit_code == 0, result.output
    assert "completed" in result.stdout


def test_submit_with_an_idempotency_key_returns_the_same_job(api: UnitApi, texts: Path) -> None:
    first = run("submit", str(texts), "-m", TEXT_MODEL, "--idempotency-key", "k1")
    again = run("submit", str(texts), "-m", TEXT_MODEL, "--idempotency-key", "k1")
    assert first.stdout == again.stdout
    assert "already submitted" in again.stderr


def test_status_and_watch(api: UnitApi, texts: Path) -> None:
    job_id = run("submit", str(texts), "-m", TEXT_MODEL).stdout.strip()

    queued = run("status", job_id)
    fake_scores(api.engine, job_id, range(5))
    watched = run("status", job_id, "--watch")

    assert queued.exit_code == 0 and "queued" in queued.stdout
    assert watched.exit_code == 0 and "completed" in watched.stdout


def test_watching_a_failed_job_exits_non_zero(api: UnitApi, texts: Path) -> None:
    job_id = run("submit", str(texts), "-m", TEXT_MODEL).stdout.strip()
    with api.engine.begin() as conn:
        mark_failed(conn, job_id, "model did not load")
    result = run("status", job_id, "--watch")
    assert result.exit_code == 1
    assert "model did not load" in result.stdout


def test_results_to_a_file_and_to_stdout(api: UnitApi, texts: Path, tmp_path: Path) -> None:
    job_id = run("submit", str(texts), "-m", TEXT_MODEL).stdout.strip()
    fake_scores(api.engine, job_id, range(5))
    with api.engine.connect() as conn:
        expected_csv = "".join(export_lines(iter_results(conn, job_id), "csv"))
        expected_jsonl = "".join(export_lines(iter_results(conn, job_id), "jsonl"))

    to_file = run("results", job_id, "--out", str(tmp_path / "out.csv"))
    to_stdout = run("results", job_id, "--format", "jsonl")

    assert to_file.exit_code == 0, to_file.output
    assert (tmp_path / "out.csv").read_text() == expected_csv
    assert not (tmp_path / "out.csv.part").exists()
    assert to_stdout.stdout == expected_jsonl


def test_results_of_a_running_job_say_they_are_partial(api: UnitApi, texts: Path) -> None:
    job_id = run("submit", str(texts), "-m", TEXT_MODEL).stdout.strip()
    fake_scores(api.engine, job_id, [0, 1])
    result = run("results", job_id)
    assert result.exit_code == 0
    assert "2 of 5 results so far" in result.stderr
    assert len(result.stdout.splitlines()) == 3  # header and two rows


def test_cancel(api: UnitApi, texts: Path) -> None:
    job_id = run("submit", str(texts), "-m", TEXT_MODEL).stdout.strip()
    result = run("cancel", job_id)
    assert result.exit_code == 0
    assert result.stdout.strip() == f"job {job_id}: cancelled"
    assert run("status", job_id).stdout.count("cancelled") == 1


def test_cancelling_a_finished_job_says_so(api: UnitApi, texts: Path) -> None:
    job_id = run("submit", str(texts), "-m", TEXT_MODEL).stdout.strip()
    fake_scores(api.engine, job_id, range(5))
    result = run("cancel", job_id)
    assert result.exit_code == 0
    assert result.stdout.strip() == f"job {job_id} was already completed; nothing to cancel"


def test_models(api: UnitApi) -> None:
    result = run("models")
    assert result.exit_code == 0
    assert TEXT_MODEL in result.stdout and "text-classification" in result.stdout


UNKNOWN_JOB = "0123456789abcdef0123456789abcdef"  # well formed, but no job has it


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["status", UNKNOWN_JOB], f"job {UNKNOWN_JOB} not found (HTTP 404)"),
        (["cancel", UNKNOWN_JOB], f"job {UNKNOWN_JOB} not found (HTTP 404)"),
        (["results", UNKNOWN_JOB], f"job {UNKNOWN_JOB} not found (HTTP 404)"),
        (
            ["status", "nope"],
            "path.job_id: String should match pattern '^[0-9a-f]{32}$' (HTTP 422)",
        ),
        (["submit", "{texts}", "--model", "nope"], "unknown model 'nope'"),
        (["results", "nope", "--format", "xml"], "unknown format 'xml'"),
        (["results", "nope", "--out", "x.xlsx"], "must end in .csv, .jsonl or .parquet"),
        (["submit", "missing.txt", "--model", TEXT_MODEL], "missing.txt: no such file"),
        (["submit", "in.pdf", "--model", TEXT_MODEL], "in.pdf: no such file or folder"),
    ],
)
def test_client_errors_are_one_clear_line(
    api: UnitApi, texts: Path, args: list[str], message: str
) -> None:
    result = run(*[arg.format(texts=texts) for arg in args])
    assert result.exit_code == 2
    assert message in " ".join(result.stderr.split())


def test_a_refused_key_says_how_to_get_one(api: UnitApi, monkeypatch: pytest.MonkeyPatch) -> None:
    use_key(monkeypatch, "bsk_wrong")
    result = run("models")
    assert result.exit_code == 2
    assert "refused the key (invalid or revoked API key)" in " ".join(result.stderr.split())


def test_a_missing_key_is_reported_before_any_request(monkeypatch: pytest.MonkeyPatch) -> None:
    use_key(monkeypatch, "")
    result = run("models")
    reset_settings_cache()
    assert result.exit_code == 2
    assert "BULKSCORE_API_KEY is not set" in result.stderr


def test_an_unreachable_server_is_reported_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    use_key(monkeypatch, "bsk_any", url)
    result = run("status", "some-job")
    reset_settings_cache()
    assert result.exit_code == 1
    assert f"cannot reach the bulkscore API at {url}" in " ".join(result.stderr.split())


def test_submit_and_watch_print_the_unserved_model_warning(api: UnitApi, texts: Path) -> None:
    api.queue.live_workers = {}
    submitted = run("submit", str(texts), "-m", TEXT_MODEL, "--expires-after", "60")
    assert submitted.exit_code == 0, submitted.output
    warning = f"warning: no live worker serves model {TEXT_MODEL!r}"
    assert warning in " ".join(submitted.stderr.split())
    assert f"bulkscore worker --models {TEXT_MODEL}" in " ".join(submitted.stderr.split())
    job_id = submitted.stdout.strip()
    asked = api.queue.workers

    def workers_then_deadline() -> dict[str, int]:
        # The watch's first read still finds the job queued; its deadline passes just after.
        live = asked()
        with api.engine.begin() as conn:
            conn.execute(
                update(jobs).where(jobs.c.id == job_id).values(expires_at=utcnow() - timedelta(1))
            )
            assert expire_overdue(conn) == [job_id]
        return live

    api.queue.workers = workers_then_deadline  # type: ignore[method-assign]
    watched = run("status", job_id, "--watch", "--interval", "0.1")
    assert warning in " ".join(watched.stderr.split())
    # Expired is final: the watch ends, with a failure status.
    assert watched.exit_code != 0
    assert "expired" in watched.stdout


# --json and `jobs list`: machine-readable stdout, the human messages unchanged on stderr.


def test_submit_status_and_cancel_print_json(api: UnitApi, texts: Path) -> None:
    submitted = run("submit", str(texts), "-m", TEXT_MODEL, "--json")
    job = json.loads(submitted.stdout)
    assert job["counts"]["total"] == 5 and job["model"] == TEXT_MODEL
    assert "5 inputs for model tiny" in submitted.stderr

    status = json.loads(run("status", job["id"], "--json").stdout)
    assert status["id"] == job["id"] and status["status"] == "queued"

    cancelled = run("cancel", job["id"], "--json")
    assert json.loads(cancelled.stdout)["status"] == "cancelled"


def test_submit_wait_json_prints_the_final_job_only(api: UnitApi, texts: Path) -> None:
    api.queue.engine = api.engine  # the "worker" scores the job the moment it is queued
    result = run("submit", str(texts), "-m", TEXT_MODEL, "--wait", "--json")
    assert result.exit_code == 0, result.output
    final = json.loads(result.stdout)  # one JSON document: no table, no bare job id
    counts = final["counts"]
    assert final["status"] == "completed" and counts["succeeded"] + counts["failed"] == 5


def test_jobs_list_filters_by_status_and_limit(api: UnitApi, texts: Path) -> None:
    first = run("submit", str(texts), "-m", TEXT_MODEL).stdout.strip()
    second = run("submit", str(texts), "-m", TEXT_MODEL).stdout.strip()
    fake_scores(api.engine, first, range(5))

    listed = json.loads(run("jobs", "list", "--json").stdout)
    completed = json.loads(run("jobs", "list", "--status", "completed", "--json").stdout)
    newest = json.loads(run("jobs", "list", "--limit", "1", "--json").stdout)
    table = run("jobs", "list")

    assert [job["id"] for job in listed] == [second, first]  # newest first
    assert [job["id"] for job in completed] == [first]
    assert [job["id"] for job in newest] == [second]
    assert table.exit_code == 0 and first in table.stdout and second in table.stdout
    assert run("jobs", "list", "--status", "nope").exit_code == 2


def test_models_json(api: UnitApi) -> None:
    listing = json.loads(run("models", "--json").stdout)
    assert TEXT_MODEL in [model["name"] for model in listing]


def test_models_show_asks_the_api_when_a_key_is_set(
    api: UnitApi, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The local settings point at another database and no models file of the service's:
    # only the API knows TEXT_MODEL.
    monkeypatch.setenv("BULKSCORE_DATABASE_URL", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    monkeypatch.setenv("BULKSCORE_MODELS", str(tmp_path / "absent.toml"))
    reset_settings_cache()

    shown = run("models", "show", TEXT_MODEL)
    as_json = json.loads(run("models", "show", TEXT_MODEL, "--json").stdout)
    missing = run("models", "show", "nope")

    assert shown.exit_code == 0, shown.output
    assert "text-classification" in shown.stdout
    assert as_json["name"] == TEXT_MODEL and as_json["task"] == "text-classification"
    assert missing.exit_code == 2 and "(HTTP 404)" in missing.stderr


def test_the_job_table_is_not_cut_when_piped(api: UnitApi, texts: Path) -> None:
    job_id = run("submit", str(texts), "-m", TEXT_MODEL).stdout.strip()
    # CliRunner's stdout is no terminal, like a pipe: every row stays on one line.
    lines = run("jobs", "list").stdout.splitlines()
    row = next(line for line in lines if job_id in line)
    assert "queued" in row and TEXT_MODEL in row
