"""SQLite WAL checkpoints run in the checkpointer's thread, not in the commits (core.sqlite_wal)."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from core.db import dispose_engines, get_engine
from core.sqlite_wal import FALLBACK_PAGES, WalCheckpointer

# Rows of ~8 MB in all: about 2,000 pages, twice SQLite's default checkpoint threshold.
ROWS = [(index, "x" * 4000) for index in range(2000)]


def write_rows(url: str) -> None:
    engine = get_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS blobs (id INTEGER PRIMARY KEY, body TEXT)"))
    with engine.begin() as conn:
        conn.connection.driver_connection.executemany(  # type: ignore[union-attr]
            "INSERT INTO blobs VALUES (?, ?)", ROWS
        )


def wal_frames_left(path: Path) -> int:
    """Frames of the WAL not yet in the database file (a PASSIVE checkpoint's report,
    which also moves them: call last)."""
    connection = sqlite3.connect(path)
    try:
        _busy, log_frames, checkpointed = connection.execute(
            "PRAGMA wal_checkpoint(PASSIVE)"
        ).fetchone()
    finally:
        connection.close()
    return log_frames - checkpointed


@pytest.fixture()
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[float], Path]]:
    """Makes the database file, its rows written, with the thread looking every
    ``interval_s``; the engines are disposed after the test."""

    def make(interval_s: float) -> Path:
        monkeypatch.setattr("core.sqlite_wal.CHECK_INTERVAL_S", interval_s)
        path = tmp_path / "wal.db"
        write_rows(f"sqlite:///{path}")
        return path

    yield make
    dispose_engines()


def test_a_big_commit_leaves_the_checkpoint_to_the_thread(
    database: Callable[[float], Path],
) -> None:
    # A thread that does not look before the assertions: what the commit itself did.
    path = database(3600.0)
    size_after_commit = path.stat().st_size
    # SQLite's default (1,000 pages) would have copied the pages into the file at the
    # commit; here they are all still in the WAL.
    assert os.path.getsize(f"{path}-wal") > 1000 * 4096
    assert size_after_commit < 1000 * 4096
    with get_engine(f"sqlite:///{path}").connect() as conn:
        assert conn.execute(text("PRAGMA wal_autocheckpoint")).scalar() == FALLBACK_PAGES


def test_the_thread_checkpoints_a_changed_wal(database: Callable[[float], Path]) -> None:
    path = database(0.05)
    deadline = time.monotonic() + 10
    while path.stat().st_size < len(ROWS) * 4000 and time.monotonic() < deadline:
        time.sleep(0.05)
    # The rows reached the database file with no commit since: the thread moved them.
    assert path.stat().st_size >= len(ROWS) * 4000
    assert wal_frames_left(path) == 0
    with get_engine(f"sqlite:///{path}").connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM blobs")).scalar() == len(ROWS)


def test_an_unchanged_wal_is_not_checkpointed_again(database: Callable[[float], Path]) -> None:
    path = database(3600.0)
    checkpointer = WalCheckpointer(str(path), interval_s=3600.0)
    assert checkpointer.checkpoint_if_changed()
    assert not checkpointer.checkpoint_if_changed(), "nothing written since"
    with get_engine(f"sqlite:///{path}").begin() as conn:
        conn.execute(text("INSERT INTO blobs VALUES (-1, 'one more')"))
    assert checkpointer.checkpoint_if_changed()
    assert wal_frames_left(path) == 0


def test_in_memory_databases_get_no_checkpointer() -> None:
    from core import db

    try:
        engine = get_engine("sqlite://")
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        assert db._CHECKPOINTERS == []
    finally:
        dispose_engines()


def test_disposing_the_engines_stops_the_threads(tmp_path: Path) -> None:
    from core import db

    path = tmp_path / "stopped.db"
    write_rows(f"sqlite:///{path}")
    threads = [c.thread for c in db._CHECKPOINTERS]
    assert threads and all(t is not None and t.is_alive() for t in threads)
    dispose_engines()
    assert all(t is not None and not t.is_alive() for t in threads)
