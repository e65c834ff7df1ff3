"""``imagenet-lite`` on real photos, offline, through every way in: ``bulkscore score``,
``bulkscore submit`` (API -> Redis -> a real worker -> PostgreSQL), and ``POST /v1/jobs``
multipart as curl sends it. The shipped models file, the shipped weights, no download.
"""

from __future__ import annotations

import csv
import os
import subprocess
from pathlib import Path

import httpx
from api_support import BULKSCORE, running_api
from imagenet_support import PHOTOS, variants
from sqlalchemy import create_engine
from worker_support import poll, running_worker, worker_env

from core.config import DEFAULT_MODELS_FILE
from core.keys import create_key
from core.migrate import upgrade

MODEL = "imagenet-lite"
SUFFIXES = ("png", "exif6.jpg", "exif8.webp")  # as shipped, and two phone-style rotations


def write_photos(folder: Path) -> dict[str, frozenset[str]]:
    """The sample photos in ``folder``; ``file name -> right top-1 labels`` (none: an error)."""
    folder.mkdir()
    expected: dict[str, frozenset[str]] = {}
    for photo in PHOTOS:
        files = variants(photo.image())
        for suffix in SUFFIXES:
            name = f"{photo.name}.{suffix}"
            (folder / name).write_bytes(files[suffix])
            expected[name] = photo.top1
    coffee = (folder / "coffee.exif6.jpg").read_bytes()
    (folder / "cut-off.jpg").write_bytes(coffee[: len(coffee) // 3])
    expected["cut-off.jpg"] = frozenset()
    return expected


def check_labels(rows: dict[str, dict[str, str]], expected: dict[str, frozenset[str]]) -> None:
    assert sorted(rows) == sorted(expected)
    for name, right in expected.items():
        row = rows[name]
        if right:
            assert row["label"] in right and not row["error"], row
        else:
            assert not row["label"] and "truncated" in row["error"], row


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    return {row["id"]: row for row in csv.DictReader(path.open())}


def test_real_photos_are_labelled_alike_by_score_submit_and_multipart(
    tmp_path: Path, pg_url: str, redis_url: str
) -> None:
    photos = tmp_path / "photos"
    expected = write_photos(photos)

    embedded = tmp_path / "embedded.csv"
    local = subprocess.run(
        [BULKSCORE, "score", str(photos), "--model", MODEL, "--out", str(embedded)],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("BULKSCORE_")},
            "BULKSCORE_DATABASE_URL": f"sqlite:///{tmp_path / 'embedded.db'}",
            "BULKSCORE_IMAGE_DECODE_THREADS": "2",
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert local.returncode == 0, local.stderr
    scored = read_csv(embedded)
    check_labels(scored, expected)

    upgrade(pg_url)
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        _, key = create_key(conn, "photos")
    engine.dispose()
    env = worker_env(pg_url, redis_url, DEFAULT_MODELS_FILE)
    headers = {"Authorization": f"Bearer {key}"}
    with (
        running_worker(["--models", MODEL], env, tmp_path / "worker.log"),
        running_api(env, tmp_path / "api.log") as api,
    ):
        client_env = {**env, "BULKSCORE_API_URL": api.url, "BULKSCORE_API_KEY": key}
        submitted = subprocess.run(
            [BULKSCORE, "submit", str(photos), "--model", MODEL, "--wait"],
            env=client_env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert submitted.returncode == 0, submitted.stderr
        job_id = submitted.stdout.strip().splitlines()[0]
        service_csv = tmp_path / "service.csv"
        fetched = subprocess.run(
            [BULKSCORE, "results", job_id, "--out", str(service_csv)],
            env=client_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert fetched.returncode == 0, fetched.stderr

        # curl -F model=imagenet-lite -F images=@chelsea.png ... : file names become ids.
        parts = [
            ("images", (path.name, path.read_bytes(), "application/octet-stream"))
            for path in sorted(photos.iterdir())
        ]
        created = httpx.post(
            f"{api.url}/v1/jobs", data={"model": MODEL}, files=parts, headers=headers
        )
        assert created.status_code == 202, created.text
        multipart_id = created.json()["id"]

        def finished() -> dict[str, object] | None:
            job = httpx.get(f"{api.url}/v1/jobs/{multipart_id}", headers=headers).json()
            return job if job["status"] in ("completed", "failed", "cancelled") else None

        assert poll(finished, 240, f"job {multipart_id}")["status"] == "completed"
        page = httpx.get(
            f"{api.url}/v1/jobs/{multipart_id}/results", params={"limit": 100}, headers=headers
        ).json()

    service = read_csv(service_csv)
    check_labels(service, expected)
    multipart = {
        row["id"]: {key: "" if value is None else str(value) for key, value in row.items()}
        for row in page["data"]
    }
    check_labels(multipart, expected)
    for name, row in scored.items():
        for other in (service[name], multipart[name]):
            assert other["label"] == row["label"], name
            if row["score"]:
                assert abs(float(other["score"]) - float(row["score"])) < 1e-4, name
