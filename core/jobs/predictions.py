"""What a runner returns for one input: a label and score, or a per-item error."""

from __future__ import annotations

from dataclasses import dataclass, field


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
