"""The write windows of a scoring call, and their order: windows of similar lengths and of
similar cost, shortest and longest alternating, the same every time a range of items is
taken up again.

Each write window holds texts of similar length (a window is as uniform as one big
length-sorted batch, so small windows cost no padding), and fewer of them when they are
long, so that no window takes many times longer than the others: a more urgent job waits
for the window in progress (fair scheduling: :mod:`core.chunks.split`). Scored shortest
first, a chunk that hands its rest back would give away its slowest items every time and
a newcomer would be served its fastest ones; alternating the shortest and the longest
windows left keeps every stretch of work closer to a sample of the chunk's costs.

The order is computed over every item of the range (scored or not) and only then are the
scored ones dropped: a handed-back rest, which reloads its range, continues exactly where
its chunk stopped instead of starting over at its shortest remaining texts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from engine.reuse import Entry


def window_turn(window: int, windows: int) -> int:
    """The position of length-sorted window ``window`` (of ``windows``) in the scoring order:
    0, n-1, 1, n-2, 2, ... (shortest, longest, next shortest, next longest)."""
    if window <= (windows - 1) // 2:
        return 2 * window
    return 2 * (windows - 1 - window) + 1


def scoring_windows(
    everything: Sequence[Entry],
    pending: Sequence[Entry],
    window_size: int,
    length: Callable[[Entry], int],
) -> list[list[Entry]]:
    """``pending`` (a subset of ``everything``: the entries still to score) as write windows
    in scoring order.

    ``everything`` is sorted by ``length`` (stable: equal lengths keep their order) and cut
    into windows of at most ``window_size`` entries whose padded length (entries x longest)
    stays within what ``window_size`` entries of the mean length would take: a window of
    long texts holds fewer of them, so every window takes about the same time, and a more
    urgent job never waits behind a window ten times longer than the others. The windows
    are then taken alternately from both ends; the entries not in ``pending`` are dropped
    and a window left empty goes with them.
    """
    sizes = [max(length(entry), 1) for entry in everything]
    ranked = sorted(range(len(everything)), key=lambda position: sizes[position])
    budget = window_size * sum(sizes) / max(len(sizes), 1)
    place: dict[tuple[str, int], tuple[int, int]] = {}  # (window, rank)
    windows = count = 0
    for rank, position in enumerate(ranked):
        # Sorted: this entry is the window's longest so far.
        if count and (count == window_size or (count + 1) * sizes[position] > budget):
            windows, count = windows + 1, 0
        job_id, index, _ = everything[position]
        place[(job_id, index)] = (windows, rank)
        count += 1
    total = windows + 1 if everything else 0
    by_turn: dict[int, list[Entry]] = {}
    for entry in sorted(pending, key=lambda entry: place[(entry[0], entry[1])]):
        turn = window_turn(place[(entry[0], entry[1])][0], total)
        by_turn.setdefault(turn, []).append(entry)
    return [by_turn[turn] for turn in sorted(by_turn)]
