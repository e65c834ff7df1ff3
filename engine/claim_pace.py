"""How many items a worker's model scores per second, measured claim by claim.

A claim of a fast model takes the chunks after it with it (:mod:`core.chunks.runs`), up to
``chunk_claim_s`` of work; this is the pace that turns those seconds into items. It is
measured over whole claims (read, score, write: what a claim costs), per warm runner, and
unknown until the runner has finished one: a fresh worker's first claim is one chunk.
"""

from __future__ import annotations

import weakref

from engine.runners.base import Runner

# Fewer items than this say little about a pace (a re-run that found most rows written,
# a chunk's tail after a hand-back): not recorded.
LEAST_MEASURED = 32

_SECONDS_PER_ITEM: weakref.WeakKeyDictionary[Runner, float] = weakref.WeakKeyDictionary()


def record_claim(runner: Runner, items: int, seconds: float) -> None:
    """``runner`` scored ``items`` in a claim that took ``seconds``."""
    if items >= LEAST_MEASURED and seconds > 0:
        _SECONDS_PER_ITEM[runner] = seconds / items


def items_within(runner: Runner, seconds: float) -> int:
    """About how many items ``runner`` scores in ``seconds``; 0 while its pace is unknown."""
    pace = _SECONDS_PER_ITEM.get(runner)
    if pace is None or seconds <= 0:
        return 0
    return int(seconds / pace)
