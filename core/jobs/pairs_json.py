"""The JSON text of a prediction's top-k pairs, written without ``json.dumps`` per row.

Every result row stores its top-k ``(label, score)`` pairs as JSON. ``json.dumps`` on such a
small list goes through the encoder's whole setup each time: 70 ms per 20,000 rows on the
2-core bench VM, held under the GIL while the tokenizer thread waits for it. A row's labels
come from a handful per model, so each label's JSON is made once per write and the rest is
one f-string per pair (37 ms per 20,000 rows). The text is exactly what ``json.dumps``
writes with the same separators: a float as ``repr`` writes it (as the json module
does for finite floats), a label through ``json.dumps`` itself; anything else (a score that
is not a finite float, a label that is not a string, not a list of pairs) is left to
``json.dumps``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

# As SQLAlchemy's JSON type writes it (json.dumps' defaults) and as COPY gets it (compact).
DEFAULT_SEPARATORS = (", ", ": ")
COMPACT_SEPARATORS = (",", ":")


class PairsJson:
    """Encodes top-k pair lists with one pair of separators, remembering each label's JSON."""

    def __init__(self, separators: tuple[str, str] = DEFAULT_SEPARATORS) -> None:
        self.separators = separators
        self.item = separators[0]
        self.labels: dict[str, str] = {}

    def __call__(self, value: Any) -> str:
        """``json.dumps(value, separators=...)``, fast for a sequence of (str, float) pairs."""
        if isinstance(value, list | tuple):
            parts = []
            for pair in value:
                if not (
                    isinstance(pair, tuple | list)
                    and len(pair) == 2
                    and type(pair[0]) is str
                    and type(pair[1]) is float
                    and math.isfinite(pair[1])
                ):
                    return json.dumps(value, separators=self.separators)
                label, score = pair
                parts.append(f"[{self.label_json(label)}{self.item}{score!r}]")
            return "[" + self.item.join(parts) + "]"
        return json.dumps(value, separators=self.separators)

    def label_json(self, label: str) -> str:
        """A label's JSON text, made once per label."""
        text = self.labels.get(label)
        if text is None:
            text = self.labels[label] = json.dumps(label)
        return text

    def ranked(
        self, labels_json: Sequence[Sequence[str]], scores: Sequence[Sequence[float]]
    ) -> list[str] | None:
        """The text of many rows of k pairs given rank by rank: ``labels_json[j][i]`` (a
        label's JSON text, :meth:`label_json`) and ``scores[j][i]`` (a float) are row
        ``i``'s ``j``-th pair. One format per row instead of checks per pair; the same text
        as calling this object on each row's pairs. None if a score is not finite (JSON
        writes those its own way): the caller then encodes row by row."""
        if not all(math.isfinite(sum(column)) for column in scores):
            return None
        pair = "[{}" + self.item + "{!r}]"
        template = "[" + self.item.join([pair] * len(scores)) + "]"
        by_rank = [column for ranked in zip(labels_json, scores, strict=True) for column in ranked]
        return [template.format(*row) for row in zip(*by_rank, strict=True)]
