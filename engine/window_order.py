"""The write windows of a scoring call: each about as costly as the others and holding
texts from every part of the length range, so that every stretch of work scores items at
about the call's mean rate; the same every time a range of items is taken up again.

A worker checks between write windows whether a more urgent job waits (fair scheduling:
:mod:`core.chunks.split`), so no window may take many times longer than the others, and
a job's turn (``fair_time_slice_s``) covers one or two windows, so a window decides how
many items a turn scores. Windows cut from the length-sorted texts (each as uniform as
one sorted batch) differ by 5-40x in items per second: a window of the shortest texts is
full (``write_batch_size``) well inside its cost. Shortest and longest alternately, a
chunk's first turn scored twice the items per second of its rest; in a rate-balanced
order of such windows, single turns still scored 46 to 207 items; and two keys sharing a
worker in equal turns saw item rates 0.67-0.8 of each other over stretches of a few turns
(``bench/fair_scheduling.py``).

So the length-sorted texts are cut into runs (``RUNS_PER_WINDOW`` per window), the runs
are put in :func:`balanced_order` (from the fast or the slow end, whichever keeps the
items so far nearest the mean rate times the cost so far), and consecutive runs make a
window. Each window holds runs from both ends; within it the texts stay in length order,
and the runner batches them by length, so it pads about as little as one sorted run.

Costs are estimated, not measured: a run of ``n`` texts whose longest is ``L``
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
# Length-sorted runs a write window is made of (module docstring).
RUNS_PER_WINDOW = 4


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
    into runs of at most a ``RUNS_PER_WINDOW``-th of ``window_size`` entries and of the
    cost that many entries of the mean length would have: a run of long texts holds fewer
    of them. The runs are put in :func:`balanced_order` and taken in that order into
    windows of at most ``window_size`` entries and ``window_size`` mean entries' cost, so
    every window costs about the same and holds runs from both ends: a more urgent job
    never waits behind a window many times longer than the others, and a turn of a window
    or two scores about the items a turn should. Within a window the entries keep the
    length order (the runner batches them by length, so a window of four runs pads about
    as little as one run). The entries not in ``pending`` are dropped and a window left
    empty goes with them.
    """
    sizes = [max(length(entry), 1) for entry in everything]
    ranked = sorted(range(len(everything)), key=lambda position: sizes[position])
    budget = window_size * (sum(sizes) / max(len(sizes), 1) + ITEM_COST)
    run_size = max(1, -(-window_size // RUNS_PER_WINDOW))
    run_budget = budget / RUNS_PER_WINDOW
    run_of: list[int] = []  # by rank
    counts: list[int] = []
    costs: list[float] = []
    for position in ranked:
        # Sorted: this entry is the run's longest so far.
        cost = sizes[position] + ITEM_COST
        if not counts or counts[-1] == run_size or (counts[-1] + 1) * cost > run_budget:
            counts.append(0)
            costs.append(0.0)
        run_of.append(len(counts) - 1)
        counts[-1] += 1
        costs[-1] = counts[-1] * cost
    window_of: dict[int, int] = {}
    windows, held, spent = 0, 0, 0.0
    for run in balanced_order(counts, costs):
        if held and (held + counts[run] > window_size or spent + costs[run] > budget):
            windows, held, spent = windows + 1, 0, 0.0
        window_of[run] = windows
        held += counts[run]
        spent += costs[run]
    place = {
        (everything[position][0], everything[position][1]): (window_of[run_of[rank]], rank)
        for rank, position in enumerate(ranked)
    }
    by_window: dict[int, list[Entry]] = {}
    for entry in sorted(pending, key=lambda entry: place[(entry[0], entry[1])]):
        by_window.setdefault(place[(entry[0], entry[1])][0], []).append(entry)
    return [by_window[window] for window in sorted(by_window)]
