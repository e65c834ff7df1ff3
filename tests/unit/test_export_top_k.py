"""Exports read ``top_k`` as stored JSON text and still write exactly what parsing would."""

from __future__ import annotations

import json

import pytest

from core.jobs.export import compact_top_k, export_lines

PAIRS = [["POSITIVE", 0.7310585975646973], ["NEGATIVE", 0.2689414322376251]]
ODD = [['very "good", really', 0.5], ["caf\u00e9", 1e-07]]


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        (PAIRS, json.dumps(PAIRS, separators=(",", ":"))),
        (json.dumps(PAIRS, separators=(",", ":")), json.dumps(PAIRS, separators=(",", ":"))),
        (json.dumps(PAIRS), json.dumps(PAIRS, separators=(",", ":"))),  # SQLAlchemy's spacing
        (json.dumps(ODD), json.dumps(ODD, separators=(",", ":"))),
        ("null", ""),  # SQLite stores a missing top_k as JSON null
        (None, ""),
        ([], ""),
    ],
)
def test_top_k_text_is_written_as_the_parsed_value_would_be(stored: object, expected: str) -> None:
    assert compact_top_k(stored) == expected


def test_both_exports_are_identical_from_lists_or_text() -> None:
    parsed = [
        {"index": 0, "id": "a", "label": "POSITIVE", "score": 0.73, "top_k": PAIRS, "error": None},
        {"index": 1, "id": "b", "label": None, "score": None, "top_k": None, "error": "empty"},
        {"index": 2, "id": "c", "label": "x", "score": 0.5, "top_k": ODD, "error": None},
    ]
    as_text = [
        {**row, "top_k": json.dumps(row["top_k"]) if row["top_k"] else "null"} for row in parsed
    ]
    for fmt in ("csv", "jsonl"):
        assert "".join(export_lines(as_text, fmt)) == "".join(export_lines(parsed, fmt))
