"""Scoring the next write window while this one's rows are built and handed to the writer.

The third stage of a scoring call's pipeline (with the tokenizer thread of
:mod:`engine.runners.token_prefetch` and the writer thread of :mod:`engine.window_writer`):
the runner's ``predict`` (padding, the forward pass, top-k) of window ``n + 1`` runs in one
background thread while the caller turns window ``n``'s answers into rows. Called in the
loop, the forward pass and the rows took turns on one thread: the model (or the GPU
stand-in's sleep) waited for Python, and Python for the model, which held the overlap at
the stand-in's tokenizer rate near the serial bound (``bench/README.md``, issue 16).

One thread: a runner is called by one thread at a time, in window order, as before. The
caller keeps at most ``engine.scoring.WINDOWS_IN_FLIGHT`` windows started (two: the thread
goes from one to the next without waiting for the caller) and decides whether to start each
(a cancelled job, a hand-back) before it starts; a window started is scored and written.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class Lookahead:
    """Runs one call at a time in a background thread (``overlap``), or at once."""

    def __init__(self, *, overlap: bool = True) -> None:
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="window-predict") if overlap else None

    def start(self, call: Callable[..., T], *args: Any) -> Future[T]:
        """``call(*args)``, started in the background; its future."""
        if self.pool is not None:
            return self.pool.submit(call, *args)
        done: Future[T] = Future()
        try:
            done.set_result(call(*args))
        except Exception as exc:  # handed to the caller by ``result()``, as a thread's is
            done.set_exception(exc)
        return done

    def __enter__(self) -> Lookahead:
        return self

    def __exit__(self, *_exc: object) -> None:
        # A call in flight (the caller failed meanwhile) ends before the runner is left;
        # one not yet begun never begins.
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
