"""Parquet in and out through the API and the CLI client: multipart .parquet uploads with
chosen and kept columns, per-input metadata in JSON requests, include=input, and the
Parquet export read back with pyarrow."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from api_support import TEXT_MODEL, UnitApi, bearer, fake_scores, unit_api
from click.testing import Result
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import cli.client
from cli.main import app
from core.config import reset_settings_cache
from core.jobs.parquet_export import parquet_pieces


@pytest.fixture()
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[UnitApi]:
    with unit_api(tmp_path) as api:
        # The CLI's HTTP client talks to the app in-process instead of over a socket.
        def in_process_client(base_url: str, headers: dict[str, str], **_: Any) -> TestClient:
            return TestClient(api.client.app, base_url=base_url, headers=headers)

        monkeypatch.setattr(cli.client.httpx, "Client", in_process_client)
        monkeypatch.setenv("BULKSCORE_API_URL", "http://testserver")
        monkeypatch.setenv("BULKSCORE_API_KEY", api.key)
        reset_settings_cache()
        yield api
    reset_settings_cache()


def parquet_bytes(columns: dict[str, list[Any]]) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.table(columns), sink, row_group_size=2)
    return sink.getvalue()


REVIEWS = {
    "review_id": ["a", "b", "c", "d", "e"],
    "body": ["good", "bad", "fine", "meh", "great"],
    "lang": ["en", "de", "en", None, "fr"],
    "stars": [5, 1, 3, 2, 4],
}


def upload(api: UnitApi, raw: bytes, name: str = "reviews.parquet", **fields: str) -> Any:
    return api.client.post(
        "/v1/jobs",
        data={"model": TEXT_MODEL, **fields},
        files={"file": (name, raw, "application/octet-stream")},
        headers=bearer(api.key),
    )


def read_parquet(raw: bytes) -> list[dict[str, Any]]:
    return pq.read_table(io.BytesIO(raw)).to_pylist()


def as_jsonl_row(row: dict[str, Any]) -> dict[str, Any]:
    """A Parquet row in the shape of a JSON Lines row (top_k pairs, metadata a dict)."""
    out = dict(row)
    out["top_k"] = (
        [[pair["label"], pair["score"]] for pair in row["top_k"]] if row["top_k"] else None
    )
    if row["metadata"] is None:
        del out["metadata"]
    else:
        out["metadata"] = dict(row["metadata"])
    return out


def test_a_parquet_upload_keeps_columns_into_every_export(api: UnitApi) -> None:
    fields = {"text_column": "body", "id_column": "review_id", "keep_columns": "lang,stars"}
    created = upload(api, parquet_bytes(REVIEWS), **fields)
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    assert created.json()["counts"]["total"] == 5
    fake_scores(api.engine, job_id, range(5))

    page = api.get(f"/v1/jobs/{job_id}/results").json()["data"]
    assert [(row["id"], row["metadata"]) for row in page] == [
        ("a", {"lang": "en", "stars": "5"}),
        ("b", {"lang": "de", "stars": "1"}),
        ("c", {"lang": "en", "stars": "3"}),
        ("d", {"stars": "2"}),  # a null cell is left out
        ("e", {"lang": "fr", "stars": "4"}),
    ]
    assert "input" not in page[0]
    with_input = api.get(f"/v1/jobs/{job_id}/results", params={"include": "input"}).json()
    assert [row["input"] for row in with_input["data"]] == REVIEWS["body"]

    jsonl = api.get(f"/v1/jobs/{job_id}/results", params={"format": "jsonl", "include": "input"})
    lines = [json.loads(line) for line in jsonl.text.splitlines()]
    assert [line["metadata"]["stars"] for line in lines] == ["5", "1", "3", "2", "4"]
    assert [line["input"] for line in lines] == REVIEWS["body"]

    exported = api.get(
        f"/v1/jobs/{job_id}/results", params={"format": "parquet", "include": "input"}
    )
    assert exported.status_code == 200
    assert exported.headers["content-type"] == "application/vnd.apache.parquet"
    assert [as_jsonl_row(row) for row in read_parquet(exported.content)] == lines

    # CSV has fixed columns: metadata gets one because this job's inputs carry some.
    plain = list(
        csv.DictReader(
            io.StringIO(api.get(f"/v1/jobs/{job_id}/results", params={"format": "csv"}).text)
        )
    )
    assert list(plain[0]) == [
        "index",
        "id",
        "label",
        "score",
        "top_k",
        "error",
        "cached",
        "metadata",
    ]
    assert json.loads(plain[0]["metadata"]) == {"lang": "en", "stars": "5"}
    full = list(
        csv.DictReader(
            io.StringIO(
                api.get(
                    f"/v1/jobs/{job_id}/results", params={"format": "csv", "include": "input"}
                ).text
            )
        )
    )
    assert [row["input"] for row in full] == REVIEWS["body"]


def test_a_job_without_metadata_exports_as_before(api: UnitApi) -> None:
    created = upload(api, parquet_bytes({"text": ["one", "two", "three"]}))
    job_id = created.json()["id"]
    fake_scores(api.engine, job_id, range(3))
    page = api.get(f"/v1/jobs/{job_id}/results").json()["data"]
    assert [row["id"] for row in page] == ["1", "2", "3"]
    assert all("metadata" not in row and "input" not in row for row in page)
    text = api.get(f"/v1/jobs/{job_id}/results", params={"format": "csv"}).text
    assert text.splitlines()[0] == "index,id,label,score,top_k,error,cached"
    jsonl = api.get(f"/v1/jobs/{job_id}/results", params={"format": "jsonl"}).text
    assert all("metadata" not in json.loads(line) for line in jsonl.splitlines())
    rows = read_parquet(api.get(f"/v1/jobs/{job_id}/results", params={"format": "parquet"}).content)
    assert [as_jsonl_row(row) for row in rows] == [json.loads(line) for line in jsonl.splitlines()]
    assert "input" not in rows[0]


def test_bad_uploads_and_columns_are_clear_422s(api: UnitApi) -> None:
    missing = upload(api, parquet_bytes(REVIEWS))
    assert missing.status_code == 422
    assert (
        "reviews.parquet: no column 'text'; the columns are 'review_id', 'body', 'lang', 'stars'"
        in missing.json()["detail"]
    )
    kept = upload(api, parquet_bytes(REVIEWS), text_column="body", keep_columns="nope")
    assert kept.status_code == 422 and "no column 'nope'" in kept.json()["detail"]
    broken = upload(api, b"not parquet at all")
    assert broken.status_code == 422 and "not a readable Parquet file" in broken.json()["detail"]
    many = upload(api, parquet_bytes(REVIEWS), keep_columns=",".join(f"c{n}" for n in range(17)))
    assert many.status_code == 422 and "at most 16 columns" in many.json()["detail"]


def test_per_input_metadata_in_a_json_request_is_echoed_and_bounded(api: UnitApi) -> None:
    body = {
        "model": TEXT_MODEL,
        "inputs": [
            {"id": "x", "text": "good", "metadata": {"source": "web"}},
            {"id": "y", "text": "bad"},
        ],
    }
    created = api.client.post("/v1/jobs", json=body, headers=bearer(api.key))
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    fake_scores(api.engine, job_id, range(2))
    page = api.get(f"/v1/jobs/{job_id}/results").json()["data"]
    assert page[0]["metadata"] == {"source": "web"} and "metadata" not in page[1]

    # The same inputs with other metadata are another request (idempotency, dedup).
    other = {**body, "inputs": [{**body["inputs"][0], "metadata": {"source": "app"}}]}
    again = api.client.post(
        "/v1/jobs", json=other, headers={**bearer(api.key), "Idempotency-Key": "m"}
    )
    assert again.status_code == 202

    too_many = {
        "model": TEXT_MODEL,
        "inputs": [{"text": "a", "metadata": {f"k{n}": "v" for n in range(17)}}],
    }
    refused = api.client.post("/v1/jobs", json=too_many, headers=bearer(api.key))
    assert refused.status_code == 422
    not_strings = {"model": TEXT_MODEL, "inputs": [{"text": "a", "metadata": {"k": 1}}]}
    assert api.client.post("/v1/jobs", json=not_strings, headers=bearer(api.key)).status_code == 422


def run(*args: str) -> Result:
    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def test_cli_submit_parquet_and_download_parquet(api: UnitApi, tmp_path: Path) -> None:
    source = tmp_path / "reviews.parquet"
    source.write_bytes(parquet_bytes(REVIEWS))
    submitted = run(
        "submit",
        str(source),
        "-m",
        TEXT_MODEL,
        "--text-column",
        "body",
        "--id-column",
        "review_id",
        "--keep-columns",
        "lang",
    )
    assert submitted.exit_code == 0, submitted.output
    job_id = submitted.stdout.strip()
    fake_scores(api.engine, job_id, range(5))

    out = tmp_path / "out.parquet"
    downloaded = run("results", job_id, "--out", str(out), "--include", "input")
    assert downloaded.exit_code == 0, downloaded.output
    rows = pq.read_table(out).to_pylist()
    assert [(row["id"], row["input"]) for row in rows] == list(
        zip(REVIEWS["review_id"], REVIEWS["body"], strict=True)
    )
    assert [row["metadata"] for row in rows][:2] == [[("lang", "en")], [("lang", "de")]]
    missing = run("submit", str(source), "-m", TEXT_MODEL)
    assert missing.exit_code == 2
    assert "no column 'text'" in missing.stderr
    unknown = run("results", job_id, "--include", "everything")
    assert unknown.exit_code == 2 and "unknown --include 'everything'" in unknown.stderr


def test_a_parquet_export_comes_in_row_groups() -> None:
    def page(start: int, stop: int) -> pa.Table:
        count = stop - start
        return pa.table(
            {
                "index": list(range(start, stop)),
                "id": [str(n) for n in range(start, stop)],
                "label": ["POSITIVE"] * count,
                "score": [0.5] * count,
                "top_k": ['[["POSITIVE",0.5],["NEGATIVE",0.5]]', None, "null"] * (count // 3)
                + [None] * (count % 3),
                "error": [None] * count,
                "cached": [False] * count,
                "metadata": ['{"lang": "en"}', None] * (count // 2) + [None] * (count % 2),
            }
        )

    pieces = list(parquet_pieces(iter([page(0, 10), page(10, 20), page(20, 25)])))
    # A piece per row group written, and the footer: never one piece for the whole file.
    assert len(pieces) >= 3
    parquet = pq.ParquetFile(io.BytesIO(b"".join(pieces)))
    assert parquet.metadata.num_row_groups == 3
    table = parquet.read()
    assert table.column("index").to_pylist() == list(range(25))
    assert table.column("top_k").to_pylist()[:3] == [
        [{"label": "POSITIVE", "score": 0.5}, {"label": "NEGATIVE", "score": 0.5}],
        None,
        None,
    ]
    assert table.column("metadata").to_pylist()[:2] == [[("lang", "en")], None]
