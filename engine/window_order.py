"""The write windows of a scoring call, and their order: windows of similar lengths and of
similar cost, ordered so that every stretch of work scores items at about the call's mean
rate, the same every time a range of items is taken up again.

Each write window holds texts of similar length (a window is as uniform as one big
length-sorted batch, so small windows cost no padding), and fewer of them when they are
long, so that no window takes many times longer than the others: a more urgent job waits
for the window in progress (fair scheduling: :mod:`core.chunks.split`).

Windows differ widely in items per second even so: a window of the shortest texts is full
(``write_batch_size`` texts) well inside its cost, and holds 5-40 times the items per
second of a window of long texts. A job's turn on a worker (``fair_time_slice_s``) covers
two or three windows, so the order decides how many items a turn scores. Shortest first,
a chunk that hands its rest back gave away its slowest items every time; shortest and
longest alternately, a chunk's first turn still scored twice the items per second of the
rest of it (the longest "window" is the few texts left over, and the shortest ones are
fast), and two keys sharing a worker in equal turns saw item rates 0.67-0.8 of each other
whenever one was at its chunks' starts and the other at their rests
(``bench/fair_scheduling.py``). So the windows are taken from the fastest and the slowest
end of the call's range, each time from the end that keeps the items scored so far closest
to the mean rate times the cost so far: every stretch of work is close to a sample of the
chunk.

Costs are estimated, not measured: a window of ``n`` texts whose longest is ``L``
characters costs ``n * (L + ITEM_COST)``, its padded characters plus the work every item
costs whatever its length (tokenising, top-k, its row). ``ITEM_COST`` is fitted to the
windows of ``sentiment-mini`` on a CPU (``t ~ 1.5 ms * n + 22 us * n * L``, within 15%).

The order is computed over every item of the range (scored or not) and only then are the
scored ones dropped: a handed-back rest, which reloads its range, continues exactly where
its chunk stopped instead of starting over.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from engine.reuse import Entry

# Characters of padded text that the per-item work of one item costs (module docstring).
ITEM_COST = 70


def balanced_order(counts: Sequence[int], costs: Sequence[float]) -> list[int]:
    """The windows (by their ``counts`` of items and estimated ``costs``) in scoring order.

    Windows sorted by items per cost, fastest first, are taken from either end: each time
    the one that leaves the items scored so far closer to the mean rate times the cost so
    far (ties: the fast end, so windows of one rate keep their order).
    """
    total_cost = sum(costs)
    rate = sum(counts) / total_cost if total_cost else 0.0
    # Stable: windows of one rate keep their (length) order.
    by_rate = sorted(range(len(counts)), key=lambda window: -counts[window] / costs[window])
    fast, slow = 0, len(by_rate) - 1
    items = cost = 0.0
    order = []
    while fast <= slow:
        ahead = [
            abs(items + counts[by_rate[end]] - rate * (cost + costs[by_rate[end]]))
            for end in (fast, slow)
        ]
        if ahead[0] <= ahead[1]:
            chosen, fast = by_rate[fast], fast + 1
        else:
            chosen, slow = by_rate[slow], slow - 1
        order.append(chosen)
        items += counts[chosen]
        cost += costs[chosen]
    return order


def scoring_windows(
    everything: Sequence[Entry],
    pending: Sequence[Entry],
    window_size: int,
    length: Callable[[Entry], int],
) -> list[list[Entry]]:
    """``pending`` (a subset of ``everything``: the entries still to score) as write windows
    in scoring order.

    ``everything`` is sorted by ``length`` (stable: equal lengths keep their order) and cut
    into windows of at most ``window_size`` entries whose cost (module docstring) stays
    within what ``window_size`` entries of the mean length would cost: a window of long
    texts holds fewer of them, so every window takes about the same time, and a more
    urgent job never waits behind a window ten times longer than the others. The windows
    are then put in :func:`balanced_order`; the entries not in ``pending`` are dropped and
    a window left empty goes with them.
    """
    sizes = [max(length(entry), 1) for entry in everything]
    ranked = sorted(range(len(everything)), key=lambda position: sizes[position])
    budget = window_size * (sum(sizes) / max(len(sizes), 1) + ITEM_COST)
    place: dict[tuple[str, int], tuple[int, int]] = {}  # (window, rank)
    counts: list[int] = []
    costs: list[float] = []
    for rank, position in enumerate(ranked):
        # Sorted: this entry is the window's longest so far.
        cost = sizes[position] + ITEM_COST
        if not counts or counts[-1] == window_size or (counts[-1] + 1) * cost > budget:
            counts.append(0)
            costs.append(0.0)
        job_id, index, _ = everything[position]
        place[(job_id, index)] = (len(counts) - 1, rank)
        counts[-1] += 1
        costs[-1] = counts[-1] * cost
    turn = {window: at for at, window in enumerate(balanced_order(counts, costs))}
    by_turn: dict[int, list[Entry]] = {}
    for entry in sorted(pending, key=lambda entry: place[(entry[0], entry[1])]):
        by_turn.setdefault(turn[place[(entry[0], entry[1])][0]], []).append(entry)
    return [by_turn[at] for at in sorted(by_turn)]
