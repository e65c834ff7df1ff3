"""``bulkscore score`` end to end on the embedded SQLite database."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from cli.main import app
from core.config import get_settings
from core.db import get_engine
from core.tables import jobs, results

runner = CliRunner()


def result_count(job_id: str) -> int:
    engine = get_engine(get_settings().database_url)
    with engine.connect() as conn:
        return conn.scalar(
            select(func.count()).select_from(results).where(results.c.job_id == job_id)
        )


@pytest.mark.parametrize(
    "name, content, ids",
    [
        ("in.txt", "a fine film\nawful\n\nlovely\n", ["1", "2", "4"]),
        ("in.jsonl", '{"id": "x", "text": "fine"}\n{"text": "bad"}\n', ["x", "2"]),
        ("in.csv", 'id,text\nr1,great\nr2,"terrible, truly"\n', ["r1", "r2"]),
    ],
)
def test_scores_each_input_format_and_exports(
    tmp_path: Path, settings_env: dict[str, str], name: str, content: str, ids: list[str]
) -> None:
    source = tmp_path / name
    source.write_text(content)
    out_csv, out_jsonl = tmp_path / "out.csv", tmp_path / "out.jsonl"
    result = runner.invoke(app, ["score", str(source), "--model", "tiny", "--out", str(out_csv)])
    assert result.exit_code == 0, result.output
    assert "completed" in result.output and "items/s" in result.output
    rows = list(csv.DictReader(out_csv.open()))
    assert [row["id"] for row in rows] == ids
    assert all(row["label"] in ("POSITIVE", "NEGATIVE") and not row["error"] for row in rows)

    result = runner.invoke(app, ["score", str(source), "--model", "tiny", "--out", str(out_jsonl)])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out_jsonl.read_text().splitlines()]
    assert [r["id"] for r in records] == ids
    assert [r["label"] for r in records] == [row["label"] for row in rows]


def test_per_item_errors_do_not_fail_the_job(tmp_path: Path, settings_env: dict[str, str]) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "fine"}\n{"text": "   "}\n{"text": "a\\u0000b"}\n{"text": "ok"}\n')
    out = tmp_path / "out.csv"
    result = runner.invoke(app, ["score", str(source), "--model", "tiny", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    assert [row["error"] for row in rows] == ["", "empty text", "text contains a NUL character", ""]
    assert rows[1]["label"] == ""
    engine = get_engine(get_settings().database_url)
    with engine.connect() as conn:
        job = conn.execute(select(jobs)).one()
    assert (job.status, job.succeeded, job.failed, job.total) == ("completed", 2, 2, 4)


def test_rerunning_a_job_id_writes_no_duplicate_rows(
    tmp_path: Path, settings_env: dict[str, str]
) -> None:
    source = tmp_path / "in.txt"
    source.write_text("\n".join(f"text number {i}" for i in range(30)))
    args = ["score", str(source), "--model", "tiny", "--job-id", "job-rerun"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert result_count("job-rerun") == 30
    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    assert "already scored" in second.output
    assert result_count("job-rerun") == 30
    engine = get_engine(get_settings().database_url)
    with engine.connect() as conn:
        job = conn.execute(select(jobs).where(jobs.c.id == "job-rerun")).one()
    assert (job.succeeded, job.failed) == (30, 0)


def test_unknown_model_is_refused_with_known_names(
    tmp_path: Path, settings_env: dict[str, str]
) -> None:
    source = tmp_path / "in.txt"
    source.write_text("x\n")
    result = runner.invoke(app, ["score", str(source), "--model", "distilbert/some-hub-id"])
    assert result.exit_code == 2
    assert "unknown model 'distilbert/some-hub-id'" in result.output
    assert "tiny" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "name, content, fragment",
    [
        ("absent.jsonl", None, "no such file"),
        ("bad.jsonl", '{"text": "a"}\n{oops\n', "line 2 is not valid JSON"),
        ("in.docx", "x", "unsupported input file type"),
    ],
)
def test_unreadable_inputs_give_a_clear_error(
    tmp_path: Path, settings_env: dict[str, str], name: str, content: str | None, fragment: str
) -> None:
    source = tmp_path / name
    if content is not None:
        source.write_text(content)
    result = runner.invoke(app, ["score", str(source), "--model", "tiny"])
    assert result.exit_code == 2
    assert fragment in result.output
    assert "Traceback" not in result.output


def test_offline_hub_model_fails_with_a_message_not_a_traceback(
    tmp_path: Path, settings_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    models = tmp_path / "models.toml"
    models.write_text(
        '[models.hubby]\ntask = "text-classification"\nbackend = "transformers"\n'
        'source = "someone/not-cached-model"\n'
    )
    monkeypatch.setenv("BULKSCORE_MODELS", str(models))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    from core.config import reset_settings_cache

    reset_settings_cache()
    source = tmp_path / "in.txt"
    source.write_text("x\n")
    result = runner.invoke(app, ["score", str(source), "--model", "hubby"])
    assert result.exit_code == 1
    assert "not in the local Hugging Face cache" in result.output
    assert 'source = "/path/to/folder"' in result.output
    assert "Traceback" not in result.output
    engine = get_engine(get_settings().database_url)
    with engine.connect() as conn:
        job = conn.execute(select(jobs)).one()
    assert job.status == "failed" and "not in the local" in job.error


def test_score_json_prints_the_summary_as_json(
    tmp_path: Path, settings_env: dict[str, str]
) -> None:
    source = tmp_path / "in.txt"
    source.write_text("a fine film\nawful\n")
    result = runner.invoke(app, ["score", str(source), "--model", "tiny", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["status"] == "completed" and summary["items"] == 2
    assert summary["succeeded"] == 2 and sum(summary["labels"].values()) == 2
    assert result_count(summary["job_id"]) == 2
    assert "loading model" in result.stderr  # the human messages stay on stderr


def test_scores_a_parquet_file_and_exports_parquet_with_kept_columns(
    tmp_path: Path, settings_env: dict[str, str]
) -> None:
    # Deferred: pyarrow only for this test's files.
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = tmp_path / "reviews.parquet"
    bodies = ["a fine film", "awful", "", "lovely"]
    table = {"key": ["k1", "k2", "k3", "k4"], "body": bodies, "lang": ["en", "de", "en", "fr"]}
    pq.write_table(pa.table(table), source, row_group_size=2)
    out_parquet, out_jsonl, out_csv = (
        tmp_path / f"out.{ext}" for ext in ("parquet", "jsonl", "csv")
    )
    options = ["--text-column", "body", "--id-column", "key", "--keep-columns", "lang"]
    for out in (out_parquet, out_jsonl, out_csv):
        args = ["score", str(source), "--model", "tiny", "--out", str(out), "--include", "input"]
        result = runner.invoke(app, [*args, *options, "--job-id", "pq-job"])
        assert result.exit_code == 0, result.output

    rows = pq.read_table(out_parquet).to_pylist()
    records = [json.loads(line) for line in out_jsonl.read_text().splitlines()]
    assert [row["id"] for row in rows] == ["k1", "k2", "k3", "k4"]
    # An input refused at intake (the empty text) is not stored: its input is null.
    assert [row["input"] for row in rows] == ["a fine film", "awful", None, "lovely"]
    assert [row["error"] for row in rows] == [None, None, "empty text", None]
    assert [dict(row["metadata"]) for row in rows] == [{"lang": v} for v in table["lang"]]
    for row, record in zip(rows, records, strict=True):
        assert (row["label"], row["score"], row["input"]) == (
            record["label"],
            record["score"],
            record["input"],
        )
        assert [[p["label"], p["score"]] for p in row["top_k"] or []] == (record["top_k"] or [])
        assert dict(row["metadata"]) == record["metadata"]
    cells = list(csv.DictReader(out_csv.open()))
    assert [json.loads(cell["metadata"]) for cell in cells] == [{"lang": v} for v in table["lang"]]
    assert [cell["input"] for cell in cells] == bodies

    # Without --text-column the file has no "text" column: a usage error naming the columns.
    missing = runner.invoke(app, ["score", str(source), "--model", "tiny"])
    assert missing.exit_code == 2
    assert "no column 'text'; the columns are 'key', 'body', 'lang'" in missing.output
