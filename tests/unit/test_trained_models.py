"""Trained models in SQL: versions, resolution by name everywhere, the trainer, the task body."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine, create_engine, select
from training_support import WordBackbone, intent_rows, labelled_csv

from core.chunks.claim import chunk_status, claim_chunk, release_expired
from core.chunks.split import split_all_exhausted
from core.chunks.sweep import stale_queued_chunks
from core.clock import utcnow
from core.config import Settings
from core.db import dispose_engines, get_engine
from core.jobs.lifecycle import cancel_job, get_job, list_chunks, mark_running
from core.jobs.status import ChunkStatus, JobStatus
from core.keys import create_key
from core.migrate import upgrade
from core.models.registry import InputKind, Registry, RegistryError, Task, UnknownModelError
from core.models.trained import (
    NameTakenError,
    SqlTrainedModels,
    TrainedModelError,
    TrainedSpec,
    check_base,
    check_new_name,
    get_trained,
    list_trained,
    list_versions,
    register_trained_model,
    trained_table_exists,
)
from core.schedules.config import load_schedules
from core.tables import trained_models
from core.training.data import DataFormat, parse_labelled_csv
from core.training.jobs import TRAINING_CHUNK, create_training_job
from engine.chunk_work import work_on_chunk
from engine.delivery import ChunkAttemptError, ChunkOutcome, ChunkReport, Driver
from engine.runners import build_runner
from engine.runners.head_runner import HeadRunner
from engine.runners.heads import head_bytes, read_head
from engine.trainer import train_and_register

MODELS = """
[models.encoder]
task = "feature-extraction"
backend = "transformers"
source = "/not/loaded/in/these/tests"
max_length = 64
max_batch_size = 4

[models.classifier]
task = "text-classification"
backend = "transformers"
source = "org/classifier"

[models.photos]
task = "image-classification"
backend = "keras"
source = "keras:ResNet50/imagenet"

