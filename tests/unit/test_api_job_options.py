"""Job metadata, unique item ids and the job list's cursor."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_support import TEXT_MODEL, UnitApi, bearer, unit_api
from sqlalchemy import func, select

from core.tables import jobs


@pytest.fixture()
def api(tmp_path: Path) -> Iterator[UnitApi]:
    with unit_api(tmp_path) as api:
        yield api


def job_count(api: UnitApi) -> int:
    with api.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(jobs)).scalar_one())


def submit(api: UnitApi, headers: dict[str, str] | None = None, **fields: Any) -> Any:
    body = {"model": TEXT_MODEL, "inputs": [{"id": "a", "text": "x"}], **fields}
    return api.client.post("/v1/jobs", json=body, headers={**bearer(api.key), **(headers or {})})


def upload(api: UnitApi, content: bytes, **fields: str) -> Any:
    return api.client.post(
        "/v1/jobs",
        data={"model": TEXT_MODEL, **fields},
        files={"file": ("in.jsonl", content, "application/jsonl")},
        headers=bearer(api.key),
    )


# Metadata


def test_metadata_is_stored_and_echoed(api: UnitApi) -> None:
    labels = {"team": "search", "run": "2026-12-01", "note": "é" * 512}
    created = submit(api, metadata=labels)
    assert created.status_code == 202, created.text
    assert created.json()["metadata"] == labels
    job_id = created.json()["id"]
    assert api.get(f"/v1/jobs/{job_id}").json()["metadata"] == labels
    assert api.get("/v1/jobs").json()["data"][0]["metadata"] == labels
    assert submit(api).json()["metadata"] is None


def test_multipart_metadata_is_a_json_string(api: UnitApi) -> None:
    created = upload(api, b'{"text": "x"}\n', metadata=json.dumps({"source": "upload"}))
    assert created.status_code == 202, created.text
    assert created.json()["metadata"] == {"source": "upload"}
    refused = upload(api, b'{"text": "x"}\n', metadata="[1, 2]")
    assert refused.status_code == 422
    assert "metadata" in refused.json()["detail"]
    assert job_count(api) == 1


@pytest.mark.parametrize(
    "metadata",
    [
        {f"k{i}": "v" for i in range(17)},
        {"k" * 65: "v"},
        {"": "v"},
        {"k": "v" * 513},
        {"k": 1},
        {"k": None},
        {"k": "a\u0000b"},
        ["k", "v"],
        "k=v",
    ],
)
def test_metadata_out_of_bounds_is_a_422(api: UnitApi, metadata: Any) -> None:
    response = submit(api, metadata=metadata)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "invalid_request"
    assert response.json()["errors"][0]["loc"][0] == "metadata"
    assert job_count(api) == 0


def test_metadata_is_part_of_the_idempotent_request(api: UnitApi) -> None:
    key = {"Idempotency-Key": "with-metadata"}
    first = submit(api, headers=key, metadata={"a": "1"})
    # The same object in another key order is the same request.
    replay = api.client.post(
        "/v1/jobs",
        content=b'{"metadata": {"a": "1"}, "model": "tiny", "inputs": [{"id": "a", "text": "x"}]}',
        headers={**bearer(api.key), **key, "Content-Type": "application/json"},
    )
    changed = submit(api, headers=key, metadata={"a": "2"})
    assert (first.status_code, replay.status_code) == (202, 200)
    assert replay.json()["id"] == first.json()["id"]
    assert changed.status_code == 409 and changed.json()["code"] == "idempotency_conflict"


# unique_ids


def test_unique_ids_refuses_repeated_ids_naming_them(api: UnitApi) -> None:
    inputs = [{"id": i, "text": "t"} for i in ["a", "b", "a", "c", "b", "a"]]
    inputs += [{"id": f"d{n % 7}", "text": "t"} for n in range(14)]
    response = submit(api, inputs=inputs, unique_ids=True)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "duplicate_ids"
    assert "9 ids repeat" in body["detail"]
    assert "'a' (inputs 1, 3, 6)" in body["detail"]
    assert "'b' (inputs 2, 5)" in body["detail"]
    assert "and 4 more" in body["detail"]
    assert "'c'" not in body["detail"]
    assert job_count(api) == 0
    # Without it, repeated ids are accepted as before; distinct ids pass with it.
    assert submit(api, inputs=inputs).status_code == 202
    assert submit(api, inputs=inputs[:2], unique_ids=True).status_code == 202


def test_unique_ids_compares_ids_as_stored(api: UnitApi) -> None:
    # 1 and "1" are the same id once stored (ids are text); a missing id is its position.
    same = submit(api, inputs=[{"id": 1, "text": "t"}, {"id": "1", "text": "t"}], unique_ids=True)
    assert same.status_code == 422 and same.json()["code"] == "duplicate_ids"
    positions = submit(api, inputs=[{"text": "t"}, {"id": "1", "text": "t"}], unique_ids=True)
    assert positions.status_code == 422


def test_unique_ids_in_a_multipart_upload(api: UnitApi) -> None:
    lines = b'{"id": "x", "text": "a"}\n{"id": "x", "text": "b"}\n'
    refused = upload(api, lines, unique_ids="true")
    assert refused.status_code == 422 and refused.json()["code"] == "duplicate_ids"
    assert upload(api, lines, unique_ids="false").status_code == 202
    assert upload(api, lines, unique_ids="maybe").status_code == 422


# The job list's cursor


def listed(api: UnitApi, **params: Any) -> tuple[list[str], str | None]:
    response = api.get("/v1/jobs", params=params)
    assert response.status_code == 200, response.text
    return [job["id"] for job in response.json()["data"]], response.json()["next_after"]


def test_cursor_pages_newest_first_and_is_stable_under_inserts(api: UnitApi) -> None:
    made = [submit(api).json()["id"] for _ in range(7)]
    first, cursor = listed(api, limit=3)
    assert first == made[::-1][:3]
    # Jobs submitted while paging sort before the cursor: no later page shows them, and
    # none of the older jobs is skipped or repeated.
    newer = [submit(api).json()["id"] for _ in range(2)]
    second, cursor = listed(api, limit=3, after=cursor)
    third, last = listed(api, limit=3, after=cursor)
    assert second == made[::-1][3:6]
    assert third == made[:1] and last is None
    everything, none_left = listed(api, limit=100)
    assert everything == (made + newer)[::-1] and none_left is None


def test_cursor_with_a_status_filter_and_other_keys(api: UnitApi) -> None:
    mine = [submit(api).json()["id"] for _ in range(3)]
    api.client.post(
        "/v1/jobs",
        json={"model": TEXT_MODEL, "inputs": [{"text": "x"}]},
        headers=bearer(api.other_key),
    )
    api.client.post(f"/v1/jobs/{mine[1]}/cancel", headers=bearer(api.key))
    page, cursor = listed(api, limit=1, status="queued")
    rest, end = listed(api, limit=1, status="queued", after=cursor)
    assert (page, rest, end) == ([mine[2]], [mine[0]], None)


@pytest.mark.parametrize(
    "cursor", ["nope", "", "W10", "WyJ4IiwgImEiXQ", "WyIyMDI2IiwgIlx1MDAwMCJd"]
)
def test_a_cursor_that_is_not_one_is_a_422(api: UnitApi, cursor: str) -> None:
    response = api.get("/v1/jobs", params={"after": cursor})
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "invalid_cursor"
