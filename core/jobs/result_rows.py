"""The rows of one result write, column by column.

A write window of a 20,000-text job is thousands of rows; an object per row (and a tuple
per row for the driver) cost more of the scoring loop's GIL than the columns it carries. So
the rows travel as one list per column, from the scoring loop to ``COPY`` or SQLite's
multi-row ``INSERT`` (:mod:`core.jobs.sqlite_rows` binds columns as they are), and their
predictions as the runner's own columns (:class:`core.jobs.predictions.PredictionColumns`:
arrays for a text classifier), read column by column only when written.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from core.jobs.predictions import Prediction, PredictionColumns, PredictionList

if TYPE_CHECKING:  # only for the adapter's type: results imports this module
    from core.jobs.results import ScoredItem


@dataclass(slots=True)
class ResultRows:
    """Rows to write: ``job_id[i]``, ``index[i]``, ... describe row ``i``; its prediction
    is row ``i`` of ``parts`` laid end to end."""

    job_id: list[str] = field(default_factory=list)
    index: list[int] = field(default_factory=list)
    item_id: list[str] = field(default_factory=list)
    parts: list[PredictionColumns] = field(default_factory=list)
    # The prediction came from the result cache (core.cache), not a forward pass.
    cached: list[bool] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def prediction(self) -> list[Prediction]:
        """Every row's prediction, one object each (for the rare row-by-row paths)."""
        return [prediction for part in self.parts for prediction in part]

    def extend(self, other: ResultRows) -> None:
        self.job_id += other.job_id
        self.index += other.index
        self.item_id += other.item_id
        self.parts += other.parts
        self.cached += other.cached

    def per_job(self) -> Counter[str]:
        """Rows by job."""
        return Counter(self.job_id)

    def only(self, positions: Iterable[int]) -> ResultRows:
        """The rows at ``positions``, in that order."""
        picked = list(positions)
        predictions = self.prediction
        return ResultRows(
            [self.job_id[i] for i in picked],
            [self.index[i] for i in picked],
            [self.item_id[i] for i in picked],
            [PredictionList(predictions[i] for i in picked)],
            [self.cached[i] for i in picked],
        )

    @classmethod
    def from_scored(cls, scored_by_job: Mapping[str, Sequence[ScoredItem]]) -> ResultRows:
        """Rows of :class:`core.jobs.results.ScoredItem` lists, by job (few rows: intake
        errors, abandoned chunks, tests): their predictions as one part."""
        rows = cls()
        predictions = []
        for job_id, scored in scored_by_job.items():
            for item in scored:
                rows.job_id.append(job_id)
                rows.index.append(item.index)
                rows.item_id.append(item.item_id)
                rows.cached.append(item.cached)
                predictions.append(item.prediction)
        rows.parts.append(PredictionList(predictions))
        return rows
