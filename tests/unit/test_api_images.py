"""POST /v1/jobs with images: base64 JSON and multipart ``images``, checked by content."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_support import IMAGE_MODEL, TEXT_MODEL, UnitApi, bearer, unit_api
from image_support import encode, photo
from sqlalchemy import select

from core.tables import items


@pytest.fixture()
def api(tmp_path: Path) -> Iterator[UnitApi]:
    with unit_api(tmp_path, chunk_size=2, max_image_bytes=50_000) as api:
        yield api


def stored_items(api: UnitApi, job_id: str) -> list[tuple[str, bool, str | None]]:
    with api.engine.connect() as conn:
        rows = conn.execute(
            select(items.c.item_id, items.c.data, items.c.error)
            .where(items.c.job_id == job_id)
            .order_by(items.c.index)
        )
        return [(row.item_id, row.data is not None, row.error) for row in rows]


def test_base64_images_are_stored_once_and_queued(api: UnitApi) -> None:
    jpeg, png = encode(photo(), "JPEG"), encode(photo(seed=1), "PNG")
    body = {
        "model": IMAGE_MODEL,
        "inputs": [
            {"id": "a", "image_base64": base64.b64encode(jpeg).decode()},
            {"id": "b", "image_base64": base64.b64encode(png).decode()},
            {"id": "c", "image_base64": "not base64 !!"},
            {"id": "d", "image_base64": base64.b64encode(b"just some text").decode()},
            {"id": "e", "text": "a text sent to an image model"},
        ],
    }
    response = api.client.post("/v1/jobs", json=body, headers=bearer(api.key))
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["counts"]["total"] == 5
    stored = stored_items(api, job["id"])
    assert stored[:2] == [("a", True, None), ("b", True, None)]
    assert stored[2] == ("c", False, "image_base64 is not valid base64")
    assert stored[3][1] is False and "not a supported image" in (stored[3][2] or "")
    assert stored[4][1] is False and "scores images" in (stored[4][2] or "")
    with api.engine.connect() as conn:
        data = conn.scalar(select(items.c.data).where(items.c.item_id == "a"))
    assert data == jpeg
    assert api.queue.sent == [(job["id"], IMAGE_MODEL, [0, 1, 2])]


def test_multipart_images_use_file_names_as_ids_and_check_content_not_names(api: UnitApi) -> None:
    files = [
        ("images", ("cat.jpg", encode(photo(), "JPEG"), "image/jpeg")),
        ("images", ("dog.png", encode(photo(seed=2), "PNG"), "image/png")),
        ("images", ("notes.jpg", b"I am a text file named .jpg", "image/jpeg")),
        ("images", ("empty.png", b"", "image/png")),
    ]
    response = api.client.post(
        "/v1/jobs", data={"model": IMAGE_MODEL}, files=files, headers=bearer(api.key)
    )
    assert response.status_code == 202, response.text
    stored = stored_items(api, response.json()["id"])
    assert [ident for ident, _, _ in stored] == ["cat.jpg", "dog.png", "notes.jpg", "empty.png"]
    assert [has_data for _, has_data, _ in stored] == [True, True, False, False]
    assert all(error for _, _, error in stored[2:])


def test_an_image_over_the_byte_limit_is_a_per_item_error(api: UnitApi) -> None:
    big = encode(photo(900, 900), "PNG")
    assert len(big) > 50_000
    files = [
        ("images", ("big.png", big, "image/png")),
        ("images", ("ok.jpg", encode(photo(), "JPEG"), "image/jpeg")),
    ]
    response = api.client.post(
        "/v1/jobs", data={"model": IMAGE_MODEL}, files=files, headers=bearer(api.key)
    )
    assert response.status_code == 202
    stored = stored_items(api, response.json()["id"])
    assert "50000" in (stored[0][2] or "") and stored[1] == ("ok.jpg", True, None)


def test_images_sent_to_a_text_model_are_refused(api: UnitApi) -> None:
    body = {"model": TEXT_MODEL, "inputs": [{"image_base64": base64.b64encode(b"x").decode()}]}
    response = api.client.post("/v1/jobs", json=body, headers=bearer(api.key))
    assert response.status_code == 422
    assert "scores texts" in response.json()["detail"]


def test_an_input_with_both_or_neither_kind_is_a_per_item_error(api: UnitApi) -> None:
    body = {
        "model": TEXT_MODEL,
        "inputs": [
            {"id": "ok", "text": "fine"},
            {"id": "both", "text": "x", "image_base64": "eA=="},
            {"id": "none"},
        ],
    }
    response = api.client.post("/v1/jobs", json=body, headers=bearer(api.key))
    assert response.status_code == 202, response.text
    stored = stored_items(api, response.json()["id"])
    assert stored[0] == ("ok", False, None)
    assert "not both" in (stored[1][2] or "") and "needs a" in (stored[2][2] or "")


def test_idempotency_covers_image_bytes(api: UnitApi) -> None:
    def post(seed: int) -> tuple[int, str]:
        files = [("images", ("a.png", encode(photo(seed=seed), "PNG"), "image/png"))]
        response = api.client.post(
            "/v1/jobs",
            data={"model": IMAGE_MODEL},
            files=files,
            headers={**bearer(api.key), "Idempotency-Key": "img-1"},
        )
        return response.status_code, response.json().get("id", "")

    first = post(0)
    assert first[0] == 202
    assert post(0) == (200, first[1])
    assert post(1)[0] == 409
