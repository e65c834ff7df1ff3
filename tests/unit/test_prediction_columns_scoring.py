"""A runner that answers with arrays (TopKColumns) through score_jobs: every row is what
the same predictions made one by one give, whether a row's prediction is the window's own
columns (the usual case), a repeat served from an earlier row (dedup), or next to an
intake error."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine, text

from core.db import dispose_engines, get_engine
from core.inputs.items import InputItem
from core.jobs.lifecycle import create_job
from core.jobs.predictions import Prediction
from core.migrate import upgrade
from core.models.registry import ModelSpec
from engine.runners.base import Progress, Runner, top_k_columns
from engine.scoring import JobItems, score_jobs

SPEC = ModelSpec(name="arrays", task="text-classification", backend="transformers", source="/x")
LABELS = ["NEGATIVE", "NEUTRAL", "POSITIVE"]


def scores_of(text_value: str) -> list[float]:
    """Scores that depend on the text only, so a repeat must get the same row."""
    rng = np.random.default_rng(sum(text_value.encode()))
    row = rng.random(3).astype(np.float32)
    return (row / row.sum()).tolist()


class ArrayRunner(Runner):
    """Ranks a batch with one array operation, as the text runner does."""

    name = "arrays"

    def __init__(self, as_columns: bool) -> None:
        self.as_columns = as_columns

    def setup(self, device: str = "cpu") -> None:
        pass

    def predict(self, batch: Sequence[Any], progress: Progress | None = None) -> Any:
        columns = top_k_columns(LABELS, np.asarray([scores_of(str(v)) for v in batch]), 2)
        if progress is not None:
            progress(len(batch))
        return columns if self.as_columns else list(columns)


@pytest.fixture()
def engine(tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'columns.db'}"
    upgrade(url)
    yield get_engine(url)
    dispose_engines()


def stored(engine: Engine, job_id: str) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        query = text(
            'SELECT "index", item_id, label, score, top_k, error, cached FROM results '
            'WHERE job_id = :job ORDER BY "index"'
        )
        return [tuple(row) for row in conn.execute(query, {"job": job_id})]


@pytest.mark.parametrize("dedup", [True, False])
def test_rows_from_columns_equal_rows_from_predictions(engine: Engine, dedup: bool) -> None:
    # Repeats within a window and across windows, and intake errors between them.
    inputs = [
        InputItem(item_id=f"i{i}", text=f"text {i % 37}")
        if i % 29
        else InputItem(item_id=f"i{i}", text=None, error="refused at intake")
        for i in range(300)
    ]
    rows = {}
    for as_columns in (True, False):
        with engine.begin() as conn:
            job = create_job(conn, SPEC, inputs, chunk_size=300)
        run = score_jobs(
            engine,
            ArrayRunner(as_columns),
            [JobItems(job.id, list(enumerate(inputs)))],
            write_batch_size=64,
            dedup=dedup,
            cache=False,
        )
        assert run.totals[job.id].succeeded == 300 - 11 and run.totals[job.id].failed == 11
        rows[as_columns] = stored(engine, job.id)
    assert rows[True] == rows[False]
    by_text = {}
    for index, _, label, score, top_k, error, _ in rows[True]:
        if error is not None:
            assert (label, score, top_k) == (
                None,
                None,
                "null",
            )  # JSON null, as SQLAlchemy stores it
            continue
        expected = Prediction(*_best(scores_of(f"text {index % 37}")))
        assert (label, score) == (expected.label, expected.score)
        by_text.setdefault(index % 37, set()).add(top_k)
    assert all(len(texts) == 1 for texts in by_text.values()), "a repeat got another row"


def _best(scores: list[float]) -> tuple[str, float, list[tuple[str, float]]]:
    ranked = sorted(zip(LABELS, scores, strict=True), key=lambda pair: -pair[1])[:2]
    return ranked[0][0], ranked[0][1], ranked
