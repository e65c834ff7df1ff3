"""Readers for input files: ``.txt`` (a text per line), ``.jsonl``, ``.csv`` and ``.parquet``.

In the table-like files (.jsonl, .csv, .parquet) the text and id columns are ``text`` and
``id`` unless :class:`~core.inputs.columns.InputColumns` names others, and kept columns
become each item's ``metadata``.

A file that cannot be read at all raises :class:`InputFileError` with the line at fault;
an individual unusable text (empty, too long, NUL) becomes a per-item error instead.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from core.inputs.columns import (
    DEFAULT_COLUMNS,
    InputColumns,
    kept_values,
    missing_columns_message,
)
from core.inputs.items import InputItem, checked_text_item
from core.inputs.parquet_files import ParquetInputError, iter_parquet_items

TEXT_SUFFIXES = (".txt", ".jsonl", ".csv", ".parquet")
JSON_ID_TYPE = "id must be a string or an integer"


class InputFileError(ValueError):
    """The input file is missing, of an unknown kind, or malformed."""


def read_text_file(
    path: Path, max_chars: int, columns: InputColumns = DEFAULT_COLUMNS
) -> list[InputItem]:
    """Every input of a ``.txt``, ``.jsonl``, ``.csv`` or ``.parquet`` file, in file order."""
    suffix = path.suffix.lower()
    if suffix not in TEXT_SUFFIXES:
        raise InputFileError(
            f"{path}: unsupported input file type {suffix or '(none)'!r}; "
            f"use one of {', '.join(TEXT_SUFFIXES)}"
        )
    try:
        if suffix == ".parquet":
            # Read from the file a batch at a time, not as one bytes object first.
            with path.open("rb") as handle:
                return _parquet_items(handle, max_chars, str(path), columns)
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise InputFileError(f"{path}: no such file") from exc
    except IsADirectoryError as exc:
        raise InputFileError(f"{path}: is a folder, not a file") from exc
    except OSError as exc:
        raise InputFileError(f"{path}: cannot be read ({exc.strerror})") from exc
    return parse_text_bytes(raw, suffix, max_chars, name=str(path), columns=columns)


def parse_text_bytes(
    raw: bytes, suffix: str, max_chars: int, name: str, columns: InputColumns = DEFAULT_COLUMNS
) -> list[InputItem]:
    """Parse an uploaded or read file's bytes; ``suffix`` picks the format."""
    if suffix == ".parquet":
        return _parquet_items(io.BytesIO(raw), max_chars, name, columns)
    if suffix == ".txt" and columns.keep:
        raise InputFileError(f"{name}: a .txt file has no columns to keep")
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputFileError(f"{name}: not valid UTF-8 (byte {exc.start})") from exc
    parser = {".txt": _parse_txt, ".jsonl": _parse_jsonl, ".csv": _parse_csv}.get(suffix)
    if parser is None:
        raise InputFileError(f"{name}: unsupported input type {suffix!r}")
    return list(parser(content, max_chars, name, columns))


def _parquet_items(
    source: object, max_chars: int, name: str, columns: InputColumns
) -> list[InputItem]:
    try:
        return list(iter_parquet_items(source, max_chars, name, columns))
    except ParquetInputError as exc:
        raise InputFileError(str(exc)) from exc


def _with_kept(item: InputItem, columns: InputColumns, row: dict[str, object]) -> InputItem:
    metadata, problem = kept_values(columns, row)
    if problem is not None and item.error is None:
        return InputItem(item_id=item.item_id, error=problem)
    item.metadata = metadata
    return item


def _parse_txt(
    content: str, max_chars: int, name: str, columns: InputColumns
) -> Iterator[InputItem]:
    # Blank lines separate nothing in a .txt file; they are skipped, and ids stay the
    # 1-based line numbers so a result can be traced back to its line.
    for number, line in enumerate(content.splitlines(), start=1):
        if line.strip():
            yield checked_text_item(number, line, max_chars)


def _parse_jsonl(
    content: str, max_chars: int, name: str, columns: InputColumns
) -> Iterator[InputItem]:
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputFileError(f"{name}: line {number} is not valid JSON ({exc.msg})") from exc
        except ValueError as exc:  # past int_max_str_digits: refused by the parser itself
            raise InputFileError(
                f"{name}: line {number} holds an integer of over "
                f"{sys.get_int_max_str_digits()} digits"
            ) from exc
        except RecursionError as exc:
            raise InputFileError(f"{name}: line {number} is nested too deeply") from exc
        if not isinstance(record, dict) or columns.text not in record:
            raise InputFileError(
                f"{name}: line {number} must be an object with a {columns.text!r} field"
                if columns.text != "text"
                else f'{name}: line {number} must be an object with a "text" field'
            )
        item_id = record.get(columns.id)
        if item_id is None:
            item_id = number
        elif isinstance(item_id, bool) or not isinstance(item_id, str | int):
            # The same types as an id in a JSON request (api.schemas.InputRecord).
            yield InputItem(item_id=str(number), error=JSON_ID_TYPE)
            continue
        item = checked_text_item(item_id, record[columns.text], max_chars)
        yield _with_kept(item, columns, record)


def _parse_csv(
    content: str, max_chars: int, name: str, columns: InputColumns
) -> Iterator[InputItem]:
    reader = csv.DictReader(io.StringIO(content, newline=""))
    if reader.fieldnames is None or columns.text not in reader.fieldnames:
        if columns == DEFAULT_COLUMNS:
            raise InputFileError(
                f'{name}: the CSV header must have a "text" column (and may have "id")'
            )
        raise InputFileError(
            missing_columns_message(name, columns.needed, list(reader.fieldnames or ()))
            or f"{name}: no column {columns.text!r}"
        )
    missing = missing_columns_message(name, columns.needed, list(reader.fieldnames))
    if missing is not None:
        raise InputFileError(missing)
    try:
        for number, row in enumerate(reader, start=1):
            item_id = row.get(columns.id)
            item = checked_text_item(
                item_id if item_id else number, row.get(columns.text) or "", max_chars
            )
            yield _with_kept(item, columns, dict(row))
    except csv.Error as exc:
        raise InputFileError(f"{name}: CSV error near row {reader.line_num}: {exc}") from exc
