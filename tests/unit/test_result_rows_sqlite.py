"""SQLite result and item writes through the driver (core.jobs.sqlite_rows) store exactly
what a SQLAlchemy insert stores."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.dialects import sqlite

from core.db import dispose_engines, get_engine
from core.inputs.items import InputItem
from core.jobs.lifecycle import Job, create_job
from core.jobs.predictions import Prediction
from core.jobs.results import RESULT_ROW_COLUMNS, ScoredItem, write_job_results
from core.jobs.sqlite_rows import rows_per_statement, statement_sizes
from core.migrate import upgrade
from core.models.registry import ModelSpec
from core.tables import items, results

SPEC = ModelSpec(name="m", task="text-classification", backend="transformers", source="/x")


@pytest.fixture()
def engine(tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'rows.db'}"
    upgrade(url)
    yield get_engine(url)
    dispose_engines()


def new_job(engine: Engine, count: int) -> Job:
    inputs = [InputItem(item_id=f"r{i}", text=f"text {i}") for i in range(count)]
    with engine.begin() as conn:
        return create_job(conn, SPEC, inputs, chunk_size=count)


def scored(count: int) -> list[ScoredItem]:
    """Successes (odd scores, unicode and quotes in labels), errors and cached rows."""
    rows = []
    for i in range(count):
        if i % 5 == 0:
            prediction = Prediction.failure(f"bad\t{i}\\N 'quoted' \"é\"")
        else:
            label = ["POSITIVE", 'né"gative', "a\\b"][i % 3]
            score = 1 / (i + 3)
            prediction = Prediction(label=label, score=score, top_k=[(label, score), ("z", 1e-9)])
        rows.append(ScoredItem(i, f"r{i}", prediction, cached=i % 7 == 0))
    return rows


def stored(engine: Engine, job_id: str) -> list[tuple[Any, ...]]:
    """Every stored value with SQLite's own type of it, job id left out."""
    columns = [name for name in RESULT_ROW_COLUMNS if name != "job_id"]
    listed = ", ".join(f'"{name}", typeof("{name}")' for name in columns)
    with engine.connect() as conn:
        query = f'SELECT {listed} FROM results WHERE job_id = :job ORDER BY "index"'
        return [tuple(row) for row in conn.execute(text(query), {"job": job_id})]


def test_rows_are_stored_as_a_sqlalchemy_insert_stores_them(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = datetime(2026, 12, 1, 18, 7, 9, 123456, tzinfo=UTC)
    monkeypatch.setattr("core.jobs.results.utcnow", lambda: now)
    rows = scored(
        rows_per_statement(len(RESULT_ROW_COLUMNS)) + 30
    )  # more than one statement's worth
    ours = new_job(engine, len(rows))
    reference = new_job(engine, len(rows))
    with engine.begin() as conn:
        outcome = write_job_results(conn, "m", "rev", {ours.id: rows})[ours.id]
    assert (outcome.succeeded, outcome.failed) == (len(rows) - len(rows[::5]), len(rows[::5]))
    with engine.begin() as conn:
        # What write_job_results inserted before it went through the driver.
        conn.execute(
            sqlite.insert(results),
            [
                {
                    "job_id": reference.id,
                    "index": item.index,
                    "item_id": item.item_id,
                    "label": item.prediction.label,
                    "score": item.prediction.score,
                    "top_k": [list(pair) for pair in item.prediction.top_k] or None,
                    "error": item.prediction.error,
                    "model": "m",
                    "model_revision": "rev",
                    "created_at": now,
                    "cached": item.cached,
                }
                for item in rows
            ],
        )
    assert stored(engine, ours.id) == stored(engine, reference.id)


def test_a_row_already_present_is_skipped_and_not_counted(engine: Engine) -> None:
    rows = scored(12)
    job = new_job(engine, 20)
    with engine.begin() as conn:
        first = write_job_results(conn, "m", None, {job.id: rows[:8]})[job.id]
    with engine.begin() as conn:
        second = write_job_results(conn, "m", None, {job.id: rows})[job.id]
    assert first.written == 8 and second.written == 4
    assert len(stored(engine, job.id)) == 12


def test_a_jobs_items_are_stored_as_a_sqlalchemy_insert_stores_them(engine: Engine) -> None:
    inputs = [
        InputItem(item_id="t", text="plain 'text' with\ttabs", metadata={"k": "é", "n": "1"}),
        InputItem(item_id="b", data=b"\x00\xffbytes"),
        InputItem(item_id="e", error="refused at intake"),
        InputItem(item_id="n", text="no metadata"),
    ]
    with engine.begin() as conn:
        job = create_job(conn, SPEC, inputs, chunk_size=len(inputs))
        reference = create_job(conn, SPEC, [InputItem(item_id="x", text="x")], chunk_size=1)
        conn.execute(text("DELETE FROM items WHERE job_id = :job"), {"job": reference.id})
        conn.execute(
            sqlite.insert(items),
            [
                {
                    "job_id": reference.id,
                    "index": index,
                    "item_id": item.item_id,
                    "text": item.text,
                    "data": item.data,
                    "error": item.error,
                    "metadata": item.metadata,
                }
                for index, item in enumerate(inputs)
            ],
        )
    columns = ["index", "item_id", "text", "data", "error", "metadata"]
    listed = ", ".join(f'"{name}", typeof("{name}")' for name in columns)
    query = text(f'SELECT {listed} FROM items WHERE job_id = :job ORDER BY "index"')
    with engine.connect() as conn:
        ours = [tuple(row) for row in conn.execute(query, {"job": job.id})]
        theirs = [tuple(row) for row in conn.execute(query, {"job": reference.id})]
    assert ours == theirs and len(ours) == len(inputs)


def test_statements_come_in_a_few_sizes_that_cover_every_row() -> None:
    # SQLite compiles each distinct statement text: windows of any size must reuse a few.
    largest = rows_per_statement(len(RESULT_ROW_COLUMNS))
    shapes: set[int] = set()
    for rows in [*range(0, 600), largest - 1, largest, largest + 1, 3 * largest + 37, 20_000]:
        sizes = statement_sizes(rows, largest)
        assert sum(sizes) == rows
        assert all(0 < size <= largest for size in sizes)
        shapes.update(sizes)
    # The largest, and powers of two below it: at most 1 + 12 for 11 columns (2,978 rows).
    assert shapes <= {largest} | {1 << bit for bit in range(largest.bit_length())}
    assert {1, 2, 256, 512, largest} <= shapes