[models.vision]
task = "image-classification"
backend = "transformers"
source = "org/vit"
"""


@pytest.fixture()
def settings(tmp_path: Path) -> Iterator[Settings]:
    (tmp_path / "models.toml").write_text(MODELS)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    yield Settings(database_url=url, models=tmp_path / "models.toml")
    dispose_engines()


@pytest.fixture()
def engine(settings: Settings) -> Engine:
    return get_engine(settings.database_url)


def registry_of(settings: Settings) -> Registry:
    return Registry.load(settings.models).with_trained(SqlTrainedModels(settings.database_url))


def fake_head(labels: list[str], dim: int = 3) -> bytes:
    weight = np.eye(len(labels), dim, dtype=np.float32)
    return head_bytes(weight, np.zeros(len(labels), np.float32), labels, {})


def register(
    engine: Engine, settings: Settings, name: str, labels: list[str], owner: int | None = None
) -> Any:
    base = Registry.load(settings.models).get("encoder")
    with engine.begin() as conn:
        return register_trained_model(
            conn,
            name=name,
            base=base,
            labels=labels,
            metrics={"accuracy": 0.5 + len(labels) / 10},
            head=fake_head(labels),
            job_id=None,
            owner_key_id=owner,
        )


def key_id(engine: Engine, name: str) -> int:
    with engine.begin() as conn:
        return create_key(conn, name)[0]


def test_a_name_belongs_to_its_first_owner_and_other_keys_do_not_see_it(
    engine: Engine, settings: Settings
) -> None:
    alice, bob = key_id(engine, "alice"), key_id(engine, "bob")
    register(engine, settings, "alice-model", ["a", "b"], owner=alice)
    register(engine, settings, "shipped", ["x", "y"], owner=None)  # the operator's
    register(engine, settings, "alice-model", ["a", "b", "c"], owner=alice)
    for intruder in (bob, None):  # another key, and the operator, add no version
        with pytest.raises(NameTakenError, match="belongs to another API key"):
            register(engine, settings, "alice-model", ["bob"], owner=intruder)
    with pytest.raises(NameTakenError):
        register(engine, settings, "shipped", ["bob"], owner=bob)
    with engine.connect() as conn:
        assert [m.version for m in list_versions(conn, "alice-model")] == [2, 1]
        assert get_trained(conn, "alice-model", visible_to=bob) is None
        assert get_trained(conn, "alice-model", 1, visible_to=bob) is None
        assert list_versions(conn, "alice-model", visible_to=bob) == []
        assert [m.name for m in list_trained(conn, visible_to=bob)] == ["shipped"]
        assert [m.name for m in list_trained(conn, visible_to=alice)] == ["alice-model", "shipped"]
        assert [m.name for m in list_trained(conn)] == ["alice-model", "shipped"]
        assert get_trained(conn, "alice-model", visible_to=alice).version == 2  # type: ignore[union-attr]
    as_bob = Registry.load(settings.models).with_trained(
        SqlTrainedModels(settings.database_url, visible_to=bob)
    )
    with pytest.raises(UnknownModelError) as refused:
        as_bob.get("alice-model")
    assert "alice-model" not in str(refused.value).split("known models:")[1]
    assert as_bob.get("shipped").name == "shipped"
    assert registry_of(settings).get("alice-model").revision == "v2"  # workers: unscoped


def test_retraining_a_name_adds_versions_and_listings_show_the_latest(
    engine: Engine, settings: Settings
) -> None:
    first = register(engine, settings, "intent", ["a", "b"])
    second = register(engine, settings, "intent", ["a", "b", "c"])
    other = register(engine, settings, "other", ["x", "y"])
    assert (first.version, second.version, other.version) == (1, 2, 1)
    assert second.revision == "v2" and second.accuracy == pytest.approx(0.8)
    with engine.connect() as conn:
        latest = get_trained(conn, "intent")
        assert latest is not None and latest.version == 2 and latest.head is not None
        assert get_trained(conn, "intent", 1, with_head=False).labels == ["a", "b"]  # type: ignore[union-attr]
        assert get_trained(conn, "intent", 3) is None
        assert [(m.name, m.version) for m in list_trained(conn)] == [("intent", 2), ("other", 1)]
        assert all(m.head is None for m in list_trained(conn))
        assert [m.version for m in list_versions(conn, "intent")] == [2, 1]


def test_a_trained_name_resolves_to_its_latest_version_over_its_base(
    engine: Engine, settings: Settings
) -> None:
    register(engine, settings, "intent", ["a", "b"])
    register(engine, settings, "intent", ["no", "yes"])
    spec = registry_of(settings).get("intent")
    assert isinstance(spec, TrainedSpec)
    assert spec.revision == "v2" and spec.version == 2 and spec.labels == ("no", "yes")
    assert spec.source == "/not/loaded/in/these/tests" and spec.base_spec.name == "encoder"
    assert spec.task == Task.TEXT_CLASSIFICATION and spec.input_kind == InputKind.TEXT
    assert spec.max_batch_size == 4 and spec.queue == "bulkscore.model.intent"
    runner = build_runner(spec)
    assert isinstance(runner, HeadRunner) and runner.revision == "v2"
    with pytest.raises(UnknownModelError, match="known models: classifier, encoder, intent"):
        registry_of(settings).get("nope")


def test_models_file_names_never_touch_the_database(tmp_path: Path, settings: Settings) -> None:
    missing = tmp_path / "never-created.db"
    registry = Registry.load(settings.models).with_trained(SqlTrainedModels(f"sqlite:///{missing}"))
    assert registry.get("encoder").name == "encoder"
    with pytest.raises(UnknownModelError):
        registry.get("intent")
    assert not missing.exists()
    assert not trained_table_exists(f"sqlite:///{missing}")
    # A database from before the trained_models table simply has no trained models.
    old = tmp_path / "old.db"
    create_engine(f"sqlite:///{old}").connect().close()
    assert SqlTrainedModels(f"sqlite:///{old}").spec("intent", registry) is None


def test_a_trained_model_whose_base_left_the_models_file_is_explained(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    register(engine, settings, "intent", ["a", "b"])
    smaller = tmp_path / "smaller.toml"
    smaller.write_text(MODELS.split("[models.classifier]")[0].replace("encoder", "other"))
    registry = Registry.load(smaller).with_trained(SqlTrainedModels(settings.database_url))
    with pytest.raises(RegistryError, match="built on 'encoder', which is no longer"):
        registry.get("intent")


@pytest.mark.parametrize(
    ("name", "base", "message"),
    [
        ("Bad Name", "encoder", "use lower-case letters"),
        ("encoder", "encoder", "is a model of the models file"),
        ("intent", "nope", "unknown base model 'nope'"),
        ("intent", "vision", "cannot be used as a backbone"),
    ],
)
def test_names_and_bases_are_checked(
    settings: Settings, name: str, base: str, message: str
) -> None:
    registry = Registry.load(settings.models)
    with pytest.raises(TrainedModelError, match=message):
        check_new_name(registry, name)
        check_base(registry, base)


def test_classifiers_of_either_kind_are_bases() -> None:
    registry = Registry.from_mapping({"models": {}}, base_dir=Path("."))
    for spec in Registry.load(
        Path(__file__).parents[2] / "core" / "models" / "models.toml"
    ).models.values():
        registry.models[spec.name] = spec
    assert check_base(registry, "minilm").input_kind == InputKind.TEXT
    assert check_base(registry, "resnet50").input_kind == InputKind.IMAGE
    assert check_base(registry, "imagenet-lite").input_kind == InputKind.IMAGE
    assert check_base(registry, "sentiment").name == "sentiment"


def training_job(engine: Engine, settings: Settings, name: str, data: bytes | None) -> str:
    """A training job: queued for the workers with ``data``, else as claimed in-process."""
    base = Registry.load(settings.models).get("encoder")
    with engine.begin() as conn:
        job = create_training_job(
            conn, name=name, base=base, total=24, data_format=DataFormat.CSV, data=data
        )
        if data is None:
            mark_running(conn, job.id)
    return job.id


def test_train_and_register_completes_the_job_with_its_version(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    rows = intent_rows(8)
    examples = parse_labelled_csv(labelled_csv(tmp_path / "i.csv", rows).read_bytes(), 100)
    base = Registry.load(settings.models).get("encoder")
    job_ids = []
    for _ in range(2):
        job_id = training_job(engine, settings, "intent", None)
        job_ids.append(job_id)
        model = train_and_register(
            engine,
            job_id=job_id,
            name="intent",
            base=base,
            examples=examples,
            backbone=WordBackbone(rows),
            holdout_fraction=0.25,
            seed=0,
        )
        assert model is not None and model.job_id == job_id
    assert model.version == 2 and model.accuracy == 1.0
    with engine.connect() as conn:
        job = get_job(conn, job_ids[1])
        assert job is not None and job.status == JobStatus.COMPLETED
        assert (job.model, job.model_revision, job.succeeded, job.failed) == ("intent", "v2", 24, 0)
        stored = conn.execute(select(trained_models.c.head)).scalars().all()
    assert len(stored) == 2  # same data and seed: the same head, stored twice
    for first, second in zip(read_head(stored[0]), read_head(stored[1]), strict=True):
        assert np.array_equal(first, second)
    spec = registry_of(settings).get("intent")
    runner = HeadRunner(spec, backbone=WordBackbone(rows))  # type: ignore[arg-type]
    runner.setup("cpu")
    labels = [p.label for p in runner.predict([text for text, _ in rows])]
    assert labels == [label for _, label in rows]


def test_a_job_cancelled_while_training_registers_nothing(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    rows = intent_rows(6)
    examples = parse_labelled_csv(labelled_csv(tmp_path / "i.csv", rows).read_bytes(), 100)
    job_id = training_job(engine, settings, "intent", None)
    with engine.begin() as conn:
        cancel_job(conn, job_id)
    model = train_and_register(
        engine,
        job_id=job_id,
        name="intent",
        base=Registry.load(settings.models).get("encoder"),
        examples=examples,
        backbone=WordBackbone(rows),
        holdout_fraction=0.25,
        seed=0,
    )
    assert model is None
    with engine.connect() as conn:
        assert get_trained(conn, "intent") is None


@contextmanager
def fake_backbone(_base: Any) -> Iterator[WordBackbone]:
    yield WordBackbone(intent_rows(8))


def run_training(
    engine: Engine, settings: Settings, job_id: str, backbone_for: Any = fake_backbone
) -> ChunkReport:
    """One delivery of the training job's chunk, as a worker serving the base makes it."""
    driver = Driver(runner_for=lambda _model: WordBackbone([]), backbone_for=backbone_for)
    return work_on_chunk(engine, settings, job_id, TRAINING_CHUNK, driver)


