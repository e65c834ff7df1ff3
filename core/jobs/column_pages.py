"""A job's result rows as Arrow tables, a window of indexes at a time (for Parquet exports).

A page holds ``index``, ``id``, ``label``, ``score``, ``top_k`` (the stored JSON text),
``error``, ``cached``, ``metadata`` (the input's kept columns, JSON text) and, when asked,
``input`` (the input's text); :mod:`core.jobs.parquet_export` turns the two JSON columns
into nested Arrow types.

On PostgreSQL a page is two ``COPY ... TO STDOUT (FORMAT csv)`` (the results window, then
the items window) parsed by Arrow's CSV reader: no Python object per row or per cell. The
rows through psycopg and SQLAlchemy were half of a 1,000,000-row export's time
(``bench/parquet_export.py``). SQLite, which has no ``COPY``, reads the same columns with
one ``SELECT`` each and builds the same table.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import Connection, Text, and_, cast, select

from core.jobs.bulk_copy import is_postgresql
from core.tables import items, results


def _result_types() -> dict[str, Any]:
    # Deferred: pyarrow loads only for a Parquet export, not with the API's other routes.
    import pyarrow as pa

    return {
        "index": pa.int64(),
        "id": pa.string(),
        "label": pa.string(),
        "score": pa.float64(),
        "top_k": pa.string(),
        "error": pa.string(),
        "cached": pa.bool_(),
    }


def _item_types() -> dict[str, Any]:
    # Deferred: see _result_types.
    import pyarrow as pa

    return {"index": pa.int64(), "metadata": pa.string(), "input": pa.string()}


def read_column_page(
    conn: Connection, job_id: str, start: int, stop: int, with_input: bool = False
) -> Any:
    """The result rows with ``start <= index < stop``, in index order, as a ``pyarrow.Table``
    (columns: see the module; ``input`` only ``with_input``). An index with no result yet
    has no row; a result whose item was purged has null ``metadata`` and ``input``.

    A window of indexes, not ``index > after ... LIMIT``: without planner statistics (a job
    stored a moment ago into a fresh table) PostgreSQL sorted every later row of the job for
    each ``LIMIT`` page (218 ms a page at 1,000,000 rows, 2 ms with statistics); a bounded
    window is cheap under any plan. The items come from one index range scan too, and are
    matched to the results by index here rather than joined by the server (which hashed
    every item of the job).
    """
    read = _copied if is_postgresql(conn) else _selected
    found, inputs = read(conn, job_id, start, stop)
    return _joined(found, inputs, with_input)


def stream_column_pages(
    open_conn: Callable[[], Any],
    job_id: str,
    total: int,
    page_size: int,
    with_input: bool = False,
) -> Iterator[Any]:
    """Every result row of a job of ``total`` items as Arrow pages, in index order, a window
    of ``page_size`` indexes at a time (windows with no row yet give no page).

    Each page is read on a connection of its own from ``open_conn`` (``engine.connect``), so
    no transaction stays open while a slow consumer takes its time. The next page is read
    in a background thread while the caller converts this one: the server's work and the
    socket wait overlap the caller's (the reader holds one page, so memory stays flat).
    """

    def windows() -> Iterator[Any]:
        for start in range(0, total, page_size):
            with open_conn() as conn:
                page = read_column_page(conn, job_id, start, start + page_size, with_input)
            if page.num_rows:
                yield page

    yield from _one_ahead(windows())


def _one_ahead(pages: Iterator[Any]) -> Iterator[Any]:
    """``pages``, each produced in a worker thread while the previous one is consumed.

    A consumer that stops early (a client that hung up) leaves one read to finish; the
    ``with`` waits for it, so no thread outlives the export.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="export-read") as pool:
        pending = pool.submit(next, pages, None)
        while (page := pending.result()) is not None:
            pending = pool.submit(next, pages, None)
            yield page


def _copied(conn: Connection, job_id: str, start: int, stop: int) -> tuple[Any, Any]:
    found = _copy_csv(
        conn,
        'SELECT "index", item_id, label, score, top_k, error, cached FROM results '
        'WHERE job_id = %s AND "index" >= %s AND "index" < %s ORDER BY "index"',
        (job_id, start, stop),
        _result_types(),
    )
    inputs = _copy_csv(
        conn,
        'SELECT "index", metadata, text FROM items '
        'WHERE job_id = %s AND "index" >= %s AND "index" < %s ORDER BY "index"',
        (job_id, start, stop),
        _item_types(),
    )
    return found, inputs


def _copy_csv(conn: Connection, query: str, params: tuple[Any, ...], types: dict[str, Any]) -> Any:
    """The rows of ``query`` as an Arrow table of ``types``, through ``COPY ... TO STDOUT``."""
    # Deferred: see _result_types.
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    with cursor, cursor.copy(f"COPY ({query}) TO STDOUT (FORMAT csv)", params) as copy:
        data = b"".join(bytes(block) for block in copy)
    names = list(types)
    if not data:
        return pa.table({name: pa.array([], types[name]) for name in names})
    return pa_csv.read_csv(
        io.BytesIO(data),
        read_options=pa_csv.ReadOptions(column_names=names),
        # Texts may hold line breaks (quoted by PostgreSQL).
        parse_options=pa_csv.ParseOptions(newlines_in_values=True),
        convert_options=pa_csv.ConvertOptions(
            column_types=types,
            # PostgreSQL writes NULL as an unquoted empty field and an empty text as "":
            # only the former is null. No other spelling is (a text "NULL" stays text).
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
            true_values=["t"],
            false_values=["f"],
        ),
    )


def _selected(conn: Connection, job_id: str, start: int, stop: int) -> tuple[Any, Any]:
    # Deferred: see _result_types.
    import pyarrow as pa

    window = and_(results.c.job_id == job_id, results.c.index >= start, results.c.index < stop)
    query = (
        select(
            results.c.index,
            results.c.item_id,
            results.c.label,
            results.c.score,
            cast(results.c.top_k, Text),
            results.c.error,
            results.c.cached,
        )
        .where(window)
        .order_by(results.c.index)
    )
    in_window = and_(items.c.job_id == job_id, items.c.index >= start, items.c.index < stop)
    inputs = select(items.c.index, cast(items.c.metadata, Text), items.c.text).where(in_window)
    tables = []
    for rows, types in (
        (conn.execute(query).all(), _result_types()),
        (conn.execute(inputs.order_by(items.c.index)).all(), _item_types()),
    ):
        columns = list(zip(*rows, strict=True)) or [() for _ in types]
        tables.append(
            pa.table(
                {
                    name: pa.array(list(column), kind)
                    for (name, kind), column in zip(types.items(), columns, strict=True)
                }
            )
        )
    return tables[0], tables[1]


def _joined(found: Any, inputs: Any, with_input: bool) -> Any:
    """``found`` (result rows) with the ``metadata`` (and ``input``) of the item of the same
    index from ``inputs``; both sorted by index."""
    # Deferred: see _result_types.
    import numpy as np
    import pyarrow as pa

    wanted = np.asarray(found.column("index"), dtype=np.int64)
    stored = np.asarray(inputs.column("index"), dtype=np.int64)
    at = np.searchsorted(stored, wanted)
    clipped = np.minimum(at, max(len(stored) - 1, 0))
    present = (at < len(stored)) & (stored[clipped] == wanted) if len(stored) else at < 0
    # A null position takes a null: the result of an item purged since.
    positions = pa.array(clipped, pa.int64(), mask=~present)
    page = found.append_column("metadata", inputs.column("metadata").take(positions))
    if with_input:
        page = page.append_column("input", inputs.column("input").take(positions))
    return page
