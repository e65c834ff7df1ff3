"""Bulk writes on PostgreSQL with ``COPY``, inside the caller's SQLAlchemy transaction.

A multi-row ``INSERT`` (SQLAlchemy's insertmanyvalues) makes the server parse one statement
with thousands of parameters per batch; ``COPY ... FROM STDIN`` streams the rows instead. On
the development machine a results-shaped batch of 512 rows went from ~14k to ~60k rows/s
(``bench/service_throughput.py`` measures it). ``COPY`` cannot skip rows that already
exist, so results go through a per-session temporary table and one
``INSERT ... SELECT ... ON CONFLICT DO NOTHING RETURNING``, which keeps "a row written twice
is written once" exact.

Only PostgreSQL (psycopg 3) gets here; callers keep a plain ``INSERT`` for SQLite.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, Table


def is_postgresql(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"


def _quote(conn: Connection, name: str) -> str:
    return str(conn.dialect.identifier_preparer.quote(name))


def _column_list(conn: Connection, columns: Sequence[str]) -> str:
    return ", ".join(_quote(conn, name) for name in columns)


def _driver_cursor(conn: Connection) -> Any:
    # The psycopg connection under SQLAlchemy's: the same session, so the COPY runs inside
    # the transaction the caller opened with ``engine.begin()``.
    return conn.connection.driver_connection.cursor()  # type: ignore[union-attr]


def _copy_into(cursor: Any, target: str, columns: str, rows: Iterable[Sequence[Any]]) -> None:
    with cursor.copy(f"COPY {target} ({columns}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def copy_rows(
    conn: Connection, table: Table, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    """``COPY`` ``rows`` (tuples in ``columns`` order) into ``table``; nothing is skipped.

    For rows that cannot already exist (a new job's items). JSON values must be passed as
    JSON text; bytes go to ``bytea`` columns as they are.
    """
    with _driver_cursor(conn) as cursor:
        _copy_into(cursor, _quote(conn, table.name), _column_list(conn, columns), rows)


def copy_new_rows(
    conn: Connection,
    table: Table,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    conflict: Sequence[str],
    returning: Sequence[str],
) -> list[tuple[Any, ...]]:
    """Insert the ``rows`` whose ``conflict`` key is not in ``table`` yet; return those inserted.

    The rows are copied into a temporary table (one per session, emptied at every commit)
    and moved with ``INSERT ... SELECT ... ON CONFLICT (conflict) DO NOTHING RETURNING``, so
    a row already present, or written by a concurrent transaction, is skipped exactly as a
    plain ``INSERT ... ON CONFLICT DO NOTHING`` would skip it.

    Returns:
        The ``returning`` columns of each row actually inserted.
    """
    staging = _quote(conn, f"{table.name}_incoming")
    names = _column_list(conn, columns)
    with _driver_cursor(conn) as cursor:
        # Created on first use by each pooled connection; ON COMMIT DELETE ROWS empties it
        # in place at every commit, so it never holds another transaction's rows and needs
        # no vacuuming (autovacuum cannot reach temporary tables).
        cursor.execute(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {staging} "
            f"(LIKE {_quote(conn, table.name)} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        _copy_into(cursor, staging, names, rows)
        cursor.execute(
            f"INSERT INTO {_quote(conn, table.name)} ({names}) SELECT {names} FROM {staging} "
            f"ON CONFLICT ({_column_list(conn, conflict)}) DO NOTHING "
            f"RETURNING {_column_list(conn, returning)}"
        )
        inserted = [tuple(row) for row in cursor.fetchall()]
        # A second call in the same transaction must not move these rows again; DELETE, not
        # TRUNCATE, which would give the table a new file on every call.
        cursor.execute(f"DELETE FROM {staging}")
    return inserted
