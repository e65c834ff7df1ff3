"""Result rows as a Parquet file, written a row group at a time.

Each page (:func:`core.jobs.column_pages.stream_column_pages`, 10,000 rows, an Arrow table
whose ``top_k`` and ``metadata`` are the stored JSON texts) becomes one row group: its JSON
columns parsed into nested Arrow arrays, written, and the bytes the writer produced so far
handed out before the next page is taken. An export of millions of rows streams with the
memory of one group, never the whole table.

Columns: ``index``, ``id``, ``label``, ``score``, ``top_k`` (a list of ``{label, score}``),
``error``, ``cached``, ``metadata`` (a map of strings: the input's kept columns), and with
``include=input`` ``input`` (the input's text).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from itertools import accumulate
from typing import Any

ROW_GROUP_ROWS = 10_000


def parquet_schema(with_input: bool) -> Any:
    # Deferred: pyarrow loads only for a Parquet export, not with the API's other routes.
    import pyarrow as pa

    fields = [
        pa.field("index", pa.int64(), nullable=False),
        pa.field("id", pa.string(), nullable=False),
        pa.field("label", pa.string()),
        pa.field("score", pa.float64()),
        # JSON's [[label, score], ...] as a nested list of structs.
        pa.field("top_k", pa.list_(_TOP_K_ITEM())),
        pa.field("error", pa.string()),
        pa.field("cached", pa.bool_(), nullable=False),
        pa.field("metadata", pa.map_(pa.string(), pa.string())),
    ]
    if with_input:
        fields.append(pa.field("input", pa.string()))
    return pa.schema(fields)


def _TOP_K_ITEM() -> Any:
    # Deferred: see parquet_schema.
    import pyarrow as pa

    return pa.struct([("label", pa.string()), ("score", pa.float64())])


def _parse_all(values: list[Any]) -> list[Any]:
    """Stored JSON texts (or already parsed values, or None) parsed in one ``json.loads``.

    One call for a whole page: per-call overhead, not parsing, was most of the cost of a
    call per row. A value that is not text is kept as it is.
    """
    if not any(isinstance(value, str) for value in values):
        return values
    texts = [value if isinstance(value, str) and value else "null" for value in values]
    parsed: list[Any] = json.loads("[" + ",".join(texts) + "]")
    return [
        found if isinstance(value, str) else value
        for value, found in zip(values, parsed, strict=True)
    ]


def _top_k_array(values: list[Any]) -> Any:
    """``top_k`` stored as JSON text (``[["POSITIVE", 0.9], ...]``), a list or None, as
    one Arrow list array built from flat labels, scores and offsets (no dict per pair)."""
    # Deferred: see parquet_schema.
    import pyarrow as pa

    parsed = [pairs or () for pairs in _parse_all(values)]
    labels = [pair[0] for pairs in parsed for pair in pairs]
    scores = [pair[1] for pairs in parsed for pair in pairs]
    offsets = list(accumulate((len(pairs) for pairs in parsed), initial=0))
    item = _TOP_K_ITEM()
    struct = pa.StructArray.from_arrays(
        [pa.array(labels, pa.string()), pa.array(scores, pa.float64())], fields=list(item)
    )
    empty = pa.array([not pairs for pairs in parsed], pa.bool_())
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), struct, mask=empty)


def _metadata_array(values: list[Any], map_type: Any) -> Any:
    """The inputs' metadata (JSON text or None) as one Arrow map array."""
    # Deferred: see parquet_schema.
    import pyarrow as pa

    # Kept columns repeat (a language, a source): each distinct text is parsed once.
    distinct = list(dict.fromkeys(values))
    by_text = dict(zip(distinct, _parse_all(distinct), strict=True))
    parsed = [by_text[value] or {} for value in values]
    keys = [key for found in parsed for key in found]
    texts = [text for found in parsed for text in found.values()]
    offsets = list(accumulate((len(found) for found in parsed), initial=0))
    return pa.MapArray.from_arrays(
        pa.array(offsets, pa.int32()),
        pa.array(keys, pa.string()),
        pa.array(texts, pa.string()),
        type=map_type,
        mask=pa.array([not found for found in parsed], pa.bool_()),
    )


def _group_table(page: Any, schema: Any) -> Any:
    columns = []
    for field in schema:
        if field.name == "top_k":
            columns.append(_top_k_array(page.column("top_k").to_pylist()))
        elif field.name == "metadata":
            columns.append(_metadata_array(page.column("metadata").to_pylist(), field.type))
        else:
            columns.append(page.column(field.name).cast(field.type))
    # Deferred: see parquet_schema.
    import pyarrow as pa

    return pa.Table.from_arrays(columns, schema=schema)


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


def parquet_pieces(pages: Iterable[Any], with_input: bool = False) -> Iterator[bytes]:
    """The bytes of a Parquet file holding ``pages`` (Arrow tables, columns: see the
    module), a piece per page: each page is one row group."""
    # Deferred: see parquet_schema.
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = parquet_schema(with_input)
    sink = _Chunks()
    with pq.ParquetWriter(pa.PythonFile(sink, mode="w"), schema, compression="zstd") as writer:
        for page in pages:
            writer.write_table(_group_table(page, schema), row_group_size=page.num_rows)
            piece = sink.take()
            if piece:
                yield piece
    yield sink.take()
