"""CSV exports open in a spreadsheet as data, never as formulas (OWASP "CSV Injection")."""

from __future__ import annotations

import csv
import io

import pytest

from core.jobs.export import SpreadsheetSafeWriter, csv_lines, spreadsheet_safe


@pytest.mark.parametrize(
    ("cell", "written"),
    [
        ("=1+1", "'=1+1"),
        ("+cmd", "'+cmd"),
        ("-2+3+cmd|' /C calc'!A0", "'-2+3+cmd|' /C calc'!A0"),
        ("@SUM(A1:A2)", "'@SUM(A1:A2)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("-", "'-"),
        ("-inf", "'-inf"),
        ("-\u0663", "'-\u0663"),  # an Arabic-Indic digit: not a plain ASCII number
        # Plain numbers are read as numbers, never run: they keep their value.
        ("-5", "-5"),
        ("+1.5e3", "+1.5e3"),
        ("-.5", "-.5"),
        ("plain", "plain"),
        (" =1", " =1"),
        ("", ""),
        (7, 7),
        (None, None),
    ],
)
def test_a_cell_that_would_run_gets_a_leading_quote(cell: object, written: object) -> None:
    assert spreadsheet_safe(cell) == written


def row(index: int, ident: str, label: str | None = "x", error: str | None = None) -> dict:
    return {
        "index": index,
        "id": ident,
        "label": label,
        "score": 0.5,
        "top_k": None,
        "error": error,
    }


def test_a_carriage_return_inside_a_cell_cannot_start_a_row() -> None:
    # Unquoted, "\r" ends a row in spreadsheets and CSV readers: "=cmd" would be a new row's
    # first cell, not escaped because the cell it came from did not start with it.
    rows = [
        row(0, "a\r=cmd()"),
        row(1, "b", label="l\r@x"),
        row(2, "c", None, "e\r-1+1"),
        row(3, "d"),
    ]
    text = "".join(csv_lines(rows))
    parsed = list(csv.reader(io.StringIO(text, newline="")))
    assert [r[:3] for r in parsed[1:]] == [
        ["0", "a\r=cmd()", "x"],
        ["1", "b", "l\r@x"],
        ["2", "c", ""],
        ["3", "d", "x"],
    ]
    assert parsed[3][5] == "e\r-1+1"
    assert text.splitlines()[0] == "index,id,label,score,top_k,error,cached"
    assert "\n3,d,x,0.5,,,false\n" in text  # rows without a "\r" are written as before


def test_every_text_column_of_the_export_is_escaped() -> None:
    text = "".join(csv_lines([row(0, "=a", label="+b", error="@c"), row(1, "-5", label="-")]))
    parsed = list(csv.DictReader(io.StringIO(text, newline="")))
    assert [(r["id"], r["label"], r["error"]) for r in parsed] == [
        ("'=a", "'+b", "'@c"),
        ("-5", "'-", ""),
    ]


def test_the_generic_writer_escapes_every_cell_and_quotes_line_breaks() -> None:
    buffer = io.StringIO(newline="")
    writer = SpreadsheetSafeWriter(buffer)
    writer.writerow(["id", "text"])
    writer.writerow(["=1", "line\r=2"])
    writer.writerow([3, "-4"])
    assert list(csv.reader(io.StringIO(buffer.getvalue(), newline=""))) == [
        ["id", "text"],
        ["'=1", "line\r=2"],
        ["3", "-4"],
    ]
