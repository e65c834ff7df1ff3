"""GET /v1/jobs/{id}/results: keyset pages, CSV and JSON Lines downloads."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_support import UnitApi, fake_scores, unit_api

from core.jobs.export import export_lines
from core.jobs.results import iter_results


@pytest.fixture()
def api(tmp_path: Path) -> Iterator[UnitApi]:
    with unit_api(tmp_path, chunk_size=3) as api:
        yield api


@pytest.fixture()
def scored_job(api: UnitApi) -> str:
    job_id: str = api.post_job([f"text {i}" for i in range(7)]).json()["id"]
    fake_scores(api.engine, job_id, range(7))
    return job_id


def test_pages_follow_next_after_to_the_end(api: UnitApi, scored_job: str) -> None:
    pages, after = [], -1
    while True:
        page = api.get(f"/v1/jobs/{scored_job}/results", params={"limit": 3, "after": after}).json()
        pages.append([row["index"] for row in page["data"]])
        if page["next_after"] is None:
            break
        after = page["next_after"]

    assert pages == [[0, 1, 2], [3, 4, 5], [6]]


def test_a_page_that_ends_exactly_at_the_last_row_says_so(api: UnitApi, scored_job: str) -> None:
    page = api.get(f"/v1/jobs/{scored_job}/results", params={"limit": 7}).json()
    assert len(page["data"]) == 7
    assert page["next_after"] is None
    empty = api.get(f"/v1/jobs/{scored_job}/results", params={"after": 6}).json()
    assert empty == {"data": [], "next_after": None}


def test_rows_carry_labels_scores_top_k_and_errors(api: UnitApi, scored_job: str) -> None:
    rows = api.get(f"/v1/jobs/{scored_job}/results", params={"limit": 2}).json()["data"]
    assert rows == [
        {
            "index": 0,
            "id": "r0",
            "label": "POSITIVE",
            "score": 0.75,
            "top_k": [["POSITIVE", 0.75], ["NEGATIVE", 0.25]],
            "error": None,
            "cached": False,
        },
        {
            "index": 1,
            "id": "r1",
            "label": None,
            "score": None,
            "top_k": None,
            "error": "bad item 1",
            "cached": False,
        },
    ]


def test_results_are_readable_while_the_job_runs_without_skipping_late_rows(api: UnitApi) -> None:
    job_id = api.post_job([f"text {i}" for i in range(7)]).json()["id"]
    url = f"/v1/jobs/{job_id}/results"
    fake_scores(api.engine, job_id, [3, 4, 5])  # a later chunk finished first
    assert api.get(f"/v1/jobs/{job_id}").json()["status"] == "running"
    # Row 0 is not written yet: the page stops there and keeps a cursor to poll with.
    assert api.get(url).json() == {"data": [], "next_after": -1}

    fake_scores(api.engine, job_id, [0, 1])
    page = api.get(url).json()
    assert ([row["index"] for row in page["data"]], page["next_after"]) == ([0, 1], 1)

    fake_scores(api.engine, job_id, [2, 6])  # the job is complete now
    page = api.get(url, params={"after": 1}).json()
    assert ([row["index"] for row in page["data"]], page["next_after"]) == ([2, 3, 4, 5, 6], None)


def test_csv_download_streams_every_row(api: UnitApi, scored_job: str) -> None:
    response = api.get(f"/v1/jobs/{scored_job}/results", params={"format": "csv"})

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert f'filename="{scored_job}.csv"' in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [row["index"] for row in rows] == [str(i) for i in range(7)]
    assert rows[0]["label"] == "POSITIVE" and rows[1]["error"] == "bad item 1"
    with api.engine.connect() as conn:
        expected = "".join(export_lines(iter_results(conn, scored_job), "csv"))
    assert response.text == expected


def test_jsonl_download_streams_every_row(api: UnitApi, scored_job: str) -> None:
    response = api.get(f"/v1/jobs/{scored_job}/results", params={"format": "jsonl"})

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    rows = [json.loads(line) for line in response.text.splitlines()]
    assert len(rows) == 7
    assert rows[6] == {
        "index": 6,
        "id": "r6",
        "label": "POSITIVE",
        "score": 0.75,
        "top_k": [["POSITIVE", 0.75], ["NEGATIVE", 0.25]],
        "error": None,
        "cached": False,
    }


def test_a_large_download_is_complete(api: UnitApi) -> None:
    # More rows than one export page (5,000) and one CSV piece (500).
    job_id = api.post_job([f"t{i}" for i in range(5003)]).json()["id"]
    fake_scores(api.engine, job_id, range(5003))
    response = api.get(f"/v1/jobs/{job_id}/results", params={"format": "jsonl"})
    indexes = [json.loads(line)["index"] for line in response.text.splitlines()]
    assert indexes == list(range(5003))


@pytest.mark.parametrize(
    "params", [{"format": "xml"}, {"limit": 0}, {"limit": 5001}, {"after": -2}, {"after": "x"}]
)
def test_bad_parameters_answer_422(
    api: UnitApi, scored_job: str, params: dict[str, object]
) -> None:
    assert api.get(f"/v1/jobs/{scored_job}/results", params=params).status_code == 422
