"""Parquet inputs, chosen columns and kept columns (core.inputs), and a files schedule over
Parquet, without a server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.config import Settings
from core.inputs.columns import ColumnChoiceError, InputColumns
from core.inputs.items import ITEM_METADATA_MAX_VALUE_CHARS
from core.inputs.parquet_files import BATCH_ROWS
from core.inputs.text_files import InputFileError, parse_text_bytes, read_text_file
from core.models.registry import Registry
from core.schedules.config import ScheduleConfigError, parse_schedules
from core.schedules.sources import KnownFile, read_window

MAX = 100


def write_parquet(path: Path, columns: dict[str, list[Any]], row_group_size: int = 3) -> Path:
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


def test_a_parquet_file_reads_its_chosen_columns_with_the_usual_checks(tmp_path: Path) -> None:
    source = write_parquet(
        tmp_path / "reviews.parquet",
        {
            "review_id": ["a", "b", None, "d", "e"],
            "body": ["good", "", "fine", "x" * (MAX + 1), "nul\x00here"],
            "stars": [5, 1, 3, 2, None],
        },
    )
    columns = InputColumns.parse("body", "review_id", "stars")
    found = read_text_file(source, MAX, columns)
    assert [(item.item_id, item.text, item.error) for item in found] == [
        ("a", "good", None),
        ("b", None, "empty text"),
        ("3", "fine", None),  # a null id: the 1-based row number, as in .jsonl/.csv
        ("d", None, f"text is {MAX + 1} characters; the limit is {MAX}"),
        ("e", None, "text contains a NUL character"),
    ]
    assert [item.metadata for item in found if item.error is None] == [
        {"stars": "5"},
        {"stars": "3"},
    ]


def test_parquet_rows_of_many_batches_keep_their_order(tmp_path: Path) -> None:
    rows = BATCH_ROWS + 7
    source = write_parquet(
        tmp_path / "big.parquet",
        {"text": [f"t{n}" for n in range(rows)]},
        row_group_size=4000,
    )
    found = read_text_file(source, MAX)
    assert [item.text for item in found] == [f"t{n}" for n in range(rows)]
    assert found[-1].item_id == str(rows)


def test_a_missing_column_names_the_columns_that_exist(tmp_path: Path) -> None:
    source = write_parquet(tmp_path / "in.parquet", {"id": [1], "body": ["hi"]})
    with pytest.raises(InputFileError) as default:
        read_text_file(source, MAX)
    assert str(default.value) == f"{source}: no column 'text'; the columns are 'id', 'body'"
    with pytest.raises(InputFileError, match="no column 'lang'; the columns are 'id', 'body'"):
        read_text_file(source, MAX, InputColumns.parse("body", None, "lang"))
    csv = b"id,body\n1,hi\n"
    with pytest.raises(InputFileError, match="no column 'txt'; the columns are 'id', 'body'"):
        parse_text_bytes(csv, ".csv", MAX, "in.csv", InputColumns.parse("txt", None, None))


def test_ids_of_other_types_and_non_string_texts_are_per_item_errors(tmp_path: Path) -> None:
    source = write_parquet(
        tmp_path / "in.parquet", {"id": [1.5, 2.0], "text": [1, 2]}, row_group_size=10
    )
    found = read_text_file(source, MAX)
    assert [(item.item_id, item.error) for item in found] == [
        ("1", "id must be a string or an integer"),
        ("2", "id must be a string or an integer"),
    ]
    numbers = write_parquet(tmp_path / "n.parquet", {"id": [7], "text": [3]})
    assert [(i.item_id, i.error) for i in read_text_file(numbers, MAX)] == [
        ("7", "text must be a string")
    ]


def test_not_a_parquet_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="not a readable Parquet file"):
        parse_text_bytes(b"id,text\n1,hi\n", ".parquet", MAX, "upload.parquet")


def test_kept_columns_of_csv_and_jsonl_and_their_limits() -> None:
    columns = InputColumns.parse(None, None, "lang, source")
    csv = parse_text_bytes(b"id,text,lang,source\nr1,hi,en,web\n", ".csv", MAX, "a", columns)
    assert csv[0].metadata == {"lang": "en", "source": "web"}
    jsonl = parse_text_bytes(b'{"text": "hi", "lang": "de"}\n', ".jsonl", MAX, "a", columns)
    assert jsonl[0].metadata == {"lang": "de"}  # a key absent from a line is left out
    long = "y" * (ITEM_METADATA_MAX_VALUE_CHARS + 1)
    too_long = parse_text_bytes(
        f'{{"text": "hi", "lang": "{long}"}}\n'.encode(), ".jsonl", MAX, "a", columns
    )
    assert too_long[0].error == (
        f"column 'lang' is {len(long)} characters; the limit for a kept column is "
        f"{ITEM_METADATA_MAX_VALUE_CHARS}"
    )
    with pytest.raises(ColumnChoiceError, match="at most 16 columns"):
        InputColumns.parse(None, None, ",".join(f"c{n}" for n in range(17)))
    with pytest.raises(InputFileError, match=r"a \.txt file has no columns to keep"):
        parse_text_bytes(b"hi\n", ".txt", MAX, "a.txt", columns)


MODELS = """
[models.tiny]
task = "text-classification"
backend = "transformers"
source = "/nowhere"
"""


def test_a_files_schedule_reads_parquet_with_its_columns(tmp_path: Path) -> None:
    models = tmp_path / "models.toml"
    models.write_text(MODELS)
    registry = Registry.load(models)
    inbox = tmp_path / "in"
    inbox.mkdir()
    write_parquet(inbox / "day1.parquet", {"key": ["k1", "k2"], "body": ["good", "bad"]})
    (inbox / "notes.jsonl").write_text('{"key": "j1", "body": "fine"}\n')
    entry = {"cron": "0 2 * * *", "model": "tiny", "text_column": "body", "id_column": "key"}
    files = parse_schedules(
        {"s": {**entry, "source": "files", "path": str(inbox / "*"), "keep_columns": ["key"]}},
        registry,
    )[0]
    first = read_window(files, None, Settings(max_text_chars=MAX), {})
    assert [(item.item_id, item.text, item.metadata) for item in first.items] == [
        ("day1.parquet:k1", "good", {"key": "k1"}),
        ("day1.parquet:k2", "bad", {"key": "k2"}),
        ("notes.jsonl:j1", "fine", {"key": "j1"}),
    ]
    known = {path: KnownFile(*state) for path, *state in first.end}
    assert read_window(files, None, Settings(max_text_chars=MAX), known).items == []

    # A rewritten Parquet file is read again whole (it never grows by lines).
    write_parquet(inbox / "day1.parquet", {"key": ["k1", "k2", "k3"], "body": ["a", "b", "c"]})
    again = read_window(files, None, Settings(max_text_chars=MAX), known)
    assert [item.item_id for item in again.items] == [
        "day1.parquet:k1",
        "day1.parquet:k2",
        "day1.parquet:k3",
    ]

    # source = "parquet": every matching file is Parquet, whatever its suffix.
    write_parquet(inbox / "export.bin", {"key": ["b1"], "body": ["hello"]})
    binary = parse_schedules(
        {"s": {**entry, "source": "parquet", "path": str(inbox / "*.bin")}}, registry
    )[0]
    window = read_window(binary, None, Settings(max_text_chars=MAX), {})
    assert [(item.item_id, item.text) for item in window.items] == [("export.bin:b1", "hello")]

    with pytest.raises(ScheduleConfigError, match="are for file sources, not sql"):
        parse_schedules(
            {
                "s": {
                    "cron": "0 2 * * *",
                    "model": "tiny",
                    "source": "sql",
                    "url": "sqlite:///x.db",
                    "query": "SELECT 1 WHERE :since",
                    "watermark": "t",
                    "text_column": "body",
                }
            },
            registry,
        )
