"""The runner contract: ``setup(device)`` loads once, ``predict(batch)`` scores in order.

A runner holds one model. ``setup`` is called once per worker process (never at import, never
per task); ``predict`` returns exactly one :class:`Prediction` per input, in input order,
with unusable inputs as per-item errors rather than exceptions. Like LitServe's ``LitAPI``,
the base class also carries the batch limit the rest of the engine plans with
(``max_batch_size``: inputs per forward pass, final once ``setup`` knows the device).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, overload

from core.jobs.pairs_json import PairsJson
from core.jobs.predictions import Prediction, PredictionColumns

Progress = Callable[[int], None]
# Finishes a started ``predict`` (:meth:`Runner.start_predict`): waits, returns its results
# (a list, or columns of arrays: engine.runners.base.TopKColumns).
Finish = Callable[[], Sequence[Prediction]]


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message tells the user what to do."""


# Inputs per forward pass of a runner that has not said (a CPU text batch).
DEFAULT_MAX_BATCH_SIZE = 64


class Runner(ABC):
    """One model: loaded by ``setup``, scored by ``predict``."""

    name: str
    # What results.model_revision records for this model's rows (a hub revision, "v2").
    revision: str | None = None
    # Inputs in one forward pass; a runner sets it in setup(), once it knows its device.
    # Cross-job batching and the decode pools size their batches by it.
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE

    @property
    def cache_revision(self) -> str:
        """What the result cache (``core.cache``) keys this model's outputs on, with its name.

        Its revision by default ("" for none): a model whose weights change must change its
        revision, or have its cache cleared (``bulkscore cache clear --model``).
        """
        return self.revision or ""

    @abstractmethod
    def setup(self, device: str = "cpu") -> None:
        """Load the model on ``device`` and warm it up; raise ModelLoadError if it cannot."""

    @abstractmethod
    def predict(self, batch: Sequence[Any], progress: Progress | None = None) -> list[Prediction]:
        """One prediction per input, in order; ``progress(n)`` as batches finish."""

    def start_predict(self, batch: Sequence[Any], progress: Progress | None = None) -> Finish:
        """``predict`` in two steps: start it, and return the call that finishes it.

        A runner whose device works apart from the CPU (a GPU, the stand-in) returns once
        the forward passes are queued, so that its caller can start the next call's before
        it finishes this one (top-k, rows) and the device never waits for Python
        (``engine.scoring``). Calls are finished in the order they were started. Here: the
        whole ``predict`` now.
        """
        predictions = self.predict(batch, progress)
        return lambda: predictions

    def prefetch(self, batch: Sequence[Any]) -> None:  # noqa: B027  (optional hint)
        """The inputs of the next ``predict`` call, announced early: a runner may prepare
        them (tokenise) in the background while the current call runs. Never required."""

    def close(self) -> None:  # noqa: B027  (optional: most runners hold nothing to release)
        """Release what ``setup`` started (decode threads, sessions)."""


def start_predicting(runner: Any, batch: Sequence[Any], progress: Progress | None = None) -> Finish:
    """``runner.start_predict``, or for a runner that only has ``predict`` (a wrapper that
    forwards other attributes to a runner it holds, as test and bench doubles do: forwarded,
    ``start_predict`` would skip the wrapper's own ``predict``), ``predict`` now."""
    if getattr(type(runner), "start_predict", None) is None:
        return Runner.start_predict(runner, batch, progress)  # its predict, now
    finish: Finish = runner.start_predict(batch, progress)
    return finish


def top_k_columns(labels: Sequence[str], scores: Any, k: int) -> TopKColumns:
    """One prediction per row of the ``(n, labels)`` score matrix, its ``k`` best labels, as
    arrays: the ranking is one array operation for the whole batch (a stable sort, so ties
    keep label order as :func:`top_k_pairs` does)."""
    import numpy as np

    matrix = np.asarray(scores)
    order = np.argsort(-matrix, axis=1, kind="stable")[:, :k]
    return TopKColumns(labels, order, np.take_along_axis(matrix, order, axis=1))


class TopKColumns(PredictionColumns):
    """Row ``i``'s ``k`` best labels (``order[i]``, indexes into ``labels``) and their scores
    (``scores[i]``), best first: a batch's predictions without an object per row. A write
    reads them by column (labels, scores, the top-k JSON text: a few array operations); a
    :class:`Prediction` is made only for a row asked for by position."""

    __slots__ = ("names", "order", "ranked_scores")

    def __init__(self, labels: Sequence[str], order: Any, scores: Any) -> None:
        import numpy as np

        self.names = np.asarray(list(labels), dtype=object)
        self.order = order
        self.ranked_scores = scores

    def __len__(self) -> int:
        return len(self.order)

    @overload
    def __getitem__(self, position: int) -> Prediction: ...
    @overload
    def __getitem__(self, position: slice) -> Sequence[Prediction]: ...
    def __getitem__(self, position: int | slice) -> Prediction | Sequence[Prediction]:
        if isinstance(position, slice):
            return [self[i] for i in range(*position.indices(len(self)))]
        names = self.names[self.order[position]].tolist()
        scores = self.ranked_scores[position].tolist()
        if not names:
            return Prediction()
        return Prediction(names[0], scores[0], list(zip(names, scores, strict=True)))

    def labels(self) -> list[str | None]:
        if not self.order.shape[1]:
            return [None] * len(self)
        labels: list[str | None] = self.names[self.order[:, 0]].tolist()
        return labels

    def scores(self) -> list[float | None]:
        if not self.order.shape[1]:
            return [None] * len(self)
        scores: list[float | None] = self.ranked_scores[:, 0].tolist()
        return scores

    def errors(self) -> list[str | None]:
        return [None] * len(self)

    def top_k_json(self, encode: PairsJson) -> list[str | None]:
        if not self.order.shape[1] or not all(type(name) is str for name in self.names):
            # No pairs; or labels JSON writes as they are (not text): row by row.
            return super().top_k_json(encode)
        import numpy as np

        texts = np.asarray([encode.label_json(name) for name in self.names], dtype=object)
        ranks = range(self.order.shape[1])
        rows = encode.ranked(
            [texts[self.order[:, rank]].tolist() for rank in ranks],
            [self.ranked_scores[:, rank].tolist() for rank in ranks],
        )
        if rows is None:  # a score that is not finite
            return super().top_k_json(encode)
        texts_by_row: list[str | None] = [*rows]
        return texts_by_row


def top_k_pairs(labels: Sequence[str], scores: Sequence[float], k: int) -> list[tuple[str, float]]:
    """The ``k`` best (label, score) pairs, best first."""
    order = sorted(range(len(scores)), key=lambda i: scores[i], reverse=True)[:k]
    return [(labels[i], float(scores[i])) for i in order]
