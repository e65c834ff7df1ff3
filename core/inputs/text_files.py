"""Readers for input files: ``.txt`` (a text per line), ``.jsonl`` and ``.csv``.

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

from core.inputs.items import InputItem, checked_text_item

TEXT_SUFFIXES = (".txt", ".jsonl", ".csv")
JSON_ID_TYPE = "id must be a string or an integer"


class InputFileError(ValueError):
    """The input file is missing, of an unknown kind, or malformed."""


def read_text_file(path: Path, max_chars: int) -> list[InputItem]:
    """Every input of a ``.txt``, ``.jsonl`` or ``.csv`` file, in file order."""
    suffix = path.suffix.lower()
    if suffix not in TEXT_SUFFIXES:
        raise InputFileError(
            f"{path}: unsupported input file type {suffix or '(none)'!r}; "
            f"use one of {', '.join(TEXT_SUFFIXES)}"
        )
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise InputFileError(f"{path}: no such file") from exc
    except IsADirectoryError as exc:
        raise InputFileError(f"{path}: is a folder, not a file") from exc
    except OSError as exc:
        raise InputFileError(f"{path}: cannot be read ({exc.strerror})") from exc
    return parse_text_bytes(raw, suffix, max_chars, name=str(path))


def parse_text_bytes(raw: bytes, suffix: str, max_chars: int, name: str) -> list[InputItem]:
    """Parse an uploaded or read file's bytes; ``suffix`` picks the format."""
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputFileError(f"{name}: not valid UTF-8 (byte {exc.start})") from exc
    parser = {".txt": _parse_txt, ".jsonl": _parse_jsonl, ".csv": _parse_csv}.get(suffix)
    if parser is None:
        raise InputFileError(f"{name}: unsupported input type {suffix!r}")
    return list(parser(content, max_chars, name))


def _parse_txt(content: str, max_chars: int, name: str) -> Iterator[InputItem]:
    # Blank lines separate nothing in a .txt file; they are skipped, and ids stay the
    # 1-based line numbers so a result can be traced back to its line.
    for number, line in enumerate(content.splitlines(), start=1):
        if line.strip():
            yield checked_text_item(number, line, max_chars)


def _parse_jsonl(content: str, max_chars: int, name: str) -> Iterator[InputItem]:
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
        if not isinstance(record, dict) or "text" not in record:
            raise InputFileError(f'{name}: line {number} must be an object with a "text" field')
        item_id = record.get("id")
        if item_id is None:
            item_id = number
        elif isinstance(item_id, bool) or not isinstance(item_id, str | int):
            # The same types as an id in a JSON request (api.schemas.InputRecord).
            yield InputItem(item_id=str(number), error=JSON_ID_TYPE)
            continue
        yield checked_text_item(item_id, record["text"], max_chars)


def _parse_csv(content: str, max_chars: int, name: str) -> Iterator[InputItem]:
    reader = csv.DictReader(io.StringIO(content, newline=""))
    if reader.fieldnames is None or "text" not in reader.fieldnames:
        raise InputFileError(
            f'{name}: the CSV header must have a "text" column (and may have "id")'
        )
    try:
        for number, row in enumerate(reader, start=1):
            item_id = row.get("id")
            yield checked_text_item(
                item_id if item_id else number, row.get("text") or "", max_chars
            )
    except csv.Error as exc:
        raise InputFileError(f"{name}: CSV error near row {reader.line_num}: {exc}") from exc
