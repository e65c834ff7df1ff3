"""The top-k pairs' JSON text is exactly what json.dumps (and so SQLAlchemy's JSON type)
writes, and a write stores the same bytes through it."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, text

from core.jobs.pairs_json import COMPACT_SEPARATORS, DEFAULT_SEPARATORS, PairsJson
from core.jobs.predictions import Prediction
from core.jobs.result_rows import ResultRows
from core.jobs.results import RESULT_ROW_COLUMNS, ScoredItem, _sqlite_json, _top_k_texts
from core.jobs.sqlite_rows import insert_rows
from core.migrate import upgrade
from core.tables import results

CASES = [
    [("POSITIVE", 0.9998123123123), ("NEGATIVE", 0.00018768768)],
    [('a "quoted" \\ label', 1e-300), ("ünïcödé 東京 🙂", 5e-324), ("tab\tnew\nline", 1.0)],
    [("x", 0.1 + 0.2), ("y", 1e22), ("z", 0.0), ("w", -0.0)],
    [["as", 0.5], ["lists", 0.25]],
    [],
    # Left to json.dumps: not finite, not a str label, a numpy float, not pairs.
    [("nan", math.nan), ("inf", math.inf)],
    [(3, 0.5)],
    [("numpy", np.float64(0.5))],
    [("one",)],
    {"not": "pairs"},
    "text",
    None,
]


@pytest.mark.parametrize("separators", [DEFAULT_SEPARATORS, COMPACT_SEPARATORS])
@pytest.mark.parametrize("value", CASES)
def test_the_text_is_json_dumps(value: object, separators: tuple[str, str]) -> None:
    encode = PairsJson(separators)
    assert encode(value) == json.dumps(value, separators=separators)
    assert encode(value) == json.dumps(value, separators=separators), "labels remembered"


def test_a_sqlite_write_stores_what_sqlalchemy_stores(tmp_path: Path) -> None:
    """Rows inserted through the fast encoders and once-processed timestamps hold the same
    bytes as SQLAlchemy's own insert of the same rows."""
    url = f"sqlite:///{tmp_path / 'rows.db'}"
    upgrade(url)
    engine = create_engine(url)
    now = datetime(2026, 12, 2, 13, 5, 7, 123456, tzinfo=UTC)
    columns = RESULT_ROW_COLUMNS
    rows = [
        (job, index, f"id-{index}", "POSITIVE", 0.75, top_k, None, "m", "r", now, False)
        for job in ("fast", "plain")
        for index, top_k in enumerate(
            [[("POSITIVE", 0.75), ("NEGATIVE", 0.25)], None, [("é", math.nan)], [("x", 1e-9)]]
        )
    ]
    with engine.begin() as conn:
        conn.execute(text("PRAGMA foreign_keys = OFF"))
        fast = [r for r in rows if r[0] == "fast"]
        # The top-k text as a result write makes it (by column, for SQLite's separators).
        scored = ResultRows.from_scored(
            {"fast": [ScoredItem(row[1], row[2], Prediction(top_k=row[5] or [])) for row in fast]}
        )
        top_k = columns.index("top_k")
        texts = _top_k_texts(conn, scored)
        insert_rows(
            conn,
            results,
            columns,
            [
                (*row[:top_k], made, *row[top_k + 1 :])
                for row, made in zip(fast, texts, strict=True)
            ],
            encoders={"top_k": _sqlite_json},
        )
        conn.execute(
            results.insert(), [dict(zip(columns, r, strict=True)) for r in rows if r[0] == "plain"]
        )
        stored = conn.execute(
            text('SELECT job_id, "index", top_k, created_at FROM results ORDER BY "index", job_id')
        ).all()
    by_index: dict[int, dict[str, tuple[object, object]]] = {}
    for job, index, top_k, created in stored:
        by_index.setdefault(index, {})[job] = (top_k, created)
    assert len(by_index) == 4
    for pair in by_index.values():
        assert pair["fast"] == pair["plain"]
