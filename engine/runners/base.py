"""The runner contract: ``setup(device)`` loads once, ``predict(batch)`` scores in order.

A runner holds one model. ``setup`` is called once per worker process (never at import, never
per task); ``predict`` returns exactly one :class:`Prediction` per input, in input order,
with unusable inputs as per-item errors rather than exceptions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from core.jobs.predictions import Prediction

Progress = Callable[[int], None]


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message tells the user what to do."""


class Runner(Protocol):
    name: str
    revision: str | None

    def setup(self, device: str = "cpu") -> None: ...

    def predict(
        self, batch: Sequence[Any], progress: Progress | None = None
    ) -> list[Prediction]: ...


def top_k_pairs(labels: Sequence[str], scores: Sequence[float], k: int) -> list[tuple[str, float]]:
    """The ``k`` best (label, score) pairs, best first."""
    order = sorted(range(len(scores)), key=lambda i: scores[i], reverse=True)[:k]
    return [(labels[i], float(scores[i])) for i in order]
