"""What a runner returns for one input: a label and score, or a per-item error."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import overload

from core.jobs.pairs_json import PairsJson


@dataclass(slots=True)
class Prediction:
    label: str | None = None
    score: float | None = None
    # The k best labels, best first, as [label, score] pairs.
    top_k: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None

    @classmethod
    def failure(cls, error: str) -> Prediction:
        return cls(error=error)

    @property
    def ok(self) -> bool:
        return self.error is None


class PredictionColumns(Sequence[Prediction]):
    """The predictions of a batch, readable column by column for a result write.

    A runner that ranks a batch with one array operation keeps its answers as arrays
    (``engine.runners.base.TopKColumns``): the write asks for whole columns, and a
    :class:`Prediction` is made only when one is asked for by position (dedup of a repeated
    input, the result cache, a retried row). :class:`PredictionList` holds predictions made
    one by one.
    """

    def labels(self) -> list[str | None]:
        return [prediction.label for prediction in self]

    def scores(self) -> list[float | None]:
        return [prediction.score for prediction in self]

    def errors(self) -> list[str | None]:
        return [prediction.error for prediction in self]

    def top_k_json(self, encode: PairsJson) -> list[str | None]:
        """Each row's top-k pairs as JSON text (``encode``'s separators); None without any."""
        return [encode(prediction.top_k) if prediction.top_k else None for prediction in self]


class PredictionList(PredictionColumns):
    """Predictions made one by one (any runner's list, a cache hit, an intake error)."""

    __slots__ = ("items",)

    def __init__(self, items: Iterable[Prediction] = ()) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    @overload
    def __getitem__(self, position: int) -> Prediction: ...
    @overload
    def __getitem__(self, position: slice) -> Sequence[Prediction]: ...
    def __getitem__(self, position: int | slice) -> Prediction | Sequence[Prediction]:
        return self.items[position]


def as_columns(predictions: Sequence[Prediction]) -> PredictionColumns:
    """``predictions`` readable by column (the same object if it already is)."""
    if isinstance(predictions, PredictionColumns):
        return predictions
    return PredictionList(predictions)
