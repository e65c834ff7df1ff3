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

import math
import weakref
from collections.abc import Callable, Sequence
from time import monotonic

from engine.reuse import Entry
from engine.runners.base import Runner

# Characters of padded text that the per-item work of one item costs (module docstring).
ITEM_COST = 70
# Length-sorted runs a write window is made of (module docstring).
RUNS_PER_WINDOW = 4
# Most entries a merged window holds (WindowPacer): its rows, answers and token rows are
# held at once, two windows deep; at the GPU rate of bench/README.md (26,000 texts/s) a
# 0.4 s window would hold ~10,000.
MAX_WINDOW_ITEMS = 8192
# A call's pipeline fills for its first window (tokenised before the first forward pass
# starts) and drains for its last (forward passes and writes after the last tokens): with
# windows of ``window_s`` a call of a few windows ran its stages one after the other for
# two of them. So merged windows ramp up, the first at ``RAMP_START`` of ``window_s``, each
# next one ``RAMP_GROWTH`` times the one before, and shrink at the end (each holds at most a
# share of the entries left, ``least_windows``, or the first one's ``RAMP_START``). The
# growth is gentle because window ``n + 1`` is tokenised while window ``n`` is in the
# forward pass: where the tokenizer is about as fast as the model, a window twice the one
# before left the model waiting for tokens at each doubling (0.19-0.28 s per 20,000 texts
# with the GPU stand-in at the tokenizer's rate, 10-14% of the call). Growing by a quarter,
# the call's scoring took 1.74 s against 1.89 s (bench/README.md, issue 16).
RAMP_START = 1 / 8
RAMP_GROWTH = 1.25


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
    ranked = sorted(range(len(everything)), key=sizes.__getitem__)
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
    # Each pending entry into its window, in rank (length) order: one pass over the ranks,
    # not a sort of the pending entries by (window, rank).
    by_window: list[list[Entry]] = [[] for _ in range(windows + 1)]
    # Nothing scored yet (a subset as long as the whole is the whole): no lookup.
    wanted = None if len(pending) == len(everything) else {(e[0], e[1]): e for e in pending}
    for rank, position in enumerate(ranked):
        entry: Entry | None = everything[position]
        if wanted is not None:
            entry = wanted.get((everything[position][0], everything[position][1]))
        if entry is not None:
            by_window[window_of[run_of[rank]]].append(entry)
    return [window for window in by_window if window]


# Seconds per unit of estimated cost each warm runner last scored at (WindowPacer): a
# scoring call starts from it, since a handed-back rest starts a call of its own and its
# first window would otherwise run at full size, a whole turn on a slow model.
_PACE: weakref.WeakKeyDictionary[Runner, float] = weakref.WeakKeyDictionary()


