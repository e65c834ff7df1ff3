"""Result rows as CSV or JSON Lines, line by line (for files and streamed HTTP answers).

Parquet, a binary format written in row groups, is in :mod:`core.jobs.parquet_export`.
Rows may carry ``metadata`` (the input's kept columns) and ``input`` (its text): JSON Lines
writes them when present; CSV writes them as extra columns when asked (``extra``).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

EXPORT_FORMATS = ("csv", "jsonl", "parquet")
CSV_COLUMNS = ("index", "id", "label", "score", "top_k", "error", "cached")
# Optional trailing CSV columns, in this order: the input's metadata as compact JSON, and
# its text.
EXTRA_COLUMNS = ("metadata", "input")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)


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


def spreadsheet_safe(cell: Any) -> Any:
    """``cell`` as a CSV cell a spreadsheet shows and never runs (OWASP "CSV Injection").

    Spreadsheets run a cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage
    return as a formula (``=HYPERLINK(...)``, ``-2+3+cmd|...``); such a text gets a leading
    ``'``, which they read as "text, do not evaluate" and do not show. A plain number
    (``-5``, ``+1.5e3``) is left alone: a spreadsheet reads it as a number, never a formula,
    and an id like ``-5`` keeps its value. Non-strings (the index) pass through.
    """
    if isinstance(cell, str) and cell.startswith(FORMULA_STARTS) and not _NUMBER.fullmatch(cell):
        return "'" + cell
    return cell


class SpreadsheetSafeWriter:
    """A ``csv.writer`` (default dialect) whose every cell goes through
    :func:`spreadsheet_safe`.

    The default dialect ends lines with ``\\r\\n``, so a cell holding either character is
    quoted and cannot start a row of its own.
    """

    def __init__(self, handle: Any) -> None:
        self._writer = csv.writer(handle)

    def writerow(self, row: Iterable[Any]) -> None:
        self._writer.writerow([spreadsheet_safe(cell) for cell in row])


def csv_lines(rows: Iterable[dict[str, Any]], extra: tuple[str, ...] = ()) -> Iterator[str]:
    """CSV text, a few hundred rows per piece; ``top_k`` may be a list or stored JSON text.

    Every text cell is made safe to open in a spreadsheet (:func:`spreadsheet_safe`).
    ``extra`` names columns of :data:`EXTRA_COLUMNS` written after the usual ones.
    """
    if extra:
        unknown = [name for name in extra if name not in EXTRA_COLUMNS]
        if unknown:
            raise ValueError(f"unknown CSV columns {unknown}; use some of {EXTRA_COLUMNS}")
        yield from _csv_lines_with(rows, extra)
        return
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    # The writer quotes a cell holding its line terminator ("\n") but not a lone "\r",
    # which spreadsheets and CSV readers take as a line break: the rest of the cell would
    # start a row of its own, its first cell unescaped. A row holding one is fully quoted.
    quoted = csv.writer(buffer, lineterminator="\n", quoting=csv.QUOTE_ALL)
    writer.writerow(CSV_COLUMNS)
    safe = spreadsheet_safe
    for count, row in enumerate(rows, start=1):
        ident, label, error = row["id"], row["label"] or "", row["error"] or ""
        # Only the text columns go through spreadsheet_safe: the index is an int, the score
        # a number's repr, and top_k JSON text that starts with "[".
        cells = (
            row["index"],
            safe(ident),
            safe(label),
            repr_score(row["score"]),
            compact_top_k(row.get("top_k")),
            safe(error),
            # From the result cache (true) or a forward pass run for the job (false).
            "true" if row.get("cached") else "false",
        )
        if "\r" in ident or "\r" in label or "\r" in error:
            quoted.writerow(cells)
        else:
            writer.writerow(cells)
        # Hand out text in pieces of a few hundred rows: one write per row is slow to
        # stream, one write for the whole table holds it all in memory.
        if count % 500 == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def _csv_lines_with(rows: Iterable[dict[str, Any]], extra: tuple[str, ...]) -> Iterator[str]:
    # The general (slower) path: every row fully quoted is not needed, but a text input may
    # hold any character, so the lone-"\r" rule of csv_lines is applied to every cell.
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    quoted = csv.writer(buffer, lineterminator="\n", quoting=csv.QUOTE_ALL)
    writer.writerow((*CSV_COLUMNS, *extra))
    for count, row in enumerate(rows, start=1):
        metadata = row.get("metadata")
        values = {
            "metadata": json.dumps(metadata, ensure_ascii=False, separators=(",", ":"))
            if metadata
            else "",
            "input": row.get("input") or "",
        }
        texts = [row["id"], row["label"] or "", row["error"] or ""] + [values[n] for n in extra]
        cells = (
            row["index"],
            spreadsheet_safe(texts[0]),
            spreadsheet_safe(texts[1]),
            repr_score(row["score"]),
            compact_top_k(row.get("top_k")),
            spreadsheet_safe(texts[2]),
            "true" if row.get("cached") else "false",
            *(spreadsheet_safe(text) for text in texts[3:]),
        )
        (quoted if any("\r" in text for text in texts) else writer).writerow(cells)
        if count % 500 == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def jsonl_lines(rows: Iterable[dict[str, Any]]) -> Iterator[str]:
    """JSON Lines, 500 rows per piece; ``top_k`` may be a list or stored JSON text.

    ``metadata`` is written only for a row that has some, so an export of inputs without
    metadata reads as it always did.
    """
    pieces: list[str] = []
    for row in rows:
        top_k = row.get("top_k")
        if "metadata" in row and row["metadata"] is None:
            row = {key: value for key, value in row.items() if key != "metadata"}
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


def export_lines(
    rows: Iterable[dict[str, Any]], fmt: str, extra: tuple[str, ...] = ()
) -> Iterator[str]:
    """Text export pieces; ``extra``: CSV's optional trailing columns (JSON Lines writes
    whatever the rows carry)."""
    if fmt == "csv":
        return csv_lines(rows, extra)
    if fmt == "jsonl":
        return jsonl_lines(rows)
    raise ValueError(f"unknown text export format {fmt!r}; use csv or jsonl")


def format_for_path(path: str) -> str:
    """The export format a file name asks for (``.csv``, ``.jsonl`` or ``.parquet``)."""
    lowered = path.lower()
    for fmt in EXPORT_FORMATS:
        if lowered.endswith("." + fmt):
            return fmt
    raise ValueError(f"{path}: the output file must end in .csv, .jsonl or .parquet")
