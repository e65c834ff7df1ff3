"""Result rows as a Parquet file, written a row group at a time.

Each group of :data:`ROW_GROUP_ROWS` rows is converted to Arrow columns, written, and the
bytes the writer produced so far are handed out before the next group is read: an export
of millions of rows streams with the memory of one group, never the whole table.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

ROW_GROUP_ROWS = 10_000


def _schema(with_input: bool) -> Any:
    # Deferred: pyarrow loads only for a Parquet export, not with the API's other routes.
    import pyarrow as pa

    fields = [
        pa.field("index", pa.int64(), nullable=False),
        pa.field("id", pa.string(), nullable=False),
        pa.field("label", pa.string()),
        pa.field("score", pa.float64()),
        # [label, score] pairs as JSON's [[label, score], ...] is, as a nested list of structs.
        pa.field("top_k", pa.list_(pa.struct([("label", pa.string()), ("score", pa.float64())]))),
        pa.field("error", pa.string()),
        pa.field("cached", pa.bool_(), nullable=False),
        pa.field("metadata", pa.map_(pa.string(), pa.string())),
    ]
    if with_input:
        fields.append(pa.field("input", pa.string()))
    return pa.schema(fields)


def _top_k(value: Any) -> list[dict[str, Any]] | None:
    if isinstance(value, str):
        value = json.loads(value) if value else None
    if not value:
        return None
    return [{"label": label, "score": float(score)} for label, score in value]


def _group_table(rows: list[dict[str, Any]], schema: Any, with_input: bool) -> Any:
    # Deferred: see _schema.
    import pyarrow as pa

    columns: dict[str, list[Any]] = {
        "index": [row["index"] for row in rows],
        "id": [row["id"] for row in rows],
        "label": [row["label"] for row in rows],
        "score": [row["score"] for row in rows],
        "top_k": [_top_k(row.get("top_k")) for row in rows],
        "error": [row["error"] for row in rows],
        "cached": [bool(row.get("cached")) for row in rows],
        "metadata": [
            list(row["metadata"].items()) if row.get("metadata") else None for row in rows
        ],
    }
    if with_input:
        columns["input"] = [row.get("input") for row in rows]
    return pa.Table.from_pydict(columns, schema=schema)


class _Chunks:
    """A write-only binary file whose content is taken out piece by piece."""

    def __init__(self) -> None:
        self._pieces: list[bytes] = []
        # pyarrow's PythonFile reads these file-object attributes.
        self.closed = False

    def write(self, data: Any) -> int:
        self._pieces.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def take(self) -> bytes:
        data = b"".join(self._pieces)
        self._pieces.clear()
        return data


def parquet_pieces(
    rows: Iterable[dict[str, Any]], with_input: bool = False, group_rows: int = ROW_GROUP_ROWS
) -> Iterator[bytes]:
    """The bytes of a Parquet file holding ``rows``, a row group per piece (about)."""
    # Deferred: see _schema.
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _schema(with_input)
    sink = _Chunks()
    rows = iter(rows)
    with pq.ParquetWriter(pa.PythonFile(sink, mode="w"), schema, compression="zstd") as writer:
        while group := list(islice(rows, group_rows)):
            writer.write_table(_group_table(group, schema, with_input), row_group_size=group_rows)
            piece = sink.take()
            if piece:
                yield piece
    yield sink.take()
