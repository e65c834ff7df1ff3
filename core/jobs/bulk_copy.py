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
from sqlalchemy.dialects import postgresql, sqlite


def is_postgresql(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"


def dialect_insert(conn: Connection, table: Table) -> Any:
    """``INSERT`` into ``table`` in ``conn``'s dialect, the one that has ``ON CONFLICT``
    (PostgreSQL's or SQLite's: the two databases the service runs on)."""
    dialect = conn.dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise RuntimeError(f"unsupported database dialect {dialect!r}")  # pragma: no cover


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


def stage_rows(
    conn: Connection, table: Table, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    """``COPY`` ``rows`` into this session's staging table for ``table``; see
    :func:`move_staged`.

    The staging table is temporary (one per pooled connection, created on first use) and
    ``ON COMMIT DELETE ROWS`` empties it in place at every commit, so it never holds
    another transaction's rows and needs no vacuuming (autovacuum cannot reach temporary
    tables). Staging takes no lock on any shared row: a client that stops mid-``COPY``
    (frozen, paused) blocks nobody, because a ``COPY`` waiting for its client's data
    cannot be ended by the server's timeouts (the session is "active", not idle).
    """
    staging = _staging(conn, table)
    with _driver_cursor(conn) as cursor:
        cursor.execute(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {staging} "
            f"(LIKE {_quote(conn, table.name)} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        _copy_into(cursor, staging, _column_list(conn, columns), rows)


def move_staged(
    conn: Connection,
    table: Table,
    columns: Sequence[str],
    conflict: Sequence[str],
    returning: Sequence[str],
    only: tuple[str, Sequence[Any]],
) -> list[tuple[Any, ...]]:
    """Insert the staged rows whose ``only[0]`` column is in ``only[1]`` and whose
    ``conflict`` key is not in ``table`` yet; return the ``returning`` columns of those
    inserted, and empty the staging table.

    ``INSERT ... SELECT ... ON CONFLICT (conflict) DO NOTHING``: a row already present, or
    written by a concurrent transaction, is skipped exactly as a plain ``INSERT ... ON
    CONFLICT DO NOTHING`` would skip it. One server-side statement: whatever locks the
    caller took before it are held while the server works, never while it waits on us.
    """
    staging = _staging(conn, table)
    names = _column_list(conn, columns)
    column, values = only
    inserted: list[tuple[Any, ...]] = []
    with _driver_cursor(conn) as cursor:
        if values:
            cursor.execute(
                f"INSERT INTO {_quote(conn, table.name)} ({names}) SELECT {names} "
                f"FROM {staging} WHERE {_quote(conn, column)} = ANY(%s) "
                f"ON CONFLICT ({_column_list(conn, conflict)}) DO NOTHING "
                f"RETURNING {_column_list(conn, returning)}",
                (list(values),),
            )
            inserted = [tuple(row) for row in cursor.fetchall()]
        # A second write in the same transaction must not move these rows again; DELETE,
        # not TRUNCATE, which would give the table a new file on every call.
        cursor.execute(f"DELETE FROM {staging}")
    return inserted


def _staging(conn: Connection, table: Table) -> str:
    return _quote(conn, f"{table.name}_incoming")
