"""Transfer learning offline: ``bulkscore train NAME --base imagenet-lite --data photos/``.

Two labels ImageNet does not have, brick wall and gravel, from scikit-image's texture
photos: random crops, mirror images and colour jitter of each make the training folder,
and other such augmentations, never seen in training, are scored by the trained model.
The commands run in this process with every outgoing network connection refused.
"""

from __future__ import annotations

import csv
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import Result
from imagenet_support import augmented, sample_image
from training_support import write_label_folders
from typer.testing import CliRunner

from cli.main import app
from core.config import get_settings, reset_settings_cache
from core.db import dispose_engines, get_engine
from core.models.trained import get_trained

LABELS = ("brick", "gravel")
PER_LABEL = 16  # the training folder; 20% of it (6) is held out to evaluate
UNSEEN_PER_LABEL = 10
# Measured on the 2-core development machine: 1.0 held out and 1.0 on 100 unseen images (a
# random-weight EfficientNet-Lite0 in its place: 0.75 on the same 100).
MIN_ACCURACY = 0.9


def refuse_network(*args: object, **kwargs: object) -> None:
    raise AssertionError(f"tried to open a network connection: {args}")


@pytest.fixture()
def offline_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The shipped models file, a fresh SQLite file, and no network."""
    monkeypatch.delenv("BULKSCORE_MODELS", raising=False)
    monkeypatch.setenv("BULKSCORE_DATABASE_URL", f"sqlite:///{tmp_path / 'bulkscore.db'}")
    monkeypatch.setenv("BULKSCORE_IMAGE_DECODE_THREADS", "2")
    monkeypatch.setattr(socket.socket, "connect", refuse_network)
    monkeypatch.setattr(socket, "create_connection", refuse_network)
    reset_settings_cache()
    yield tmp_path
    reset_settings_cache()
    dispose_engines()


def run(*args: object) -> Result:
    result = CliRunner().invoke(app, [str(arg) for arg in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def examples(count: int, seed: int) -> list[tuple[str, str, bytes]]:
    """``(label, file name, JPEG)``: ``count`` augmentations of each label's photo."""
    rng = np.random.default_rng(seed)
    images = {label: sample_image(label) for label in LABELS}
    return [
        (label, f"{label}-{seed}-{i}.jpg", augmented(images[label], rng))
        for i in range(count)
        for label in LABELS
    ]


def test_a_head_trained_on_augmented_photos_labels_unseen_ones(offline_env: Path) -> None:
    photos = write_label_folders(offline_env / "photos", examples(PER_LABEL, seed=1))
    trained = run("train", "surfaces", "--base", "imagenet-lite", "--data", photos)
    assert trained.exit_code == 0, trained.output
    assert "surfaces v1" in trained.output and "held-out accuracy" in trained.output

    shown = run("models", "show", "surfaces")
    assert shown.exit_code == 0, shown.output
    unseen = offline_env / "unseen"
    unseen.mkdir()
    truth = {}
    for label, name, data in examples(UNSEEN_PER_LABEL, seed=2):
        (unseen / name).write_bytes(data)
        truth[name] = label
    out = offline_env / "scored.csv"
    scored = run("score", unseen, "--model", "surfaces", "--out", out)
    assert scored.exit_code == 0, scored.output
    rows = {row["id"]: row for row in csv.DictReader(out.open())}
    assert sorted(rows) == sorted(truth) and not any(row["error"] for row in rows.values())
    unseen_accuracy = np.mean([rows[name]["label"] == label for name, label in truth.items()])
    assert all(len(json.loads(row["top_k"])) == 2 for row in rows.values())

    with get_engine(get_settings().database_url).connect() as conn:
        model = get_trained(conn, "surfaces", with_head=False)
    assert model is not None and model.base == "imagenet-lite"
    assert model.metrics["feature_dim"] == 1280 and model.metrics["holdout_size"] == 6
    holdout = model.metrics["accuracy"]
    print(
        f"\nsurfaces: held-out accuracy {holdout:.3f}, unseen augmentations {unseen_accuracy:.3f}"
    )
    assert holdout >= MIN_ACCURACY and unseen_accuracy >= MIN_ACCURACY
