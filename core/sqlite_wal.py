"""SQLite's WAL checkpoints in a thread of their own, so that no commit waits for one.

In WAL mode a commit appends pages to the ``-wal`` file; a checkpoint copies them back into
the database file and syncs it. By default SQLite runs that checkpoint inside the commit that
takes the WAL past 1,000 pages (``wal_autocheckpoint``), on the committing thread: storing a
20,000-text job for ``bulkscore score`` wrote ~1,500 pages, and its commit took 59-63 ms
instead of 3 ms on the 2-core bench VM, all of it before the first text could be scored
(``bench/README.md``, issue 16); the result windows' writes paid the same every few windows.

So each process checkpoints its SQLite file from a daemon thread (:class:`WalCheckpointer`),
PASSIVE (it never waits for, nor blocks, a reader or a writer), whenever the WAL changed
since its last checkpoint, at most once per ``interval_s``. SQLite's own checkpoint stays as
the bound on the WAL's size, at ``FALLBACK_PAGES``: were the thread to fall behind or die,
a commit checkpoints as before, only later. A checkpoint cut short by the process's exit is
safe (SQLite's recovery), and the last connection to close still checkpoints everything.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading

log = logging.getLogger(__name__)

# SQLite's own checkpoint, kept as the WAL's bound (pages): ten times its default, so that
# commits leave it to the thread (about 40 MB of WAL at the default 4 KiB page).
FALLBACK_PAGES = 10_000
# How often the thread looks at the WAL: a checkpoint runs at most this often.
CHECK_INTERVAL_S = 0.5


class WalCheckpointer:
    """Checkpoints the SQLite database at ``path`` from a daemon thread of this process."""

    def __init__(self, path: str, interval_s: float | None = None) -> None:
        self.path = path
        self.wal = path + "-wal"
        self.interval_s = CHECK_INTERVAL_S if interval_s is None else interval_s
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread: threading.Thread | None = None
        self.pid = 0  # the process whose thread ``thread`` is (a fork has none running)
        self.seen: tuple[int, int] | None = None  # the WAL's (size, mtime) at the last look

    def ensure_running(self) -> None:
        """Start the thread in this process unless it runs already (called per new
        connection, so a forked child starts its own)."""
        with self.lock:
            if self.stopped.is_set():
                return
            if self.thread is not None and self.pid == os.getpid() and self.thread.is_alive():
                return
            self.pid = os.getpid()
            self.thread = threading.Thread(
                target=self._run, name="sqlite-wal-checkpoint", daemon=True
            )
            self.thread.start()

    def stop(self) -> None:
        """Stop the thread (engines disposed); it ends after any checkpoint under way, and
        is not started again (an engine kept past its disposal checkpoints as SQLite does,
        at ``FALLBACK_PAGES``)."""
        self.stopped.set()
        thread = self.thread
        if thread is not None and self.pid == os.getpid():
            thread.join(timeout=5)

    def checkpoint_if_changed(self) -> bool:
        """Checkpoint if the WAL changed since the last look; whether it did."""
        try:
            stat = os.stat(self.wal)
        except FileNotFoundError:
            return False
        seen = (stat.st_size, stat.st_mtime_ns)
        if seen == self.seen:
            return False
        connection = sqlite3.connect(self.path, timeout=1)
        try:
            connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        finally:
            connection.close()
        # Only once done: a checkpoint that failed is tried again at the next look.
        self.seen = seen
        return True

    def _run(self) -> None:
        # Ends when the file is gone (a test's database, deleted); a new connection to a
        # file made again at the path starts it again.
        while not self.stopped.wait(self.interval_s) and os.path.exists(self.path):
            try:
                self.checkpoint_if_changed()
            except Exception:
                # A failed checkpoint costs only WAL size; SQLite's own one bounds that.
                log.warning("WAL checkpoint of %s failed", self.path, exc_info=True)
