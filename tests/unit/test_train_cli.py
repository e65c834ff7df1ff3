"""``bulkscore train``, ``models show``, ``score`` with a trained model, and ``compare``.

In-process (CliRunner) on a SQLite file, with tiny backbones built here: a random DistilBERT
encoder for texts and a random Keras CNN for images.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import Result
from models import write_models_file
from PIL import Image
from sqlalchemy import select
from training_support import (
    build_tiny_keras_backbone,
    intent_rows,
    labelled_csv,
    stripes_and_dots,
    write_label_folders,
)
from typer.testing import CliRunner

from cli.main import app
from core.config import get_settings, reset_settings_cache
from core.db import dispose_engines, get_engine
from core.inputs.items import InputItem
from core.jobs.lifecycle import create_job
from core.models.registry import Registry
from core.models.trained import trained_table_exists
from core.tables import chunks, jobs, results, trained_models

SWAPPED = {"complaint": "praise", "praise": "complaint", "question": "question"}


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_keras_backbone(tmp_path_factory.mktemp("keras") / "backbone.keras")


@pytest.fixture()
def env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_text_model: Path, tiny_backbone: Path
) -> Iterator[Path]:
    models = write_models_file(
        tmp_path / "models.toml",
        {
            "tinybase": {
                "task": "feature-extraction",
                "backend": "transformers",
                "source": str(tiny_text_model),
                "max_batch_size": 8,
            },
            "tinyimages": {
                "task": "feature-extraction",
                "backend": "keras",
                "source": str(tiny_backbone),
                "max_batch_size": 16,
            },
            "tiny": {
                "task": "text-classification",
                "backend": "transformers",
                "source": str(tiny_text_model),
            },
        },
    )
    monkeypatch.setenv("BULKSCORE_DATABASE_URL", f"sqlite:///{tmp_path / 'bulkscore.db'}")
    monkeypatch.setenv("BULKSCORE_MODELS", str(models))
    monkeypatch.setenv("BULKSCORE_IMAGE_DECODE_THREADS", "2")
    reset_settings_cache()
    yield tmp_path
    reset_settings_cache()
    dispose_engines()


def run(*args: str) -> Result:
    result = CliRunner().invoke(app, [str(arg) for arg in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def rows_of(query: object) -> list[tuple[object, ...]]:
    with get_engine(get_settings().database_url).connect() as conn:
        return [tuple(row) for row in conn.execute(query)]  # type: ignore[call-overload]


def job_ids() -> list[str]:
    """Every job's id; none when the command never got as far as creating the database."""
    if not trained_table_exists(get_settings().database_url):
        return []
    return [row[0] for row in rows_of(select(jobs.c.id).order_by(jobs.c.created_at))]


def test_train_score_retrain_and_show(env: Path) -> None:
    data = labelled_csv(env / "intents.csv", intent_rows(8))
    texts = env / "tickets.jsonl"
    texts.write_text(
        "".join(
            json.dumps({"id": f"t{i}", "text": t}) + "\n" for i, (t, _) in enumerate(intent_rows(3))
        )
    )
    first = run("train", "intents", "--base", "tinybase", "--data", data)
    assert first.exit_code == 0, first.output
    assert "intents v1" in first.output and "held-out accuracy" in first.output
    assert "complaint, praise, question" in first.output
    # Its job's one chunk was claimed and finished in-process, like a worker's: an embedded
    # training job, run on its base, with no chunk left for the service.
    ((driver, runs_on, status, chunk_status, attempts),) = rows_of(
        select(jobs.c.driver, jobs.c.runs_on, jobs.c.status, chunks.c.status, chunks.c.attempts)
        .join(chunks, chunks.c.job_id == jobs.c.id)
        .where(jobs.c.model == "intents")
    )
    assert (driver, runs_on, status, chunk_status, attempts) == (
        "embedded",
        "tinybase",
        "completed",
        "done",
        1,
    )

    scored = run("score", texts, "--model", "intents", "--out", env / "out.csv")
    assert scored.exit_code == 0, scored.output
    assert "intents @ v1" in scored.output
    labels = [row["label"] for row in csv.DictReader((env / "out.csv").open())]
    assert len(labels) == 9 and set(labels) <= {"complaint", "praise", "question"}

    second = run("train", "intents", "--base", "tinybase", "--data", data)
    assert second.exit_code == 0 and "intents v2" in second.output
    assert run("score", texts, "--model", "intents").exit_code == 0
    revisions = rows_of(
        select(results.c.job_id, results.c.model_revision).distinct().order_by(results.c.job_id)
    )
    job_revisions = dict(rows_of(select(jobs.c.id, jobs.c.model_revision)))
    assert sorted(revision for _, revision in revisions) == ["v1", "v2"]
    for job_id, revision in revisions:
        assert job_revisions[job_id] == revision  # the job records the version that scored it

    png = env / "confusion.png"
    shown = run("models", "show", "intents", "--confusion-png", png)
    assert shown.exit_code == 0, shown.output
    for fragment in ("intents v2", "per label", "confusion matrix", "versions", "v1", "precision"):
        assert fragment in shown.output
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width > 200 and image.height > 200
    older = run("models", "show", "intents", "--version", "1")
    assert older.exit_code == 0 and "intents v1" in older.output
    missing = run("models", "show", "nope")
    assert missing.exit_code == 2 and "no model 'nope'" in missing.output
    pretrained = run("models", "show", "tinybase")
    assert pretrained.exit_code == 0 and "no evaluation is stored" in pretrained.output


ONE_LABEL = [(f"same text {i}", "spam") for i in range(9)]
TOO_FEW = [(f"a {i}", "x") for i in range(9)] + [(f"b {i}", "y") for i in range(4)]


