"""Bulk inserts on SQLite straight through the driver, stored as SQLAlchemy stores them.

``conn.execute(insert(table), [dict, ...])`` costs SQLAlchemy's parameter handling per row
(a dict per row, a processed parameter set per row, a result row per ``RETURNING`` row);
for result windows and a job's items that cost more than SQLite's own work in ``bulkscore
score``. :func:`insert_rows` sends multi-row ``INSERT`` statements to the driver instead,
each value through its column type's own bind processor (JSON text, datetime text), once
per column rather than per row, so the stored bytes are the same.

Only SQLite gets here; PostgreSQL writes use ``COPY`` (:mod:`core.jobs.bulk_copy`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Table

# SQLite caps the variables of one statement at 32,766 (since 3.32; RETURNING needs 3.35).
MAX_VARIABLES = 32_766


def rows_per_statement(columns: int) -> int:
    return max(1, MAX_VARIABLES // columns)


def statement_sizes(rows: int, largest: int) -> list[int]:
    """Rows per statement for ``rows`` rows: ``largest`` at a time, and the rest in powers
    of two, so that every write reuses one of a few statements the driver has compiled.

    SQLite compiles each distinct statement text (the driver keeps the compiled ones by
    text): a multi-row ``VALUES`` of 2,000 rows took ~14 ms to compile and ~2 ms to run,
    and write windows, whose sizes vary, rarely repeat a size. Writing a run's 42,000
    result rows in its 36 windows took 270-340 ms this way against 340-470 ms with one
    statement per window (same process, alternated, 2-core VM).
    """
    sizes = [largest] * (rows // largest)
    rest = rows % largest
    while rest:
        size = 1 << (rest.bit_length() - 1)
        sizes.append(size)
        rest -= size
    return sizes


def insert_rows(
    conn: Connection,
    table: Table,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    conflict: Sequence[str] = (),
    returning: Sequence[str] = (),
    encoders: Mapping[str, Callable[[Any], Any]] | None = None,
) -> list[tuple[Any, ...]]:
    """:func:`insert_columns` for ``rows``, tuples in ``columns`` order."""
    if not rows:
        return []
    by_column = [list(column) for column in zip(*rows, strict=True)]
    return insert_columns(
        conn, table, columns, by_column, conflict=conflict, returning=returning, encoders=encoders
    )


def insert_columns(
    conn: Connection,
    table: Table,
    columns: Sequence[str],
    values: Sequence[Sequence[Any]],
    *,
    conflict: Sequence[str] = (),
    returning: Sequence[str] = (),
    encoders: Mapping[str, Callable[[Any], Any]] | None = None,
) -> list[tuple[Any, ...]]:
    """Insert rows given column by column (``values[c][i]``: column ``columns[c]`` of row
    ``i``) into ``table`` in the caller's transaction; with ``conflict``, a row whose key is
    present is skipped (``ON CONFLICT DO NOTHING``); returns the ``returning`` columns of the
    rows inserted.

    ``encoders`` replace a column's bind processor with one that stores the same value
    faster (``core.jobs.pairs_json`` for top-k pairs)."""
    count = len(values[0]) if values else 0
    if not count:
        return []
    dialect = conn.dialect
    encoders = encoders or {}
    processors = [
        encoders.get(name) or table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
        for name in columns
    ]
    processed = [
        _processed(process, column) for process, column in zip(processors, values, strict=True)
    ]
    width = len(columns)
    quote = dialect.identifier_preparer.quote
    head = f"INSERT INTO {quote(table.name)} ({', '.join(quote(name) for name in columns)}) VALUES "
    tail = ""
    if conflict:
        tail += f" ON CONFLICT ({', '.join(quote(name) for name in conflict)}) DO NOTHING"
    if returning:
        tail += f" RETURNING {', '.join(quote(name) for name in returning)}"
    placeholder = "(" + ", ".join("?" * width) + ")"
    found: list[tuple[Any, ...]] = []
    # The driver's own cursor on this transaction's connection: RETURNING rows come back as
    # plain tuples, without a SQLAlchemy result row each.
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        start = 0
        for size in statement_sizes(count, rows_per_statement(width)):
            # The statement's parameters row after row, filled a column at a time (one
            # slice assignment each) rather than a tuple per row.
            flat: list[Any] = [None] * (size * width)
            for position, column in enumerate(processed):
                flat[position::width] = column[start : start + size]
            start += size
            statement = head + ", ".join([placeholder] * size) + tail
            cursor.execute(statement, flat)
            if returning:
                found.extend(cursor.fetchall())
    finally:
        cursor.close()
    return found


def _processed(process: Callable[[Any], Any] | None, column: Sequence[Any]) -> Sequence[Any]:
    if process is None:
        return column
    first = column[0]
    if all(value is first for value in column):
        # One value for every row (a write's timestamp): processed once, not per row (the
        # datetime's text cost 42 ms per 20,000 rows).
        return [process(first)] * len(column)
    return [process(value) for value in column]
