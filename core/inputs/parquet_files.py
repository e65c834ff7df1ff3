"""Reader for ``.parquet`` input files, a record batch at a time.

Only the columns asked for are read (text, id if present, kept columns), and each batch is
turned into items before the next is read, so the file is never held whole as Python
objects. Every text and id passes the same per-item checks as a .jsonl or .csv input.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from core.inputs.columns import InputColumns, kept_values, missing_columns_message
from core.inputs.items import InputItem, checked_text_item

BATCH_ROWS = 10_000
JSON_ID_TYPE = "id must be a string or an integer"


class ParquetInputError(ValueError):
    """The Parquet file cannot be read, or lacks a column asked for."""


def iter_parquet_items(
    source: Any, max_chars: int, name: str, columns: InputColumns
) -> Iterator[InputItem]:
    """Every input of a Parquet file (a path or a binary file object), in row order."""
    # Deferred: pyarrow loads only when a Parquet file is read.
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(source)
    except (pa.ArrowException, OSError) as exc:
        raise ParquetInputError(f"{name}: not a readable Parquet file ({exc})") from exc
    present = list(parquet.schema_arrow.names)
    missing = missing_columns_message(name, columns.needed, present)
    if missing is not None:
        raise ParquetInputError(missing)
    wanted = [columns.text, *columns.keep]
    has_id = columns.id in present
    if has_id and columns.id not in wanted:
        wanted.append(columns.id)
    number = 0
    try:
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=wanted):
            for row in batch.to_pylist():
                number += 1
                yield _item(row, number, has_id, max_chars, columns)
    except pa.ArrowException as exc:
        raise ParquetInputError(f"{name}: Parquet error near row {number + 1}: {exc}") from exc


def _item(
    row: dict[str, Any], number: int, has_id: bool, max_chars: int, columns: InputColumns
) -> InputItem:
    item_id = row.get(columns.id) if has_id else None
    if item_id is None:
        item_id = number
    elif isinstance(item_id, bool) or not isinstance(item_id, str | int):
        return InputItem(item_id=str(number), error=JSON_ID_TYPE)
    item = checked_text_item(item_id, row.get(columns.text), max_chars)
    metadata, problem = kept_values(columns, row)
    if problem is not None and item.error is None:
        return InputItem(item_id=item.item_id, error=problem)
    item.metadata = metadata
    return item