@pytest.mark.parametrize(
    ("rows", "options", "message"),
    [
        (ONE_LABEL, {}, "only one label ('spam')"),
        (TOO_FEW, {}, "too few examples: 'y' has 4; each label needs at least 5"),
        (None, {"--base": "nope"}, "unknown base model 'nope'"),
        (None, {"name": "tiny"}, "'tiny' is a model of the models file"),
        (None, {"--data": "missing.csv"}, "missing.csv: cannot be read"),
        (None, {"--base": "tinyimages", "--data": "empty"}, "no label folders"),
    ],
)
def test_unusable_training_requests_exit_2_without_a_job(
    env: Path, rows: list[tuple[str, str]] | None, options: dict[str, str], message: str
) -> None:
    (env / "empty").mkdir()
    data = labelled_csv(env / "data.csv", rows or intent_rows(5))
    chosen = {"name": "intents", "--base": "tinybase", "--data": str(data), **options}
    if "--data" in options:
        chosen["--data"] = str(env / options["--data"])
    name = chosen.pop("name")
    result = run("train", name, *[part for pair in chosen.items() for part in pair])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert job_ids() == []


def test_compare_reports_agreement_and_the_differing_items(env: Path) -> None:
    rows = intent_rows(8)
    assert run("train", "intents", "--data", labelled_csv(env / "a.csv", rows), "-b", "tinybase")
    swapped = [(text, SWAPPED[label]) for text, label in rows]
    assert run("train", "swapped", "--data", labelled_csv(env / "b.csv", swapped), "-b", "tinybase")
    tickets = env / "tickets.txt"
    tickets.write_text("\n".join(text for text, _ in rows) + "\n")
    assert run("score", tickets, "--model", "intents").exit_code == 0
    job_id = rows_of(select(results.c.job_id).limit(1))[0][0]

    same = run("compare", job_id, "--model", "intents")
    assert same.exit_code == 0, same.output
    assert "agreement" in same.output and "1.000 (24 of 24)" in same.output

    out = env / "differ.csv"
    other = run("compare", job_id, "--model", "swapped", "--out", out)
    assert other.exit_code == 0, other.output
    differing = list(csv.DictReader(out.open()))
    # Complaints and praise swap; questions stay questions.
    assert len(differing) == 16 and "0.333 (8 of 24)" in other.output
    assert {(row["label_a"], row["label_b"]) for row in differing} == {
        ("complaint", "praise"),
        ("praise", "complaint"),
    }
    assert all(
        row["model_a"] == "intents v1" and row["model_b"] == "swapped v1" for row in differing
    )
    assert "items labelled differently" in other.output

    assert run("compare", "nope", "--model", "intents").exit_code == 2
    with get_engine(get_settings().database_url).begin() as conn:
        spec = Registry.load(get_settings().models).get("tiny")
        pending = create_job(conn, spec, [InputItem(item_id="a", text="x")], chunk_size=1)
    unfinished = run("compare", pending.id, "--model", "intents")
    assert unfinished.exit_code == 2 and "is queued; compare a completed job" in unfinished.output
    wrong_kind = run("compare", job_id, "--model", "tinyimages")
    assert wrong_kind.exit_code == 2 and "scores images" in wrong_kind.output
    training_job = rows_of(select(trained_models.c.job_id).limit(1))[0][0]
    refused = run("compare", str(training_job), "--model", "intents")
    assert refused.exit_code == 2 and "is a training job" in refused.output


def test_train_on_a_folder_of_images_then_score_unseen_ones(env: Path) -> None:
    photos = write_label_folders(env / "photos", stripes_and_dots(32, seed=1))
    trained = run("train", "patterns", "--base", "tinyimages", "--data", photos)
    assert trained.exit_code == 0, trained.output
    ((metrics,),) = rows_of(select(trained_models.c.metrics))
    assert metrics["accuracy"] >= 0.9 and metrics["used"] == 64

    unseen = env / "unseen"
    unseen.mkdir()
    for label, name, data in stripes_and_dots(10, seed=7):
        (unseen / f"{label}-{name}").write_bytes(data)
    (unseen / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = env / "scored.csv"
    scored = run("score", unseen, "--model", "patterns", "--out", out)
    assert scored.exit_code == 0, scored.output
    predictions = {row["id"]: row for row in csv.DictReader(out.open())}
    assert predictions["broken.png"]["error"]
    right = [
        row["label"] == ident.split("-")[0]
        for ident, row in predictions.items()
        if ident != "broken.png"
    ]
    assert len(right) == 20 and sum(right) >= 18


def test_train_compare_and_models_show_print_json(env: Path) -> None:
    rows = intent_rows(8)
    trained = run(
        "train", "intents", "--data", labelled_csv(env / "a.csv", rows), "-b", "tinybase", "--json"
    )
    assert trained.exit_code == 0, trained.output
    model = json.loads(trained.stdout)
    assert (model["name"], model["version"], model["base"]) == ("intents", "v1", "tinybase")
    assert model["labels"] == ["complaint", "praise", "question"]
    assert model["evaluation"]["accuracy"] == model["accuracy"]

    shown = json.loads(run("models", "show", "intents", "--json").stdout)
    assert shown["name"] == "intents" and [v["version"] for v in shown["versions"]] == ["v1"]

    tickets = env / "tickets.txt"
    tickets.write_text("\n".join(text for text, _ in rows) + "\n")
    job_id = json.loads(run("score", tickets, "--model", "intents", "--json").stdout)["job_id"]
    compared = json.loads(run("compare", job_id, "--model", "intents", "--json").stdout)
    assert (compared["compared"], compared["agreeing"], compared["differ"]) == (24, 24, 0)
    assert compared["job"] == {"id": job_id, "model": "intents v1"}
