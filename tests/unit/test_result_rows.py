"""ResultRows: a write's rows column by column, kept aligned by every operation."""

from __future__ import annotations

from core.jobs.predictions import Prediction
from core.jobs.result_rows import ResultRows
from core.jobs.results import ScoredItem

GOOD = Prediction("pos", 0.9, [("pos", 0.9), ("neg", 0.1)])
BAD = Prediction.failure("bad input")


def rows_of(result: ResultRows) -> list[tuple[object, ...]]:
    columns = (result.job_id, result.index, result.item_id, result.prediction, result.cached)
    assert len({len(column) for column in columns}) == 1, "columns out of step"
    return list(zip(*columns, strict=True))


def test_rows_from_scored_items_keep_each_jobs_rows_in_order() -> None:
    rows = ResultRows.from_scored(
        {
            "a": [ScoredItem(0, "x", GOOD), ScoredItem(2, "z", BAD)],
            "b": [ScoredItem(1, "y", GOOD, cached=True)],
        }
    )
    assert rows_of(rows) == [
        ("a", 0, "x", GOOD, False),
        ("a", 2, "z", BAD, False),
        ("b", 1, "y", GOOD, True),
    ]
    assert rows.per_job() == {"a": 2, "b": 1}
    assert len(rows) == 3


def test_extend_and_only_move_whole_rows() -> None:
    first = ResultRows.from_scored({"a": [ScoredItem(0, "x", GOOD)]})
    second = ResultRows()
    second.extend(ResultRows.from_scored({"b": [ScoredItem(5, "q", BAD, cached=True)]}))
    second.extend(ResultRows.from_scored({"a": [ScoredItem(1, "y", GOOD)]}))
    first.extend(second)
    assert rows_of(first.only([2, 0])) == [("a", 1, "y", GOOD, False), ("a", 0, "x", GOOD, False)]
    assert rows_of(first.only(i for i in range(3) if i != 0)) == rows_of(second)
    assert len(ResultRows().only([])) == 0
