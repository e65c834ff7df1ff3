"""The bad-input catalogue: each hostile request and the answer it must get.

Entries already covered elsewhere are listed (with their test) in docs/promise.md; this
file holds the rest. Every refused request must leave no job; nothing may answer 5xx.
The whole ASGI stack runs in-process on SQLite with a fake queue (no servers needed).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_support import IMAGE_MODEL, TEXT_MODEL, UnitApi, bearer, unit_api
from image_support import catalogue
from sqlalchemy import func, select

from core.tables import items, jobs


@pytest.fixture()
def api(tmp_path: Path) -> Iterator[UnitApi]:
    with unit_api(tmp_path) as api:
        yield api


def job_count(api: UnitApi) -> int:
    with api.engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(jobs)) or 0)


def stored(api: UnitApi, job_id: str) -> list[tuple[str, str | None, str | None]]:
    with api.engine.connect() as conn:
        rows = conn.execute(
            select(items.c.item_id, items.c.text, items.c.error)
            .where(items.c.job_id == job_id)
            .order_by(items.c.index)
        )
        return [tuple(row) for row in rows]


def post_raw(api: UnitApi, body: bytes, content_type: str | None) -> object:
    headers = bearer(api.key)
    if content_type is not None:
        headers["Content-Type"] = content_type
    return api.client.post("/v1/jobs", content=body, headers=headers)


def multipart(*parts: tuple[bytes, bytes]) -> bytes:
    """A multipart body (boundary ``B``) of ``(disposition, content)`` parts, bytes as given."""
    body = b"".join(
        b"--B\r\nContent-Disposition: form-data; " + disposition + b"\r\n\r\n" + content + b"\r\n"
        for disposition, content in parts
    )
    return body + b"--B--\r\n"


MODEL_PART = (b'name="model"', TEXT_MODEL.encode())
MULTIPART = "multipart/form-data; boundary=B"
# JSON must be UTF-8 (RFC 8259); a latin-1 body is invalid whatever its charset says.
LATIN_1_JSON = '{"model": "tiny", "inputs": [{"text": "caf\xe9"}]}'.encode("latin-1")


# -- texts ---------------------------------------------------------------------------------


def test_empty_and_whitespace_texts_are_per_item_errors(api: UnitApi) -> None:
    response = api.post_job(["", " ", "\t\n\r", "\u3000", "fine"])
    assert response.status_code == 202
    errors = [error for _, _, error in stored(api, response.json()["id"])]
    assert errors == ["empty text"] * 4 + [None]


def test_invalid_utf8_in_a_json_body_answers_422(api: UnitApi) -> None:
    response = post_raw(
        api, b'{"model": "tiny", "inputs": [{"text": "a\xffb"}]}', "application/json"
    )
    assert response.status_code == 422  # type: ignore[attr-defined]
    assert response.json()["errors"][0]["type"] == "json_invalid"  # type: ignore[attr-defined]
    assert job_count(api) == 0


def test_invalid_utf8_in_multipart(api: UnitApi) -> None:
    file_part = b'name="file"; filename="a.txt"'
    # In the file: refused, with the byte offset.
    bad_file = post_raw(api, multipart(MODEL_PART, (file_part, b"ok\nbad \xff\n")), MULTIPART)
    # A lone surrogate encoded as UTF-8 bytes is invalid UTF-8 too.
    surrogate = post_raw(api, multipart(MODEL_PART, (file_part, b"a\xed\xa0\x80b\n")), MULTIPART)
    # In the model field Starlette decodes it as latin-1; that name is never a model.
    bad_model = post_raw(
        api, multipart((b'name="model"', b"ti\xffny"), (file_part, b"hello\n")), MULTIPART
    )
    assert bad_file.status_code == surrogate.status_code == 422  # type: ignore[attr-defined]
    assert "not valid UTF-8" in bad_file.json()["detail"]  # type: ignore[attr-defined]
    assert bad_model.status_code == 422  # type: ignore[attr-defined]
    assert "unknown model" in bad_model.json()["detail"]  # type: ignore[attr-defined]
    assert job_count(api) == 0
    # In a file name: only its suffix matters, the name itself is never used as a path.
    bad_name = post_raw(
        api, multipart(MODEL_PART, (b'name="file"; filename="../\xff.txt"', b"hi\n")), MULTIPART
    )
    assert bad_name.status_code == 202  # type: ignore[attr-defined]


def test_nul_in_an_uploaded_file_is_a_per_item_error(api: UnitApi) -> None:
    body = multipart(MODEL_PART, (b'name="file"; filename="a.txt"', b"a\x00b\nfine\n"))
    response = post_raw(api, body, MULTIPART)
    assert response.status_code == 202  # type: ignore[attr-defined]
    rows = stored(api, response.json()["id"])  # type: ignore[attr-defined]
    assert rows == [("1", None, "text contains a NUL character"), ("2", "fine", None)]


# -- structure -----------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["top", "inside-an-input"])
def test_json_nested_20000_deep_answers_422_at_once(api: UnitApi, where: str) -> None:
    deep = b"[" * 20_000 + b"]" * 20_000
    body = deep if where == "top" else b'{"model": "tiny", "inputs": [{"id": ' + deep + b"}]}"
    started = time.perf_counter()
    response = post_raw(api, body, "application/json")
    assert response.status_code == 422  # type: ignore[attr-defined]
    assert time.perf_counter() - started < 2
    assert job_count(api) == 0


@pytest.mark.parametrize(
    ("part", "message"),
    [(b'name="f%d"', "Too many fields"), (b'name="images"; filename="%d.png"', "Too many files")],
    ids=["fields", "files"],
)
def test_10000_multipart_parts_answer_400_at_once(api: UnitApi, part: bytes, message: str) -> None:
    body = multipart(MODEL_PART, *[(part % i, b"x") for i in range(10_000)])
    started = time.perf_counter()
    response = post_raw(api, body, MULTIPART)
    assert response.status_code == 400  # type: ignore[attr-defined]
    assert message in response.json()["detail"]  # type: ignore[attr-defined]
    assert time.perf_counter() - started < 2
    assert job_count(api) == 0


# -- models --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "../../etc/passwd",
        "/etc/passwd",
        "./models/tiny",
        "hf://org/model",
        "distilbert/distilbert-base-uncased",
        "C:\\models\\x",
        "tiny/../tiny",
    ],
)
def test_a_model_name_that_looks_like_a_path_or_hub_id_is_refused(api: UnitApi, name: str) -> None:
    response = api.post_job(["hello"], model=name)
    assert response.status_code == 422
    assert "never paths or hub ids" in response.json()["detail"]
    assert job_count(api) == 0


@pytest.mark.parametrize("name", ["TINY", "tiny\x00", "tiny ", "m" * 100_000])
def test_near_miss_and_huge_model_names_are_unknown_and_not_echoed_whole(
    api: UnitApi, name: str
) -> None:
    response = api.post_job(["hello"], model=name)
    assert response.status_code == 422
    assert "unknown model" in response.json()["detail"]
    assert len(response.text) < 1000


# -- images --------------------------------------------------------------------------------


def test_the_image_catalogue_is_accepted_and_bad_images_never_reach_a_decoder_unchecked(
    api: UnitApi,
) -> None:
    cases = catalogue()
    files = [("images", (case.name, case.data, "image/png")) for case in cases]
    response = api.client.post(
        "/v1/jobs", data={"model": IMAGE_MODEL}, files=files, headers=bearer(api.key)
    )
    assert response.status_code == 202, response.text
    rows = {item_id: error for item_id, _text, error in stored(api, response.json()["id"])}
    assert set(rows) == {case.name for case in cases}
    # Refused at intake by signature, whatever the part's Content-Type said; the rest are
    # stored and decoded by the worker, where tests/unit/test_image_decode.py proves each
    # bad one becomes its per-item error.
    for name in ("zero-byte.jpg", "text.jpg", "document.pdf"):
        assert rows[name], name
    for case in cases:
        if case.error is None:
            assert rows[case.name] is None, case.name


# -- lying Content-Type ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "body", "status"),
    [
        (MULTIPART, b'{"model": "tiny", "inputs": [{"text": "a"}]}', 400),
        ("multipart/form-data", b'{"model": "tiny", "inputs": [{"text": "a"}]}', 400),
        ("application/json", multipart(MODEL_PART, (b'name="file"; filename="a.txt"', b"x")), 422),
        ("application/x-www-form-urlencoded", b"model=tiny&text=a", 415),
        ("image/png", b'{"model": "tiny", "inputs": [{"text": "a"}]}', 415),
        ("application/json; charset=latin-1", LATIN_1_JSON, 422),
    ],
    ids=["json-as-multipart", "no-boundary", "multipart-as-json", "form", "image", "latin-1"],
)  # fmt: skip
def test_a_content_type_that_lies_is_refused(
    api: UnitApi, content_type: str, body: bytes, status: int
) -> None:
    response = post_raw(api, body, content_type)
    assert response.status_code == status, response.text  # type: ignore[attr-defined]
    assert job_count(api) == 0


def test_a_text_file_declared_as_an_image_is_read_by_its_name(api: UnitApi) -> None:
    response = api.client.post(
        "/v1/jobs",
        data={"model": TEXT_MODEL},
        files={"file": ("a.txt", b"one\ntwo\n", "image/png")},
        headers=bearer(api.key),
    )
    assert response.status_code == 202
    assert [text for _, text, _ in stored(api, response.json()["id"])] == ["one", "two"]