class WindowPacer:
    """Sizes the windows of one call to about ``window_s`` seconds of work each.

    Windows are planned by count and estimated cost (:func:`scoring_windows`), which says
    nothing about seconds. Once the pace of the runner is known (measured window by window,
    kept per warm runner), the window about to start is sized to it:

    - **A fast model's windows are merged**: consecutive windows are joined while the
      estimate stays within ``window_s`` (and ``MAX_WINDOW_ITEMS``, and a share of the
      call's entries: ``least_windows``). With the GPU stand-in,
      a 128-text window took ~15 ms of work and as much again in per-window costs (a
      transaction, the cancel check, thread hand-offs, one runner call: a GPU pass of 128
      texts); windows of ``window_s`` spread them over thousands (``bench/README.md``,
      issue 16). A cancel or a more urgent job still waits at most about ``window_s``.
    - **A slow model's windows are cut into parts** (``split``: only where someone asks
      between them, ``should_yield``): on a slow model a 128-text window took 1.7 s on a
      2-core CPU, and a waiting job waited for the whole window (a job's turn,
      ``fair_time_slice_s`` of 1 s, ran a whole window, so two keys' shares of a worker
      moved by a window at a time). A window whose estimate is over 1.5 ``window_s`` is cut
      into that many parts of about equal cost, each a stretch of the window's length
      order: about its runs, whose texts are alike in length and make full batches of
      little padding. (Parts of every k-th text, each holding the window's whole length
      range, padded short texts to long ones in batches of a few: two keys sharing a worker
      scored 30% fewer items per second.)

    A part is a point to ask ``should_yield``, not a transaction: a window's parts are
    written together, as the window would have been, unless the chunk yields after one
    (:meth:`writes`). A merged window is one window: one transaction, one check.

    Windows are merged in order, each once, a few ahead of the one about to start
    (:meth:`plan_through`): the runner tokenises the next windows' texts before they start
    (``engine.scoring.TOKENISED_AHEAD``), so a window must keep the texts it was announced
    with. (Merged only as it started, a window held texts nobody had announced, and the
    runner tokenised them in the forward pass's thread: with the stand-in at the
    tokenizer's rate the stages ran one after the other.) A window is cut into parts just
    before it starts (:meth:`cut`), at the latest pace: parts only divide the texts
    announced. Each call costs the entries of the windows it sizes, not the rest of the
    call's.
    """

    def __init__(
        self,
        runner: Runner,
        windows: list[list[Entry]],
        window_s: float,
        length: Callable[[Entry], int],
        *,
        split: bool = True,
        least_windows: int = 1,
    ) -> None:
        self.runner = runner
        self.windows = windows
        self.window_s = window_s
        self.length = length
        self.split = split
        self.last = monotonic()
        self.sized = 0  # windows before this position are sized already
        self.before = 0  # the entries of those windows
        self.entries = sum(len(window) for window in windows)
        # A merged window holds at most ``1 / least_windows`` of the entries left from it
        # to the end: a call stays at least that many windows, so that one window's forward
        # pass runs beside the other's top-k, rows and write (a service chunk of 512 texts
        # merged whole ran its stages one after the other: 2,600-2,800 texts/s at the
        # stand-in's tokenizer rate, 3,700-4,000 in two windows), and a call's last windows
        # shrink (RAMP_GROWTH).
        self.least_windows = max(1, least_windows)

    def cost(self, window: Sequence[Entry]) -> float:
        return sum(self.length(entry) + ITEM_COST for entry in window)

    def scored(self, window: Sequence[Entry]) -> None:
        """The answers of ``window`` are in: its time since the window before's is its pace
        (the loop's cadence, which is what a hand-back check waits for)."""
        now = monotonic()
        cost = self.cost(window)
        if cost and self.window_s > 0:
            _PACE[self.runner] = (now - self.last) / cost
        self.last = now

    def writes(self, position: int) -> bool:
        """Whether the rows gathered up to the window (or part) at ``position`` are written
        after it: False for a part that another part of its window follows."""
        window = self.windows[position]
        return not isinstance(window, WindowPart) or window.last

    def continues(self, position: int) -> bool:
        """Whether the window (or part) at ``position`` continues a window begun before."""
        window = self.windows[position]
        return isinstance(window, WindowPart) and not window.first

    def plan_through(self, last: int) -> None:
        """Merge every window up to position ``last`` not yet merged, in order, once."""
        while self.sized <= last and self.sized < len(self.windows):
            self._merge(self.sized)
            self.before += len(self.windows[self.sized])
            self.sized += 1

    def _merge(self, position: int) -> None:
        """Join the window at ``position`` (not started, not announced) with the windows
        after it while the pace (if it is known) says they fit in ``window_s``."""
        pace = _PACE.get(self.runner)
        if pace is None or self.window_s <= 0:
            return
        window = self.windows[position]
        if isinstance(window, WindowPart):
            return  # a part of a window already cut
        # The first windows ramp up to ``window_s`` and the last ones shrink (RAMP_GROWTH).
        budget = self.window_s * min(1.0, RAMP_START * RAMP_GROWTH**position)
        left = self.entries - self.before
        most = min(MAX_WINDOW_ITEMS, max(1, math.ceil(left / self.least_windows)))
        # ... but not below the first window's size (its budget, ``tail``), and leaving no
        # rest smaller than that: each window costs a round trip through the stages whatever
        # its size, and halving down to the unmerged windows ended a 20,000-text call with
        # five windows of 93-251 texts, 0.3 s at 2,400 texts/s with the GPU stand-in at the
        # tokenizer's rate (issue 16). Still a call keeps ``least_windows`` windows.
        tail = self.window_s * RAMP_START
        rest: float | None = None  # the cost from this window to the call's end
        cost = self.cost(window)
        end = position + 1
        merged = list(window)
        while end < len(self.windows) and not isinstance(self.windows[end], WindowPart):
            following = self.windows[end]
            more = self.cost(following)
            count = len(merged) + len(following)
            if pace * (cost + more) > budget or count > MAX_WINDOW_ITEMS:
                break
            if count > most:
                # Past its share, once the call has its ``least_windows``: the whole rest
                # where it fits in ``tail``, else up to ``tail`` while as much is left after.
                if position + 1 < self.least_windows:
                    break
                if rest is None:  # only near the end, where the rest is small
                    rest = sum(self.cost(later) for later in self.windows[position:])
                if pace * rest > tail and (
                    pace * (cost + more) > tail or pace * (rest - cost - more) < tail
                ):
                    break
            merged.extend(following)
            cost += more
            end += 1
        if end > position + 1:
            self.windows[position:end] = [merged]

    def cut(self, position: int) -> None:
        """With ``split``, cut the window at ``position`` (about to start) into parts of
        about ``window_s`` each if the pace says it would take over 1.5 ``window_s``."""
        pace = _PACE.get(self.runner)
        if not self.split or pace is None or self.window_s <= 0:
            return
        window = self.windows[position]
        if isinstance(window, WindowPart):
            return
        cost = self.cost(window)
        parts = min(math.ceil(pace * cost / self.window_s), len(window))
        if pace * cost > 1.5 * self.window_s and parts > 1:
            cut = self._cut(window, parts)
            self.windows[position : position + 1] = cut
            if position < self.sized:  # the windows sized already keep their positions
                self.sized += len(cut) - 1

    def _cut(self, window: list[Entry], parts: int) -> list[list[Entry]]:
        """``window`` in ``parts`` consecutive stretches of about equal cost."""
        share = self.cost(window) / parts
        stretches: list[list[Entry]] = [[]]
        spent = 0.0
        for entry in window:
            if stretches[-1] and spent >= share * len(stretches) and len(stretches) < parts:
                stretches.append([])
            stretches[-1].append(entry)
            spent += self.length(entry) + ITEM_COST
        return [
            WindowPart(stretch, first=number == 0, last=number == len(stretches) - 1)
            for number, stretch in enumerate(stretches)
        ]


class WindowPart(list[Entry]):
    """A stretch of a write window (:class:`WindowPacer`): whether it begins and ends it."""

    __slots__ = ("first", "last")

    def __init__(self, entries: list[Entry], *, first: bool, last: bool) -> None:
        super().__init__(entries)
        self.first = first
        self.last = last
