"""Images end to end: `bulkscore submit photos/` -> API -> Redis -> a real worker -> PostgreSQL."""

from __future__ import annotations

import base64
import csv
import os
import subprocess
from pathlib import Path

import httpx
from api_support import BULKSCORE, running_api
from image_support import build_tiny_keras_model, catalogue, encode, photo
from models import write_models_file
from sqlalchemy import create_engine
from worker_support import running_worker, worker_env

from core.keys import create_key
from core.migrate import upgrade


def test_images_through_the_service_match_bulkscore_score(
    tmp_path: Path, pg_url: str, redis_url: str
) -> None:
    model = build_tiny_keras_model(tmp_path / "tiny.keras")
    models = write_models_file(
        tmp_path / "models.toml",
        {"pics": {"task": "image-classification", "backend": "keras", "source": str(model)}},
    )
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(6):
        (photos / f"p{i}.jpg").write_bytes(encode(photo(320, 240, seed=i), "JPEG"))
    bad = {case.name: case for case in catalogue() if case.error}
    for case in list(bad.values())[:4]:
        (photos / case.name).write_bytes(case.data)

    upgrade(pg_url)
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        _, key = create_key(conn, "images")
    engine.dispose()
    env = worker_env(pg_url, redis_url, models)
    with (
        running_worker(["--models", "pics"], env, tmp_path / "worker.log"),
        running_api(env, tmp_path / "api.log") as api,
    ):
        client_env = {**env, "BULKSCORE_API_URL": api.url, "BULKSCORE_API_KEY": key}
        submitted = subprocess.run(
            [BULKSCORE, "submit", str(photos), "--model", "pics", "--wait"],
            env=client_env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert submitted.returncode == 0, submitted.stderr
        job_id = submitted.stdout.strip().splitlines()[0]
        out = tmp_path / "service.csv"
        fetched = subprocess.run(
            [BULKSCORE, "results", job_id, "--out", str(out)],
            env=client_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert fetched.returncode == 0, fetched.stderr
        # The JSON form takes base64 images too.
        body = {
            "model": "pics",
            "inputs": [
                {
                    "id": "b64",
                    "image_base64": base64.b64encode((photos / "p0.jpg").read_bytes()).decode(),
                }
            ],
        }
        answer = httpx.post(
            f"{api.url}/v1/jobs", json=body, headers={"Authorization": f"Bearer {key}"}
        )
        assert answer.status_code == 202, answer.text

    service = {row["id"]: row for row in csv.DictReader(out.open())}
    assert len(service) == 6 + len(list(bad.values())[:4])
    for name in [f"p{i}.jpg" for i in range(6)]:
        assert service[name]["label"] and not service[name]["error"]
    for name in list(bad)[:4]:
        assert service[name]["error"] and not service[name]["label"]

    embedded = tmp_path / "embedded.csv"
    local = subprocess.run(
        [BULKSCORE, "score", str(photos), "--model", "pics", "--out", str(embedded)],
        env={
            **os.environ,
            "BULKSCORE_MODELS": str(models),
            "BULKSCORE_DATABASE_URL": f"sqlite:///{tmp_path / 'e.db'}",
        },
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert local.returncode == 0, local.stderr
    for row in csv.DictReader(embedded.open()):
        other = service[row["id"]]
        assert (row["label"], bool(row["error"])) == (other["label"], bool(other["error"]))
        if row["score"]:
            assert abs(float(row["score"]) - float(other["score"])) < 1e-4
