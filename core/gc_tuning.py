"""The cyclic garbage collector's pace for a process that scores in bulk.

Scoring allocates a few Python objects per item (token rows, answers, result rows, parsed
JSON inputs); reference counting frees them, and none of them form cycles. At CPython's
default first-generation threshold (700 net allocations) the collector ran every few
hundred items and every tenth run also walked the generation of everything long-lived (the
model's modules, the window's token rows): with the GPU stand-in it took a quarter of
``bulkscore score``'s time on 20,000 texts (12,000-12,900 texts/s, against 15,300-16,300
at 50,000 and 15,400-16,900 with the collector off; bench/README.md, issue 16). At 50,000
it still runs, a few times a second at most, and cycles are still freed.
"""

from __future__ import annotations

import gc

# Net allocations between two first-generation collections (CPython's default: 700).
GEN0_THRESHOLD = 50_000


def tune_gc() -> None:
    """Collect less often (never more often than CPython's defaults would)."""
    gen0, gen1, gen2 = gc.get_threshold()
    if gen0 > 0:  # 0: someone turned the collector off on purpose; leave it so
        gc.set_threshold(max(gen0, GEN0_THRESHOLD), gen1, gen2)
