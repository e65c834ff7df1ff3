"""Dedup within a scoring call and the result cache, on SQLite with counting fake runners."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine, func, select, text, update
from typer.testing import CliRunner

from cli.main import app
from core.cache.store import input_sha256, lookup_many, store_many
from core.cache.upkeep import cache_stats, clear_cache, evict
from core.clock import utcnow
from core.config import Settings, reset_settings_cache
from core.db import dispose_engines, get_engine
from core.inputs.items import InputItem
from core.jobs.lifecycle import Job, create_job, get_job
from core.jobs.predictions import Prediction
from core.jobs.status import JobStatus
from core.migrate import upgrade
from core.models.registry import ModelSpec, Registry
from core.models.trained import SqlTrainedModels, TrainedSpec, register_trained_model
from core.tables import result_cache, results
from engine.runners.base import Progress, Runner
from engine.runners.head_runner import HeadRunner
from engine.runners.heads import head_bytes
from engine.scoring import score_items
from worker.reconciler import evict_cache

SPEC = ModelSpec(name="fake", task="text-classification", backend="transformers", source="/x")


class CountingRunner(Runner):
    """Labels a text by its length; counts every input that reaches ``predict``."""

    name = "fake"

    def __init__(self, revision: str | None = "r1", fail_on: str | None = None) -> None:
        self.revision = revision
        self.inputs: list[str] = []
        self.fail_on = fail_on

    def setup(self, device: str = "cpu") -> None:
        pass

    def predict(self, batch: Sequence[Any], progress: Progress | None = None) -> list[Prediction]:
        self.inputs.extend(str(value) for value in batch)
        if progress is not None:
            progress(len(batch))
        out = []
        for value in batch:
            if value == self.fail_on:
                out.append(Prediction.failure("cannot score this one"))
                continue
            score = 1.0 / (1 + len(value))
            out.append(
                Prediction(
                    label=f"len{len(value)}",
                    score=score,
                    top_k=[(f"len{len(value)}", score), ("other", 1 - score)],
                )
            )
        return out


@pytest.fixture()
def engine(tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'cache.db'}"
    upgrade(url)
    yield get_engine(url)
    dispose_engines()


def new_job(engine: Engine, texts: Sequence[str], use_cache: bool = True) -> Job:
    inputs = [InputItem(item_id=f"r{i}", text=value) for i, value in enumerate(texts)]
    with engine.begin() as conn:
        return create_job(conn, SPEC, inputs, chunk_size=len(texts), use_cache=use_cache)


def score(
    engine: Engine, runner: Runner, texts: Sequence[str], use_cache: bool = True, **kwargs: Any
) -> Job:
    job = new_job(engine, texts, use_cache)
    items = [(i, InputItem(item_id=f"r{i}", text=value)) for i, value in enumerate(texts)]
    score_items(engine, job.id, runner, items, **kwargs)
    with engine.connect() as conn:
        done = get_job(conn, job.id)
    assert done is not None and done.status == JobStatus.COMPLETED
    return done


def rows_of(engine: Engine, job_id: str) -> list[Any]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(results).where(results.c.job_id == job_id).order_by(results.c.index)
            )
        )


def cache_rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(result_cache)) or 0)


# A job with repeats: 12 items, 5 distinct texts.
REPEATED = ["great", "bad", "great", "ok", "great", "bad", "fine!", "ok", "great", "x", "x", "bad"]


# -- dedup ----------------------------------------------------------------------------------


def test_each_distinct_text_reaches_the_model_once_and_every_index_gets_its_row(
    engine: Engine,
) -> None:
    runner = CountingRunner()
    # Windows of 4 rows: repeats are also found across windows, not only within one.
    job = score(engine, runner, REPEATED, write_batch_size=4, cache=False)
    assert sorted(runner.inputs) == sorted(set(REPEATED))
    rows = rows_of(engine, job.id)
    assert [row.index for row in rows] == list(range(len(REPEATED)))
    assert [row.label for row in rows] == [f"len{len(t)}" for t in REPEATED]
    assert not any(row.cached for row in rows)  # scored by this job's own forward pass
    assert job.succeeded == len(REPEATED) and job.failed == 0


def test_without_dedup_every_item_is_predicted(engine: Engine) -> None:
    runner = CountingRunner()
    score(engine, runner, REPEATED, write_batch_size=4, dedup=False, cache=False)
    assert len(runner.inputs) == len(REPEATED)


def test_a_per_item_error_is_shared_by_its_repeats_and_never_cached(engine: Engine) -> None:
    runner = CountingRunner(fail_on="bad")
    job = score(engine, runner, REPEATED)
    assert runner.inputs.count("bad") == 1
    rows = rows_of(engine, job.id)
    assert [row.error for row in rows if row.item_id in ("r1", "r5", "r11")] == [
        "cannot score this one"
    ] * 3
    assert job.failed == 3
    with engine.connect() as conn:
        found = lookup_many(conn, "fake", "r1", [input_sha256(t) for t in set(REPEATED)])
    assert input_sha256("bad") not in found and len(found) == len(set(REPEATED)) - 1


# -- cache ----------------------------------------------------------------------------------


def test_a_second_job_is_served_from_the_cache_with_identical_rows(engine: Engine) -> None:
    first = score(engine, CountingRunner(), REPEATED)
    again = CountingRunner()
    second = score(engine, again, REPEATED)
    assert again.inputs == []  # no forward pass at all
    old, new = rows_of(engine, first.id), rows_of(engine, second.id)
    assert all(row.cached for row in new) and not any(row.cached for row in old)
    for a, b in zip(old, new, strict=True):
        assert (a.label, a.top_k, a.error) == (b.label, b.top_k, b.error)
        assert b.score == pytest.approx(a.score, abs=1e-6)
    assert second.succeeded == len(REPEATED)


def test_only_the_misses_are_predicted(engine: Engine) -> None:
    score(engine, CountingRunner(), ["a", "bb"])
    runner = CountingRunner()
    job = score(engine, runner, ["a", "ccc", "bb", "ccc"])
    assert runner.inputs == ["ccc"]
    assert [row.cached for row in rows_of(engine, job.id)] == [True, False, True, False]


def test_a_job_that_asks_for_fresh_scores_neither_reads_nor_fills_the_cache(
    engine: Engine,
) -> None:
    score(engine, CountingRunner(), ["a", "bb"])
    runner = CountingRunner()
    job = score(engine, runner, ["a", "bb", "new"], use_cache=False)
    assert sorted(runner.inputs) == ["a", "bb", "new"]
    assert not any(row.cached for row in rows_of(engine, job.id))
    assert cache_rows(engine) == 2  # "new" was not stored


def test_another_revision_of_the_model_does_not_hit(engine: Engine) -> None:
    score(engine, CountingRunner(revision="r1"), ["a", "bb"])
    runner = CountingRunner(revision="r2")
    job = score(engine, runner, ["a", "bb"])
    assert runner.inputs == ["a", "bb"] and not any(r.cached for r in rows_of(engine, job.id))


def test_a_missing_cache_table_costs_the_cache_not_the_chunk(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE result_cache"))
    runner = CountingRunner()
    job = score(engine, runner, REPEATED)
    assert sorted(runner.inputs) == sorted(set(REPEATED))  # dedup still works
    assert job.succeeded == len(REPEATED)
    assert [r.label for r in rows_of(engine, job.id)] == [f"len{len(t)}" for t in REPEATED]
    assert "result cache lookup failed" in caplog.text


def test_storing_twice_keeps_the_first_row(engine: Engine) -> None:
    digest = input_sha256("a")
    with engine.begin() as conn:
        assert store_many(conn, "m", "", {digest: Prediction(label="one", score=0.5)}) == 1
    with engine.begin() as conn:
        assert store_many(conn, "m", "", {digest: Prediction(label="two", score=0.9)}) == 0
    with engine.connect() as conn:
        assert lookup_many(conn, "m", "", [digest])[digest].label == "one"


def test_image_bytes_and_text_hash_as_raw_bytes_and_utf8() -> None:
    assert input_sha256("é") == input_sha256("é".encode()) != input_sha256("e")


# -- upkeep ---------------------------------------------------------------------------------


def fill(engine: Engine, model: str, count: int, age_s: float = 0) -> None:
    with engine.begin() as conn:
        store_many(
            conn,
            model,
            "",
            {input_sha256(f"{model}{i}"): Prediction(label="l", score=0.1) for i in range(count)},
        )
        if age_s:
            conn.execute(
                update(result_cache)
                .where(result_cache.c.model == model)
                .values(created_at=utcnow() - timedelta(seconds=age_s))
            )


def test_stats_count_rows_per_model_and_clear_takes_one_model_or_all(engine: Engine) -> None:
    fill(engine, "a", 3)
    fill(engine, "b", 2)
    stats = cache_stats(engine)
    assert stats.rows == 5 and [(m.model, m.rows) for m in stats.models] == [("a", 3), ("b", 2)]
    assert clear_cache(engine, "a") == 3
    assert cache_stats(engine).rows == 2
    assert clear_cache(engine) == 2 and cache_stats(engine).rows == 0


def test_eviction_drops_rows_past_the_age_limit(engine: Engine) -> None:
    fill(engine, "old", 7, age_s=3600)
    fill(engine, "new", 3)
    assert evict(engine, max_rows=0, max_age_s=600, batch=2) == 7
    assert [(m.model, m.rows) for m in cache_stats(engine).models] == [("new", 3)]


def test_eviction_keeps_the_newest_rows_within_the_row_limit(engine: Engine) -> None:
    fill(engine, "old", 6, age_s=60)
    fill(engine, "new", 4)
    assert evict(engine, max_rows=5, max_age_s=0, batch=2) == 5
    assert [(m.model, m.rows) for m in cache_stats(engine).models] == [("new", 4), ("old", 1)]
    assert evict(engine, max_rows=5, max_age_s=0) == 0  # within limits: nothing to do


def test_eviction_stops_after_its_batch_budget(engine: Engine) -> None:
    fill(engine, "old", 10, age_s=3600)
    assert evict(engine, max_rows=0, max_age_s=1, batch=3, max_batches=2) == 6
    assert cache_stats(engine).rows == 4


# -- trained models -------------------------------------------------------------------------

ENCODER = """
[models.encoder]
task = "feature-extraction"
backend = "transformers"
source = "/not/loaded/in/these/tests"
max_length = 64
"""


class FixedBackbone:
    """A 2-d text backbone: (1, 0) for texts with "good", else (0, 1)."""

    name = "encoder"
    revision = None
    max_batch_size = 8

    def setup(self, device: str = "cpu") -> None:
        pass

    def embed(self, texts: Sequence[str], progress: Any = None) -> np.ndarray:
        return np.array([[1.0, 0.0] if "good" in t else [0.0, 1.0] for t in texts], np.float32)


def trained_runner(settings: Settings, labels: list[str]) -> HeadRunner:
    engine = get_engine(settings.database_url)
    base = Registry.load(settings.models).get("encoder")
    weight = np.eye(2, dtype=np.float32) * 4
    with engine.begin() as conn:
        register_trained_model(
            conn,
            name="intent",
            base=base,
            labels=labels,
            metrics={},
            head=head_bytes(weight, np.zeros(2, np.float32), labels, {}),
            job_id=None,
        )
    registry = Registry.load(settings.models).with_trained(SqlTrainedModels(settings.database_url))
    spec = registry.get("intent")
    assert isinstance(spec, TrainedSpec)
    runner = HeadRunner(spec, settings, backbone=FixedBackbone())  # type: ignore[arg-type]
    runner.setup("cpu")
    return runner


def test_a_retrained_model_never_hits_the_old_versions_cache(tmp_path: Path) -> None:
    (tmp_path / "models.toml").write_text(ENCODER)
    url = f"sqlite:///{tmp_path / 'trained.db'}"
    upgrade(url)
    settings = Settings(database_url=url, models=tmp_path / "models.toml")
    engine = get_engine(url)
    texts = ["good day", "bad day", "good day"]
    spec = SPEC.model_copy(update={"name": "intent"})

    def run(runner: HeadRunner) -> list[Any]:
        with engine.begin() as conn:
            job = create_job(
                conn, spec, [InputItem(f"r{i}", t) for i, t in enumerate(texts)], chunk_size=3
            )
        items = [(i, InputItem(f"r{i}", t)) for i, t in enumerate(texts)]
        score_items(engine, job.id, runner, items)
        return rows_of(engine, job.id)

    try:
        v1 = trained_runner(settings, ["pos", "neg"])
        assert [(r.label, r.cached) for r in run(v1)] == [
            ("pos", False),
            ("neg", False),
            ("pos", False),
        ]
        assert [(r.label, r.cached) for r in run(v1)] == [
            ("pos", True),
            ("neg", True),
            ("pos", True),
        ]
        v2 = trained_runner(settings, ["yes", "no"])  # retrained: version 2, other labels
        assert v2.revision == "v2" and v2.cache_revision != v1.cache_revision
        assert [(r.label, r.cached) for r in run(v2)] == [
            ("yes", False),
            ("no", False),
            ("yes", False),
        ]
        assert {
            (m.model, m.revision.split("+")[0], m.rows) for m in cache_stats(engine).models
        } == {
            ("intent", "v1", 2),
            ("intent", "v2", 2),
        }
    finally:
        dispose_engines()


# -- the reconciler and the CLI -------------------------------------------------------------


def test_the_reconciler_trims_the_cache_to_the_settings(engine: Engine) -> None:
    fill(engine, "old", 4, age_s=7200)
    fill(engine, "new", 3)
    url = str(engine.url)
    assert evict_cache(Settings(database_url=url, cache_max_rows=0, cache_max_age_s=0)) == 0
    assert evict_cache(Settings(database_url=url, cache_max_rows=2, cache_max_age_s=3600)) == 5
    assert [(m.model, m.rows) for m in cache_stats(engine).models] == [("new", 2)]


def test_the_cache_commands_show_and_clear(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    fill(engine, "alpha", 3)
    fill(engine, "beta", 2)
    monkeypatch.setenv("BULKSCORE_DATABASE_URL", str(engine.url))
    reset_settings_cache()
    try:
        shown = CliRunner().invoke(app, ["cache", "stats"])
        assert shown.exit_code == 0, shown.output
        assert "result cache: 5 rows" in shown.output
        assert "alpha" in shown.output and "beta" in shown.output
        cleared = CliRunner().invoke(app, ["cache", "clear", "--model", "alpha"])
        assert (
            cleared.exit_code == 0 and "deleted 3 cached results of model alpha" in cleared.output
        )
        assert [m.model for m in cache_stats(engine).models] == ["beta"]
        assert "deleted 2" in CliRunner().invoke(app, ["cache", "clear"]).output
    finally:
        reset_settings_cache()
