"""Writing a window's rows while the next window is scored.

A chunk's work is a loop of write windows: score (tokenise, forward pass, top-k), then
write (one transaction: the rows, the job's counters; then the result cache). Done one
after the other, the model waits for every commit, and the database for every forward
pass. :class:`WindowWriter` runs each write in one background thread while the caller
scores the next window: at most one write is in flight, so memory stays one window deep,
and writes stay in window order, each its own transaction, so the promise of
``docs/promise.md`` (rows and counters together, never twice) is the same as in the loop.

The caller sees each write's outcome before it submits the next one (:meth:`submit` waits
for the one in flight first), so a job whose write was refused (cancelled meanwhile) is
dropped from the following windows exactly one window later than in the serial loop, and a
failed write raises in the caller, which gives the chunk back as before.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from sqlalchemy import Engine


def writes_overlap(engine: Engine) -> bool:
    """Whether a background thread can write through ``engine``: not to an in-memory
    SQLite database, which each thread would see as its own empty one."""
    if engine.dialect.name != "sqlite":
        return True
    return engine.url.database not in (None, "", ":memory:")


class WindowWriter:
    """Runs ``write(*args)`` for each window, one at a time, in a background thread, and
    hands each result to ``taken`` in the caller's thread, in order."""

    def __init__(
        self, write: Callable[..., Any], taken: Callable[[Any], None], *, overlap: bool = True
    ) -> None:
        self.write = write
        self.taken = taken
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="window-writer") if overlap else None
        self.in_flight: Future[Any] | None = None

    def submit(self, *args: Any) -> None:
        """Write a window: in the background (after the previous write is taken), or here."""
        self.wait()
        if self.pool is None:
            self.taken(self.write(*args))
            return
        self.in_flight = self.pool.submit(self.write, *args)

    def wait(self) -> None:
        """Wait for the write in flight, if any, and take its result (or raise its error)."""
        if self.in_flight is not None:
            future, self.in_flight = self.in_flight, None
            self.taken(future.result())

    def __enter__(self) -> WindowWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_rest: object) -> None:
        try:
            if kind is None:
                self.wait()
            elif self.in_flight is not None:
                # Already failing: let the write in flight end, but keep the first error.
                self.in_flight.exception()
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True)
