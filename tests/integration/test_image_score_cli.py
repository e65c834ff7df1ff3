"""``bulkscore score photos/ --model <keras model> --out labels.csv`` end to end (SQLite)."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from image_support import build_tiny_keras_model, catalogue, encode, photo
from models import write_models_file
from typer.testing import CliRunner

from cli.main import app
from core.config import get_settings, reset_settings_cache
from core.db import dispose_engines, get_engine
from core.jobs.lifecycle import get_job
from engine.runners.keras_image import imagenet_labels

cli = CliRunner()


@pytest.fixture()
def image_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """BULKSCORE_* pointing at a fresh SQLite file and a models file with a tiny Keras model."""
    model = build_tiny_keras_model(tmp_path / "tiny.keras")
    models = write_models_file(
        tmp_path / "models.toml",
        {
            "tiny-resnet": {
                "task": "image-classification",
                "backend": "keras",
                "source": str(model),
                "max_batch_size": 4,
            }
        },
    )
    monkeypatch.setenv("BULKSCORE_DATABASE_URL", f"sqlite:///{tmp_path / 'bulkscore.db'}")
    monkeypatch.setenv("BULKSCORE_MODELS", str(models))
    reset_settings_cache()
    yield tmp_path
    reset_settings_cache()
    dispose_engines()


def test_score_a_folder_of_photos_with_bad_files(image_env: Path) -> None:
    photos = image_env / "photos"
    photos.mkdir()
    for i in range(5):
        (photos / f"photo{i}.jpg").write_bytes(encode(photo(400, 300, seed=i), "JPEG"))
    cases = {case.name: case for case in catalogue()}
    for case in cases.values():
        (photos / case.name).write_bytes(case.data)
    out = image_env / "labels.csv"

    result = cli.invoke(app, ["score", str(photos), "--model", "tiny-resnet", "--out", str(out)])

    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    names = sorted([f"photo{i}.jpg" for i in range(5)] + list(cases))
    assert [row["id"] for row in rows] == names
    imagenet = set(imagenet_labels())
    for row in rows:
        case = cases.get(row["id"])
        if case is not None and case.error is not None:
            assert not row["label"] and case.error in row["error"], row
        else:
            assert row["label"] in imagenet and not row["error"], row
            top_k = json.loads(row["top_k"])
            assert len(top_k) == 5 and top_k[0][0] == row["label"]
    bad = sum(1 for case in cases.values() if case.error is not None)
    job_id = result.output.split("job ")[1].split()[0]
    with get_engine(get_settings().database_url).connect() as conn:
        job = get_job(conn, job_id)
    assert job is not None and job.status.value == "completed"
    assert (job.succeeded, job.failed) == (len(rows) - bad, bad)


def test_score_a_glob(image_env: Path) -> None:
    photos = image_env / "photos"
    (photos / "sub").mkdir(parents=True)
    (photos / "a.png").write_bytes(encode(photo(seed=1), "PNG"))
    (photos / "sub" / "b.jpg").write_bytes(encode(photo(seed=2), "JPEG"))
    (photos / "skip.txt").write_text("not matched")
    out = image_env / "labels.jsonl"

    result = cli.invoke(
        app, ["score", str(photos / "**" / "*.*g"), "--model", "tiny-resnet", "--out", str(out)]
    )

    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [record["id"] for record in records] == ["a.png", "sub/b.jpg"]
    assert all(record["label"] and not record["error"] for record in records)


def test_nothing_to_score_is_a_usage_error(image_env: Path) -> None:
    result = cli.invoke(app, ["score", str(image_env / "missing"), "--model", "tiny-resnet"])
    assert result.exit_code != 0
    assert "no such file or folder" in result.output
