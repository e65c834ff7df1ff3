"""Token-budget batching, as text-embeddings-inference does it.

Padding makes a batch cost ``size x longest``; sorting by length and capping that product
keeps long and short texts apart, so short texts stop paying for the long one.
"""

from __future__ import annotations

from collections.abc import Sequence


def plan_batches(
    lengths: Sequence[int], max_batch_size: int, max_batch_tokens: int
) -> list[list[int]]:
    """Group input positions into batches, longest first.

    Each batch holds at most ``max_batch_size`` inputs and at most ``max_batch_tokens``
    padded tokens (``len(batch) * longest``); an input longer than the budget goes alone.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for position in order:
        length = max(lengths[position], 1)
        grown = max(longest, length)
        if current and (
            len(current) + 1 > max_batch_size or grown * (len(current) + 1) > max_batch_tokens
        ):
            batches.append(current)
            current, grown = [], length
        current.append(position)
        longest = grown
    if current:
        batches.append(current)
    return batches
