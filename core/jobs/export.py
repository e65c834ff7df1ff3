"""Result rows as CSV or JSON Lines, line by line (for files and streamed HTTP answers)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from typing import Any

EXPORT_FORMATS = ("csv", "jsonl")
CSV_COLUMNS = ("index", "id", "label", "score", "top_k", "error")


def compact_top_k(top_k: Any) -> str:
    """``top_k`` as compact JSON text ("" for none), from a list or from stored JSON text.

    Stored text that has no space is already what ``json.dumps(..., separators=(",", ":"))``
    would write (bulkscore's COPY writer stores it so), and is used as it is: parsing and
    re-encoding it was half the cost of a CSV export. Anything else is parsed and encoded.
    """
    if isinstance(top_k, str):
        if " " not in top_k and top_k not in ("", "null"):
            return top_k
        top_k = json.loads(top_k) if top_k else None
    return json.dumps(top_k, separators=(",", ":")) if top_k else ""


def csv_lines(rows: Iterable[dict[str, Any]]) -> Iterator[str]:
    """CSV text, a few hundred rows per piece; ``top_k`` may be a list or stored JSON text."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for count, row in enumerate(rows, start=1):
        writer.writerow(
            (
                row["index"],
                row["id"],
                row["label"] if row["label"] is not None else "",
                repr_score(row["score"]),
                compact_top_k(row.get("top_k")),
                row["error"] or "",
            )
        )
        # Hand out text in pieces of a few hundred rows: one write per row is slow to
        # stream, one write for the whole table holds it all in memory.
        if count % 500 == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def jsonl_lines(rows: Iterable[dict[str, Any]]) -> Iterator[str]:
    """JSON Lines, 500 rows per piece; ``top_k`` may be a list or stored JSON text."""
    pieces: list[str] = []
    for row in rows:
        top_k = row.get("top_k")
        if isinstance(top_k, str):
            row = {**row, "top_k": json.loads(top_k) if top_k else None}
        pieces.append(json.dumps(row, ensure_ascii=False, separators=(",", ":")))
        if len(pieces) == 500:
            yield "\n".join(pieces) + "\n"
            pieces = []
    if pieces:
        yield "\n".join(pieces) + "\n"


def repr_score(score: float | None) -> str:
    return "" if score is None else repr(float(score))


def export_lines(rows: Iterable[dict[str, Any]], fmt: str) -> Iterator[str]:
    if fmt == "csv":
        return csv_lines(rows)
    if fmt == "jsonl":
        return jsonl_lines(rows)
    raise ValueError(f"unknown export format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}")


def format_for_path(path: str) -> str:
    """The export format a file name asks for (``.csv`` or ``.jsonl``)."""
    lowered = path.lower()
    for fmt in EXPORT_FORMATS:
        if lowered.endswith("." + fmt):
            return fmt
    raise ValueError(f"{path}: the output file must end in .csv or .jsonl")