def test_a_training_job_is_one_chunk_that_runs_on_its_base(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    data = labelled_csv(tmp_path / "i.csv", intent_rows(8)).read_bytes()
    job_id = training_job(engine, settings, "intent", data)
    with engine.connect() as conn:
        job = get_job(conn, job_id)
        assert job is not None and (job.model, job.runs_on) == ("intent", "encoder")
        assert [(c.index, c.start, c.stop) for c in list_chunks(conn, job_id)] == [(0, 0, 1)]
        # A worker serving the base finds it lost (queued, empty queue) and re-sends it there.
        later = utcnow() + timedelta(seconds=120)
        assert stale_queued_chunks(conn, ["encoder"], older_than_s=60, now=later) == [
            (job_id, 0, "encoder")
        ]
        assert stale_queued_chunks(conn, ["intent"], older_than_s=60, now=later) == []
    # A worker that does not serve the base declines it before claiming: no attempt spent.
    declined = work_on_chunk(
        engine, settings, job_id, TRAINING_CHUNK, Driver(runner_for=lambda _model: None)
    )
    assert (declined.outcome, declined.model) == (ChunkOutcome.WRONG_MODEL, "encoder")
    with engine.begin() as conn:
        claim = claim_chunk(conn, job_id, 0, lease_s=1, max_attempts=3, now=utcnow())
        assert claim.claimed
        # Its worker died: the lease sweep releases it for the base's queue.
        assert release_expired(conn, ["encoder"], now=later) == [(job_id, 0, "encoder")]


def test_the_chunk_trains_from_the_stored_upload_and_finishes(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    data = labelled_csv(tmp_path / "i.csv", intent_rows(8)).read_bytes()
    job_id = training_job(engine, settings, "intent", data)
    report = run_training(engine, settings, job_id)
    assert report.outcome == ChunkOutcome.DONE and report.trained is not None
    assert "intent v1, held-out accuracy 1.000" in report.reason and report.attempts == 1
    with engine.connect() as conn:
        assert chunk_status(conn, job_id, 0) == ChunkStatus.DONE
    # A second delivery of the same message finds the chunk done and does nothing.
    again = run_training(engine, settings, job_id)
    assert (again.outcome, again.reason) == (ChunkOutcome.SKIPPED, "chunk already done")
    with engine.connect() as conn:
        assert [m.version for m in list_versions(conn, "intent")] == [1]
    missing = run_training(engine, settings, "nope")
    assert (missing.outcome, missing.reason) == (ChunkOutcome.SKIPPED, "no such job")


def test_unusable_data_fails_the_job_at_once_and_a_crash_is_retried_until_out_of_attempts(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    one_label = labelled_csv(tmp_path / "one.csv", [(f"text {i}", "same") for i in range(9)])
    job_id = training_job(engine, settings, "intent", one_label.read_bytes())
    report = run_training(engine, settings, job_id)
    assert (report.outcome, report.attempts) == (ChunkOutcome.FAILED, 1)
    with engine.connect() as conn:
        job = get_job(conn, job_id)
        assert chunk_status(conn, job_id, 0) == ChunkStatus.DONE
    assert job is not None and job.status == JobStatus.FAILED
    assert job.error is not None and "only one label ('same')" in job.error

    @contextmanager
    def broken(_base: Any) -> Iterator[Any]:
        raise RuntimeError("the backbone exploded")
        yield

    ok = labelled_csv(tmp_path / "ok.csv", intent_rows(8)).read_bytes()
    job_id = training_job(engine, settings, "intent", ok)
    for attempt in range(1, settings.chunk_max_attempts + 1):
        with pytest.raises(ChunkAttemptError) as failed:
            run_training(engine, settings, job_id, broken)
        assert failed.value.attempts == attempt
        assert failed.value.retry == (attempt < settings.chunk_max_attempts)
        with engine.connect() as conn:
            job = get_job(conn, job_id)
        assert job is not None
        assert job.status == (JobStatus.FAILED if not failed.value.retry else JobStatus.RUNNING)
    assert job.error == f"out of attempts ({attempt}); last: RuntimeError: the backbone exploded"


def test_an_exhausted_training_chunk_fails_its_job_without_bisection(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    data = labelled_csv(tmp_path / "i.csv", intent_rows(8)).read_bytes()
    job_id = training_job(engine, settings, "intent", data)
    now = utcnow()
    for _ in range(2):  # two workers killed mid-training: each lease ran out
        with engine.begin() as conn:
            assert claim_chunk(conn, job_id, 0, lease_s=1, max_attempts=2, now=now).claimed
            release_expired(conn, ["encoder"], now=now + timedelta(seconds=5))
    assert split_all_exhausted(engine, ["encoder"], max_attempts=2, send=None) == 1
    with engine.connect() as conn:
        job = get_job(conn, job_id)
        assert [c.index for c in list_chunks(conn, job_id)] == [0]
        assert chunk_status(conn, job_id, 0) == ChunkStatus.DONE
    assert job is not None and job.status == JobStatus.FAILED
    assert job.error is not None and job.error.startswith("out of attempts: every attempt")


def test_schedules_may_name_a_trained_model(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.config import reset_settings_cache

    register(engine, settings, "intent", ["a", "b"])
    path = Path(settings.models)
    path.write_text(
        path.read_text()
        + '\n[schedules.nightly]\ncron = "0 2 * * *"\nmodel = "intent"\nsource = "jsonl"\n'
        + 'path = "/data/*.jsonl"\n'
    )
    monkeypatch.setenv("BULKSCORE_DATABASE_URL", settings.database_url)
    reset_settings_cache()
    try:
        (schedule,) = load_schedules(path)
    finally:
        reset_settings_cache()
    assert isinstance(schedule.spec, TrainedSpec) and schedule.spec.revision == "v1"
