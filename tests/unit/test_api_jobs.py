"""POST /v1/jobs, GET /v1/jobs, GET /v1/jobs/{id}, cancel: the app on SQLite, a fake queue."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_support import IMAGE_MODEL, TEXT_MODEL, UnitApi, bearer, fake_scores, unit_api
from sqlalchemy import func, select

from core.tables import chunks, items, jobs


@pytest.fixture()
def api(tmp_path: Path) -> Iterator[UnitApi]:
    with unit_api(tmp_path, chunk_size=2, max_text_chars=50) as api:
        yield api


def count(api: UnitApi, table: object) -> int:
    with api.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())  # type: ignore[arg-type]


def stored_items(api: UnitApi, job_id: str) -> list[tuple[str, str | None, str | None]]:
    with api.engine.connect() as conn:
        rows = conn.execute(
            select(items.c.item_id, items.c.text, items.c.error)
            .where(items.c.job_id == job_id)
            .order_by(items.c.index)
        )
        return [tuple(row) for row in rows]  # type: ignore[misc]


def test_json_job_is_stored_split_into_chunks_and_queued(api: UnitApi) -> None:
    response = api.post_job(["good", "bad", "fine", "meh", "ok"])

    assert response.status_code == 202
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["model"] == TEXT_MODEL
    assert job["status"] == "queued"
    assert job["counts"] == {"total": 5, "succeeded": 0, "failed": 0}
    assert job["started_at"] is None and job["finished_at"] is None and job["error"] is None
    assert stored_items(api, job["id"]) == [
        ("r0", "good", None),
        ("r1", "bad", None),
        ("r2", "fine", None),
        ("r3", "meh", None),
        ("r4", "ok", None),
    ]
    # chunk_size=2: chunks [0,2), [2,4), [4,5), one task each, on the model's queue.
    assert count(api, chunks) == 3
    assert api.queue.sent == [(job["id"], TEXT_MODEL, [0, 1, 2])]


def test_ids_default_to_the_1_based_position(api: UnitApi) -> None:
    body = {"model": TEXT_MODEL, "inputs": [{"text": "a"}, {"id": 7, "text": "b"}, {"text": "c"}]}
    response = api.client.post("/v1/jobs", json=body, headers=bearer(api.key))
    assert response.status_code == 202
    assert [row[0] for row in stored_items(api, response.json()["id"])] == ["1", "7", "3"]


def test_unusable_texts_become_per_item_errors_and_the_job_is_accepted(api: UnitApi) -> None:
    # A lone surrogate escape is valid JSON syntax but not Unicode; send it raw.
    body = (
        '{"model": "tiny", "inputs": ['
        '{"id": "ok", "text": "fine"}, {"id": "empty", "text": "  "},'
        '{"id": "long", "text": "' + "x" * 51 + '"}, {"id": "nul", "text": "a\\u0000b"},'
        '{"id": "surrogate", "text": "a\\ud800b"}]}'
    )
    response = api.client.post(
        "/v1/jobs",
        content=body,
        headers={**bearer(api.key), "Content-Type": "application/json"},
    )

    assert response.status_code == 202, response.text
    stored = {
        item_id: (text, error) for item_id, text, error in stored_items(api, response.json()["id"])
    }
    assert stored["ok"] == ("fine", None)
    assert stored["empty"] == (None, "empty text")
    assert stored["long"] == (None, "text is 51 characters; the limit is 50")
    assert stored["nul"] == (None, "text contains a NUL character")
    assert stored["surrogate"][0] is None and "surrogate" in (stored["surrogate"][1] or "")


@pytest.mark.parametrize(
    ("filename", "content", "ids"),
    [
        ("in.jsonl", b'{"id": "a", "text": "one"}\n\n{"text": "two"}\n', ["a", "3"]),
        ("in.csv", b"id,text\nx,one\ny,two\n", ["x", "y"]),
        ("in.TXT", b"one\n\ntwo\n", ["1", "3"]),
    ],
)
def test_multipart_upload_is_parsed_like_bulkscore_score(
    api: UnitApi, filename: str, content: bytes, ids: list[str]
) -> None:
    response = api.client.post(
        "/v1/jobs",
        data={"model": TEXT_MODEL},
        files={"file": (filename, content, "application/octet-stream")},
        headers=bearer(api.key),
    )
    assert response.status_code == 202, response.text
    assert response.json()["counts"]["total"] == 2
    assert [(item_id, text) for item_id, text, _ in stored_items(api, response.json()["id"])] == [
        (ids[0], "one"),
        (ids[1], "two"),
    ]
    assert len(api.queue.sent) == 1


@pytest.mark.parametrize(
    ("data", "files", "message"),
    [
        ({"model": TEXT_MODEL}, {"file": ("in.pdf", b"x", "application/pdf")}, "must end in"),
        ({"model": TEXT_MODEL}, {"file": ("in.jsonl", b'{"text": "a"}\n{oops\n', "x")}, "line 2"),
        (
            {"model": TEXT_MODEL},
            {"file": ("in.csv", b"body\nhello\n", "text/csv")},
            '"text" column',
        ),
        ({"model": TEXT_MODEL}, {"file": ("in.txt", b"\xff\xfe bad", "text/plain")}, "UTF-8"),
        ({}, {"file": ("in.txt", b"hello", "text/plain")}, "'model' field"),
        ({"model": TEXT_MODEL, "file": "not a file"}, {"other": ("a.txt", b"x", "x")}, "'file'"),
    ],
)
def test_multipart_problems_answer_422_and_store_nothing(
    api: UnitApi, data: dict[str, str], files: dict[str, tuple[str, bytes, str]], message: str
) -> None:
    response = api.client.post("/v1/jobs", data=data, files=files, headers=bearer(api.key))
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]
    assert count(api, jobs) == 0
    assert api.queue.sent == []


def test_unknown_model_answers_422_naming_the_known_models(api: UnitApi) -> None:
    response = api.post_job(["hello"], model="nope")
    assert response.status_code == 422
    assert (
        response.json()["detail"]
        == f"unknown model 'nope'; known models: {IMAGE_MODEL}, {TEXT_MODEL}."
    )
    assert count(api, jobs) == 0


def test_a_path_or_hub_id_is_refused_as_a_model_name(api: UnitApi) -> None:
    response = api.post_job(["hello"], model="distilbert/distilbert-base-uncased")
    assert response.status_code == 422
    assert "never paths or hub ids" in response.json()["detail"]


def test_an_image_model_is_refused_for_texts(api: UnitApi) -> None:
    response = api.post_job(["hello"], model=IMAGE_MODEL)
    assert response.status_code == 422
    assert "scores images" in response.json()["detail"]


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ('{"model": "tiny", "inputs": []}', None),
        ('{"model": "tiny"}', ["inputs"]),
        ('{"model": "tiny", "inputs": [{"text": 5}]}', ["inputs", 0, "text"]),
        ('{"model": "tiny", "inputs": [], "extra": 1}', ["extra"]),
        ('{"model": "tiny", "inputs": [', []),
        ('{"model": "tiny", "inputs": ' + "[" * 100_000, []),
        ('{"model": "tiny", "inputs": [{"text": NaN}]}', ["inputs", 0, "text"]),
    ],
)
def test_malformed_json_answers_422(api: UnitApi, body: str, where: list[object] | None) -> None:
    response = api.client.post(
        "/v1/jobs", content=body, headers={**bearer(api.key), "Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text
    problem = response.json()
    if where is None:
        assert problem["detail"] == "the job has no inputs; send at least one"
        assert problem["code"] == "no_inputs"
    else:
        errors = problem["errors"]
        assert problem["code"] == "invalid_request"
        assert [error["loc"] for error in errors if error["loc"] == where], errors
        # The (possibly huge) input is never echoed back.
        assert all("input" not in error for error in errors)
    assert count(api, jobs) == 0


def test_other_content_types_answer_415(api: UnitApi) -> None:
    response = api.client.post(
        "/v1/jobs", content=b"hello", headers={**bearer(api.key), "Content-Type": "text/plain"}
    )
    assert response.status_code == 415


def test_too_many_inputs_answer_413_and_store_nothing(tmp_path: Path) -> None:
    with unit_api(tmp_path, max_items_per_job=3) as api:
        assert api.post_job(["a", "b", "c"]).status_code == 202
        response = api.post_job(["a", "b", "c", "d"])
        assert response.status_code == 413
        assert response.json()["detail"] == "the job has 4 inputs; the limit is 3 per job"
        assert count(api, jobs) == 1


def test_a_body_over_the_limit_answers_413_and_stores_nothing(tmp_path: Path) -> None:
    with unit_api(tmp_path, max_body_bytes=4096) as api:
        response = api.post_job(["x" * 5000])
        assert response.status_code == 413
        assert "4096 bytes" in response.json()["detail"]
        upload = api.client.post(
            "/v1/jobs",
            data={"model": TEXT_MODEL},
            files={"file": ("big.txt", b"line\n" * 1000, "text/plain")},
            headers=bearer(api.key),
        )
        assert upload.status_code == 413
        assert count(api, jobs) == 0
        assert api.post_job(["x" * 3000]).status_code == 202


def test_same_idempotency_key_and_body_returns_the_same_job(api: UnitApi) -> None:
    headers = {"Idempotency-Key": "batch-1"}
    first = api.post_job(["a", "b"], headers=headers)
    again = api.post_job(["a", "b"], headers=headers)

    assert first.status_code == 202
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert count(api, jobs) == 1
    assert len(api.queue.sent) == 1  # the replay queued nothing


def test_same_idempotency_key_with_another_body_answers_409(api: UnitApi) -> None:
    headers = {"Idempotency-Key": "batch-1"}
    first = api.post_job(["a", "b"], headers=headers)
    other_texts = api.post_job(["a", "c"], headers=headers)
    assert other_texts.status_code == 409
    assert first.json()["id"] in other_texts.json()["detail"]
    assert count(api, jobs) == 1


def test_idempotency_keys_are_per_api_key(api: UnitApi) -> None:
    headers = {"Idempotency-Key": "batch-1"}
    mine = api.post_job(["a"], headers=headers)
    theirs = api.post_job(["a"], key=api.other_key, headers=headers)
    assert mine.status_code == theirs.status_code == 202
    assert mine.json()["id"] != theirs.json()["id"]


def test_idempotent_multipart_upload(api: UnitApi) -> None:
    def upload(content: bytes) -> object:
        return api.client.post(
            "/v1/jobs",
            data={"model": TEXT_MODEL},
            files={"file": ("in.txt", content, "text/plain")},
            headers={**bearer(api.key), "Idempotency-Key": "file-1"},
        )

    first, again, changed = upload(b"a\nb\n"), upload(b"a\nb\n"), upload(b"a\nc\n")
    assert (first.status_code, again.status_code, changed.status_code) == (202, 200, 409)  # type: ignore[attr-defined]
    assert first.json()["id"] == again.json()["id"]  # type: ignore[attr-defined]


def test_the_request_hash_is_made_and_stored_only_for_an_idempotency_key(api: UnitApi) -> None:
    # The hash a keyed job stores is the one keyed jobs always stored (the canonical JSON
    # of the model and inputs), so a replay sent across an upgrade still matches; without a
    # key nothing compares it, and it is not computed.
    keyed = api.post_job(["a", "b"], headers={"Idempotency-Key": "hash-1"}).json()["id"]
    plain = api.post_job(["a", "b"]).json()["id"]
    canonical = json.dumps(
        [TEXT_MODEL, [["r0", "a", None], ["r1", "b", None]]], separators=(",", ":"), sort_keys=True
    )
    expected = hashlib.sha256(b"json\0" + canonical.encode()).hexdigest()
    with api.engine.connect() as conn:
        stored = dict(conn.execute(select(jobs.c.id, jobs.c.request_hash)).all())
    assert stored == {keyed: expected, plain: None}


def test_an_unusable_idempotency_key_answers_422(api: UnitApi) -> None:
    response = api.post_job(["a"], headers={"Idempotency-Key": "k" * 201})
    assert response.status_code == 422
    assert count(api, jobs) == 0


def test_broker_down_answers_503_and_leaves_no_job(api: UnitApi) -> None:
    api.queue.down = True
    response = api.post_job(["a", "b", "c"], headers={"Idempotency-Key": "retry-me"})

    assert response.status_code == 503
    assert "broker" in response.json()["detail"]
    assert response.headers["retry-after"] == "5"
    assert (count(api, jobs), count(api, items), count(api, chunks)) == (0, 0, 0)
    # The idempotency key is free again: the retry creates the job.
    api.queue.down = False
    assert api.post_job(["a", "b", "c"], headers={"Idempotency-Key": "retry-me"}).status_code == 202


def test_job_status_follows_the_results(api: UnitApi) -> None:
    job_id = api.post_job(["a", "b", "c"]).json()["id"]

    fake_scores(api.engine, job_id, [0, 1])
    running = api.get(f"/v1/jobs/{job_id}").json()
    fake_scores(api.engine, job_id, [2])
    done = api.get(f"/v1/jobs/{job_id}").json()

    assert running["status"] == "running"
    assert running["counts"] == {"total": 3, "succeeded": 1, "failed": 1}
    assert running["started_at"] is not None and running["finished_at"] is None
    assert done["status"] == "completed"
    assert done["counts"] == {"total": 3, "succeeded": 2, "failed": 1}
    assert done["finished_at"] is not None
    assert set(done) == {
        "id",
        "model",
        "status",
        "counts",
        "created_at",
        "started_at",
        "finished_at",
        "error",
        "expires_at",
        "priority",
        "cache",
        "queue",
        "warnings",
        "metadata",
        "purged",
    }
    assert done["purged"] == {"inputs": None, "results": None}


def test_unknown_job_answers_404(api: UnitApi) -> None:
    response = api.get("/v1/jobs/0123456789abcdef0123456789abcdef")
    assert response.status_code == 404
    assert response.json()["detail"] == "job 0123456789abcdef0123456789abcdef not found"


def test_list_jobs_newest_first_filtered_and_limited(api: UnitApi) -> None:
    first = api.post_job(["a"]).json()["id"]
    second = api.post_job(["b"]).json()["id"]
    third = api.post_job(["c"]).json()["id"]
    api.post_job(["theirs"], key=api.other_key)
    fake_scores(api.engine, second, [0])

    listed = [job["id"] for job in api.get("/v1/jobs").json()["data"]]
    completed = api.get("/v1/jobs", params={"status": "completed"}).json()["data"]
    limited = api.get("/v1/jobs", params={"limit": 2}).json()["data"]

    assert listed == [third, second, first]
    assert [job["id"] for job in completed] == [second]
    assert [job["id"] for job in limited] == [third, second]
    assert api.get("/v1/jobs", params={"status": "bogus"}).status_code == 422
    assert api.get("/v1/jobs", params={"limit": 0}).status_code == 422


def test_cancel_stops_queued_chunks_and_keeps_written_results(api: UnitApi) -> None:
    job_id = api.post_job(["a", "b", "c", "d", "e"]).json()["id"]
    fake_scores(api.engine, job_id, [0, 1])

    response = api.client.post(f"/v1/jobs/{job_id}/cancel", headers=bearer(api.key))

    assert response.status_code == 200
    job = response.json()
    assert job["status"] == "cancelled"
    assert job["counts"] == {"total": 5, "succeeded": 1, "failed": 1}
    with api.engine.connect() as conn:
        states = [
            row.status for row in conn.execute(select(chunks.c.status).order_by(chunks.c.index))
        ]
    assert states == ["cancelled", "cancelled", "cancelled"]
    assert len(api.get(f"/v1/jobs/{job_id}/results").json()["data"]) == 2


def test_cancelling_a_finished_job_changes_nothing(api: UnitApi) -> None:
    job_id = api.post_job(["a"]).json()["id"]
    fake_scores(api.engine, job_id, [0])
    response = api.client.post(f"/v1/jobs/{job_id}/cancel", headers=bearer(api.key))
    assert response.status_code == 200
    assert response.json()["status"] == "completed"


def test_a_10k_text_json_job_is_accepted(api: UnitApi) -> None:
    texts = [f"review number {i}: " + "quite good " * 10 for i in range(10_000)]
    response = api.post_job(texts)
    assert response.status_code == 202
    assert response.json()["counts"]["total"] == 10_000
    assert count(api, items) == 10_000
    assert api.queue.sent[0][2] == list(range(5000))


def test_a_concurrent_duplicate_idempotency_key_returns_the_winners_job(
    api: UnitApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    import core.jobs.submit as submit

    winner = api.post_job(["a", "b"], headers={"Idempotency-Key": "race"}).json()["id"]
    real_replay = submit.find_replay
    calls: list[str] = []

    def replay_that_misses_once(*args: object) -> object:
        # The first look-up runs before the winner attached its key: it finds nothing.
        calls.append("replay")
        return None if len(calls) == 1 else real_replay(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(submit, "find_replay", replay_that_misses_once)
    loser = api.post_job(["a", "b"], headers={"Idempotency-Key": "race"})

    # The loser's job was created and sent, then attaching the key hit the unique
    # constraint: it deleted its own job (never answered to anyone) and replayed.
    assert calls == ["replay", "replay"]
    assert loser.status_code == 200
    assert loser.json()["id"] == winner
    assert count(api, jobs) == 1
    assert api.queue.sent[0][0] == winner
    assert len(api.queue.sent) == 2


@pytest.mark.parametrize("kind", ["json", "multipart"])
def test_a_chunked_body_over_the_limit_answers_413(tmp_path: Path, kind: str) -> None:
    # No Content-Length: the limit is enforced while the body streams in, inside the app.
    if kind == "json":
        head, tail = b'{"model": "tiny", "inputs": [', b"]}"
        middle = b'{"text": "%s"},' % (b"x" * 500)
        content_type = "application/json"
    else:
        head = b'--B\r\nContent-Disposition: form-data; name="model"\r\n\r\ntiny\r\n--B\r\n'
        head += b'Content-Disposition: form-data; name="file"; filename="a.txt"\r\n\r\n'
        middle, tail = b"a line of text\n" * 40, b"\r\n--B--\r\n"
        content_type = "multipart/form-data; boundary=B"

    def body() -> Iterator[bytes]:
        yield head
        for _ in range(20):
            yield middle
        yield tail

    with unit_api(tmp_path, max_body_bytes=4096) as api:
        response = api.client.post(
            "/v1/jobs",
            content=body(),
            headers={**bearer(api.key), "Content-Type": content_type},
        )
        assert "content-length" not in response.request.headers
        assert response.status_code == 413
        assert response.json()["detail"] == "request body too large: the limit is 4096 bytes"
        assert count(api, jobs) == 0
