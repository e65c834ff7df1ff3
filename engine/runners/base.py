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
from typing import Any

from core.jobs.predictions import Prediction

Progress = Callable[[int], None]
# Finishes a started ``predict`` (:meth:`Runner.start_predict`): waits, returns its results.
Finish = Callable[[], list[Prediction]]


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


def top_k_predictions(labels: Sequence[str], scores: Any, k: int) -> list[Prediction]:
    """One prediction per row of the ``(n, labels)`` score matrix: its ``k`` best labels.

    The ranking is one array operation for the whole batch (a stable sort, so ties keep
    label order as :func:`top_k_pairs` does); only the finished pairs become Python objects.
    """
    import numpy as np

    matrix = np.asarray(scores)
    if matrix.shape[0] == 0:
        return []
    order = np.argsort(-matrix, axis=1, kind="stable")[:, :k]
    best = np.take_along_axis(matrix, order, axis=1).tolist()
    names = np.asarray(labels, dtype=object)[order].tolist()
    return [
        Prediction(
            label=row_names[0],
            score=row_scores[0],
            top_k=list(zip(row_names, row_scores, strict=True)),
        )
        for row_names, row_scores in zip(names, best, strict=True)
    ]


def top_k_pairs(labels: Sequence[str], scores: Sequence[float], k: int) -> list[tuple[str, float]]:
    """The ``k`` best (label, score) pairs, best first."""
    order = sorted(range(len(scores)), key=lambda i: scores[i], reverse=True)[:k]
    return [(labels[i], float(scores[i])) for i in order]
