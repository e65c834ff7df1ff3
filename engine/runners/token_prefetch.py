"""Tokenising the next write window while the current one is in the forward pass.

A text runner's ``predict`` tokenises its inputs, then runs their forward passes; called
window after window, the model waits for every tokenisation (on a GPU, the card idles
while Python and the tokenizer work). :class:`TokenPrefetch` tokenises texts announced
ahead (``Runner.prefetch``) in one background thread; a fast tokenizer releases the GIL
while it encodes a batch, as a forward pass does, so the two overlap. ``predict`` then
takes the announced texts' rows instead of tokenising them again.

One thread and one lock: a fast tokenizer must not be used by two threads at once
("Already borrowed"). Rows are handed out once: :meth:`TokenPrefetch.encode` forgets the
rows it returns, because a scoring call predicts each distinct text once (``engine.reuse``)
and a later call must pay for its own tokenising (kept, a repeat of the same texts skipped
the tokenizer and a benchmark measured a warm cache). The rows waiting are bounded
(``capacity`` texts, oldest dropped), so texts announced but never predicted (result-cache
hits, a cancelled job) cost nothing lasting.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

# Token rows kept for announced texts: a few write windows' worth (three of the largest,
# engine.window_order.MAX_WINDOW_ITEMS: the one predicted and two announced ahead).
DEFAULT_CAPACITY = 3 * 8192

Rows = dict[str, list[Any]]  # model input name -> one row (token ids, mask...) per text
Tokenize = Callable[[list[str]], Rows]


class TokenPrefetch:
    """Token rows of texts, computed ahead in a background thread or now, never twice."""

    def __init__(self, tokenize: Tokenize, capacity: int = DEFAULT_CAPACITY) -> None:
        self.tokenize = tokenize
        self.capacity = capacity
        self.lock = threading.Lock()  # the tokenizer's: one caller at a time
        self.rows: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.pending: dict[str, Future[None]] = {}
        self.pool: ThreadPoolExecutor | None = None

    def announce(self, texts: Sequence[str]) -> None:
        """Start tokenising ``texts`` (those not already known) in the background."""
        new = list(dict.fromkeys(t for t in texts if t not in self.rows and t not in self.pending))
        if not new:
            return
        if self.pool is None:
            self.pool = ThreadPoolExecutor(1, thread_name_prefix="token-prefetch")
        future = self.pool.submit(self._fill, new)
        for text in new:
            self.pending[text] = future

    def encode(self, texts: Sequence[str]) -> Rows:
        """Rows of ``texts`` in order: announced ones (waiting for them if still being
        tokenised), the rest tokenised now. The rows returned are forgotten."""
        for future in {id(f): f for t in texts if (f := self.pending.get(t))}.values():
            future.result()
        missing = list(dict.fromkeys(t for t in texts if t not in self.rows))
        if missing:
            self._fill(missing)
        keys = list(self.rows[texts[0]]) if texts else []
        encoded = {key: [self.rows[text][key] for text in texts] for key in keys}
        for text in texts:
            self.rows.pop(text, None)
        return encoded

    def _fill(self, texts: list[str]) -> None:
        with self.lock:
            encoded = self.tokenize(texts)
        for position, text in enumerate(texts):
            self.rows[text] = {key: values[position] for key, values in encoded.items()}
            self.rows.move_to_end(text)
            self.pending.pop(text, None)
        while len(self.rows) > self.capacity:
            self.rows.popitem(last=False)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None
